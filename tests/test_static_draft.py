"""The DFlash / DFlare block forward on fixed buffers (plugins/specforge_dflash/static_draft.py,
issue 17): on a CPU the padded forward runs eagerly and must draft exactly what the DynamicCache
path drafts - same tokens, same acceptance per cycle - with and without a corrector, through long
prompts (an unpadded chunk) and a buffer that has to grow. On CUDA the same code is graph-replayed
(scripts/gpu_check.py times it)."""

from __future__ import annotations

import pytest
import torch
from tiny import tiny_target

from specforge_core.sampling import SamplingParams
from specforge_core.scheduler import SpeculativeGenerator
from specforge_dflare.plugin import DFlareDrafter
from specforge_dflash import static_draft
from specforge_dflash.drafter import DFlashDrafter, DFlashOptions
from specforge_verify.chain import ChainOptions, ChainVerifier


def drafter(cls, target, graphs):
    d = cls(DFlashOptions(config={"num_hidden_layers": 2, "initializer_range": 0.3}, init_seed=1,
                          cuda_graphs=graphs), block_size=5)
    d.bind(target)
    return d


@pytest.mark.parametrize("cls", [DFlashDrafter, DFlareDrafter])
@pytest.mark.parametrize("prompt_len", [9, 80])  # 80 > the largest context bucket: the first chunk runs unpadded
def test_static_draft_drafts_what_the_dynamic_cache_drafts(cls, prompt_len):
    """A random drafter is rarely accepted, so the check is on the drafts themselves: every cycle's
    block logits, on the same committed tokens (T=0 output identical to greedy either way)."""
    target = tiny_target(seed=2, vocab=96)
    prompt = torch.randint(0, 96, (1, prompt_len), generator=torch.Generator().manual_seed(prompt_len))
    runs, blocks = {}, {}
    for graphs in (False, True):
        d = drafter(cls, target, graphs)
        assert (d.static is not None) == graphs
        seen = blocks[graphs] = []
        original = d.draft

        def recording(ctx, original=original, seen=seen):
            block = original(ctx)
            seen.append(block.logits().clone())
            return block

        d.draft = recording
        gen = SpeculativeGenerator(target, d, ChainVerifier(ChainOptions()))
        runs[graphs] = gen.generate(prompt, 40, SamplingParams(temperature=0.0))
    assert runs[True].tokens == runs[False].tokens == target.greedy_reference(prompt, 40)[0].tolist()
    assert len(blocks[True]) == len(blocks[False]) > 10
    for a, b in zip(blocks[True], blocks[False]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
        assert torch.equal(a.argmax(-1), b.argmax(-1))


def test_the_buffer_grows_and_sampling_matches(monkeypatch):
    monkeypatch.setattr(static_draft, "MIN_CAPACITY", 24)
    monkeypatch.setattr(static_draft, "HEADROOM", 4)
    target = tiny_target(seed=2, vocab=96)
    prompt = torch.randint(0, 96, (1, 12), generator=torch.Generator().manual_seed(0))
    out = {}
    for graphs in (False, True):
        d = drafter(DFlashDrafter, target, graphs)
        gen = SpeculativeGenerator(target, d, ChainVerifier(ChainOptions()))
        out[graphs] = gen.generate(prompt, 48, SamplingParams(temperature=0.8, seed=3))
        if graphs:
            assert d.static.cache.capacity > 24  # grew past its first size
    assert out[True].tokens == out[False].tokens  # same drafts -> same seeded sampling path
