"""Run the same prompts through plain autoregressive decoding (transformers' ``generate``)
and the recipe's speculative pipeline, in one process, and collect vLLM-style counters.

Counters (names as in vLLM's spec-decode metrics):
  num_drafts                  verify forwards (every cycle counts, also one where the drafter
                              proposed nothing), so ``tau = 1 + num_accepted_tokens / num_drafts``
                              is the mean number of tokens committed per target forward;
  num_draft_tokens            drafted tokens sent to the target;
  num_accepted_tokens         drafted tokens the target accepted;
  num_accepted_tokens_per_pos per block position i, the cycles that accepted position i;
  accept_per_position         the same divided by num_drafts.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import torch

from ..build import Pipeline, Prompt
from ..scheduler import GenerationResult


@dataclass
class PromptResult:
    question_id: Any
    category: str
    prompt_tokens: int
    new_tokens: int
    wall_time: float
    ar_new_tokens: int
    ar_wall_time: float
    tau: float
    accept_lengths: list[int]  # tokens committed per verify forward (bonus included)
    identical_to_ar: Optional[bool]
    output_ids: list[int] = field(repr=False, default_factory=list)


@dataclass
class BaselineResult:
    """A row for transformers' own speculative decoding (no per-cycle counters exposed)."""

    method: str
    speedup: float
    tokens_per_s: float
    ar_tokens_per_s: float
    lossless: Optional[bool]
    n_prompts: int
    temperature: float
    device: str
    tau: Optional[float] = None


@dataclass
class BenchResult:
    method: str
    tau: float
    speedup: float
    tokens_per_s: float
    ar_tokens_per_s: float
    accept_per_position: list[float]
    lossless: Optional[bool]  # T=0: every output identical to AR greedy; None at T>0 (tested statistically)
    n_prompts: int
    device: str
    num_drafts: int
    num_draft_tokens: int
    num_accepted_tokens: int
    num_accepted_tokens_per_pos: list[int]
    temperature: float
    block_size: int
    max_new_tokens: int
    time_split_ms: dict  # mean per cycle: draft / correct / verify
    recipe: str
    prompts: list[dict]
    baselines: list = field(default_factory=list)  # BaselineResult rows (transformers' generate)

    def to_dict(self) -> dict:
        return asdict(self)


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, {os.cpu_count()} cores"


def _timed(device, fn):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - t0


def run_bench(pipe: Pipeline, prompts: list[Prompt], progress: bool = True,
              ar_cache: Optional[dict] = None, with_baselines: bool = True) -> BenchResult:
    """``ar_cache`` (prompt index -> (tokens, seconds)) lets several methods in one run share
    one measurement of the AR baseline (``specforge bench --variant``)."""
    cfg = pipe.cfg
    target, device = pipe.target, pipe.target.device
    max_new = int(cfg.generation.max_new_tokens)
    stop = pipe.stop_token_ids()
    s = cfg.sampling
    encoded = [pipe.encode(p.text) for p in prompts]
    for ids in encoded:  # bad prompts fail before any timing
        target.check_prompt(ids.shape[1], max_new)

    def ar(ids, seed):
        torch.manual_seed(seed)  # transformers' sampling uses the global RNG
        return target.reference_generate(ids.to(device), max_new, stop, s.temperature, s.top_k, s.top_p)[0].tolist()

    def spec(ids, seed) -> GenerationResult:
        return pipe.generator.generate(ids, max_new, pipe.sampling(seed), stop)

    ar_cache = {} if ar_cache is None else ar_cache
    for _ in range(int(cfg.bench.warmup)):
        if encoded:
            if not ar_cache:
                ar(encoded[0], s.seed)
            spec(encoded[0], s.seed)

    rows: list[PromptResult] = []
    results: list[GenerationResult] = []
    iterator = zip(prompts, encoded)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(list(iterator), desc=f"bench {pipe.resolved.method}", unit="prompt", leave=False)
    for i, (p, ids) in enumerate(iterator):
        seed = int(s.seed) + i
        if i not in ar_cache:
            ar_cache[i] = _timed(device, lambda: ar(ids, seed))
        ar_out, ar_s = ar_cache[i]
        res, spec_s = _timed(device, lambda: spec(ids, seed))
        results.append(res)
        same = (res.tokens == ar_out) if (s.temperature == 0 and cfg.bench.check_lossless) else None
        rows.append(PromptResult(
            p.question_id, p.category, int(ids.shape[1]), len(res.tokens), spec_s, len(ar_out), ar_s,
            res.tau, [1 + c.num_accepted for c in res.cycles], same, res.tokens,
        ))

    baselines = []  # transformers' own speculative decoding: same prompts, same AR baseline
    from .hf_baselines import baseline_methods, hf_generate

    for label, kwargs in (baseline_methods(pipe) if with_baselines else []):
        toks, secs, same = 0, 0.0, []
        for i, ids in enumerate(encoded):
            out, dt = hf_generate(target, ids, max_new, stop, float(s.temperature), **kwargs)
            toks, secs = toks + len(out), secs + dt
            same.append(out == ar_cache[i][0])
        ar_wall_b = sum(ar_cache[i][1] for i in range(len(encoded)))
        ar_toks_b = sum(len(ar_cache[i][0]) for i in range(len(encoded)))
        baselines.append(BaselineResult(
            method=label, speedup=ar_wall_b / secs if secs > 0 else 0.0, tokens_per_s=toks / secs if secs else 0.0,
            ar_tokens_per_s=ar_toks_b / ar_wall_b if ar_wall_b else 0.0,
            lossless=all(same) if s.temperature == 0 else None, n_prompts=len(encoded),
            temperature=float(s.temperature), device=device_description(device)))

    width = int(cfg.drafter.block_size)
    cycles = [c for r in results for c in r.cycles]
    num_drafts = len(cycles)
    accepted = sum(c.num_accepted for c in cycles)
    per_pos = [0] * width
    for c in cycles:
        for j in range(min(c.num_accepted, width)):
            per_pos[j] += 1
    spec_tokens = sum(r.new_tokens for r in rows)
    ar_tokens = sum(r.ar_new_tokens for r in rows)
    spec_wall = sum(r.wall_time for r in rows)
    ar_wall = sum(r.ar_wall_time for r in rows)
    checks = [r.identical_to_ar for r in rows]
    lossless = None if any(c is None for c in checks) else all(checks)
    ms = lambda attr: 1000 * sum(getattr(c, attr) for c in cycles) / max(num_drafts, 1)  # noqa: E731
    return BenchResult(
        method=pipe.resolved.method,
        tau=1.0 + accepted / max(num_drafts, 1),
        speedup=(ar_wall / spec_wall) if spec_wall > 0 else 0.0,
        tokens_per_s=spec_tokens / spec_wall if spec_wall > 0 else 0.0,
        ar_tokens_per_s=ar_tokens / ar_wall if ar_wall > 0 else 0.0,
        accept_per_position=[c / max(num_drafts, 1) for c in per_pos],
        lossless=lossless,
        n_prompts=len(rows),
        device=device_description(device),
        num_drafts=num_drafts,
        num_draft_tokens=sum(c.num_drafted for c in cycles),
        num_accepted_tokens=accepted,
        num_accepted_tokens_per_pos=per_pos,
        temperature=float(s.temperature),
        block_size=width,
        max_new_tokens=max_new,
        time_split_ms={"draft": ms("draft_s"), "correct": ms("correct_s"), "verify": ms("verify_s")},
        recipe=str(pipe.resolved.path or ""),
        prompts=[{k: v for k, v in asdict(r).items() if k != "output_ids"} | {"output_ids": r.output_ids}
                 for r in rows],
        baselines=baselines,
    )


def markdown_table(results) -> str:
    if isinstance(results, BenchResult):
        results = [results]
    head = "| method | T | tau | speedup | tok/s | AR tok/s | lossless | prompts | device |\n" \
           "|---|---|---|---|---|---|---|---|---|\n"
    rows = []
    every = list(results) + [b for r in results for b in getattr(r, "baselines", [])]
    for r in every:
        lossless = {True: "yes", False: "**NO**", None: "n/a (T>0)"}[r.lossless]
        tau = "-" if r.tau is None else f"{r.tau:.2f}"
        rows.append(f"| {r.method} | {r.temperature:g} | {tau} | {r.speedup:.2f}x | {r.tokens_per_s:.1f} | "
                    f"{r.ar_tokens_per_s:.1f} | {lossless} | {r.n_prompts} | {r.device} |")
    return head + "\n".join(rows)
