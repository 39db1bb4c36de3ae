"""The GPU check of issue 17: decode-loop speed at Qwen3-8B shapes on random bf16 weights.

    python scripts/gpu_check.py --out DIR            # CUDA: Qwen3-8B shapes (36 layers), ~2-4 min on an H200
    python scripts/gpu_check.py --out DIR --tiny     # any machine: tiny shapes, seconds (tests the script)
    python scripts/gpu_check.py --out DIR --layers 12   # fewer decoder layers (flagged in the JSON)

Writes ``DIR/gpu_check.json`` after every section (a run stopped early still leaves what it measured).
``scripts/gpu_check.sh`` runs this, then the GPU tests and the benchmarks, and logs everything.

Sections (each one's failure is recorded under ``errors`` and the next one runs):

* ``ar_hf``      - transformers ``generate`` (greedy, its default dynamic cache, eager): tokens/s. Its output
                   is also the target's greedy continuation the oracle drafter proposes.
* ``ar_ours``    - our loop with a drafter that drafts nothing (one row per verify): tokens/s, on the static
                   cache + CUDA graphs (``target.cuda_graphs``), and on the dynamic cache for reference.
* ``verify``     - one verify forward (median of repeats) at 1 row and block+1 rows: dynamic cache (eager),
                   static cache (eager), static cache (CUDA graph).
* ``spec``       - the loop with the ``oracle`` drafter at tau 4 and 8 (block ``--block`` drafts, the rest cut):
                   tokens/s, measured tau, ratio to AR (HF and ours), ratio to the ideal
                   ``tau * t_decode / (t_verify + t_draft)``, and the non-model time per cycle
                   (cycle time - one verify forward) as a share of one verify forward.
* ``dflash_draft`` - a real DFlash drafter (z-lab's Qwen3-8B-DFlash-b16 shapes, random weights) on the graphed
                   target: T=0 tokens vs transformers, cycle time and the per-stage split (its block forward is eager).
* ``domino``     - the Domino head per 16-token block at Qwen3-8B shapes: reference / fused Triton / CUDA graph /
                   exact top-k (graphed), against the HBM floor of the bytes it reads (fast.traffic_per_block).
* ``compile``    - the verify forward on a few-layer model at Qwen3-8B widths: eager / our CUDA graphs /
                   ``torch.compile(mode="reduce-overhead")`` of the same padded static-cache forward.

Random weights are built from a config directly on the device (no hub). Timing: the device is
synchronised around every timed region; medians of repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Callable, Optional

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "plugins"):  # run from a checkout without `pip install -e .` (the GPU image)
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import torch  # noqa: E402

from specforge_core.interfaces import DraftBlock, DraftContext, Drafter  # noqa: E402
from specforge_core.sampling import SamplingParams  # noqa: E402
from specforge_core.scheduler import SpeculativeGenerator  # noqa: E402
from specforge_core.target import TargetModel  # noqa: E402
from specforge_oracle.drafter import OracleDrafter, OracleOptions  # noqa: E402
from specforge_verify.chain import ChainOptions, ChainVerifier  # noqa: E402

GREEDY = SamplingParams(temperature=0.0)
HBM_BYTES_PER_S = 4.8e12  # H200 HBM3e datasheet (a device-to-device copy measured ~4.3e12 here: see KINDS.md)

# Qwen3-8B (config.json of Qwen/Qwen3-8B)
QWEN3_8B = dict(model_type="qwen3", vocab_size=151936, hidden_size=4096, intermediate_size=12288,
                num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                max_position_embeddings=40960, rope_theta=1000000.0, rms_norm_eps=1e-6,
                tie_word_embeddings=False, attention_bias=False, initializer_range=0.02)
TINY = dict(model_type="qwen3", vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=4096,
            tie_word_embeddings=False, initializer_range=0.2)


class NoDrafts(Drafter):
    """Drafts nothing: every cycle verifies the anchor alone, i.e. plain decoding through our loop."""

    def draft(self, ctx: DraftContext) -> DraftBlock:
        return DraftBlock(tokens=ctx.tokens.new_zeros(ctx.tokens.shape[0], 0), anchor=ctx.anchor)


# ---- timing ------------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable, device: torch.device):
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t0


def median_time(fn: Callable, device: torch.device, reps: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        times.append(timed(fn, device)[1])
    return statistics.median(times)


# ---- the report --------------------------------------------------------------------------------
class Report:
    def __init__(self, out_dir: Path):
        self.path = out_dir / "gpu_check.json"
        self.data: dict = {"errors": {}}
        self.t0 = time.perf_counter()

    def section(self, name: str, fn: Callable, *args, **kwargs):
        print(f"[gpu_check {time.perf_counter() - self.t0:7.1f}s] {name} ...", flush=True)
        t = time.perf_counter()
        try:
            result = fn(*args, **kwargs)
            if result is not None:
                self.data[name] = result
                print(f"[gpu_check] {name}: {json.dumps(result, default=str)[:2000]}", flush=True)
        except Exception as e:  # a failed section is recorded; the next one runs
            self.data["errors"][name] = f"{type(e).__name__}: {e}"
            traceback.print_exc()
            result = None
        self.data.setdefault("section_s", {})[name] = round(time.perf_counter() - t, 2)
        self.write()
        return result

    def write(self) -> None:
        self.data["elapsed_s"] = round(time.perf_counter() - self.t0, 2)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=str))
        tmp.replace(self.path)


def environment(device: torch.device) -> dict:
    import transformers

    env = {"python": platform.python_version(), "torch": torch.__version__,
           "transformers": transformers.__version__, "device": str(device),
           "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET")}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    return env


def build_target(cfg: dict, device: torch.device, dtype: torch.dtype, seed: int = 0) -> TargetModel:
    """Random weights straight on the device (no fp32 copy on the host, no hub)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    fields = dict(cfg)
    config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return TargetModel(model.eval())


def tokens_per_s(n: int, seconds: float) -> float:
    return round(n / seconds, 2)


def agree(a: list, b: list) -> int:
    """Length of the common prefix (bf16 verify numerics can resolve a near-tie differently)."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


# ---- sections ----------------------------------------------------------------------------------
def ar_hf(target: TargetModel, prompt: torch.Tensor, max_new: int, state: dict) -> dict:
    target.greedy_reference(prompt, 4)  # warm-up (cuBLAS handles, allocator)
    new, s = timed(lambda: target.greedy_reference(prompt, max_new), target.device)
    state["greedy"] = new[0].tolist()
    state["tps_ar_hf"] = new.shape[1] / s
    return {"tokens": new.shape[1], "s": round(s, 3), "tokens_per_s": tokens_per_s(new.shape[1], s),
            "ms_per_token": round(1e3 * s / new.shape[1], 3)}


def run_loop(gen: SpeculativeGenerator, prompt, max_new: int, device):
    return timed(lambda: gen.generate(prompt, max_new, GREEDY), device)


def ar_ours(targets: dict, prompt, max_new: int, state: dict) -> dict:
    out = {}
    for name, target in targets.items():
        gen = SpeculativeGenerator(target, NoDrafts(None, 1), ChainVerifier(ChainOptions()))
        try:
            run_loop(gen, prompt, 8, target.device)  # warm-up: captures the 1-row graph
            res, s = run_loop(gen, prompt, max_new, target.device)
        except Exception as e:  # one way of running failing does not hide the others
            traceback.print_exc()
            out[name] = {"error": f"{type(e).__name__}: {e}"}
            state[f"failed_{name}"] = True
            continue
        decode_s = s - res.prefill_s
        out[name] = {"tokens": len(res.tokens), "s": round(s, 3), "tokens_per_s": tokens_per_s(len(res.tokens), s),
                     "ms_per_token_after_prefill": round(1e3 * decode_s / max(1, len(res.tokens) - 1), 3),
                     "agrees_with_hf_tokens": agree(res.tokens, state.get("greedy", []))}
        state[f"tps_ar_{name}"] = len(res.tokens) / s
    return out


def verify_times(targets: dict, prompt, rows: list, reps: int, state: dict) -> dict:
    """One verify forward over ``n`` rows (anchor + n-1 chain drafts) after a prefill of the prompt;
    the fed rows are dropped again after each, so every repeat sees the same context length."""
    out = {}
    chain = ChainVerifier(ChainOptions())
    for name, target in targets.items():
        dev = target.device
        target.capture(())
        target.prefill(prompt)
        anchor = prompt[:, -1]
        out[name] = {}
        for n in rows:
            if state.get(f"failed_{name}"):
                out[name] = {"error": "skipped: this way of running failed in ar_ours"}
                break
            cands = chain.propose(torch.randint(0, target.vocab_size, (1, n - 1), device=dev), None)
            empty = torch.zeros(0, dtype=torch.long, device=dev)

            def once():
                target.verify(anchor, cands)
                target.keep(empty)  # drop the fed rows: back to the prompt

            try:
                ms = 1e3 * median_time(once, dev, reps)
            except Exception as e:
                traceback.print_exc()
                out[name][f"rows_{n}_error"] = f"{type(e).__name__}: {e}"
                continue
            out[name][f"rows_{n}_ms"] = round(ms, 3)
            state[f"t_verify_{name}_{n}"] = ms / 1e3
    return out


def spec(target: TargetModel, name: str, prompt, max_new: int, block: int, taus: list, state: dict,
         profile_ok: bool) -> dict:
    """The oracle drafter at a known tau: ``block`` drafts per cycle, the first ``tau - 1`` right."""
    dev = target.device
    greedy = state["greedy"]
    out = {}
    for tau in taus:
        accept = tau - 1
        d = OracleDrafter(OracleOptions(accept_len=accept if accept < block else None, check=False), block)
        d.bind(target)
        gen = SpeculativeGenerator(target, d, ChainVerifier(ChainOptions()))
        d.follow(torch.cat([prompt, torch.tensor([greedy], device=dev)], 1))
        attempts = 0
        while True:  # follow the loop's own output until every cycle accepts as planned (bf16 near-ties)
            attempts += 1
            res, s = run_loop(gen, prompt, max_new, dev)
            planned = all(c.num_accepted == min(accept, c.num_drafted) for c in res.cycles)
            if planned or attempts == 3:
                break
            d.follow(torch.cat([prompt, torch.tensor([res.tokens], device=dev)], 1))
        n_tok, cycles = len(res.tokens), len(res.cycles)
        cycle_s = (s - res.prefill_s) / max(1, cycles)
        t_verify, t_decode = state.get(f"t_verify_{name}_{block + 1}"), state.get(f"t_verify_{name}_1")
        ctx = DraftContext(tokens=torch.cat([prompt, torch.tensor([greedy[:1]], device=dev)], 1), max_draft=block,
                           sampler=None)
        t_draft = median_time(lambda: d.draft(ctx), dev, 20)
        row = {"block": block, "accept_len": accept, "tau_planned": tau, "tau_measured": round(res.tau, 3),
               "attempts": attempts, "planned_acceptance": planned, "tokens": n_tok, "cycles": cycles,
               "s": round(s, 3), "tokens_per_s": tokens_per_s(n_tok, s),
               "cycle_ms": round(1e3 * cycle_s, 3), "draft_ms": round(1e3 * t_draft, 4),
               "agrees_with_hf_tokens": agree(res.tokens, greedy)}
        tps = n_tok / s
        for ar in ("hf", "static_graphs", "dynamic"):  # same budget, prefill included on both sides
            if state.get(f"tps_ar_{ar}"):
                row[f"speedup_vs_ar_{ar}"] = round(tps / state[f"tps_ar_{ar}"], 3)
        if t_verify and t_decode:
            ideal = res.tau * t_decode / (t_verify + t_draft)
            row.update({"verify_ms": round(1e3 * t_verify, 3), "decode_ms": round(1e3 * t_decode, 3),
                        "ideal_speedup": round(ideal, 3),
                        "ratio_to_ideal": round((tps * t_decode) / ideal, 3) if ideal else None,
                        # the ideal is a steady state: the decode part alone (tokens after the prefill's first)
                        "ratio_to_ideal_after_prefill": round((n_tok - 1) / (s - res.prefill_s) * t_decode / ideal, 3),
                        "non_model_ms_per_cycle": round(1e3 * (cycle_s - t_verify), 3),
                        "non_model_share_of_verify": round((cycle_s - t_verify) / t_verify, 3)})
        if profile_ok:  # per-stage split of one more run (a device sync per stage: slower, for shares only)
            pgen = SpeculativeGenerator(target, d, ChainVerifier(ChainOptions()), profile=True)
            pres, _ = run_loop(pgen, prompt, max_new, dev)
            stages = {}
            for field in ("draft_s", "propose_s", "verify_s", "accept_s"):
                vals = [getattr(c, field, 0.0) for c in pres.cycles]
                stages[field.replace("_s", "_ms")] = round(1e3 * statistics.mean(vals), 3) if vals else None
            row["profiled_stage_ms"] = stages
        out[f"tau_{tau}"] = row
    return out


def domino(device: torch.device, tiny: bool) -> dict:
    """The Domino head per block (k 16): reference / fused Triton / CUDA graph / exact top-k (graphed)."""
    from torch import nn

    from specforge_domino.fast import CudaGraphRollout, FusedRollout, traffic_per_block
    from specforge_domino.head import DominoArch, DominoHead, reference_rollout
    from specforge_domino.kernels import triton_available

    H, V, E, G, K, P, KC = (64, 96, 16, 24, 16, 1, 8) if tiny else (4096, 151936, 256, 1024, 16, 1, 64)
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    head = DominoHead(DominoArch(hidden_size=H, vocab_size=V, gru_hidden_dim=G, emb_dim=E,
                                 pure_draft_prefix_len=P)).requires_grad_(False).to(device)
    embed = nn.Embedding.from_pretrained(torch.randn(V, H, generator=g).mul_(0.02).bfloat16()).to(device)
    hidden = torch.randn(1, K, H, generator=g).to(device)
    base = 2.0 * torch.randn(1, K, V, generator=g)
    base.scatter_(-1, torch.randint(0, V, (1, K, 4), generator=g), 20.0)  # LM-like front-runners
    base = base.to(device)
    anchor = torch.randint(0, V, (1,), generator=g).to(device)

    def floor(mode, **kw):
        t = traffic_per_block(H, V, E, G, K, P, mode=mode, **kw)
        return {"MB_per_block": round(t.total / 1e6, 2), "floor_ms": round(t.total / HBM_BYTES_PER_S * 1e3, 4)}

    out = {"shapes": dict(H=H, V=V, E=E, G=G, k=K, P=P), "hbm_bytes_per_s": HBM_BYTES_PER_S}
    with torch.no_grad():
        ms = 1e3 * median_time(lambda: reference_rollout(head, embed, hidden, base, anchor), device, 5, 1)
    out["reference"] = {"ms": round(ms, 3), **floor("reference", weight_bytes=4, logit_bytes=4)}
    if not (device.type == "cuda" and triton_available("cuda")):
        print("[gpu_check] domino: fused Triton / CUDA graph / top-k need CUDA and compiled Triton: skipped",
              flush=True)
        out["fused"] = out["cuda_graph"] = out["topk_graph"] = "skipped: needs CUDA and compiled Triton"
        return out
    hb, bb = hidden.bfloat16(), base.bfloat16()
    (fused, build_s) = timed(lambda: FusedRollout(head, embed.weight, block_v=512, weight_dtype=torch.bfloat16),
                             device)
    _, first_s = timed(lambda: fused.rollout(hb, bb, anchor), device)  # includes the Triton compile
    out["fused_setup_s"], out["fused_first_call_s"] = round(build_s, 2), round(first_s, 2)
    exact = fused.rollout(hb, bb, anchor)
    ms = 1e3 * median_time(lambda: fused.rollout(hb, bb, anchor), device, 30)
    out["fused"] = {"ms": round(ms, 4), **floor("fused")}
    graph = CudaGraphRollout(fused, batch=1, steps=K)
    same = bool(torch.equal(graph.rollout(hb, bb, anchor), exact))
    ms = 1e3 * median_time(lambda: graph.rollout(hb, bb, anchor), device, 100)
    out["cuda_graph"] = {"ms": round(ms, 4), "tokens_equal_fused": same, **floor("fused")}
    tokens, fallbacks = fused.topk_rollout(hb, bb, anchor, k_cand=KC)
    rate = int(fallbacks) / (K - P)
    tgraph = CudaGraphRollout(fused, batch=1, steps=K, k_cand=KC)
    same = bool(torch.equal(tgraph.rollout(hb, bb, anchor), exact)) and bool(torch.equal(tokens, exact))
    ms = 1e3 * median_time(lambda: tgraph.rollout(hb, bb, anchor), device, 100)
    out["topk_graph"] = {"ms": round(ms, 4), "k_cand": KC, "fallback_rate": round(rate, 3),
                         "tokens_equal_fused": same, **floor("topk", k_cand=KC, fallback_rate=rate)}
    return out


def dflash_draft(target: TargetModel, name: str, prompt, max_new: int, block: int, state: dict) -> dict:
    """A real DFlash drafter at z-lab's Qwen3-8B-DFlash-b16 shapes (5 Qwen3-8B layers, context from
    target layers 1, 9, 17, 25, 33; random weights, so it accepts ~nothing) on this target (features
    captured inside the verify graph): its block forward eager (transformers' DynamicCache) and on fixed
    buffers replayed from CUDA graphs (``drafter.options.cuda_graphs``, static_draft.py); T=0 tokens
    against transformers' greedy decode, cycle time, and the per-stage split (--profile)."""
    from specforge_dflash.drafter import DFlashDrafter, DFlashOptions

    cfg = {"num_hidden_layers": 5, "target_layer_ids": [1, 9, 17, 25, 33]}
    if target.num_layers < 34:  # --layers / --tiny: spread the 5 context layers over what there is
        cfg["target_layer_ids"] = sorted({min(target.num_layers - 1, i * target.num_layers // 5) for i in range(5)})
    out = {"arch": {"layers": 5, "block_size": block + 1, "target_layer_ids": cfg["target_layer_ids"]}}
    t_verify = state.get(f"t_verify_{name}_{block + 1}")
    for graphs in (False, True):
        d = DFlashDrafter(DFlashOptions(config=cfg, cuda_graphs=graphs), block + 1)
        d.bind(target)
        rows = {}
        for run, profile in (("warmup", False), ("plain", False), ("profiled", True)):
            gen = SpeculativeGenerator(target, d, ChainVerifier(ChainOptions()), profile=profile)
            res, s = run_loop(gen, prompt, max_new, target.device)  # warm-up at full length: every bucket met
            if run == "warmup":
                continue
            cycles = max(1, len(res.cycles))
            row = {"tokens": len(res.tokens), "cycles": len(res.cycles), "tau": round(res.tau, 3),
                   "cycle_ms": round(1e3 * (s - res.prefill_s) / cycles, 3),
                   "agrees_with_hf_tokens": agree(res.tokens, state.get("greedy", []))}
            if profile:
                for field in ("draft_s", "propose_s", "verify_s", "accept_s"):
                    row[field.replace("_s", "_ms")] = round(1e3 * statistics.mean(getattr(c, field) for c in res.cycles), 3)
                if t_verify:
                    row["draft_share_of_verify"] = round(row["draft_ms"] / (1e3 * t_verify), 3)
            rows[run] = row
        if graphs:
            rows["graph_captures"] = d.static.num_captures if d.static is not None else None
        out["cuda_graphs" if graphs else "eager"] = rows
    return out


def t0_agreement(cfg: dict, device: torch.device, layers: int, prompt_len: int, max_new: int, block: int) -> dict:
    """T=0 tokens in fp32 (TF32 off), where a near-tie cannot flip: a ``layers``-layer model at the widths of
    ``cfg``; transformers' greedy decode against our loop on the graphed static cache (no drafts / the oracle
    at full acceptance / the oracle cut at 3 / a DFlash drafter). bf16 runs agree only on a prefix, because
    a padded or batched forward rounds differently; here every way must give the same tokens."""
    from specforge_dflash.drafter import DFlashDrafter, DFlashOptions

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    small = dict(cfg, num_hidden_layers=layers)
    target = build_target(small, device, torch.float32, seed=4)
    target.use_static_cache(cuda_graphs=True)
    prompt = torch.randint(0, small["vocab_size"], (1, prompt_len), generator=torch.Generator().manual_seed(5))
    prompt = prompt.to(device)
    greedy = target.greedy_reference(prompt, max_new)[0].tolist()
    out = {"layers": layers, "dtype": "float32", "tokens": len(greedy)}
    oracle_full = OracleDrafter(OracleOptions(check=False), block)
    oracle_cut = OracleDrafter(OracleOptions(accept_len=3, check=False), block)
    for d in (oracle_full, oracle_cut):
        d.bind(target)
        d.follow(torch.cat([prompt, torch.tensor([greedy], device=device)], 1))
    ids = sorted({min(layers - 1, i * layers // 5) for i in range(5)})
    dflash = DFlashDrafter(DFlashOptions(config={"num_hidden_layers": 2, "target_layer_ids": ids}), block + 1)
    dflash.bind(target)
    for name, d in (("no_drafts", NoDrafts(None, 1)), ("oracle_full", oracle_full), ("oracle_cut3", oracle_cut),
                    ("dflash", dflash)):
        res = SpeculativeGenerator(target, d, ChainVerifier(ChainOptions())).generate(prompt, max_new, GREEDY)
        out[name] = {"agrees_with_hf_tokens": agree(res.tokens, greedy), "of": len(greedy), "tau": round(res.tau, 3)}
    out["all_equal"] = all(out[n]["agrees_with_hf_tokens"] == len(greedy)
                           for n in ("no_drafts", "oracle_full", "oracle_cut3", "dflash"))
    return out


def compile_vs_graphs(cfg: dict, device: torch.device, dtype: torch.dtype, rows: list, reps: int,
                      layers: int, prompt_len: int) -> dict:
    """The verify forward on the static cache at Qwen3-8B widths with ``layers`` decoder layers (fewer than
    36 to keep the compile short): eager / our CUDA graph per bucket / ``torch.compile(mode=
    "reduce-overhead")`` of the same padded forward (issue 17: whichever measures faster)."""
    small = dict(cfg, num_hidden_layers=layers)
    model = build_target(small, device, dtype, seed=2).model
    prompt = torch.randint(0, small["vocab_size"], (1, prompt_len), generator=torch.Generator().manual_seed(3))
    prompt = prompt.to(device)
    eager, graphs, compiled = TargetModel(model), TargetModel(model), TargetModel(model)
    eager.use_static_cache(cuda_graphs=False)
    eager.static.padded = True  # the same bucketed shapes as the graphs
    graphs.use_static_cache(cuda_graphs=True)
    compiled.use_static_cache(cuda_graphs=False)
    sv = compiled.static
    sv.padded = True
    out = {"layers": layers, "note": "verify ms on a %d-layer model at Qwen3-8B widths" % layers}
    times = verify_times({"eager": eager, "cuda_graph": graphs}, prompt, rows, reps, {})
    fn = torch.compile(model, mode="reduce-overhead", dynamic=False)

    def forward(ids, positions, write_rows, mask, logits_to_keep=0):
        sv.cache.write_rows = write_rows
        if ids.shape[1] == prompt_len:  # the prefill: eager (one shape compiled per verify bucket only)
            return model(input_ids=ids, position_ids=positions, attention_mask=mask, use_cache=True,
                         logits_to_keep=logits_to_keep, **{sv.keyword: sv.cache})
        return fn(input_ids=ids, position_ids=positions, attention_mask=mask, use_cache=True,
                  logits_to_keep=logits_to_keep, **{sv.keyword: sv.cache})

    sv._forward = forward
    t0 = time.perf_counter()
    try:
        times.update(verify_times({"compiled": compiled}, prompt, rows, reps, {}))
    except Exception as e:
        times["compiled"] = {"error": f"{type(e).__name__}: {e}"}
    out["compile_and_time_s"] = round(time.perf_counter() - t0, 1)
    out.update(times)
    return out


# ---- gpu_check.sh's other steps, merged into the one JSON ----------------------------------------
def pytest_summary(junit_xml: str) -> dict:
    """Counts and the failed / skipped test ids (with the skip reason) of a ``--junitxml`` file."""
    import xml.etree.ElementTree as ET

    if not Path(junit_xml).is_file():
        return {"error": f"{junit_xml} not written (pytest did not finish?)"}
    root = ET.parse(junit_xml).getroot()
    out = {"passed": [], "failed": {}, "skipped": {}}
    for case in root.iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name')}"
        bad = case.find("failure") if case.find("failure") is not None else case.find("error")
        skip = case.find("skipped")
        if bad is not None:
            out["failed"][name] = (bad.get("message") or "")[:500]
        elif skip is not None:
            out["skipped"][name] = (skip.get("message") or "")[:200]
        else:
            out["passed"].append(name)
    out["counts"] = {k: len(v) for k, v in out.items()}
    return out


def benchmark_summary(bench_json: str) -> dict:
    """Median / min ms and extra_info of each pytest-benchmark case."""
    if not Path(bench_json).is_file():
        return {"error": f"{bench_json} not written (benchmarks did not finish?)"}
    data = json.loads(Path(bench_json).read_text())
    return {b["fullname"]: {"median_ms": round(1e3 * b["stats"]["median"], 4), "min_ms": round(1e3 * b["stats"]["min"], 4),
                            "rounds": b["stats"]["rounds"], **b.get("extra_info", {})}
            for b in data.get("benchmarks", [])}


def merge(path: Path, junit_xml: Optional[str], bench_json: Optional[str]) -> int:
    data = json.loads(path.read_text()) if path.is_file() else {"errors": {}}
    if junit_xml:
        data["pytest"] = pytest_summary(junit_xml)
    if bench_json:
        data["benchmarks"] = benchmark_summary(bench_json)
    path.write_text(json.dumps(data, indent=2, default=str))
    failed = data.get("pytest", {}).get("failed") or {}
    print(f"[gpu_check] merged into {path}: {len(failed)} failed tests", flush=True)
    return 0


# ---- main --------------------------------------------------------------------------------------
def main(argv: Optional[list] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="directory for gpu_check.json")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes (CPU, seconds): tests the script")
    ap.add_argument("--layers", type=int, default=None, help="decoder layers (default: Qwen3-8B's 36)")
    ap.add_argument("--prompt-len", type=int, default=None)
    ap.add_argument("--max-new", type=int, default=None, help="tokens per decode (default 128; tiny 24)")
    ap.add_argument("--block", type=int, default=15, help="oracle drafts per cycle (15: a 16-row verify)")
    ap.add_argument("--taus", default="4,8")
    ap.add_argument("--reps", type=int, default=None, help="repeats per verify timing")
    ap.add_argument("--no-graphs", action="store_true", help="the static cache without CUDA graphs everywhere")
    ap.add_argument("--skip", default="",
                    help="comma-separated sections to skip (ar_hf, ar_ours, verify, spec, dflash, domino, compile)")
    ap.add_argument("--agreement", action="store_true",
                    help="also check T=0 tokens in fp32 on an 8-layer model: transformers vs our graphed loop")
    ap.add_argument("--compile-layers", type=int, default=4,
                    help="decoder layers of the model the torch.compile comparison runs on (default 4)")
    ap.add_argument("--merge-pytest", metavar="JUNIT_XML", help="only add this pytest run's summary to the JSON")
    ap.add_argument("--merge-benchmarks", metavar="JSON", help="only add these pytest-benchmark results to the JSON")
    args = ap.parse_args(argv)

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.merge_pytest or args.merge_benchmarks:
        return merge(out_dir / "gpu_check.json", args.merge_pytest, args.merge_benchmarks)
    report = Report(out_dir)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not args.tiny and device.type != "cuda":
        print("[gpu_check] no CUDA device: Qwen3-8B shapes need a GPU (use --tiny to test the script)", flush=True)
        report.data["errors"]["device"] = "no CUDA device; run with --tiny on a CPU"
        report.write()
        return 2
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if args.tiny and device.type == "cpu":
        torch.set_num_threads(1)  # tiny matrices: threads only add synchronisation
    cfg = dict(TINY if args.tiny else QWEN3_8B)
    if args.layers:
        cfg["num_hidden_layers"] = args.layers
    prompt_len = args.prompt_len or (12 if args.tiny else 128)
    max_new = args.max_new or (24 if args.tiny else 128)
    block = min(args.block, 6) if args.tiny else args.block
    taus = [min(int(t), block + 1) for t in args.taus.split(",")]
    reps = args.reps or (3 if args.tiny else 20)
    skip = set(filter(None, args.skip.split(",")))
    report.data["config"] = {"shapes": "tiny" if args.tiny else "Qwen3-8B", "model": cfg,
                             "layers_reduced": bool(args.layers and not args.tiny and args.layers != 36),
                             "dtype": str(dtype), "prompt_len": prompt_len, "max_new_tokens": max_new,
                             "block": block, "taus": taus, "reps": reps}
    report.section("environment", environment, device)

    state: dict = {}
    built = report.section("model", lambda: {"built_s": round(timed(
        lambda: state.setdefault("target", build_target(cfg, device, dtype)), device)[1], 2)})
    if built is None:
        return 1
    base = state["target"]
    model = base.model
    graphs = TargetModel(model)  # the same weights, three ways of running them
    graphs.use_static_cache(cuda_graphs=not args.no_graphs)
    static = TargetModel(model)
    static.use_static_cache(cuda_graphs=False)
    targets = {"dynamic": base, "static": static, "static_graphs": graphs}
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, cfg["vocab_size"], (1, prompt_len), generator=g).to(device)

    if "ar_hf" not in skip:
        report.section("ar_hf", ar_hf, base, prompt, max_new, state)
    if "greedy" not in state:  # the oracle needs the continuation even when ar_hf is skipped or failed
        state["greedy"] = base.greedy_reference(prompt, max_new)[0].tolist()
    if "ar_ours" not in skip:
        report.section("ar_ours", ar_ours, {"static_graphs": graphs, "dynamic": base}, prompt, max_new, state)
    if "verify" not in skip:
        report.section("verify", verify_times, targets, prompt, sorted({1, block + 1}), reps, state)
    if "spec" not in skip:
        import inspect

        profile_ok = "profile" in inspect.signature(SpeculativeGenerator.__init__).parameters
        name = "static" if state.get("failed_static_graphs") else "static_graphs"
        report.data["spec_target"] = name
        report.section("spec", spec, targets[name], name, prompt, max_new, block, taus, state, profile_ok)
    if "dflash" not in skip:
        name = "static" if state.get("failed_static_graphs") else "static_graphs"
        report.section("dflash_draft", dflash_draft, targets[name], name, prompt, max_new, block, state)
    report.data["cuda_graph_captures"] = graphs.static.num_captures if graphs.static else None
    del targets, graphs, static, base, model, state
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if "domino" not in skip:
        report.section("domino", domino, device, args.tiny)
    if args.agreement:
        report.section("t0_agreement", t0_agreement, cfg, device, 2 if args.tiny else 8, prompt_len,
                       min(max_new, 64), block)
    if "compile" not in skip:  # last: the compile is the slowest and least certain step
        report.section("compile", compile_vs_graphs, cfg, device, dtype, sorted({1, block + 1}), reps,
                       2 if args.tiny else args.compile_layers, prompt_len)
    report.write()
    print(f"[gpu_check] wrote {report.path}; errors: {report.data['errors'] or 'none'}", flush=True)
    return 1 if report.data["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
