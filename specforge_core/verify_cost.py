"""The target's verify-cost curve ``t_verify(n)``: wall time of one verify forward over ``n``
new rows, on this machine, as verify runs it.

Any policy that trades rows verified against time (the tree's cost-aware budget, a verify-length
policy) reads it through ``verify_cost_curve(target, max_rows)``. Measuring costs a few seconds,
so the curve is cached under ``$SPECFORGE_CACHE`` (default ``~/.cache/specforge``) - but never
trusted blindly:
  * the file stores the full key it was measured under (model config, dtype, device, CPU model
    or GPU name, thread count, torch version, matmul layout, row range) and is used only when
    that key equals the current one (a hash collision or a hand-copied file cannot slip through);
  * it expires after ``MAX_AGE_DAYS``;
  * before use, two rows of the curve (1 row and the largest) are re-timed; if either is off by
    more than ``MAX_DEVIATION``x (and ``MIN_DEVIATION_S``), the whole curve is measured again (a changed machine state that
    the key does not capture, e.g. another process now sharing the cores).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path

import torch

from .interfaces import Candidates
from .machine import machine_key

MAX_AGE_DAYS = 7
MAX_DEVIATION = 1.5
MIN_DEVIATION_S = 0.002
_memo: dict = {}  # key -> curve, measured or checked once per process


def cache_dir() -> Path:
    return Path(os.environ.get("SPECFORGE_CACHE", Path.home() / ".cache" / "specforge"))


def curve_key(target, max_rows: int) -> dict:
    cfg = target.model.config.to_json_string(use_diff=False)
    return {"model": hashlib.sha256(cfg.encode()).hexdigest()[:16], "dtype": str(target.dtype),
            "few_row_linears": bool(getattr(target, "fast_few_rows", False)), "max_rows": int(max_rows),
            **machine_key(target.device)}


def verify_cost_curve(target, max_rows: int, repeats: int = 3) -> dict:
    """``{n: seconds}`` for n = 1, 2, 4, ... and ``max_rows`` (interpolate with ``interp``)."""
    key = curve_key(target, max_rows)
    name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    if name in _memo:
        return _memo[name]
    f = cache_dir() / f"verify-cost-{name}.json"
    curve, why = _load(f, key)
    if curve is not None:
        probe = _measure(target, [min(curve), max(curve)], repeats)
        off = max((max(probe[n] / curve[n], curve[n] / probe[n]) for n in probe
                  if abs(probe[n] - curve[n]) > MIN_DEVIATION_S), default=1.0)  # sub-ms jitter is not a deviation
        if off > MAX_DEVIATION:
            curve, why = None, f"the cached curve is off by {off:.1f}x now"
    if curve is None:
        print(f"specforge: measuring the target's verify cost for 1..{max_rows} rows ({why})", file=sys.stderr,
              flush=True)
        sizes, n = [], 1
        while n < max_rows:
            sizes.append(n)
            n *= 2
        sizes.append(max_rows)
        curve = _measure(target, sizes, repeats)
        _save(f, key, curve)
    _memo[name] = curve
    return curve


def interp(curve: dict, n: int) -> float:
    """``t_verify(n)``: linear between measured points, proportional beyond the last."""
    xs = sorted(curve)
    if n <= xs[0]:
        return curve[xs[0]]
    for a, b in zip(xs, xs[1:]):
        if a <= n <= b:
            return curve[a] + (curve[b] - curve[a]) * (n - a) / (b - a)
    return curve[xs[-1]] * n / xs[-1]


def _load(f: Path, key: dict):
    if not f.is_file():
        return None, "not measured on this machine yet"
    try:
        data = json.loads(f.read_text())
    except (OSError, ValueError):
        return None, "the cache file is unreadable"
    if data.get("key") != key:
        return None, "the cache file was measured under another key"
    if time.time() - float(data.get("measured_at", 0)) > MAX_AGE_DAYS * 86400:
        return None, f"the cached curve is older than {MAX_AGE_DAYS} days"
    return {int(k): float(v) for k, v in data["curve"].items()}, ""


def _save(f: Path, key: dict, curve: dict) -> None:
    f.parent.mkdir(parents=True, exist_ok=True)
    tmp = f.with_name(f.name + f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps({"key": key, "measured_at": time.time(), "curve": curve}, indent=1))
    os.replace(tmp, f)


def _chain(tokens) -> Candidates:
    ar = torch.arange(tokens.shape[1], device=tokens.device)
    return Candidates(tokens=tokens, probs=None, parents=ar - 1, depths=ar + 1)


def _measure(target, sizes, repeats: int) -> dict:
    """Median time of a verify forward of n random rows after a 256-token context."""
    ctx = min(256, max(1, target.context_length - max(sizes) - 2))
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, target.vocab_size, (1, ctx), generator=gen).to(target.device)
    curve = {}
    with torch.inference_mode():
        for n in sizes:
            x = torch.randint(0, target.vocab_size, (1, n), generator=gen).to(target.device)
            times = []
            for _ in range(repeats + 1):  # the first is a warm-up
                target.prefill(ids)
                if target.device.type == "cuda":
                    torch.cuda.synchronize(target.device)
                t0 = time.perf_counter()
                target.verify(x[:, 0], _chain(x[:, 1:]))  # exactly as verify runs (kernels, cache, capture)
                if target.device.type == "cuda":
                    torch.cuda.synchronize(target.device)
                times.append(time.perf_counter() - t0)
            times = sorted(times[1:])
            curve[n] = times[len(times) // 2]
    target.reset()
    return curve
