"""The verify-cost curve is keyed by what changes it and never trusted blindly from disk:
another key, an old file, or a curve that no longer matches the machine is measured again."""

import json
import time

import pytest

from specforge_core import verify_cost
from tiny import tiny_target


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECFORGE_CACHE", str(tmp_path))
    monkeypatch.setattr(verify_cost, "_memo", {})
    return tmp_path


def _file(cache):
    [f] = list(cache.glob("verify-cost-*.json"))
    return f


def _rewrite(f, **changes):
    data = json.loads(f.read_text())
    data.update(changes)
    f.write_text(json.dumps(data))
    return f.stat().st_mtime_ns


def _remeasured(f, stamp, target, monkeypatch):
    monkeypatch.setattr(verify_cost, "_memo", {})
    verify_cost.verify_cost_curve(target, 8)
    return f.stat().st_mtime_ns != stamp


def test_curve_is_keyed_by_machine_threads_and_model(cache, capsys):
    target = tiny_target(seed=0)
    curve = verify_cost.verify_cost_curve(target, 8)
    assert sorted(curve) == [1, 2, 4, 8] and all(t > 0 for t in curve.values())
    key = json.loads(_file(cache).read_text())["key"]
    assert {"hardware", "torch", "dtype", "model", "few_row_linears"} <= set(key)
    assert "threads" in key["hardware"]
    assert "measuring the target's verify cost" in capsys.readouterr().err


def test_a_valid_cached_curve_is_reused(cache, monkeypatch):
    monkeypatch.setattr(verify_cost, "MAX_DEVIATION", 1e9)  # this test is about the key, not about timing noise
    target = tiny_target(seed=0)
    verify_cost.verify_cost_curve(target, 8)
    f = _file(cache)
    assert not _remeasured(f, f.stat().st_mtime_ns, target, monkeypatch)


@pytest.mark.parametrize("damage", ["foreign_key", "stale", "deviates"])
def test_a_foreign_stale_or_deviating_curve_is_measured_again(cache, monkeypatch, damage):
    target = tiny_target(seed=0)
    verify_cost.verify_cost_curve(target, 8)
    f = _file(cache)
    data = json.loads(f.read_text())
    if damage == "foreign_key":
        stamp = _rewrite(f, key=dict(data["key"], hardware="another CPU x64, 64 threads"))
    elif damage == "stale":
        stamp = _rewrite(f, measured_at=time.time() - (verify_cost.MAX_AGE_DAYS + 1) * 86400)
    else:  # measured under very different conditions: this machine now runs it 100x faster
        stamp = _rewrite(f, curve={k: v * 100 + 0.01 for k, v in data["curve"].items()})
    assert _remeasured(f, stamp, target, monkeypatch)
    assert json.loads(f.read_text())["key"] == data["key"]


def test_interp():
    curve = {1: 1.0, 2: 2.0, 4: 2.0}
    assert verify_cost.interp(curve, 1) == 1.0 and verify_cost.interp(curve, 3) == 2.0
    assert verify_cost.interp(curve, 8) == 4.0  # proportional beyond the last point
