"""The corrector seam (issue 14), as a third-party author meets it:

* the request context: ``Corrector.reset()`` per request and ``block.context`` (the cycle's
  ``DraftContext``: committed tokens, sampler) wherever ``init_state`` runs (chain and tree);
* state is immutable: ``specforge_core.contracts.check_step_pure`` passes for every shipped
  corrector and catches one that modifies its state (Domino's old step);
* no plugin's name or key inside another plugin, the tree verifier or the core;
* checkpoint keys are split by ``Component.claims``; an unclaimed key is an error naming it;
* ``compatible_with`` is called once, after the drafter is bound;
* a sparse q (``SparseProbs``) keeps the chain and the tree lossless: T=0 identity, T>0 law, and
  mutations (dense base q reported, q renormalised wrongly, base q in the tree) rejected.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch
from lawcheck import (PROMPT, STEPS, TEMPERATURE, BaseQTree, SparseBaseQ, SparseTopK, SparseUniformQ, law_drafter,
                      law_target, q_gaps, sample_law)
from safetensors.torch import save_file
from test_domino import a_block, block_drafter, domino, write_domino_checkpoint
from tiny import tiny_target

from specforge_core.contracts import ContractError, check_step_pure
from specforge_core.errors import ModelLoadError
from specforge_core.interfaces import DraftContext, SparseProbs
from specforge_core.sampling import Sampler, SamplingParams
from specforge_core.scheduler import SpeculativeGenerator
from specforge_domino.corrector import DominoCorrector
from specforge_markov.corrector import MarkovCorrector, MarkovOptions
from specforge_verify.chain import ChainVerifier
from specforge_verify.tree import TreeOptions, TreeVerifier

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "recipes" / "smoke.yaml")
sys.path.insert(0, str(ROOT / "examples" / "specforge-seen"))  # the example, importable in-process
import specforge_seen  # noqa: E402


def seen_corrector(boost=3.0):
    return specforge_seen.SeenCorrector(specforge_seen.SeenOptions(boost=boost))


def sparse(target, K=4, **kw):
    c = SparseTopK(K=K, **kw)
    c.bind(target)
    return c


# ---- state is immutable ---------------------------------------------------------------------------
class MutatingDomino(DominoCorrector):
    """Domino's step as it was: the GRU state written into the caller's dict."""

    def step(self, state, i, prev_token):
        state["S"] = self.head.gru_cell(self.embed(prev_token).to(state["S"].dtype), state["S"])
        logits = state["base"][:, i].float()
        if i >= self.head.arch.pure_draft_prefix_len:
            logits = logits + self.head.correction(state["hidden"][:, i], state["S"]).float()
        return logits, state


def markov(target, d, kind):
    c = MarkovCorrector(MarkovOptions(config={"markov_rank": 8, "markov_head_type": kind, "init": "normal"}))
    c.compatible_with(d)
    c.bind(target)
    return c


@pytest.mark.parametrize("which", ["domino", "markov-vanilla", "markov-gated", "seen", "sparse"])
def test_shipped_correctors_never_modify_their_state(which):
    target = tiny_target(seed=0)
    d = block_drafter()
    d.bind(target)
    c = {"domino": lambda: domino(target, d), "markov-vanilla": lambda: markov(target, d, "vanilla"),
         "markov-gated": lambda: markov(target, d, "gated"), "seen": seen_corrector,
         "sparse": lambda: sparse(target)}[which]()
    prompt = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
    block = a_block(target, d, prompt)
    block.context = DraftContext(tokens=prompt, max_draft=16, sampler=Sampler(SamplingParams()))
    check_step_pure(c, block)


def test_a_corrector_modifying_its_state_is_caught():
    target = tiny_target(seed=0)
    d = block_drafter()
    d.bind(target)
    good = domino(target, d, P=0)
    bad = MutatingDomino(good.options)
    bad.compatible_with(d)
    bad.bind(target)
    bad.head.load_state_dict(good.head.state_dict())
    block = a_block(target, d, torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]]))
    with pytest.raises(ContractError, match="modified its state in place at position 0"):
        check_step_pure(bad, block)
    # why it matters: the tree steps every child from its parent's state, with no copy
    v = TreeVerifier(TreeOptions(budget=12, topk=3))
    trees = [v.propose_block(block, c, Sampler(SamplingParams())).tokens.tolist() for c in (good, bad)]
    assert trees[0] != trees[1]


def test_no_plugin_key_or_name_outside_its_plugin():
    """The core, the verifiers and the drafters name no corrector and list no corrector's keys."""
    keys = ("prefix_gru", "embed_proj", "logit_head", "markov_head")
    places = [ROOT / "specforge_core"] + [ROOT / "plugins" / p for p in
                                          ("specforge_verify", "specforge_dflash", "specforge_dflare", "specforge_confidence",
                                           "specforge_ngram", "specforge_oracle", "specforge_draftmodel")]
    for f in sorted(f for place in places for f in place.rglob("*.py")):
        text = f.read_text()
        for key in keys:
            assert key not in text, f"{f.relative_to(ROOT)} names another plugin's key {key!r}"
    verify = "".join(p.read_text() for p in (ROOT / "plugins" / "specforge_verify").glob("*.py"))
    assert not re.search(r"domino|markov", verify, re.I)


# ---- the request context ------------------------------------------------------------------------
def test_corrector_sees_the_committed_tokens_and_is_reset_per_request():
    """Through the engine (chain and tree): init_state gets block.context with every committed token,
    reset() runs before each request, and the example corrector stays exact at T=0."""
    target = tiny_target(seed=1)
    d = block_drafter(seed=1)
    d.bind(target)
    calls = []

    class Spy(specforge_seen.SeenCorrector):
        def reset(self):
            calls.append("reset")
            super().reset()

        def init_state(self, block):
            calls.append(block.context.tokens.clone())
            return super().init_state(block)

    c = Spy(specforge_seen.SeenOptions(boost=3.0))
    c.compatible_with(d)
    c.bind(target)
    for v in (ChainVerifier(), TreeVerifier(TreeOptions(budget=8, topk=2))):
        gen = SpeculativeGenerator(target, d, v, c)
        for prompt in (torch.tensor([[5, 6, 7, 5, 6, 7, 5]]), torch.tensor([[40, 41, 42, 43]])):
            calls.clear()
            out = gen.generate(prompt, 20, SamplingParams())
            assert out.tokens == target.greedy_reference(prompt, 20)[0].tolist()
            assert calls[0] == "reset" and len(calls) == 1 + sum(cy.num_positions > 0 for cy in out.cycles)
            committed = prompt[0].tolist() + out.tokens
            for n, seen in enumerate(calls[1:]):  # each cycle saw exactly the tokens committed before it
                assert seen[0].tolist() == committed[: seen.shape[1]]
            # the per-request set holds this request's tokens only (reset cleared the previous one)
            assert set(c.seen[0].nonzero()[:, 0].tolist()) == set(committed[: c.num_read])


def test_example_corrector_changes_the_drafts():
    """The boost really acts: on a repetitive prompt it drafts more of the committed tokens."""
    target = tiny_target(seed=1)
    d = block_drafter(seed=1)
    d.bind(target)
    prompt = torch.tensor([[5, 6, 7, 5, 6, 7, 5]])
    block = a_block(target, d, prompt)
    block.context = DraftContext(tokens=prompt, max_draft=16, sampler=Sampler(SamplingParams()))
    c = seen_corrector(boost=50.0)
    with torch.inference_mode():
        tokens, _ = c.correct(block, Sampler(SamplingParams()))
        base = block.logits().argmax(-1)
    assert set(tokens[0].tolist()) <= {5, 6, 7} and not torch.equal(tokens, base)


# ---- compatible_with once, keys claimed --------------------------------------------------------
def test_compatible_with_is_called_once_after_the_drafter_is_bound():
    from specforge_core.build import bind_parts

    target = tiny_target(seed=0)
    d = block_drafter()
    seen = []

    class Counting(specforge_seen.SeenCorrector):
        def compatible_with(self, drafter):
            seen.append(drafter.hidden_size)
            super().compatible_with(drafter)

    bind_parts(d, Counting(specforge_seen.SeenOptions()), target)
    assert seen == [64]  # once, and the drafter's documented hidden size was already final


def test_checkpoint_keys_are_split_by_claims(tmp_path):
    from specforge_core.checkpoint import split_keys, stored_keys
    from specforge_dflash.drafter import DFlashDrafter

    ckpt = write_domino_checkpoint(tmp_path / "dom", prefix="logit_head.")
    keys = stored_keys(ckpt)
    parts = split_keys(keys, {"drafter dflash": DFlashDrafter, "corrector domino": DominoCorrector}, where=str(ckpt))
    assert sorted(parts["corrector domino"]) == sorted(k for k in keys if k.startswith("logit_head."))
    assert parts["drafter dflash"] and not set(parts["drafter dflash"]) & set(parts["corrector domino"])
    # the drafter alone: the installed corrector's keys stay in the directory, unloaded
    alone = split_keys(keys, {"drafter dflash": DFlashDrafter}, {"corrector domino": DominoCorrector})
    assert sorted(alone["corrector domino"]) == sorted(parts["corrector domino"])
    save_file({"mystery.weight": torch.zeros(2), "model.other.bias": torch.zeros(1)}, str(ckpt / "z.safetensors"))
    with pytest.raises(ModelLoadError, match=r"2 key\(s\) no installed component claims: model.other.bias, "
                                             r"mystery.weight \(this recipe's parts: drafter dflash, corrector domino\)"):
        split_keys(stored_keys(ckpt), {"drafter dflash": DFlashDrafter, "corrector domino": DominoCorrector},
                   {"corrector markov": MarkovCorrector}, where=str(ckpt))


def test_a_drafter_without_claims_takes_the_leftover_keys():
    """A drafter written before ``claims`` existed still loads its checkpoint: it gets every key
    no other component claims (the corrector's keys still go to the corrector)."""
    from specforge_core.checkpoint import split_keys
    from specforge_core.interfaces import Drafter

    class Old(Drafter):
        def draft(self, ctx):
            raise NotImplementedError

    keys = ["w.weight", "prefix_gru.weight_hh_l0"]
    parts = split_keys(keys, {"drafter old": Old, "corrector domino": DominoCorrector})
    assert parts == {"drafter old": ["w.weight"], "corrector domino": ["prefix_gru.weight_hh_l0"]}


def test_build_refuses_a_checkpoint_with_unclaimed_keys(tmp_path):
    from specforge_core.build import build_pipeline
    from specforge_core.recipe import load_recipe

    ckpt = write_domino_checkpoint(tmp_path / "dom", vocab=320)  # smoke target: vocab 320
    overrides = ["drafter.name=dflash", f"drafter.checkpoint={ckpt}", "drafter.block_size=4", "corrector.name=domino"]
    build_pipeline(load_recipe(SMOKE, overrides))  # every key claimed: loads
    save_file({"stray.weight": torch.zeros(2)}, str(ckpt / "stray.safetensors"))
    with pytest.raises(ModelLoadError, match="no installed component claims: stray.weight"):
        build_pipeline(load_recipe(SMOKE, overrides))


# ---- sparse q -----------------------------------------------------------------------------------
def test_sparse_probs_dense_and_at():
    q = SparseProbs(torch.tensor([[[2, 0], [1, 3]]]), torch.tensor([[[0.75, 0.25], [1.0, 0.0]]]), 4)
    assert torch.equal(q.dense(), torch.tensor([[[0.25, 0, 0.75, 0], [0, 1.0, 0, 0]]]))
    assert torch.equal(q.at(torch.tensor([[0, 2]])), torch.tensor([[0.25, 0.0]]))
    assert torch.equal(q[:, :1].ids, q.ids[:, :1])


@pytest.mark.parametrize("verifier", ["chain", "tree", "tree-sampled"])
@pytest.mark.parametrize("seed", [0, 1])
def test_sparse_q_greedy_identical_to_ar(verifier, seed):
    target = tiny_target(seed=seed)
    d = block_drafter(seed=seed)
    d.bind(target)
    v = {"chain": ChainVerifier(), "tree": TreeVerifier(TreeOptions(budget=12, topk=3)),
         "tree-sampled": TreeVerifier(TreeOptions(budget=12, topk=3, scheme="sampled"))}[verifier]
    gen = SpeculativeGenerator(target, d, v, sparse(target, K=4, seed=seed))
    for prompt, n in ((torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]]), 30), (torch.tensor([[7, 7]]), 9)):
        out = gen.generate(prompt, n, SamplingParams())
        assert out.tokens == target.greedy_reference(prompt, n)[0].tolist()


def law_setup():
    target = law_target()
    d = law_drafter(target)
    return target, d


def test_sparse_q_is_far_from_the_base_q_and_from_p():
    """The law tests below have power: the sparse q (K = 2 of 4) differs from the block's base q
    and from the target's p at every position, and the mutations report a different q."""
    target, d = law_setup()
    gaps = q_gaps(target, d, sparse(target, K=2))
    assert (gaps["base"] >= 0.1).all() and (gaps["p"] >= 0.1).all(), gaps


@pytest.mark.parametrize("verifier", ["chain", "tree-sampled", "tree"])
def test_sparse_q_sampling_law(verifier):
    target, d = law_setup()
    v = {"chain": ChainVerifier(), "tree": TreeVerifier(TreeOptions(budget=6, topk=2)),
         "tree-sampled": TreeVerifier(TreeOptions(budget=6, topk=2, scheme="sampled", widths=[2, 2]))}[verifier]
    gen = SpeculativeGenerator(target, d, v, sparse(target, K=2))
    pvalue, drafted, accepted = sample_law(gen, target, PROMPT, STEPS, TEMPERATURE, 2500)
    assert 0 < accepted < drafted
    assert pvalue > 1e-3


@pytest.mark.parametrize("mutation", ["chain-base-q", "chain-uniform-q", "tree-base-q"])
def test_sparse_q_law_rejects_a_wrong_q(mutation):
    """Guards on the test above, with a fifth of its samples: the chain handed the dense base q or a
    wrongly renormalised sparse q, and the sampled tree accepting against the base q."""
    target, d = law_setup()
    if mutation == "tree-base-q":
        gen = SpeculativeGenerator(target, d, BaseQTree(TreeOptions(budget=6, topk=2, scheme="sampled", widths=[2, 2])),
                                   sparse(target, K=2))
    else:
        c = (SparseBaseQ if mutation == "chain-base-q" else SparseUniformQ)(K=2)
        c.bind(target)
        gen = SpeculativeGenerator(target, d, ChainVerifier(), c)
    pvalue, _, accepted = sample_law(gen, target, PROMPT, STEPS, TEMPERATURE, 500)
    assert accepted > 0
    assert pvalue < 1e-6
