"""The oracle drafter (measurement only): T=0 lossless; full acceptance gives tau = block + 1;
a cut at accept_len gives tau = accept_len + 1; it decodes again when the committed tokens leave
its continuation; bad options are one-line recipe errors."""

from __future__ import annotations

import pytest
import torch
from tiny import tiny_qwen3_config, tiny_target

from specforge_core.errors import RecipeError
from specforge_core.recipe import load_recipe
from specforge_core.sampling import SamplingParams
from specforge_core.scheduler import SpeculativeGenerator
from specforge_oracle.drafter import OracleDrafter, OracleOptions
from specforge_verify.chain import ChainOptions, ChainVerifier

GREEDY = SamplingParams(temperature=0.0)
PROMPT = torch.tensor([[5, 17, 3, 44, 9, 60, 2]])


@pytest.fixture(scope="module")
def target():
    return tiny_target(seed=3)


@pytest.fixture(scope="module")
def greedy(target):
    """The ground truth, decoded once: greedy continuations are prefixes of one another."""
    return target.greedy_reference(PROMPT, 26)[0].tolist()


def oracle(target, block, **opts):
    d = OracleDrafter(OracleOptions(**opts), block)
    d.bind(target)
    return d


def run(target, drafter, max_new, sampling=GREEDY):
    gen = SpeculativeGenerator(target, drafter, ChainVerifier(ChainOptions()))
    return gen.generate(PROMPT, max_new, sampling)


@pytest.mark.parametrize("prepared", [True, False])  # precomputed, or decoded lazily at the first draft
def test_full_acceptance_tau_is_block_plus_one(target, greedy, prepared):
    block, cycles = 4, 5
    max_new = 1 + cycles * (block + 1)  # the prefill's token, then full blocks + bonus
    d = oracle(target, block)
    if prepared:
        d.follow(torch.cat([PROMPT, torch.tensor([greedy[:max_new]])], 1))
    out = run(target, d, max_new)
    assert out.tokens == greedy[:max_new]
    assert [c.num_accepted for c in out.cycles] == [block] * cycles
    assert out.tau == block + 1


@pytest.mark.parametrize("accept_len", [0, 2])
def test_cut_acceptance_tau_is_accept_len_plus_one(target, greedy, accept_len):
    block, cycles = 4, 6
    max_new = 1 + cycles * (accept_len + 1)
    d = oracle(target, block, accept_len=accept_len, check=False)
    d.follow(torch.cat([PROMPT, torch.tensor([greedy[:max_new]])], 1))
    out = run(target, d, max_new)
    assert out.tokens == greedy[:max_new]
    assert [c.num_accepted for c in out.cycles] == [accept_len] * cycles
    # every verify forward still runs over the whole block (the budget cuts only the last ones)
    assert out.cycles[0].num_drafted == block
    assert out.tau == accept_len + 1


def test_decodes_again_when_off_track(target, greedy):
    """A continuation of another prompt: check=True notices at the first draft and re-decodes."""
    max_new = 16
    d = oracle(target, 3)
    d.follow(torch.arange(40)[None] % 7)
    out = run(target, d, max_new)
    assert out.tokens == greedy[:max_new]
    assert all(c.num_accepted == c.num_drafted for c in out.cycles)


def test_runs_at_t_above_zero(target, greedy):
    """Deterministic drafts (probs=None) go through speculative sampling like the n-gram's."""
    d = oracle(target, 4, check=False)
    d.follow(torch.cat([PROMPT, torch.tensor([greedy])], 1))
    out = run(target, d, 12, SamplingParams(temperature=0.9, seed=1))
    assert len(out.tokens) == 12


def test_recipe_resolves_oracle_and_rejects_bad_options():
    base = {"target": {"config": tiny_qwen3_config(), "tokenizer": "bytes"}}
    r = load_recipe(None, ["drafter.name=oracle", "drafter.options.accept_len=3", "drafter.options.check=false"],
                    base=base)
    assert r.drafter_cls is OracleDrafter and r.drafter_options.accept_len == 3
    with pytest.raises(RecipeError, match="accept_len"):
        load_recipe(None, ["drafter.name=oracle", "drafter.options.accept_len=-1"], base=base)
    with pytest.raises(RecipeError, match="no weights"):
        OracleDrafter(OracleOptions(), 4, checkpoint="somewhere")
