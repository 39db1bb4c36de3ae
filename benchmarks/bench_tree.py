"""Tree verifier hot path at Qwen3 vocabulary size: build (best-first heap over marginals) +
ancestor mask + acceptance walk, budget 64, vocab 151936, block 16.

    python -m pytest benchmarks/bench_tree.py --benchmark-enable
"""

import torch

from specforge_core.interfaces import DraftBlock
from specforge_core.sampling import Sampler, SamplingParams
from specforge_verify.tree import TreeOptions, TreeVerifier

V, K, BUDGET = 151936, 16, 64


def _inputs():
    g = torch.Generator().manual_seed(0)
    logits = 4 * torch.randn(1, K, V, generator=g)
    target_logits = 4 * torch.randn(1, BUDGET + 1, V, generator=g)
    return DraftBlock(hidden=torch.zeros(1, K, 8), base_logits=logits, anchor=torch.tensor([0])), target_logits


def test_tree_build_mask_accept(benchmark):
    block, target_logits = _inputs()
    verifier = TreeVerifier(TreeOptions(budget=BUDGET, topk=4))
    sampler = Sampler(SamplingParams())

    def cycle():
        with torch.inference_mode():
            cands = verifier.propose_block(block, None, sampler)
            return verifier.accept(cands, target_logits[:, : cands.num_nodes + 1], sampler)

    out = benchmark(cycle)
    assert out.tokens.shape[1] >= 1
    benchmark.extra_info.update(budget=BUDGET, vocab=V, block=K)
