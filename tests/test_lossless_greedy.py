"""T=0: speculative output == plain greedy decoding (transformers' generate), token for token,
for every drafter x verifier combination, across prompts, seeds, budgets and block sizes."""

from __future__ import annotations

import pytest
import torch
from tiny import tiny_qwen3_config, tiny_target

from specforge_core.errors import InputError
from specforge_core.registry import default_registry
from specforge_core.sampling import SamplingParams
from specforge_core.scheduler import SpeculativeGenerator
from specforge_dflare.plugin import DFlareDrafter
from specforge_dflash.drafter import DFlashDrafter, DFlashOptions
from specforge_draftmodel.drafter import DraftModelDrafter, DraftModelOptions
from specforge_ngram.drafter import NgramDrafter, NgramOptions

GREEDY = SamplingParams(temperature=0.0)


def make_drafter(kind: str, block_size: int, target):
    if kind == "ngram":
        d = NgramDrafter(NgramOptions(max_ngram=3, min_ngram=1), block_size)
    elif kind == "draft_model_same":  # same weights as the target: every draft is accepted
        d = DraftModelDrafter(DraftModelOptions(config=tiny_qwen3_config(), init_seed=target.seed), block_size)
    elif kind == "draft_model_other":  # a different model: a mix of accepts and rejects
        d = DraftModelDrafter(DraftModelOptions(config=tiny_qwen3_config(), init_seed=target.seed + 100), block_size)
    elif kind in ("dflash", "dflare"):  # untrained block drafters (random weights)
        cls = DFlareDrafter if kind == "dflare" else DFlashDrafter
        d = cls(DFlashOptions(config={"num_hidden_layers": 2, "target_layer_ids": [0, 1],
                                      "initializer_range": 0.2}, init_seed=target.seed), block_size)
    else:
        raise ValueError(kind)
    d.bind(target)
    return d


def verifiers():
    reg = default_registry()
    return [reg.get("verifier", name).cls for name in reg.names("verifier")]


def prompt(seed: int, length: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.randint(0, 96, (max(1, length // 2),), generator=g)
    return torch.cat([base, base])[:length][None]  # some repetition for the n-gram drafter


@pytest.fixture(scope="module", params=[0, 1])
def target(request):
    t = tiny_target(seed=request.param)
    t.seed = request.param
    return t


DRAFTERS = ["ngram", "draft_model_same", "draft_model_other", "dflash", "dflare"]


@pytest.mark.parametrize("drafter_kind", DRAFTERS)
@pytest.mark.parametrize("block_size", [1, 4, 8])
@pytest.mark.parametrize("verifier_cls", verifiers(), ids=lambda c: c.__name__)
def test_greedy_identical_to_ar(target, drafter_kind, block_size, verifier_cls):
    drafter = make_drafter(drafter_kind, block_size, target)
    gen = SpeculativeGenerator(target, drafter, verifier_cls(verifier_cls.Options()))
    accepted_any = False
    for i, (length, max_new) in enumerate([(5, 37), (12, 20), (1, 9), (30, 1), (8, 2)]):
        ids = prompt(100 * target.seed + i, length)
        ref = target.greedy_reference(ids, max_new)[0].tolist()
        out = gen.generate(ids, max_new, GREEDY)
        assert out.tokens == ref, f"prompt {i}: spec {out.tokens} != AR {ref}"
        assert len(out.tokens) == max_new  # no stop tokens: exactly the budget, even mid-block
        accepted_any |= any(c.num_accepted > 0 for c in out.cycles)
    if drafter_kind == "draft_model_same" and block_size > 1:
        assert accepted_any  # the perfect drafter must actually exercise multi-token commits


@pytest.mark.parametrize("drafter_kind", DRAFTERS)
def test_stop_token_mid_block(target, drafter_kind):
    """A stop token inside an accepted block ends generation right after it, like generate()."""
    drafter = make_drafter(drafter_kind, 8, target)
    gen = SpeculativeGenerator(target, drafter, verifiers()[0](None))
    ids = prompt(7 + target.seed, 10)
    free = target.greedy_reference(ids, 40)[0].tolist()
    for pos in (3, 11, 25):  # use a token the model really emits as the stop token
        stop = free[pos]
        ref = target.greedy_reference(ids, 40, [stop])[0].tolist()
        out = gen.generate(ids, 40, GREEDY, stop_token_ids=[stop])
        assert out.tokens == ref
        assert out.tokens[-1] == stop and stop not in out.tokens[:-1]
        assert out.stopped


def test_perfect_drafter_commits_whole_blocks():
    """With the target itself as drafter every cycle accepts all drafts: tau == block + 1."""
    target = tiny_target(seed=3)
    target.seed = 3
    drafter = make_drafter("draft_model_same", 4, target)
    gen = SpeculativeGenerator(target, drafter, verifiers()[0](None))
    out = gen.generate(prompt(1, 6), 1 + 5 * 5, GREEDY)  # 1 from prefill + 5 cycles of 4 + bonus
    assert [c.num_accepted for c in out.cycles] == [4] * 5
    assert out.tau == 5.0


@pytest.mark.parametrize("drafter_kind", ["draft_model_same", "dflash"])
@pytest.mark.parametrize("verifier_cls", verifiers(), ids=lambda c: c.__name__)
def test_num_speculative_tokens_caps_the_verified_drafts(target, drafter_kind, verifier_cls):
    """An 8-token block of which only the first 3 drafts are verified: still identical to AR,
    never more than 3 drafts per forward, and the perfect drafter commits 3 + bonus per cycle."""
    drafter = make_drafter(drafter_kind, 8, target)
    gen = SpeculativeGenerator(target, drafter, verifier_cls(verifier_cls.Options()), num_speculative_tokens=3)
    ids = prompt(40 + target.seed, 9)
    out = gen.generate(ids, 30, GREEDY)
    assert out.tokens == target.greedy_reference(ids, 30)[0].tolist()
    if verifier_cls.__name__ == "ChainVerifier":  # a tree may branch: more nodes, but still depth <= 3
        assert max(c.num_drafted for c in out.cycles) <= 3
    assert max(c.num_accepted for c in out.cycles) <= 3
    if drafter_kind == "draft_model_same":
        assert out.cycles[0].num_accepted == 3


def test_bad_requests(target):
    gen = SpeculativeGenerator(target, make_drafter("ngram", 4, target), verifiers()[0](None))
    with pytest.raises(InputError, match="empty"):
        gen.generate(torch.zeros(1, 0, dtype=torch.long), 5, GREEDY)
    with pytest.raises(InputError, match="max_new_tokens"):
        gen.generate(prompt(0, 4), 0, GREEDY)
    with pytest.raises(InputError, match="context window of 512"):
        gen.generate(prompt(0, 500), 20, GREEDY)
