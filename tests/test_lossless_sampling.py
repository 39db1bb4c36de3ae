"""T>0: the output distribution of speculative decoding equals the target's.

Two levels, both with fixed seeds (deterministic):
  * the chain verifier's accept rule on synthetic p / q, 200k rows at once - the first emitted
    token must be distributed exactly as p_1 (chi-square), for a q that differs from p, for a
    deterministic (one-hot) drafter, and with top-k / top-p warping;
  * end to end on a tiny target with vocab 4: the joint law of the first 4 generated tokens,
    enumerated exactly from the target, against many seeded spec-decoding runs with a draft
    model whose q differs from p.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from tiny import tiny_qwen3_config, tiny_target

from specforge_core.interfaces import Candidates
from specforge_core.registry import default_registry
from specforge_core.sampling import Sampler, SamplingParams
from specforge_core.scheduler import SpeculativeGenerator
from specforge_dflare.plugin import DFlareDrafter
from specforge_dflash.drafter import DFlashDrafter, DFlashOptions
from specforge_draftmodel.drafter import DraftModelDrafter, DraftModelOptions
from specforge_ngram.drafter import NgramDrafter, NgramOptions


def chi_square_pvalue(counts: torch.Tensor, probs: torch.Tensor, min_expected: float = 5.0) -> float:
    """Pearson chi-square goodness of fit; cells with small expectation are pooled."""
    n = counts.sum()
    expected = probs.double() * n
    big = expected >= min_expected
    obs = torch.cat([counts[big].double(), counts[~big].double().sum()[None]])
    exp = torch.cat([expected[big], expected[~big].sum()[None]])
    keep = exp > 0
    obs, exp = obs[keep], exp[keep]
    stat = ((obs - exp) ** 2 / exp).sum()
    dof = obs.numel() - 1
    return float(torch.special.gammaincc(torch.tensor(dof / 2.0, dtype=torch.float64), stat / 2))


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


def exact_joint(target, prompt: torch.Tensor, steps: int, sampler: Sampler) -> torch.Tensor:
    """P(x_1..x_steps) under the warped target, by enumerating every sequence: [V ** steps]."""
    vocab = target.vocab_size
    seqs = torch.tensor(list(itertools.product(range(vocab), repeat=steps)))  # [V^s, s]
    ids = torch.cat([prompt.expand(len(seqs), -1), seqs], 1)
    with torch.inference_mode():
        logits = target.model(ids).logits[:, prompt.shape[1] - 1 : -1]  # [V^s, s, V]
    p = sampler.probs(logits)
    return p.gather(-1, seqs[..., None]).squeeze(-1).prod(-1)


def sample_law(gen, target, prompt, steps: int, temperature: float, n_samples: int):
    """Run ``n_samples`` seeded generations; return (chi-square p-value of the joint law of the
    ``steps`` tokens against the exact target law, drafted tokens, accepted tokens)."""
    vocab = target.vocab_size
    p = exact_joint(target, prompt, steps, Sampler(SamplingParams(temperature=temperature)))
    counts = torch.zeros(vocab ** steps, dtype=torch.long)
    drafted = accepted = 0
    for seed in range(n_samples):
        out = gen.generate(prompt, steps, SamplingParams(temperature=temperature, seed=seed))
        idx = 0
        for t in out.tokens:
            idx = idx * vocab + t
        counts[idx] += 1
        drafted += sum(c.num_drafted for c in out.cycles)
        accepted += sum(c.num_accepted for c in out.cycles)
    return chi_square_pvalue(counts, p), drafted, accepted


@pytest.mark.parametrize("drafter_kind,rule", [("draft_model", "residual"), ("ngram", "residual"),
                                               ("dflash", "residual"), ("dflare", "residual"), ("dflash", "match")])
def test_end_to_end_distribution(drafter_kind, rule):
    vocab, steps, n_samples = 4, 4, 3000
    target = tiny_target(seed=5, vocab=vocab, hidden=32, init_range=0.6)
    if drafter_kind == "draft_model":
        drafter = DraftModelDrafter(DraftModelOptions(config=tiny_qwen3_config(vocab=vocab, hidden=32, init_range=0.6),
                                                      init_seed=11), block_size=3)
    elif drafter_kind in ("dflash", "dflare"):
        cls = DFlareDrafter if drafter_kind == "dflare" else DFlashDrafter
        drafter = cls(DFlashOptions(config={"num_hidden_layers": 1, "target_layer_ids": [1], "mask_token_id": 3,
                                            "initializer_range": 0.5}, init_seed=2), block_size=3)
    else:
        drafter = NgramDrafter(NgramOptions(max_ngram=2, min_ngram=1), block_size=3)
    drafter.bind(target)
    gen = SpeculativeGenerator(target, drafter, chain_verifier(rule))
    pvalue, drafted, accepted = sample_law(gen, target, torch.tensor([[0, 1, 2, 3, 0, 1]]), steps, 0.9, n_samples)
    assert 0 < accepted < drafted  # both the accept and the residual paths were exercised
    assert pvalue > 1e-3
