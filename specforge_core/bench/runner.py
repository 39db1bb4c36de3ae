"""Run the same prompts through plain autoregressive decoding (transformers' ``generate``),
the recipe's speculative pipeline and its variants, in one process, interleaved, and collect
vLLM-style counters.

How time is measured (so a user can tell a regression from a noisy neighbour):
  * warm-up: every method decodes the first prompt once, untimed (first-call costs, the
    few-row matmul layout decision, allocator growth);
  * interleaved: for each repeat and each prompt, AR and every method run back to back (their
    order rotates with the repeat), so a load spike hits all of them alike;
  * ``speedup`` = the median over prompts of (median AR time / median method time) for that
    prompt; ``speedup_range`` = the lowest and highest of the per-repeat speedups (each the median
    over prompts of that repeat's ratios): the run-to-run spread;
  * the 1-minute load average is read before and after; above the threads in use the result says
    the machine looked busy.

Counters (names as in vLLM's spec-decode metrics):
  num_drafts                  verify forwards (every cycle counts, also one where the drafter
                              proposed nothing), so ``tau = 1 + num_accepted_tokens / num_drafts``
                              is the mean number of tokens committed per target forward;
  num_draft_tokens            drafted tokens sent to the target;
  num_accepted_tokens         drafted tokens the target accepted;
  num_accepted_tokens_per_pos per block position i, the cycles that accepted position i (only the
                              positions that are verified: ``num_speculative_tokens`` cuts them);
  accept_per_position         the same divided by num_drafts.
  corrector_params            parameters of the corrector's own weights (0: no corrector);
                              ``time_split_ms.propose`` is its per-block time (with sampling and
                              building the chain / tree).

Calibration: when a verify-length policy predicts P(first j drafts accepted) per cycle
(``CycleStats.prefix_confidence``), ``calibration`` holds per-position ECE / AUROC / Brier of
those predictions and their count-weighted summary (bench/calibration.py); absent otherwise.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional

import torch

from ..build import Pipeline, Prompt
from ..errors import SpecForgeError
from ..machine import load_average, looks_busy, machine_key
from ..scheduler import GenerationResult
from .calibration import calibration_from_cycles, summary_cell


@dataclass
class PromptResult:
    question_id: Any
    category: str
    prompt_tokens: int
    new_tokens: int
    wall_time: float  # median over repeats
    ar_new_tokens: int
    ar_wall_time: float  # median over repeats
    tau: Optional[float]
    accept_lengths: list[int]  # tokens committed per verify forward (bonus included)
    identical_to_ar: Optional[bool]
    speedup: float = 0.0  # ar_wall_time / wall_time
    output_ids: list[int] = field(repr=False, default_factory=list)


@dataclass
class BenchResult:
    method: str
    tau: Optional[float]  # None for transformers' baselines (no counters exposed)
    speedup: float  # median over prompts of the per-prompt AR / method time ratio
    speedup_range: list  # [min, max] over repeats of that repeat's median ratio
    tokens_per_s: float
    ar_tokens_per_s: float
    accept_per_position: list[float]
    lossless: Optional[bool]  # T=0: every output identical to AR greedy; None at T>0 (tested statistically)
    n_prompts: int
    repeats: int
    device: str
    temperature: float
    max_new_tokens: int
    recipe: str
    prompts: list[dict]
    num_drafts: int = 0
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0
    num_accepted_tokens_per_pos: list[int] = field(default_factory=list)
    block_size: int = 0
    verified_positions: int = 0  # positions the verifier can accept (block cut by num_speculative_tokens)
    time_split_ms: Optional[dict] = None  # mean per cycle: draft / propose / verify / accept (None: not timed)
    corrector_params: Optional[int] = None  # parameters of the corrector's weights (0: no corrector, None: unknown)
    timing: dict = field(default_factory=dict)  # threads, load average, machine key, busy flag
    # the length policy's confidence against acceptance: {per_position: [...], summary: {...}};
    # None (and no JSON key) when no cycle carried a prediction
    calibration: Optional[dict] = None

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["calibration"] is None:
            del d["calibration"]
        return d


@dataclass
class Method:
    """One row of the bench: a label and how to decode one prompt."""

    label: str
    decode: Callable[[torch.Tensor, int], Any]  # (ids, seed) -> GenerationResult | list[int]
    pipe: Optional[Pipeline] = None  # a SpecForge pipeline (None: a transformers baseline)


def device_description(device: torch.device) -> str:
    k = machine_key(device)
    return f"{k['device']}: {k['hardware']}"


def _timed(device, fn):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - t0


def spec_method(pipe: Pipeline) -> Method:
    max_new, stop = int(pipe.cfg.generation.max_new_tokens), pipe.stop_token_ids()
    return Method(pipe.resolved.method, lambda ids, seed: pipe.generator.generate(ids, max_new, pipe.sampling(seed), stop),
                  pipe)


def run_bench(pipes: list[Pipeline], prompts: list[Prompt], repeats: int = 3, warmup: int = 1,
              progress: bool = True, with_baselines: bool = True) -> list[BenchResult]:
    """Every pipeline (they share the first one's target) against AR on ``prompts``, interleaved."""
    pipe0 = pipes[0]
    cfg = pipe0.cfg
    target, device = pipe0.target, pipe0.target.device
    max_new = int(cfg.generation.max_new_tokens)
    stop = pipe0.stop_token_ids()
    s = cfg.sampling
    encoded = [pipe0.encode(p.text) for p in prompts]
    for ids in encoded:  # bad prompts fail before any timing
        target.check_prompt(ids.shape[1], max_new)

    def ar(ids, seed):
        torch.manual_seed(seed)  # transformers' sampling uses the global RNG
        return target.reference_generate(ids.to(device), max_new, stop, s.temperature, s.top_k, s.top_p)[0].tolist()

    methods = [Method("autoregressive", ar)] + [spec_method(p) for p in pipes]
    if with_baselines:
        from .hf_baselines import baseline_methods, hf_generate

        for label, kwargs in baseline_methods(pipe0):
            methods.append(Method(label, lambda ids, seed, kw=kwargs: _hf(hf_generate, target, ids, max_new, stop, s, seed, kw)))

    for _ in range(max(0, warmup)):  # untimed: first-call costs
        for m in methods:
            m.decode(encoded[0], int(s.seed))

    load_before = load_average()
    n_m, n_p = len(methods), len(encoded)
    times = [[[] for _ in range(n_p)] for _ in range(n_m)]  # [method][prompt] -> seconds per repeat
    outputs: list[list[Any]] = [[None] * n_p for _ in range(n_m)]  # first repeat's result
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=repeats * n_p * n_m, desc=f"bench {len(pipes)} method(s) x {n_p} prompt(s) x {repeats}",
                   unit="decode", leave=False)
    for r in range(repeats):
        for i, ids in enumerate(encoded):
            seed = int(s.seed) + i
            order = [(j + r) % n_m for j in range(n_m)]  # rotate who goes first
            for j in order:
                out, dt = _timed(device, lambda: methods[j].decode(ids, seed))
                times[j][i].append(dt)
                if outputs[j][i] is None:
                    outputs[j][i] = out
                if bar is not None:
                    bar.update(1)
    if bar is not None:
        bar.close()
    load = max(load_before, load_average())
    threads = torch.get_num_threads() if device.type == "cpu" else 0
    timing = {"threads": threads, "load_average": round(load, 2), "machine": machine_key(device),
              "busy": device.type == "cpu" and looks_busy(load, threads), "warmup": warmup}

    ar_out = [o for o in outputs[0]]
    ar_med = [statistics.median(t) for t in times[0]]
    results = []
    for j in range(1, n_m):
        results.append(_summarise(methods[j], times[j], outputs[j], times[0], ar_med, ar_out, encoded, prompts,
                                  repeats, device, timing, cfg if methods[j].pipe is None else methods[j].pipe.cfg))
    return results


def _hf(hf_generate, target, ids, max_new, stop, s, seed, kwargs):
    torch.manual_seed(seed)
    return hf_generate(target, ids, max_new, stop, float(s.temperature), **kwargs)[0]


def _summarise(m: Method, times, outs, ar_times, ar_med, ar_out, encoded, prompts, repeats, device, timing, cfg) -> BenchResult:
    med = [statistics.median(t) for t in times]
    ratios = [a / b if b > 0 else 0.0 for a, b in zip(ar_med, med)]
    per_repeat = [statistics.median(ar_times[i][r] / times[i][r] for i in range(len(times))) for r in range(repeats)]
    results: list[Optional[GenerationResult]] = [o if isinstance(o, GenerationResult) else None for o in outs]
    tokens = [o.tokens if isinstance(o, GenerationResult) else o for o in outs]
    greedy = float(cfg.sampling.temperature) == 0
    check = greedy and bool(cfg.bench.check_lossless)
    rows = []
    for i, (p, ids) in enumerate(zip(prompts, encoded)):
        res = results[i]
        rows.append(PromptResult(
            p.question_id, p.category, int(ids.shape[1]), len(tokens[i]), med[i], len(ar_out[i]), ar_med[i],
            None if res is None else res.tau, [] if res is None else [1 + c.num_accepted for c in res.cycles],
            (tokens[i] == ar_out[i]) if check else None, ratios[i], tokens[i]))
    checks = [r.identical_to_ar for r in rows]
    out = BenchResult(
        method=m.label, tau=None, speedup=statistics.median(ratios), speedup_range=[min(per_repeat), max(per_repeat)],
        tokens_per_s=sum(len(t) for t in tokens) / max(sum(med), 1e-12),
        ar_tokens_per_s=sum(len(t) for t in ar_out) / max(sum(ar_med), 1e-12),
        accept_per_position=[], lossless=None if any(c is None for c in checks) else all(checks),
        n_prompts=len(rows), repeats=repeats, device=device_description(device),
        temperature=float(cfg.sampling.temperature), max_new_tokens=int(cfg.generation.max_new_tokens),
        recipe="" if m.pipe is None else str(m.pipe.resolved.path or ""),
        prompts=[asdict(r) for r in rows], timing=timing)
    if m.pipe is not None:
        _counters(out, m.pipe, [r for r in results if r is not None])
    return out


def _counters(out: BenchResult, pipe: Pipeline, results: list[GenerationResult]) -> None:
    gen = pipe.generator
    width = int(gen.drafter.block_size)  # the block size it runs at (recipe, else its checkpoint)
    cycles = [c for r in results for c in r.cycles]
    # positions some cycle could accept: a DFlash block of 8 drafts 7, num_speculative_tokens cuts more
    verified = max((c.num_positions for c in cycles), default=0)
    n = max(len(cycles), 1)
    per_pos = [0] * verified
    for c in cycles:
        for j in range(min(c.num_accepted, verified)):
            per_pos[j] += 1
    accepted = sum(c.num_accepted for c in cycles)
    out.tau = 1.0 + accepted / n
    out.num_drafts, out.num_draft_tokens = len(cycles), sum(c.num_drafted for c in cycles)
    out.num_accepted_tokens, out.num_accepted_tokens_per_pos = accepted, per_pos
    out.accept_per_position = [c / n for c in per_pos]
    out.block_size, out.verified_positions = width, verified
    out.calibration = calibration_from_cycles(cycles)
    out.corrector_params = parameter_count(getattr(gen, "corrector", None))
    if cycles and all(c.timed for c in cycles):
        out.time_split_ms = {k: 1000 * sum(getattr(c, f"{k}_s") for c in cycles) / n
                             for k in ("draft", "propose", "verify", "accept")}


def parameter_count(component) -> Optional[int]:
    """Parameters of a component's own weights (``training_module``; borrowed target embeddings are
    not its own): 0 for no component, None for one without trainable weights."""
    if component is None:
        return 0
    try:
        module = component.training_module()
    except (NotImplementedError, SpecForgeError):
        return None
    return sum(p.numel() for p in module.parameters())


def markdown_table(results: list[BenchResult]) -> str:
    """One row per method; a last column ``confidence ECE / AUROC / Brier`` only when some method's
    length policy predicted acceptance (its count-weighted summary over positions)."""
    calibrated = any(r.calibration for r in results)
    head = ("| method | T | tau | speedup [range over repeats] | tok/s | AR tok/s | lossless | prompts x repeats | device |"
            + (" confidence ECE / AUROC / Brier |" if calibrated else "") + "\n"
            + "|---|---|---|---|---|---|---|---|---|" + ("---|" if calibrated else "") + "\n")
    rows = []
    for r in results:
        lossless = {True: "yes", False: "**NO**", None: "n/a (T>0)" if r.temperature > 0 else "not checked"}[r.lossless]
        tau = "-" if r.tau is None else f"{r.tau:.2f}"
        lo, hi = r.speedup_range
        rows.append(f"| {r.method} | {r.temperature:g} | {tau} | {r.speedup:.2f}x [{lo:.2f}-{hi:.2f}] | "
                    f"{r.tokens_per_s:.1f} | {r.ar_tokens_per_s:.1f} | {lossless} | {r.n_prompts} x {r.repeats} | {r.device} |"
                    + (f" {summary_cell(r.calibration)} |" if calibrated else ""))
    return head + "\n".join(rows)


def timing_note(results: list[BenchResult]) -> str:
    """One line on how the times were taken (and a warning when the machine looked busy)."""
    if not results:
        return ""
    t = results[0].timing
    line = (f"timing: {results[0].repeats} interleaved repeat(s) after {t['warmup']} warm-up, "
            f"speedup = median over prompts of AR/method time; {t['machine']['hardware']}; "
            f"load average {t['load_average']:.2f}")
    if t.get("busy"):
        line += (f" - THE MACHINE LOOKED BUSY (load above the {t['threads']} thread(s) this run uses): "
                 "treat the speedups as noise and rerun on a quiet machine")
    return line
