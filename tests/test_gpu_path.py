"""GPU only (each test skips on a CPU, saying why; scripts/gpu_check.sh runs them on the device):

* Domino ``backend=auto`` on a bf16 CUDA target takes the fused Triton rollout with a bf16 ``gi``
  table inside a CUDA graph, and drafts the reference rollout's tokens (fast.py: the bf16 table can
  only differ on near-exact ties, which random tiny weights with a large correction do not produce);
* the whole loop on the static cache with CUDA graphs + Domino (auto) stays lossless at T=0, chain
  and tree, on an fp32 target (bf16 batched verify numerics may break a near-tie differently from
  one-row decoding, so the token-for-token check uses fp32).
"""

from __future__ import annotations

import os

import pytest
import torch
from test_domino import a_block, block_drafter
from tiny import tiny_model

from specforge_core.sampling import Sampler, SamplingParams
from specforge_core.scheduler import SpeculativeGenerator
from specforge_core.target import TargetModel
from specforge_domino.corrector import DominoCorrector, DominoOptions
from specforge_verify.chain import ChainOptions, ChainVerifier
from specforge_verify.tree import TreeOptions, TreeVerifier

try:
    import triton  # noqa: F401

    HAS_TRITON = True
except ImportError:
    HAS_TRITON = False

GPU = torch.cuda.is_available() and HAS_TRITON and os.environ.get("TRITON_INTERPRET") != "1"
pytestmark = pytest.mark.skipif(not GPU, reason="needs CUDA and compiled Triton (TRITON_INTERPRET unset)")
GREEDY = SamplingParams(temperature=0.0)


def corrector(target, drafter, backend: str, seed: int = 3) -> DominoCorrector:
    c = DominoCorrector(DominoOptions(backend=backend, init_seed=seed, config={
        "gru_hidden_dim": 24, "emb_dim": 16, "pure_draft_prefix_len": 1, "initializer_range": 0.2}))
    c.compatible_with(drafter)
    c.bind(target)
    g = torch.Generator().manual_seed(seed)  # a large correction, so the head really changes the drafts
    with torch.no_grad():
        w2 = c.head.embed_proj[2].weight
        w2.copy_(0.5 * torch.randn(w2.shape, generator=g).to(w2))
    return c


def test_domino_auto_takes_fused_bf16_table_in_a_cuda_graph():
    from specforge_domino.fast import CudaGraphRollout

    target = TargetModel(tiny_model(seed=3).to("cuda", torch.bfloat16))
    d = block_drafter(seed=3)
    d.bind(target)
    auto, ref = corrector(target, d, "auto"), corrector(target, d, "torch")
    block = a_block(target, d, torch.tensor([[2, 7, 1, 8, 2, 8]], device="cuda"))
    tokens, probs = auto.correct(block, Sampler(GREEDY, "cuda"))
    ref_tokens, _ = ref.correct(block, Sampler(GREEDY, "cuda"))
    fast = auto._fast
    assert fast.graph_cls is CudaGraphRollout and len(fast.graphs) == 1
    assert fast.fused.gi_table.dtype == torch.bfloat16
    assert probs is None and torch.equal(tokens, ref_tokens)


@pytest.mark.parametrize("tree", [False, True], ids=["chain", "tree"])
def test_static_cache_graphs_and_domino_are_lossless(tree):
    target = TargetModel(tiny_model(seed=4).to("cuda"))
    target.use_static_cache(cuda_graphs=True)
    d = block_drafter(seed=4)
    d.bind(target)
    verifier = TreeVerifier(TreeOptions(budget=12, topk=3)) if tree else ChainVerifier(ChainOptions())
    gen = SpeculativeGenerator(target, d, verifier, corrector(target, d, "auto", seed=4))
    for n, max_new in [(9, 40), (3, 12)]:
        prompt = torch.randint(0, 96, (1, n), generator=torch.Generator().manual_seed(n)).cuda()
        out = gen.generate(prompt, max_new, GREEDY)
        assert out.tokens == target.greedy_reference(prompt, max_new)[0].tolist()
    assert target.static.num_captures >= 1
