"""The verify-length policies (issue 15): ``verifier.length: fixed | confidence``.

* the confidence policy's choice: the expected-tokens-per-second optimum over n = 0..limit;
* lossless: T=0 token-identical to greedy decoding (chain and tree, with and without Domino) and
  the T>0 law check (chain, chain + Domino, tree + Domino) with a policy whose choice varies;
* the mutation the law check must catch: a policy that reads a sequential drafter's *sampled*
  tokens at T>0 (it pretends T=0), so the length it picks depends on the draws;
* bad input: one-line errors before decoding.
"""

from __future__ import annotations

import logging
from collections import Counter

import pytest
import torch
from lawcheck import PROMPT, STEPS, TEMPERATURE, law_domino, law_drafter, law_target, sample_law
from tiny import tiny_qwen3_config, tiny_target

from specforge_confidence.head import ConfidenceHead, save_head
from specforge_confidence.policy import ConfidenceOptions, ConfidencePolicy
from specforge_core.build import build_pipeline
from specforge_core.errors import IncompatibleError, RecipeError
from specforge_core.interfaces import DraftBlock
from specforge_core.recipe import load_recipe
from specforge_core.sampling import SamplingParams
from specforge_core.scheduler import SpeculativeGenerator
from specforge_draftmodel.drafter import DraftModelDrafter, DraftModelOptions
from specforge_verify.chain import ChainOptions, ChainVerifier
from specforge_verify.tree import TreeOptions, TreeVerifier

# a verify-cost curve where one more row costs 30% of a decode step: worth it only for a likely draft
SLOPED = {1: 1.0, 2: 1.3, 3: 1.6, 4: 1.9, 8: 3.1}


def policy(curve=SLOPED, **kw) -> ConfidencePolicy:
    p = ConfidencePolicy(ConfidenceOptions(draft_ms=0.0, **kw))
    p.curve = dict(curve)  # the test's cost curve instead of a measured one
    return p


def block_with_confidence(c: list, vocab: int = 32) -> DraftBlock:
    """A parallel block whose position j has top probability c[j] (base logits [1, k, V])."""
    logits = torch.zeros(1, len(c), vocab)
    for j, cj in enumerate(c):  # e^l / (e^l + V - 1) = c
        logits[0, j, 0] = torch.log(torch.tensor(cj * (vocab - 1) / (1 - cj)))
    return DraftBlock(base_logits=logits, anchor=torch.tensor([0]))


# ---- the choice --------------------------------------------------------------------------------
def test_choice_maximises_expected_tokens_per_second():
    p = policy()
    choice = p.choose(block_with_confidence([0.95, 0.9, 0.2, 0.9]), 4, True, 0.0)
    assert [round(x, 3) for x in choice.prefix_confidence] == [0.95, 0.855, 0.171, 0.154]
    # rates: n=0 1/1, n=1 1.95/1.3 = 1.5, n=2 2.805/1.6 = 1.75, n=3 2.976/1.9 = 1.57 -> n = 2
    assert choice.num_drafts == 2
    assert p.choose(block_with_confidence([0.95, 0.9, 0.2, 0.9]), 1, True, 0.0).num_drafts == 1  # the limit
    assert policy({1: 1.0, 2: 5.0, 4: 9.0}).choose(block_with_confidence([0.9, 0.9]), 2, True, 0.0).num_drafts == 0
    assert policy({1: 1.0, 8: 1.0}).choose(block_with_confidence([0.3, 0.3]), 2, True, 0.0).num_drafts == 2
    flat = policy(schedule=False).choose(block_with_confidence([0.3, 0.2]), 2, True, 0.0)
    assert flat.num_drafts == 2 and len(flat.prefix_confidence) == 2  # predict only


def test_head_estimates_and_draft_time():
    head = ConfidenceHead(8)
    with torch.no_grad():
        head.proj.weight.fill_(0.0)
        head.proj.bias.fill_(2.0)  # sigmoid(2) = 0.881 at every position
    p = ConfidencePolicy(ConfidenceOptions())
    p.head, p.curve = head, {1: 1.0, 8: 8.0}  # every row costs a decode step: no draft pays for itself
    block = DraftBlock(hidden=torch.randn(1, 3, 8), base_logits=torch.zeros(1, 3, 4), anchor=torch.tensor([0]))
    c = p.step_confidence(block, 3, greedy=False)
    assert torch.allclose(c, torch.full((3,), 0.8808), atol=1e-4)
    assert p.choose(block, 3, False, draft_s=0.0).num_drafts == 0
    # a slow drafter makes the (sunk) draft cost dominate: verifying more rows then pays
    assert p.choose(block, 3, False, draft_s=50.0).num_drafts == 3


def test_the_correctors_time_per_draft_is_learned_from_the_cycles():
    from specforge_core.scheduler import CycleStats

    p = ConfidencePolicy(ConfidenceOptions())
    p.curve = {1: 1.0, 8: 1.0}  # rows cost nothing extra: only the per-draft rollout time can hold n back
    block = block_with_confidence([0.5, 0.5, 0.5])
    assert p.choose(block, 3, True, draft_s=0.0).num_drafts == 3
    for _ in range(30):  # a corrector taking 2 s per verified draft
        p.observe(CycleStats(num_drafted=3, num_accepted=1, propose_s=6.0, timed=True, num_positions=3))
    assert p.choose(block, 3, True, draft_s=0.0).num_drafts == 0


# ---- lossless ----------------------------------------------------------------------------------
BASE = {"target": {"config": tiny_qwen3_config(vocab=260), "init_seed": 3, "tokenizer": "bytes", "device": "cpu",
                   "num_threads": 1},
        "drafter": {"name": "dflash", "block_size": 5,
                    "options": {"config": {"num_hidden_layers": 1, "initializer_range": 0.5}}},
        "verifier": {"length": "confidence", "length_options": {"draft_ms": 0.0}}}


@pytest.mark.parametrize("verifier", ["chain", "tree"])
@pytest.mark.parametrize("corrector", ["none", "domino"])
def test_greedy_identical_and_the_length_varies(verifier, corrector):
    overrides = [f"verifier.name={verifier}", f"corrector.name={corrector}"]
    if corrector == "domino":
        overrides.append("corrector.options.config={gru_hidden_dim: 8, emb_dim: 8}")
    pipe = build_pipeline(load_recipe(None, overrides, base=BASE))
    gen = pipe.generator
    # cost grows with rows so that, with this drafter's spread-out q, some blocks get 0 drafts and some more
    gen.length_policy.curve = {1: 1.0, 2: 1.05, 3: 1.1, 4: 1.15, 5: 1.2, 8: 1.35}
    prompt = torch.tensor([[5, 17, 33, 5, 17, 33, 5, 17]])
    ref = pipe.target.greedy_reference(prompt, 40)[0].tolist()
    res = gen.generate(prompt, 40, SamplingParams(temperature=0.0))
    assert res.tokens == ref
    verified = Counter(c.num_positions for c in res.cycles)
    assert len(verified) >= 2, verified  # the policy did choose different lengths
    predicted = [c for c in res.cycles if c.prefix_confidence is not None]  # all but a last budget-0 cycle
    assert len(predicted) >= len(res.cycles) - 1
    assert all(len(c.prefix_confidence) == c.num_positions for c in predicted)


def test_measuring_the_cost_curve_leaves_the_request_intact(tmp_path, monkeypatch):
    """The curve is measured (the target runs on random rows) before the prefill, never between
    cycles, where it would overwrite the request's KV cache."""
    monkeypatch.setenv("SPECFORGE_CACHE", str(tmp_path))
    pipe = build_pipeline(load_recipe(None, [], base=BASE))
    assert pipe.generator.length_policy.curve is None
    prompt = torch.tensor([[98, 108, 117, 101, 32, 99, 97, 116]])
    res = pipe.generator.generate(prompt, 24, SamplingParams(temperature=0.0))
    assert pipe.generator.length_policy.curve is not None
    assert res.tokens == pipe.target.greedy_reference(prompt, 24)[0].tolist()


def _law_policy():
    # one more row costs a fifth of a decode step: with the law drafter's q (max ~0.4-0.7) the choice
    # moves between 0, 1 and 2 drafts from block to block
    return policy({1: 1.0, 2: 1.2, 3: 1.4, 4: 1.6})


@pytest.mark.parametrize("case", ["chain", "chain+domino", "tree+domino"])
def test_law_at_t_above_zero(case):
    target = law_target()
    drafter = law_drafter(target)
    corrector = law_domino(target, drafter) if "domino" in case else None
    verifier = TreeVerifier(TreeOptions(budget=4, topk=2)) if case.startswith("tree") else ChainVerifier(ChainOptions())
    pol = _law_policy()
    pol.bind(target)
    gen = SpeculativeGenerator(target, drafter, verifier, corrector, length_policy=pol)
    lengths = Counter()
    original = pol.choose

    def counting(block, limit, greedy, draft_s):
        choice = original(block, limit, greedy, draft_s)
        lengths[choice.num_drafts] += 1
        return choice

    pol.choose = counting
    pvalue, drafted, accepted = sample_law(gen, target, PROMPT, STEPS, TEMPERATURE, 2000)
    assert len(lengths) >= 2 and lengths[0] > 0, lengths  # varying lengths, plain decode steps included
    assert 0 < accepted < drafted
    assert pvalue > 1e-3


class PeekingPolicy(ConfidencePolicy):
    """Mutation: treats every request as T=0, so at T>0 it reads the sequential drafter's sampled
    tokens' q - the verified length then depends on the draws, which biases the output."""

    def choose(self, block, limit, greedy, draft_s):
        return super().choose(block, limit, True, draft_s)


def test_law_rejects_a_length_that_depends_on_the_sampled_drafts():
    target = law_target()
    drafter = DraftModelDrafter(DraftModelOptions(config=tiny_qwen3_config(vocab=target.vocab_size, hidden=32,
                                                                           init_range=0.6), init_seed=11), block_size=3)
    drafter.bind(target)
    for cls, expect_biased in ((PeekingPolicy, True), (ConfidencePolicy, False)):
        pol = cls(ConfidenceOptions(draft_ms=0.0))
        pol.curve = {1: 1.0, 2: 1.6, 3: 2.2, 4: 2.8}  # (slopes 0.2 / 0.3 / 0.6 / 0.8 gave p 8e-5 / 1e-4 / 3e-7 / 1e-3 at 1500)
        pol.bind(target)
        gen = SpeculativeGenerator(target, drafter, ChainVerifier(ChainOptions()), length_policy=pol)
        pvalue, drafted, _ = sample_law(gen, target, PROMPT, STEPS, TEMPERATURE, 3000 if expect_biased else 1500)
        if expect_biased:
            assert pvalue < 1e-6, pvalue
        else:  # the real policy has no lawful estimate here: it verifies every draft (and stays exact)
            assert pvalue > 1e-3 and drafted > 0


def test_fallbacks_say_so(caplog):
    pipe = build_pipeline(load_recipe(None, [], base={**BASE, "drafter": {"name": "ngram", "block_size": 4}}))
    with caplog.at_level(logging.WARNING, logger="specforge.confidence"):
        res = pipe.generator.generate(torch.tensor([[1, 2, 3, 1, 2, 3, 1, 2]]), 12)
    assert any("gives no probabilities" in r.message for r in caplog.records)
    assert all(c.prefix_confidence is None for c in res.cycles)


# ---- bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize("override,match", [
    ("verifier.length=sometimes", r"unknown length_policy 'sometimes' \(verifier.length\)"),
    ("verifier.length_options.estimator=vibes", "estimator must be one of"),
    ("verifier.length_options.estimator=head", "needs verifier.length_options.head"),
    ("verifier.length_options.colour=1", "verifier.length_options.colour"),
    ("verifier.length_options.head=/nonexistent", "not a confidence-head directory"),
])
def test_bad_recipe_values(override, match):
    with pytest.raises(RecipeError, match=match):
        load_recipe(None, [override], base=BASE)


def test_head_with_another_hidden_size_is_refused(tmp_path):
    save_head(ConfidenceHead(16), tmp_path / "head")
    with pytest.raises(IncompatibleError, match="hidden size 16.*64"):
        build_pipeline(load_recipe(None, [f"verifier.length_options.head={tmp_path / 'head'}"], base=BASE))
    (tmp_path / "head" / "model.safetensors").write_bytes(b"\x00" * 7)  # truncated
    with pytest.raises(RecipeError, match="cannot read"):
        load_recipe(None, [f"verifier.length_options.head={tmp_path / 'head'}"], base=BASE)


def test_head_round_trip(tmp_path):
    head = ConfidenceHead(64)
    save_head(head, tmp_path / "h")
    pipe = build_pipeline(load_recipe(None, [f"verifier.length_options.head={tmp_path / 'h'}"], base=BASE))
    loaded = pipe.generator.length_policy.head
    assert torch.equal(loaded.proj.weight, head.proj.weight.float())
    assert tiny_target is not None  # (tiny models only: nothing downloaded)


@pytest.mark.parametrize("extra", [[], ["corrector.name=markov", "corrector.options.config.markov_rank=16"]])
def test_smoke_bench_with_the_confidence_policy_is_lossless(tmp_path, extra):
    """issue 15's done-means: `specforge bench recipes/smoke.yaml drafter.name=dflash verifier.length=confidence`
    (and with a fresh Markov head) writes lossless: true, with the calibration of its predictions."""
    import json
    from pathlib import Path

    from specforge_core.cli import main

    smoke = Path(__file__).resolve().parents[1] / "recipes" / "smoke.yaml"
    out = tmp_path / "bench.json"
    assert main(["bench", str(smoke), "drafter.name=dflash", "verifier.length=confidence", *extra,
                 "prompts.limit=2", "generation.max_new_tokens=24", "--repeats", "1", "--json", str(out),
                 "--no-progress"]) == 0
    result = json.loads(out.read_text())
    assert result["lossless"] is True and result["method"].endswith("+chain+confidence")
    assert result["calibration"]["summary"]["count"] > 0
