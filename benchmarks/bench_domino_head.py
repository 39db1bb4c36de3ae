"""Domino head, one block of greedy drafting at Qwen3-8B shapes (H 4096, V 151936, E 256, G 1024,
k 16, b 1, random weights): reference_rollout vs FusedRollout (Triton) vs CudaGraphRollout vs the
exact top-K variant.

    .venv/bin/python -m pytest benchmarks/ --benchmark-enable          (add -s for the traffic table)

The CUDA cases skip without CUDA (or under TRITON_INTERPRET=1); the CPU reference still runs
(~1 s a round, 3 rounds). Every case records in ``extra_info`` the modelled HBM bytes read per block
and the bandwidth floor ``bytes / 3.35e12 B/s`` (H100 SXM), next to the paper's 1.20 ms per block
(A100, their CUDA graph + Triton head).
"""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from specforge_domino.fast import CudaGraphRollout, FusedRollout, traffic_per_block
from specforge_domino.head import DominoArch, DominoHead, reference_rollout
from specforge_domino.kernels import triton_available

H, V, E, G, K_BLOCK, B, P = 4096, 151936, 256, 1024, 16, 1, 1
K_CAND = 64
H100_BW = 3.35e12  # B/s, H100 SXM HBM3
PAPER_MS_A100 = 1.20  # Domino paper, head per block (CUDA graph + Triton), A100

CUDA = (torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1" and triton_available("cuda"))
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs CUDA and compiled Triton (TRITON_INTERPRET unset)")
DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _traffic(mode: str, **kw) -> dict:
    t = traffic_per_block(H, V, E, G, K_BLOCK, P, mode=mode, **kw)
    return {"mode": mode, "bytes_per_block": t.total, "MB_per_block": round(t.total / 1e6, 2),
            "h100_floor_ms": round(t.total / H100_BW * 1e3, 4), "paper_ms_a100": PAPER_MS_A100,
            "bytes_per_step": {k: int(v) for k, v in t.per_step.items()}}


def _print_table():
    rows = [("reference fp32 weights", _traffic("reference", weight_bytes=4, logit_bytes=4)),
            ("fused bf16", _traffic("fused")),
            (f"topk K={K_CAND} bf16, no fallback", _traffic("topk", k_cand=K_CAND)),
            (f"topk K={K_CAND} bf16, all fall back", _traffic("topk", k_cand=K_CAND, fallback_rate=1.0))]
    print(f"\nDomino head per block, k={K_BLOCK}, b={B}: modelled HBM reads; floor at {H100_BW / 1e12} TB/s "
          f"(paper: {PAPER_MS_A100} ms on A100)")
    for name, r in rows:
        print(f"  {name:<36} {r['MB_per_block']:>9.2f} MB   floor {r['h100_floor_ms']:.4f} ms")


@pytest.fixture(scope="module")
def setup():
    """Random weights (nn defaults: a correction of a realistic scale), LM-like base logits
    (4 front-runners per position), bf16 embedding table."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    head = DominoHead(DominoArch(hidden_size=H, vocab_size=V, gru_hidden_dim=G, emb_dim=E, pure_draft_prefix_len=P))
    head.requires_grad_(False)
    embed = nn.Embedding.from_pretrained(torch.randn(V, H, generator=g).mul_(0.02).bfloat16())
    hidden = torch.randn(B, K_BLOCK, H, generator=g)
    base = 2.0 * torch.randn(B, K_BLOCK, V, generator=g)
    top = torch.randint(0, V, (B, K_BLOCK, 4), generator=g)
    base.scatter_(-1, top, 20.0 + 0.5 * torch.randn(B, K_BLOCK, 4, generator=g))
    anchor = torch.randint(0, V, (B,), generator=g)
    head, embed = head.to(DEV), embed.to(DEV)
    _print_table()
    return head, embed, hidden.to(DEV), base.to(DEV), anchor.to(DEV)


@pytest.fixture(scope="module")
def fused(setup):
    if not CUDA:
        pytest.skip("needs CUDA")
    head, embed, *_ = setup
    return FusedRollout(head, embed.weight, block_v=512, weight_dtype=torch.bfloat16)


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def test_reference_rollout(benchmark, setup):
    head, embed, hidden, base, anchor = setup

    def run():
        with torch.no_grad():
            out = reference_rollout(head, embed, hidden, base, anchor)
        _sync()
        return out

    benchmark.extra_info.update(_traffic("reference", weight_bytes=4, logit_bytes=4))
    benchmark.extra_info["device"] = str(DEV)
    if DEV.type == "cpu":
        benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=0)
    else:
        benchmark.pedantic(run, rounds=20, iterations=1, warmup_rounds=2)


@needs_cuda
def test_fused_rollout(benchmark, setup, fused):
    _, _, hidden, base, anchor = setup
    base_bf16, hidden_bf16 = base.bfloat16(), hidden.bfloat16()

    def run():
        out = fused.rollout(hidden_bf16, base_bf16, anchor)
        _sync()
        return out

    benchmark.extra_info.update(_traffic("fused"))
    benchmark.pedantic(run, rounds=50, iterations=1, warmup_rounds=3)


@needs_cuda
def test_cuda_graph_rollout(benchmark, setup, fused):
    _, _, hidden, base, anchor = setup
    graph = CudaGraphRollout(fused, batch=B, steps=K_BLOCK)
    base_bf16, hidden_bf16 = base.bfloat16(), hidden.bfloat16()
    assert torch.equal(graph.rollout(hidden_bf16, base_bf16, anchor), fused.rollout(hidden_bf16, base_bf16, anchor))

    def run():
        out = graph.rollout(hidden_bf16, base_bf16, anchor)
        _sync()
        return out

    benchmark.extra_info.update(_traffic("fused"))
    benchmark.pedantic(run, rounds=200, iterations=1, warmup_rounds=5)


@needs_cuda
@pytest.mark.parametrize("graphed", [False, True])
def test_topk_rollout(benchmark, setup, fused, graphed):
    _, _, hidden, base, anchor = setup
    base_bf16, hidden_bf16 = base.bfloat16(), hidden.bfloat16()
    exact = fused.rollout(hidden_bf16, base_bf16, anchor)
    tokens, fallbacks = fused.topk_rollout(hidden_bf16, base_bf16, anchor, k_cand=K_CAND)
    assert torch.equal(tokens, exact)
    rate = int(fallbacks) / (B * (K_BLOCK - P))
    if graphed:
        graph = CudaGraphRollout(fused, batch=B, steps=K_BLOCK, k_cand=K_CAND)

        def run():
            out = graph.rollout(hidden_bf16, base_bf16, anchor)
            _sync()
            return out
    else:
        def run():
            out = fused.topk_rollout(hidden_bf16, base_bf16, anchor, k_cand=K_CAND)
            _sync()
            return out

    benchmark.extra_info.update(_traffic("topk", k_cand=K_CAND, fallback_rate=rate))
    benchmark.extra_info["fallback_rate"] = rate
    benchmark.pedantic(run, rounds=100 if graphed else 50, iterations=1, warmup_rounds=3)
