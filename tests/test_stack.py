"""Stacked correctors (``corrector.name: [a, b]``, specforge_core/stack.py): members compose in order
(the first's ``step``, then each later one's ``step_on`` over the previous output), one q at the end.

* the stack's logits are the hand-made composition, and differ from either member alone;
* T=0: token-identical to greedy on the chain and the tree (also through a recipe + build);
* T>0: the output law is the target's; a stack reporting its first member's q is rejected;
* ``check_step_pure`` passes on the stack (its state is a tuple of the members' states);
* recipe errors, before any model loads: sparse member not last, a member without ``step_on``
  after another, unknown / duplicate names, an options key that is no member, training a stack.
"""

from __future__ import annotations

import types
from pathlib import Path

import pytest
import torch
from lawcheck import PROMPT, STEPS, TEMPERATURE, law_domino, law_drafter, law_target, q_gaps, sample_law, total_variation
from test_domino import a_block, block_drafter, domino, write_domino_checkpoint
from test_markov import law_markov, markov
from tiny import tiny_target

from specforge_core import hookimpl
from specforge_core.contracts import check_step_pure
from specforge_core.errors import RecipeError
from specforge_core.interfaces import Corrector, DraftContext, SparseProbs
from specforge_core.recipe import load_recipe
from specforge_core.registry import Registry
from specforge_core.sampling import Sampler, SamplingParams
from specforge_core.scheduler import SpeculativeGenerator
from specforge_core.stack import CorrectorStack
from specforge_verify.chain import ChainVerifier
from specforge_verify.tree import TreeOptions, TreeVerifier

SMOKE = str(Path(__file__).resolve().parents[1] / "recipes" / "smoke.yaml")
V = 96


class SparseTail(Corrector):
    """Throwaway sparse-output corrector: the top-3 of the logits it is given, q = the warped
    softmax over them (one-hot at T=0)."""

    sparse_output = True

    def init_state(self, block):
        s = block.context.sampler
        return block.logits(), (0.0 if s.greedy else s.params.temperature)

    def step(self, state, i, prev_token):
        return self.step_on(state, i, prev_token, state[0][:, i])

    def step_on(self, state, i, prev_token, logits):
        ids = logits.topk(3, -1).indices
        cand = logits.gather(-1, ids).float()
        probs = torch.nn.functional.one_hot(cand.argmax(-1), 3).float() if state[1] <= 0 else (cand / state[1]).softmax(-1)
        return SparseProbs(ids, probs, logits.shape[-1]), state


class NoStepOn(Corrector):
    """Throwaway corrector that implements ``step`` only: it can be first in a stack, never later."""

    def init_state(self, block):
        return block.logits()

    def step(self, state, i, prev_token):
        return state[:, i].float(), state


def setup(seed=0, sparse=False):
    target = tiny_target(seed=seed)
    d = block_drafter(seed=seed)
    d.bind(target)
    members = [domino(target, d, P=0, seed=seed), markov(target, d, "gated", seed=seed)]
    if sparse:
        members.append(SparseTail(None))
    return target, d, members, CorrectorStack.of(members, ["domino", "markov", "sparse"][:len(members)])


def with_context(block, prompt, params=SamplingParams()):
    block.context = DraftContext(tokens=prompt, max_draft=16, sampler=Sampler(params))
    return block


# ---- composition ------------------------------------------------------------------------------
def test_stack_logits_are_the_composition_and_each_member_acts():
    target, d, (dom, mar), stack = setup()
    prompt = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
    block = with_context(a_block(target, d, prompt), prompt)
    with torch.inference_mode():
        state, ds, ms, ms_alone = stack.init_state(block), dom.init_state(block), mar.init_state(block), mar.init_state(block)
        prev = block.anchor
        for i in range(block.num_tokens):
            out, state = stack.step(state, i, prev)
            dl, ds = dom.step(ds, i, prev)
            ml, ms = mar.step_on(ms, i, prev, dl)
            alone, ms_alone = mar.step(ms_alone, i, prev)
            torch.testing.assert_close(out, ml)
            assert isinstance(state, tuple) and len(state) == 2
            assert (out - dl).abs().max() > 0.1 and (out - alone).abs().max() > 0.1  # neither member dropped
            prev = (prev * 7 + i + 1) % V  # any realised token
    assert not torch.equal(stack.correct(block, Sampler(SamplingParams()))[0], dom.correct(block, Sampler(SamplingParams()))[0])


@pytest.mark.parametrize("sparse", [False, True], ids=["domino+markov", "domino+markov+sparse"])
def test_step_is_pure(sparse):
    target, d, _, stack = setup(sparse=sparse)
    prompt = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
    check_step_pure(stack, with_context(a_block(target, d, prompt), prompt))


# ---- lossless -----------------------------------------------------------------------------------
@pytest.mark.parametrize("verifier", ["chain", "tree"])
@pytest.mark.parametrize("sparse", [False, True], ids=["domino+markov", "domino+markov+sparse"])
def test_lossless_greedy(verifier, sparse):
    target, d, _, stack = setup(seed=1, sparse=sparse)
    v = ChainVerifier() if verifier == "chain" else TreeVerifier(TreeOptions(budget=16, topk=3))
    gen = SpeculativeGenerator(target, d, v, stack)
    for i, (n, max_new) in enumerate([(6, 30), (2, 9)]):
        prompt = torch.randint(0, V, (1, n), generator=torch.Generator().manual_seed(10 + i))
        out = gen.generate(prompt, max_new, SamplingParams())
        assert out.tokens == target.greedy_reference(prompt, max_new)[0].tolist()


class FirstMemberQ(CorrectorStack):
    """Mutation: the stack's tokens, reported with the first member's q (the second member dropped from q)."""

    def correct(self, block, sampler):
        tokens, _ = super().correct(block, sampler)
        _, q = self.members[0].correct(block, sampler)
        return tokens, q


def law_stack(cls=CorrectorStack):
    target = law_target()
    d = law_drafter(target)
    return target, d, cls.of([law_domino(target, d), law_markov(target, d, "gated")], ["domino", "markov"])


def test_sampling_law():
    """T>0, chain: the stack samples position by position and reports its own q; the law is the
    target's. The q is far from the base q, from p, and from its first member's q (so the
    mutation below has something to miss)."""
    target, d, stack = law_stack()
    gaps = q_gaps(target, d, stack)
    assert (gaps["base"] >= 0.1).all() and (gaps["p"] >= 0.1).all(), gaps
    prompt = torch.cat([PROMPT, torch.tensor([[1]])], 1)
    block = with_context(a_block(target, d, prompt), prompt, SamplingParams(temperature=TEMPERATURE))
    sampler = Sampler(SamplingParams(temperature=TEMPERATURE))
    with torch.inference_mode():
        state, ds, prev, gap = stack.init_state(block), stack.members[0].init_state(block), block.anchor, []
        for i in range(block.num_tokens):
            out, state = stack.step(state, i, prev)
            first, ds = stack.members[0].step(ds, i, prev)
            gap.append(float(total_variation(sampler.probs(out), sampler.probs(first)).max()))
            prev = out.argmax(-1)
    assert min(gap) >= 0.1, gap
    gen = SpeculativeGenerator(target, d, ChainVerifier(), stack)
    pvalue, drafted, accepted = sample_law(gen, target, PROMPT, STEPS, TEMPERATURE, 2000)
    assert 0 < accepted < drafted
    assert pvalue > 1e-3


def test_sampling_law_rejects_a_stack_reporting_its_first_members_q():
    target, d, stack = law_stack(FirstMemberQ)
    pvalue, _, accepted = sample_law(SpeculativeGenerator(target, d, ChainVerifier(), stack), target, PROMPT, STEPS,
                                     TEMPERATURE, 500)
    assert accepted > 0
    assert pvalue < 1e-6


# ---- recipes ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def registry():
    mod = types.ModuleType("sf_stack_test_plugin")

    @hookimpl
    def specforge_register(registry):
        registry.add(SparseTail, name="sparse-tail")
        registry.add(NoStepOn, name="no-step-on")

    mod.specforge_register = specforge_register
    reg = Registry()
    reg.register_plugin(mod, distribution="tests 0")
    return reg


def load(registry, *overrides):
    return load_recipe(SMOKE, ["drafter.name=dflash", *overrides], registry=registry)


def test_recipe_resolves_a_stack(registry):
    r = load(registry, "corrector.name=[domino,markov,sparse-tail]", "corrector.options.markov.config.markov_rank=4",
             "corrector.checkpoint={domino: null}")
    assert r.corrector_cls is CorrectorStack and r.method == "dflash+domino+markov+sparse-tail+chain"
    assert [m.name for m in r.corrector_options.members] == ["domino", "markov", "sparse-tail"]
    assert r.corrector_options.members[1].options.config == {"markov_rank": 4}
    assert load(registry, "corrector.name=[no-step-on,domino]").method == "dflash+no-step-on+domino+chain"
    assert load(registry, "corrector.name=domino").corrector_cls.__name__ == "DominoCorrector"  # one name: as before
    assert load(registry).corrector_cls is None
    assert load(registry, "corrector.name=none", "corrector.checkpoint={domino: x}").corrector_cls is None  # unused


@pytest.mark.parametrize("overrides,match", [
    (["corrector.name=[sparse-tail,domino]"], r"^corrector 'sparse-tail' returns a sparse q and must be last in corrector\.name$"),
    (["corrector.name=[domino,no-step-on]"], r"^corrector 'no-step-on' cannot follow another corrector \(it implements no step_on\)$"),
    (["corrector.name=[domino,bogus]"], r"unknown corrector 'bogus' \(corrector\.name\); installed: "),
    (["corrector.name=[domino,markov,domino]"], r"corrector 'domino' appears twice in corrector\.name"),
    (["corrector.name=[]"], r"corrector\.name is an empty list"),
    (["corrector.name=[domino,markov]", "corrector.options.config.x=1"], r"corrector\.options\.config: 'config' is not a member"),
    (["corrector.name=[domino,markov]", "corrector.options.markov.bogus=1"], r"unknown key 'corrector\.options\.markov\.bogus'"),
    (["corrector.name=[domino,markov]", "corrector.checkpoint={seen: x}"], r"corrector\.checkpoint\.seen names no member"),
    (["corrector.name=domino", "corrector.checkpoint={domino: x}"], r"corrector\.checkpoint is a mapping"),
    (["corrector.name=[domino,markov]", "training.component=corrector"], r"training\.component is 'corrector' but the corrector is a stack"),
])
def test_recipe_errors(registry, overrides, match):
    with pytest.raises(RecipeError, match=match) as e:
        load(registry, *overrides)
    assert "\n" not in str(e.value)


def test_training_a_drafter_with_a_stack_is_refused_before_the_target_loads(registry):
    from specforge_core.training.run import train

    r = load(registry, "corrector.name=[domino,markov]", "training.data.prompts=x.jsonl")
    with pytest.raises(RecipeError, match="does not take a stacked corrector"):
        train(r, registry)


def test_recipe_build_with_member_checkpoints(tmp_path, monkeypatch):
    """Through build_pipeline: domino reads the drafter's directory (a part of the recipe for the key
    split), markov is fresh from its options; T=0 output identical to greedy decoding."""
    import specforge_core.checkpoint as ckpt_mod
    from specforge_core.build import build_pipeline

    ckpt = write_domino_checkpoint(tmp_path / "dom", vocab=320)  # smoke target: vocab 320
    seen = {}
    split = ckpt_mod.split_keys
    monkeypatch.setattr(ckpt_mod, "split_keys", lambda keys, parts, *a, **k: seen.update(parts) or split(keys, parts, *a, **k))
    base = ["drafter.name=dflash", f"drafter.checkpoint={ckpt}", "drafter.block_size=4", "corrector.name=[domino,markov]",
            "corrector.options.markov.config={markov_rank: 4, init: normal, initializer_range: 1.0}"]
    for extra, domino_ckpt in ([], None), ([f"corrector.checkpoint={{domino: {ckpt}}}"], str(ckpt)):
        seen.clear()
        pipe = build_pipeline(load_recipe(SMOKE, base + extra))
        stack = pipe.generator.corrector
        assert [m.checkpoint for m in stack.members] == [domino_ckpt, None]
        assert ("corrector domino" in seen) == (domino_ckpt is None) and "corrector markov" in seen
        prompt = torch.tensor([[10, 20, 30, 40, 50]])
        out = pipe.generator.generate(prompt, 12, SamplingParams())
        assert out.tokens == pipe.target.greedy_reference(prompt, 12)[0].tolist()
