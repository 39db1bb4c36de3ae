"""Tree verifier: structure, T=0 identity for every drafter (with and without Domino), the T>0
law for both schemes, the cost-aware budget, and bad options."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from lawcheck import PROMPT, STEPS, TEMPERATURE, BaseQTree, law_domino, law_drafter, law_target, q_gaps, sample_law
from test_domino import a_block, block_drafter, domino
from tiny import tiny_qwen3_config, tiny_target

from specforge_core.errors import IncompatibleError, RecipeError
from specforge_core.recipe import load_recipe
from specforge_core.sampling import Sampler, SamplingParams
from specforge_core.scheduler import SpeculativeGenerator
from specforge_draftmodel.drafter import DraftModelDrafter, DraftModelOptions
from specforge_ngram.drafter import NgramDrafter, NgramOptions
from specforge_verify.tree import TreeOptions, TreeVerifier

ROOT = Path(__file__).resolve().parents[1]


def check_structure(c, budget):
    n = c.num_nodes
    assert n <= budget
    parents = c.parents.tolist()
    assert all(p < i for i, p in enumerate(parents))  # parents before children (prefix-closed)
    for i, p in enumerate(parents):
        assert c.depths[i] == (1 if p < 0 else c.depths[p] + 1)
        # ancestor-only mask: row i+1 sees exactly its ancestors, the anchor and itself
        anc, j = {0, i + 1}, p
        while j >= 0:
            anc.add(j + 1)
            j = parents[j]
        assert set(c.attention_mask[i + 1].nonzero().flatten().tolist()) == anc


@pytest.mark.parametrize("budget,topk", [(1, 1), (7, 2), (24, 4)])
def test_best_first_tree_structure(budget, topk):
    target = tiny_target(seed=0)
    d = block_drafter(block_size=6)
    d.bind(target)
    block = a_block(target, d, torch.tensor([[4, 5, 6, 7]]))
    v = TreeVerifier(TreeOptions(budget=budget, topk=topk))
    with torch.inference_mode():
        c = v.propose_block(block, None, Sampler(SamplingParams()))
    check_structure(c, budget)
    assert c.num_nodes == budget
    # the tree contains the greedy spine as deep as the budget allows (its prefixes score highest at depth 1)
    spine = block.logits()[0].argmax(-1).tolist()
    kids = c.extra["children"]
    assert spine[0] in kids[0]


def test_corrector_scorer_conditions_children_on_their_parent():
    target = tiny_target(seed=1)
    d = block_drafter(block_size=6, seed=1)
    d.bind(target)
    c = domino(target, d, P=0, seed=1, w2_std=2.0)
    block = a_block(target, d, torch.tensor([[9, 8, 7, 6]]))
    with torch.inference_mode():
        cands = TreeVerifier(TreeOptions(budget=40, topk=3)).propose_block(block, c, Sampler(SamplingParams()))
    check_structure(cands, 40)
    kids = cands.extra["children"]
    first = list(kids[0].values())  # siblings at depth 1
    child_sets = [frozenset(kids[r]) for r in first if kids[r]]
    assert len(set(child_sets)) > 1  # different parents -> different children (marginals would give one set)


def drafters(target, seed):
    out = {
        "ngram": NgramDrafter(NgramOptions(), 6),
        "draft_model": DraftModelDrafter(DraftModelOptions(config=tiny_qwen3_config(), init_seed=seed + 50), 5),
        "dflash": block_drafter(block_size=6, seed=seed),
    }
    for x in out.values():
        x.bind(target)
    return out


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("kind", ["ngram", "draft_model", "dflash", "dflash+domino"])
def test_tree_greedy_identical_to_ar(seed, kind):
    target = tiny_target(seed=seed)
    ds = drafters(target, seed)
    d = ds[kind.split("+")[0]]
    corr = domino(target, d, P=1, seed=seed) if "domino" in kind else None
    gen = SpeculativeGenerator(target, d, TreeVerifier(TreeOptions(budget=16, topk=3)), corr)
    for i, (n, max_new) in enumerate([(7, 30), (3, 9), (12, 1)]):
        base = torch.randint(0, 96, (1, n), generator=torch.Generator().manual_seed(seed * 7 + i))
        prompt = torch.cat([base, base], 1)
        out = gen.generate(prompt, max_new, SamplingParams())
        assert out.tokens == target.greedy_reference(prompt, max_new)[0].tolist()


@pytest.mark.parametrize("scheme,with_domino", [("deterministic", False), ("deterministic", True),
                                                ("sampled", False), ("sampled", True)])
def test_tree_sampling_law(scheme, with_domino):
    target = law_target()
    d = law_drafter(target)
    corr = law_domino(target, d) if with_domino else None
    gaps = q_gaps(target, d, corr)  # per block position; the tree's corrector scorer uses the same steps
    assert (gaps["p"] >= 0.1).all(), gaps
    if with_domino:
        assert (gaps["base"] >= 0.1).all(), gaps  # children are drawn from a q far from the marginals
    v = TreeVerifier(TreeOptions(budget=6, topk=2, scheme=scheme, widths=[2, 2]))
    gen = SpeculativeGenerator(target, d, v, corr)
    pvalue, drafted, accepted = sample_law(gen, target, PROMPT, STEPS, TEMPERATURE, 2500)
    assert accepted > 0
    assert pvalue > 1e-3


def test_tree_sampling_law_rejects_the_base_q():
    """Guard on the sampled-scheme Domino case above: children drawn from the corrector's q but
    accepted against the block's base q are caught by the same check, with a fifth of its
    samples. (The deterministic scheme's walk does not read q: any tree is exact there.)"""
    target = law_target()
    d = law_drafter(target)
    v = BaseQTree(TreeOptions(budget=6, topk=2, scheme="sampled", widths=[2, 2]))
    gen = SpeculativeGenerator(target, d, v, law_domino(target, d))
    pvalue, _, accepted = sample_law(gen, target, PROMPT, STEPS, TEMPERATURE, 500)
    assert accepted > 0
    assert pvalue < 1e-6


def test_cost_aware_budget(tmp_path, monkeypatch):
    from specforge_core import verify_cost

    monkeypatch.setenv("SPECFORGE_CACHE", str(tmp_path))
    monkeypatch.setattr(verify_cost, "_memo", {})
    monkeypatch.setattr(verify_cost, "MAX_DEVIATION", 1e9)  # reuse is about the key (tests/test_verify_cost.py)
    target = tiny_target(seed=0)
    d = block_drafter(block_size=6)
    d.bind(target)
    v = TreeVerifier(TreeOptions(budget=None, topk=3, max_budget=16))
    v.bind(target)
    cached = list(tmp_path.glob("verify-cost-*.json"))
    assert len(cached) == 1 and set(json.loads(cached[0].read_text())["curve"]) >= {"1", "2", "4", "8", "16", "17"}
    gen = SpeculativeGenerator(target, d, v)
    prompt = torch.tensor([[1, 2, 3, 4, 5]])
    out = gen.generate(prompt, 20, SamplingParams())
    assert out.tokens == target.greedy_reference(prompt, 20)[0].tolist()
    # within the budget; a last cycle may draft nothing (one token left: only the bonus fits)
    assert all(c.num_drafted <= 16 for c in out.cycles) and all(c.num_drafted >= 1 for c in out.cycles[:-1])
    # a second verifier reuses the cached curve (no re-measurement)
    stamp = cached[0].stat().st_mtime_ns
    monkeypatch.setattr(verify_cost, "_memo", {})  # as a new process would
    TreeVerifier(TreeOptions(budget=None, topk=3, max_budget=16)).bind(target)
    assert cached[0].stat().st_mtime_ns == stamp


def test_bad_tree_options():
    smoke = str(ROOT / "recipes" / "smoke.yaml")
    for bad, match in [("verifier.options.budget=0", "budget must be >= 1"),
                       ("verifier.options.topk=0", "topk must be >= 1"),
                       ("verifier.options.scheme=random", "deterministic or sampled")]:
        with pytest.raises(RecipeError, match=match):
            load_recipe(smoke, ["verifier.name=tree", bad])
    v = TreeVerifier(TreeOptions(budget=4096))
    with pytest.raises(IncompatibleError, match="context window of 512"):
        v.bind(tiny_target(seed=0))
