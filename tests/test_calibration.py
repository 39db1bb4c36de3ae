"""Calibration of a verify-length policy's prefix-acceptance confidence in `specforge bench`
(bench/calibration.py): the metrics on hand-made data with known answers (DeepSpec's
definitions), then the wiring - the JSON's `calibration` object, the table column and the
reliability diagram - from synthetic CycleStats, and once through run_bench on the tiny target."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from specforge_core.bench.calibration import (
    CalibrationMetrics, auroc, auroc_from_histograms, brier, calibration_from_cycles, ece, position_metrics,
    summarize)
from specforge_core.bench.report import write_plots
from specforge_core.bench.runner import BenchResult, _counters, markdown_table
from specforge_core.scheduler import CycleStats

SMOKE = str(Path(__file__).resolve().parents[1] / "recipes" / "smoke.yaml")


# ---- the metrics -------------------------------------------------------------------------
def test_perfectly_calibrated_has_zero_ece():
    # bin [0.2, 0.3): 0.25 predicted, 1 of 4 accepted; bin [0.7, 0.8): 0.75 predicted, 3 of 4
    probs = [0.25] * 4 + [0.75] * 4
    targets = [1, 0, 0, 0] + [1, 1, 1, 0]
    assert ece(probs, targets) == pytest.approx(0.0, abs=1e-12)
    row = position_metrics(probs, targets)
    assert row["count"] == 8 and row["pred_mean"] == pytest.approx(0.5) and row["target_mean"] == pytest.approx(0.5)
    assert [(b["bin"], b["count"]) for b in row["reliability"]] == [(2, 4), (7, 4)]
    assert row["reliability"][0]["range"] == pytest.approx([0.2, 0.3])
    assert row["reliability"][1]["avg_target"] == pytest.approx(0.75)


def test_ece_by_hand():
    # one bin (0.9): observed 0.5 -> |0.9 - 0.5| = 0.4; another (0.1): observed 0 -> 0.1; weights 2 and 2
    assert ece([0.9, 0.9, 0.1, 0.1], [1, 0, 0, 0]) == pytest.approx((2 * 0.4 + 2 * 0.1) / 4)
    # p = 1.0 is clamped to 1 - 1e-8 and lands in the last bin, not past it
    assert ece([1.0, 1.0], [1, 1]) == pytest.approx(1e-8, abs=1e-12)
    assert position_metrics([1.0], [1])["reliability"][0]["bin"] == 9


def test_constant_prediction_has_auroc_half():
    assert auroc([0.6] * 6, [1, 0, 1, 1, 0, 0]) == pytest.approx(0.5)


def test_perfect_ranking_has_auroc_one_and_reversed_zero():
    assert auroc([0.9, 0.8, 0.3, 0.2], [1, 1, 0, 0]) == pytest.approx(1.0)
    assert auroc([0.9, 0.8, 0.3, 0.2], [0, 0, 1, 1]) == pytest.approx(0.0)
    # one tie across classes in a fine bin (0.5001 and 0.5004 both in bin 500): half a pair of 4
    assert auroc([0.5001, 0.5004, 0.9, 0.1], [1, 0, 1, 0]) == pytest.approx((1 + 1 + 1 + 0.5) / 4)


def test_auroc_is_none_with_one_class():
    assert auroc([0.2, 0.7], [1, 1]) is None and auroc([0.2, 0.7], [0, 0]) is None
    assert math.isnan(auroc_from_histograms([1, 2], [0, 0]))


def test_brier_by_hand():
    assert brier([0.8, 0.3, 0.5], [1, 0, 0]) == pytest.approx((0.04 + 0.09 + 0.25) / 3)
    assert brier([0.0], [0]) == pytest.approx(1e-16)  # clamped to 1e-8


def test_summary_is_weighted_by_count_and_skips_missing_auroc():
    m = CalibrationMetrics()
    m.update([0.9, 0.4], [1, 0])
    m.update([0.2, 0.3], [0, 0])
    m.update([0.8], [1])
    rows = m.per_position()
    assert [r["count"] for r in rows] == [3, 2] and m.num_cycles == 3
    assert rows[1]["auc"] is None  # position 2 saw only rejections
    s = summarize(rows)
    assert s["count"] == 5
    assert s["ece_mean"] == pytest.approx((3 * rows[0]["ece"] + 2 * rows[1]["ece"]) / 5)
    assert s["brier_mean"] == pytest.approx((3 * rows[0]["brier"] + 2 * rows[1]["brier"]) / 5)
    assert s["auc_mean"] == pytest.approx(rows[0]["auc"]) == pytest.approx(1.0)
    assert s["target_mean"] == pytest.approx(2 / 5)


# ---- from cycles to the bench's JSON, table and plot -------------------------------------
def cycles():
    # outcome of position j: num_accepted >= j
    return [CycleStats(2, 2, num_positions=2, prefix_confidence=(0.9, 0.5)),
            CycleStats(2, 1, num_positions=2, prefix_confidence=(0.9, 0.5)),
            CycleStats(3, 0, num_positions=3, prefix_confidence=(0.2, 0.1, 0.05)),
            CycleStats(3, 3, num_positions=3)]  # no prediction: left out


def test_calibration_from_cycles_uses_the_prefix_rule():
    cal = calibration_from_cycles(cycles())
    pp = cal["per_position"]
    assert [r["position"] for r in pp] == [1, 2, 3] and [r["count"] for r in pp] == [3, 3, 1]
    assert pp[0]["target_mean"] == pytest.approx(2 / 3)  # accepted, accepted, rejected
    assert pp[1]["target_mean"] == pytest.approx(1 / 3)
    assert pp[0]["auc"] == pytest.approx(1.0) and pp[2]["auc"] is None
    assert pp[0]["brier"] == pytest.approx((0.01 + 0.01 + 0.04) / 3)
    assert cal["summary"]["num_cycles"] == 3 and cal["summary"]["count"] == 7
    assert calibration_from_cycles([CycleStats(2, 1, num_positions=2)]) is None
    assert calibration_from_cycles([CycleStats(0, 0, prefix_confidence=())]) is None


def bench_result(method, cycle_list):
    r = BenchResult(method=method, tau=None, speedup=1.2, speedup_range=[1.1, 1.3], tokens_per_s=10.0,
                    ar_tokens_per_s=8.0, accept_per_position=[], lossless=True, n_prompts=1, repeats=1,
                    device="cpu: test", temperature=0.0, max_new_tokens=16, recipe="", prompts=[
                        {"accept_lengths": [1 + c.num_accepted for c in cycle_list]}], timing={})
    pipe = SimpleNamespace(generator=SimpleNamespace(drafter=SimpleNamespace(block_size=4)))
    _counters(r, pipe, [SimpleNamespace(cycles=cycle_list)])
    return r


def test_bench_json_table_and_plot(tmp_path):
    with_conf = bench_result("ngram+chain", cycles())
    plain = bench_result("ngram+chain", [CycleStats(2, 1, num_positions=2)])
    d = json.loads(json.dumps(with_conf.to_dict()))  # what --json writes
    assert set(d["calibration"]) == {"per_position", "summary"}
    assert {"ece_mean", "auc_mean", "brier_mean"} <= set(d["calibration"]["summary"])
    row = d["calibration"]["per_position"][0]
    assert {"position", "count", "pred_mean", "target_mean", "ece", "auc", "brier", "reliability"} <= set(row)
    assert "calibration" not in plain.to_dict()  # no predictions: no key

    table = markdown_table([with_conf, plain])
    head, _, first, second = table.splitlines()
    assert head.endswith("| confidence ECE / AUROC / Brier |")
    s = with_conf.calibration["summary"]
    assert first.endswith(f" | {s['ece_mean']:.3f} / {s['auc_mean']:.3f} / {s['brier_mean']:.3f} |")
    assert second.endswith(" | - |")
    assert "ECE" not in markdown_table([plain])  # the column only when some method predicted

    files = write_plots([with_conf, plain], str(tmp_path / "both"))
    assert (tmp_path / "both" / "reliability_diagram.png") in files
    assert (tmp_path / "both" / "reliability_diagram.png").stat().st_size > 1000
    write_plots([with_conf, bench_result("ngram+chain", cycles()[:2])], str(tmp_path / "two"))  # two calibrated
    assert (tmp_path / "two" / "reliability_diagram.png").exists()
    files = write_plots([plain], str(tmp_path / "none"))
    assert not any("reliability" in f.name for f in files) and not (tmp_path / "none" / "reliability_diagram.png").exists()


def test_run_bench_carries_the_cycles_predictions(monkeypatch):
    """Through run_bench on the tiny target: a generator whose cycles carry predictions (as a
    confidence length policy leaves them) gets a calibration object; the others none."""
    from specforge_core.bench.runner import run_bench
    from specforge_core.build import build_pipeline, load_prompts
    from specforge_core.recipe import load_recipe

    pipe = build_pipeline(load_recipe(SMOKE, ["generation.max_new_tokens=12", "prompts.limit=1"]))
    generate = pipe.generator.generate

    def predicting(*args, **kwargs):
        res = generate(*args, **kwargs)
        for c in res.cycles:
            c.prefix_confidence = tuple(0.5 ** j for j in range(1, c.num_positions + 1))
        return res

    [plain] = run_bench([pipe], load_prompts(pipe.resolved), repeats=1, warmup=0, progress=False,
                        with_baselines=False)
    assert plain.calibration is None
    monkeypatch.setattr(pipe.generator, "generate", predicting)
    [r] = run_bench([pipe], load_prompts(pipe.resolved), repeats=1, warmup=0, progress=False, with_baselines=False)
    pp = r.calibration["per_position"]
    assert len(pp) == r.verified_positions and 0 < pp[0]["count"] <= r.num_drafts
    assert pp[0]["pred_mean"] == pytest.approx(0.5)
    # observed prefix acceptance at position j is the bench's own acceptance per position
    assert [p["target_mean"] * p["count"] for p in pp] == pytest.approx(r.num_accepted_tokens_per_pos)
