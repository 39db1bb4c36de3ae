"""Domino Triton kernels and fast rollouts (plugins/specforge_domino/kernels.py, fast.py).

On CPU everything runs under the Triton interpreter (tests/conftest.py sets TRITON_INTERPRET=1 before
triton is imported, only when CUDA is absent). On a GPU machine the same tests compile the kernels and
run them on the GPU (inputs are drawn on the CPU, then moved to ``DEV``), plus the CUDA-graph cases."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from specforge_domino import kernels as K
from specforge_domino.fast import CudaGraphRollout, FusedRollout, traffic_per_block
from specforge_domino.head import DominoArch, DominoHead, reference_rollout

CPU_TRITON = K.triton_available("cpu")
GPU_TRITON = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1" and K.triton is not None
DEV = torch.device("cuda" if GPU_TRITON else "cpu")  # where the kernel tests run: compiled on a GPU, else interpreted
needs_triton = pytest.mark.skipif(not (CPU_TRITON or GPU_TRITON),
                                  reason="needs triton: a CUDA device, or its CPU interpreter (TRITON_INTERPRET=1)")


def on_dev(*tensors):
    return tuple(t.to(DEV) for t in tensors)

H, G, E = 32, 16, 24  # E is not a multiple of the E tile (16)
BLOCK_V = 128


def _torch_correction(z, s, w2, base):
    return torch.nn.functional.silu(z.float() + s.float()) @ w2.float().T + base.float()


# ---- kernels vs PyTorch math ------------------------------------------------------------------
@needs_triton
@pytest.mark.parametrize("V", [1000, 777])
@pytest.mark.parametrize("b", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_correction_argmax_matches_torch(V, b, dtype):
    g = torch.Generator().manual_seed(V + b)
    z, s = torch.randn(b, E, generator=g), torch.randn(b, E, generator=g)
    w2 = torch.randn(V, E, generator=g).to(dtype)
    base_all = torch.randn(b, 3, V, generator=g)
    z, s, w2, base_all = on_dev(z, s, w2, base_all)
    base = base_all[:, 1]  # a strided view, as in the rollout
    tok, best = K.fused_correction_argmax(z, s, w2, base, block_v=BLOCK_V)
    ref = _torch_correction(z, s, w2, base)
    assert tok.dtype == torch.int64 and best.dtype == torch.float32
    assert torch.equal(tok, ref.argmax(-1))
    torch.testing.assert_close(best, ref.max(-1).values, rtol=1e-5, atol=1e-5)


@needs_triton
def test_correction_argmax_bf16_and_dot_path():
    """bf16 W2 and base (cast after load), and b >= 16: the tl.dot path with a padded row block."""
    g = torch.Generator().manual_seed(1)
    b, V = 17, 777
    z, s = torch.randn(b, E, generator=g), torch.randn(b, E, generator=g)
    w2 = torch.randn(V, E, generator=g).bfloat16()
    base = torch.randn(b, V, generator=g).bfloat16()
    z, s, w2, base = on_dev(z, s, w2, base)
    tok, best = K.fused_correction_argmax(z, s, w2, base, block_v=BLOCK_V)
    ref = _torch_correction(z, s, w2, base)
    assert torch.equal(tok, ref.argmax(-1))
    torch.testing.assert_close(best, ref.max(-1).values, rtol=1e-5, atol=1e-5)


@needs_triton
@pytest.mark.parametrize("b", [1, 17])
def test_correction_argmax_ties_resolve_like_torch(b):
    """Exact ties inside a tile and across tiles (and all -inf rows) give torch.argmax's first index."""
    V = 777
    z = torch.zeros(b, E)
    s = torch.zeros(b, E)  # SiLU(0) = 0: the correction vanishes, values are the base logits exactly
    w2 = torch.randn(V, E)
    base = torch.randn(b, V)
    base[:, [700, 300, 5, 6]] = 50.0  # ties across tiles (5, 300, 700) and inside tile 0 (5, 6)
    base[-1] = float("-inf")
    z, s, w2, base = on_dev(z, s, w2, base)
    tok, _ = K.fused_correction_argmax(z, s, w2, base, block_v=BLOCK_V)
    assert torch.equal(tok, base.argmax(-1))
    assert tok[-1] == 0 and bool((tok[:-1] == 5).all())


@needs_triton
@pytest.mark.parametrize("table_dtype", [torch.float32, torch.float16])
def test_gru_cell_matches_torch(table_dtype):
    g = torch.Generator().manual_seed(3)
    Gd, V, b = 40, 50, 2  # G not a multiple of the G tile
    w_ih, w_hh = torch.randn(3 * Gd, H, generator=g) * 0.3, torch.randn(3 * Gd, Gd, generator=g) * 0.3
    emb = torch.randn(V, H, generator=g)
    s = torch.randn(b, Gd, generator=g)
    ids = torch.tensor([7, 41])
    w_ih, w_hh, emb, s, ids = on_dev(w_ih, w_hh, emb, s, ids)
    table = (emb @ w_ih.T).to(table_dtype)
    gh = s @ w_hh.T
    ref = torch.gru_cell(emb[ids], s, w_ih, w_hh, None, None)
    out = K.fused_gru_cell(table, gh, s, gi_index=ids, block_g=16)
    tol = 1e-5 if table_dtype == torch.float32 else 5e-3
    torch.testing.assert_close(out, ref, rtol=tol, atol=tol)
    out2 = K.fused_gru_cell(emb[ids] @ w_ih.T, gh, s, block_g=16)  # plain gi [b, 3G]
    torch.testing.assert_close(out2, ref, rtol=1e-5, atol=1e-5)


@needs_triton
def test_candidate_correction_matches_torch():
    g = torch.Generator().manual_seed(4)
    b, V, Kc = 2, 777, 5
    z, s = torch.randn(b, E, generator=g), torch.randn(b, E, generator=g)
    w2, base = torch.randn(V, E, generator=g).half(), torch.randn(b, V, generator=g)
    cand = torch.randperm(V, generator=g)[: b * Kc].view(b, Kc)
    z, s, w2, base, cand = on_dev(z, s, w2, base, cand)
    tok, best, second, alpha = K.candidate_correction(z, s, w2, base, cand)
    ref = _torch_correction(z, s, w2, base).gather(1, cand)
    top2 = ref.topk(2, -1)
    assert torch.equal(tok, cand.gather(1, top2.indices[:, :1]).squeeze(1))
    torch.testing.assert_close(best, top2.values[:, 0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(second, top2.values[:, 1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(alpha, torch.nn.functional.silu(z + s).norm(dim=-1), rtol=1e-5, atol=1e-5)


def test_triton_available_rules():
    assert K.triton_available("cpu") == (K.triton is not None and os.environ.get("TRITON_INTERPRET") == "1")
    assert K.triton_available(torch.zeros(1)) == K.triton_available("cpu")
    assert not K.triton_available("meta")


# ---- rollouts ----------------------------------------------------------------------------------
def _setup(V, b, k, P=1, w2_scale=8.0, seed=0, peaky=False):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    head = DominoHead(DominoArch(hidden_size=H, vocab_size=V, gru_hidden_dim=G, emb_dim=E, pure_draft_prefix_len=P))
    with torch.no_grad():
        head.w2.mul_(w2_scale)  # a correction big enough to move argmaxes
    embed = nn.Embedding(V, H)
    hidden = torch.randn(b, k, H, generator=g)
    base = 2.0 * torch.randn(b, k, V, generator=g)
    if peaky:  # an LM-like head: 4 clear front-runners per position, close to each other
        top = torch.randint(0, V, (b, k, 4), generator=g)
        base.scatter_(-1, top, 30.0 + 0.3 * torch.randn(b, k, 4, generator=g))
    anchor = torch.randint(0, V, (b,), generator=g)
    return (head.to(DEV), embed.to(DEV), *on_dev(hidden, base, anchor))


def _changed_vs_base(tokens, base, P):
    return int((tokens[:, P:] != base[:, P:].argmax(-1)).sum())


@needs_triton
@pytest.mark.parametrize("V", [1000, 777])
@pytest.mark.parametrize("b", [1, 2])
@pytest.mark.parametrize("w2_dtype", [torch.float32, torch.float16])
def test_fused_rollout_matches_reference(V, b, w2_dtype):
    k = 4 + b  # 5 or 6 steps
    head, embed, hidden, base, anchor = _setup(V, b, k, seed=V + b)
    fused = FusedRollout(head, embed.weight, block_v=BLOCK_V, weight_dtype=w2_dtype, gemm_dtype=torch.float32)
    if w2_dtype != torch.float32:  # the reference sees the same rounded W2
        with torch.no_grad():
            head.w2.copy_(head.w2.to(w2_dtype).float())
    with torch.no_grad():
        ref, _ = reference_rollout(head, embed, hidden, base, anchor)
    tokens = fused.rollout(hidden, base, anchor)
    assert torch.equal(tokens, ref)
    assert _changed_vs_base(ref, base, head.arch.pure_draft_prefix_len) > 0, "the correction never mattered"


@needs_triton
def test_fused_rollout_prefix_len_2_and_no_host_sync(monkeypatch):
    """P = 2: the first two drafts are argmax(base) yet still feed the GRU. The loop never syncs:
    Tensor.item / bool / int / float / tolist are made to raise during the rollout."""
    V, b, k = 777, 2, 5
    head, embed, hidden, base, anchor = _setup(V, b, k, P=2, seed=5)
    fused = FusedRollout(head, embed.weight, block_v=BLOCK_V)
    with torch.no_grad():
        ref, _ = reference_rollout(head, embed, hidden, base, anchor)

    def boom(*a, **kw):
        raise AssertionError("host sync inside the rollout")

    with monkeypatch.context() as m:
        for name in ("item", "__bool__", "__int__", "__float__", "tolist"):
            m.setattr(torch.Tensor, name, boom)
        tokens = fused.rollout(hidden, base, anchor)
        tk, fb = fused.topk_rollout(hidden, base, anchor, k_cand=8)
    assert torch.equal(tokens, ref) and torch.equal(tk, ref)
    assert torch.equal(tokens[:, :2], base[:, :2].argmax(-1))
    assert _changed_vs_base(ref, base, 2) > 0


@needs_triton
@pytest.mark.parametrize("bound", ["global", "per_token"])
def test_topk_rollout_certifies(bound):
    """LM-like base logits: the top-16 certificate holds (no fallback) and the tokens are exact,
    although the correction does reorder the front-runners."""
    V, b, k = 1000, 2, 6
    head, embed, hidden, base, anchor = _setup(V, b, k, w2_scale=3.0, seed=11, peaky=True)
    fused = FusedRollout(head, embed.weight, block_v=BLOCK_V)
    exact = fused.rollout(hidden, base, anchor)
    with torch.no_grad():
        ref, _ = reference_rollout(head, embed, hidden, base, anchor)
    tokens, fallbacks = fused.topk_rollout(hidden, base, anchor, k_cand=16, bound=bound)
    assert torch.equal(exact, ref) and torch.equal(tokens, exact)
    assert _changed_vs_base(exact, base, 1) > 0
    assert int(fallbacks) == 0


@needs_triton
@pytest.mark.parametrize("V,k_cand,bound", [(777, 1, "global"), (1000, 4, "per_token"), (777, 777, "global")])
def test_topk_rollout_fallback_is_exact(V, k_cand, bound):
    """A big correction on flat base logits: with K=1 every row falls back; K >= V never does."""
    b, k = 2, 5
    head, embed, hidden, base, anchor = _setup(V, b, k, seed=V + k_cand)
    fused = FusedRollout(head, embed.weight, block_v=BLOCK_V)
    exact = fused.rollout(hidden, base, anchor)
    tokens, fallbacks = fused.topk_rollout(hidden, base, anchor, k_cand=k_cand, bound=bound)
    assert torch.equal(tokens, exact)
    assert _changed_vs_base(exact, base, 1) > 0
    n_rows = b * (k - 1)
    if k_cand >= V:
        assert int(fallbacks) == 0
    elif k_cand == 1:
        assert int(fallbacks) == n_rows
    else:
        assert 0 < int(fallbacks) <= n_rows


@needs_triton
def test_topk_rollout_exact_tie_falls_back_to_first_index():
    """Two tokens with identical W2 rows and base logits tie exactly: the certificate must refuse
    (c1 == c2) and the full pass returns the smaller id, as torch.argmax does."""
    V, b, k = 777, 1, 4
    head, embed, hidden, base, anchor = _setup(V, b, k, w2_scale=1.0, seed=3)
    with torch.no_grad():
        head.w2[600] = head.w2[10]
    base[..., [600, 10]] = 40.0  # (on DEV already)
    fused = FusedRollout(head, embed.weight, block_v=BLOCK_V)
    with torch.no_grad():
        ref, _ = reference_rollout(head, embed, hidden, base, anchor)
    tokens, fallbacks = fused.topk_rollout(hidden, base, anchor, k_cand=8)
    assert torch.equal(tokens, ref) and bool((ref[:, 1:] == 10).all())
    assert int(fallbacks) == b * (k - 1)


def test_traffic_model_qwen3_8b():
    kw = dict(H=4096, V=151936, E=256, G=1024, k=16, P=1)
    full = traffic_per_block(**kw, mode="fused")
    topk = traffic_per_block(**kw, mode="topk", k_cand=64)
    assert full.per_step["w2"] == 151936 * 256 * 2  # 77.8 MB of bf16 W2 per correction step
    assert topk.per_step["w2_candidate_rows"] == 64 * 256 * 2  # 32 KiB
    assert topk.total < full.total / 5


# ---- CUDA graph --------------------------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
def test_cuda_graph_rollout_raises_without_cuda():
    head, embed, *_ = _setup(777, 1, 4)
    fused = FusedRollout.__new__(FusedRollout)  # no kernels needed to reach the check
    fused.device = torch.device("cpu")
    with pytest.raises(RuntimeError, match="CUDA"):
        CudaGraphRollout(fused, batch=1, steps=4)


@pytest.mark.skipif(not GPU_TRITON, reason="needs CUDA and compiled Triton (run with TRITON_INTERPRET=0)")
@pytest.mark.parametrize("b", [1, 2])
def test_cuda_graph_matches_fused(b):
    V, k = 4099, 6
    head, embed, hidden, base, anchor = _setup(V, b, k, seed=21)
    head, embed = head.cuda(), embed.cuda()
    hidden, base, anchor = hidden.cuda(), base.cuda(), anchor.cuda()
    fused = FusedRollout(head, embed.weight, block_v=512)
    with torch.no_grad():
        ref, _ = reference_rollout(head, embed, hidden, base, anchor)
    eager = fused.rollout(hidden, base, anchor)
    graph = CudaGraphRollout(fused, batch=b, steps=k, hidden_dtype=torch.float32, logits_dtype=torch.float32)
    assert torch.equal(graph.rollout(hidden, base, anchor), eager)
    assert torch.equal(eager, ref)
    hidden2 = torch.randn_like(hidden)  # replay with new inputs
    assert torch.equal(graph.rollout(hidden2, base, anchor), fused.rollout(hidden2, base, anchor))
    topk = CudaGraphRollout(fused, batch=b, steps=k, k_cand=64, hidden_dtype=torch.float32,
                            logits_dtype=torch.float32)
    assert torch.equal(topk.rollout(hidden, base, anchor), eager)
    assert topk.last_fallbacks is not None
