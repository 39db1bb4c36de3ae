"""T>0: the output distribution of speculative decoding equals the target's.

Two levels, both with fixed seeds (deterministic):
  * the chain verifier's accept rule on synthetic p / q, 200k rows at once - the first emitted
    token must be distributed exactly as p_1 (chi-square), for a q that differs from p, for a
    deterministic (one-hot) drafter, and with top-k / top-p warping;
  * end to end on a tiny target with vocab 4: the joint law of the first 4 generated tokens,
    enumerated exactly from the target, against many seeded spec-decoding runs with a draft
    model whose q differs from p (tests/lawcheck.py); for the block drafters the test also
    checks that q is far from p and that the same check rejects a deliberately wrong q.
"""

from __future__ import annotations

import pytest
import torch
from lawcheck import (PROMPT, STEPS, TEMPERATURE, chi_square_pvalue, law_drafter, law_target, q_gaps, sample_law,
                      tempered_q_drafter)
from tiny import tiny_qwen3_config

from specforge_core.interfaces import Candidates
from specforge_core.registry import default_registry
from specforge_core.sampling import Sampler, SamplingParams
from specforge_core.scheduler import SpeculativeGenerator
from specforge_dflare.plugin import DFlareDrafter
from specforge_dflash.drafter import DFlashDrafter
from specforge_draftmodel.drafter import DraftModelDrafter, DraftModelOptions
from specforge_ngram.drafter import NgramDrafter, NgramOptions


def chain_verifier(rule: str = "residual"):
    cls = default_registry().get("verifier", "chain").cls
    return cls(cls.Options(rule=rule))


@pytest.mark.parametrize("warp", [dict(temperature=1.0), dict(temperature=0.7, top_k=5), dict(temperature=1.3, top_p=0.8)])
@pytest.mark.parametrize("deterministic_draft", [False, True])
def test_accept_rule_is_exact(warp, deterministic_draft):
    rows, k, vocab = 200_000, 3, 7
    g = torch.Generator().manual_seed(0)
    sampler = Sampler(SamplingParams(seed=1, **warp))
    target_logits = (2 * torch.randn(1, k + 1, vocab, generator=g)).expand(rows, -1, -1)  # [rows, k+1, V]
    draft_logits = 2 * torch.randn(1, k, vocab, generator=g)  # a different distribution q
    q = sampler.probs(draft_logits).expand(rows, -1, -1)  # [rows, k, V]
    drafts = sampler.sample_from_probs(q)  # [rows, k]
    probs = None if deterministic_draft else q
    if deterministic_draft:  # a deterministic drafter proposes the same block every time
        drafts = drafts[:1].expand(rows, -1).contiguous()
    n = drafts.shape[1]
    cands = Candidates(tokens=drafts, probs=probs, parents=torch.arange(n) - 1, depths=torch.arange(n) + 1)
    acc = chain_verifier().accept(cands, target_logits, sampler)
    p = sampler.probs(target_logits[:1])[0]  # [k+1, V]
    first = acc.tokens[:, 0]
    counts = torch.bincount(first, minlength=vocab)
    assert chi_square_pvalue(counts, p[0]) > 1e-3
    # second token, given the first was accepted: p_2 does not depend on the prefix here
    second_rows = acc.num_accepted >= 1
    if second_rows.sum() > 1000:
        counts2 = torch.bincount(acc.tokens[second_rows, 1], minlength=vocab)
        assert chi_square_pvalue(counts2, p[1]) > 1e-3
    # and the test has power: the drafts themselves (q) are far from p
    assert chi_square_pvalue(torch.bincount(drafts[:, 0], minlength=vocab), p[0]) < 1e-6


def test_chi_square_detects_a_biased_rule():
    """Guard on the test itself: 'accept whenever the draft equals a target sample' drawn from
    q-biased drafts is caught by the same statistic when the residual is skipped."""
    rows, vocab = 200_000, 7
    g = torch.Generator().manual_seed(0)
    sampler = Sampler(SamplingParams(temperature=1.0, seed=1))
    p = sampler.probs(2 * torch.randn(vocab, generator=g))
    q = sampler.probs(2 * torch.randn(vocab, generator=g))
    drafts = torch.multinomial(q, rows, replacement=True, generator=g)
    u = torch.rand(rows, generator=g)
    accept = u * q[drafts] < p[drafts]
    wrong = torch.where(accept, drafts, torch.multinomial(p, rows, replacement=True, generator=g))  # no residual
    assert chi_square_pvalue(torch.bincount(wrong, minlength=vocab), p) < 1e-6


@pytest.mark.parametrize("drafter_kind,rule", [("draft_model", "residual"), ("ngram", "residual"),
                                               ("dflash", "residual"), ("dflare", "residual"), ("dflash", "match")])
def test_end_to_end_distribution(drafter_kind, rule):
    n_samples = 3000
    target = law_target()
    if drafter_kind == "draft_model":
        drafter = DraftModelDrafter(DraftModelOptions(config=tiny_qwen3_config(vocab=target.vocab_size, hidden=32,
                                                                               init_range=0.6), init_seed=11), block_size=3)
        drafter.bind(target)
    elif drafter_kind in ("dflash", "dflare"):
        drafter = law_drafter(target, DFlareDrafter if drafter_kind == "dflare" else DFlashDrafter)
        gaps = q_gaps(target, drafter)  # per block position
        assert (gaps["p"] >= 0.1).all(), gaps  # q is far from p: the residual path matters
        assert (gaps["sharp"] >= 0.1).all(), gaps  # q is spread out: a sharpened q is a different q
    else:
        drafter = NgramDrafter(NgramOptions(max_ngram=2, min_ngram=1), block_size=3)
        drafter.bind(target)
    gen = SpeculativeGenerator(target, drafter, chain_verifier(rule))
    pvalue, drafted, accepted = sample_law(gen, target, PROMPT, STEPS, TEMPERATURE, n_samples)
    assert 0 < accepted < drafted  # both the accept and the residual paths were exercised
    assert pvalue > 1e-3


@pytest.mark.parametrize("drafter_kind", ["dflash", "dflare"])
def test_end_to_end_law_rejects_a_wrong_q(drafter_kind):
    """Guard on the test above: the same drafter sampling its tokens from q but reporting a
    sharpened q (warped at half the temperature) to the verifier is caught by the same check,
    with a sixth of its samples."""
    target = law_target()
    cls = DFlareDrafter if drafter_kind == "dflare" else DFlashDrafter
    gen = SpeculativeGenerator(target, law_drafter(target, tempered_q_drafter(cls)), chain_verifier())
    pvalue, _, accepted = sample_law(gen, target, PROMPT, STEPS, TEMPERATURE, 500)
    assert accepted > 0
    assert pvalue < 1e-6
