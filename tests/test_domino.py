"""Domino corrector: reference semantics, lossless on every parallel drafter, the published
checkpoint layout (one directory -> drafter + corrector), mixing rules and errors."""

from __future__ import annotations

import json

import pytest
import torch
from lawcheck import PROMPT, STEPS, TEMPERATURE, LyingDomino, law_domino, law_drafter, law_target, q_gaps, sample_law
from safetensors.torch import save_file
from tiny import tiny_target

from specforge_core.errors import IncompatibleError, ModelLoadError, RecipeError
from specforge_core.interfaces import DraftBlock, DraftContext, Drafter
from specforge_core.sampling import Sampler, SamplingParams
from specforge_core.scheduler import SpeculativeGenerator
from specforge_dflare.plugin import DFlareDrafter
from specforge_dflash.drafter import DFlashDrafter, DFlashOptions
from specforge_domino.corrector import DominoCorrector, DominoOptions
from specforge_domino.head import reference_rollout
from specforge_verify.chain import ChainVerifier, ChainOptions

V, H = 96, 64


def block_drafter(cls=DFlashDrafter, block_size=6, seed=0, **config):
    config = {"num_hidden_layers": 1, "target_layer_ids": [0, 1], "initializer_range": 0.2, **config}
    return cls(DFlashOptions(config=config, init_seed=seed), block_size)


def domino(target, drafter, P=1, seed=0, w2_std=0.5):
    """A fresh head with a large random correction, so it really changes the drafts."""
    c = DominoCorrector(DominoOptions(config={"gru_hidden_dim": 24, "emb_dim": 16, "pure_draft_prefix_len": P,
                                              "initializer_range": 0.2}, init_seed=seed))
    c.compatible_with(drafter)
    c.bind(target)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        c.head.embed_proj[2].weight.copy_(w2_std * torch.randn(c.head.embed_proj[2].weight.shape, generator=g))
    return c


def setup(cls=DFlashDrafter, P=1, seed=0):
    target = tiny_target(seed=seed)
    d = block_drafter(cls, seed=seed)
    d.bind(target)
    return target, d, domino(target, d, P, seed)


def a_block(target, drafter, prompt):
    target.capture(drafter.context_layers)
    drafter.reset()
    _, feats = target.prefill(prompt[:, :-1])  # the last prompt token plays the anchor
    drafter.commit(prompt.shape[1] - 1, feats)
    return drafter.draft(DraftContext(tokens=prompt, max_draft=16, sampler=Sampler(SamplingParams())))


@pytest.mark.parametrize("P", [0, 1, 2])
def test_step_api_matches_reference_and_changes_drafts(P):
    target, d, c = setup(P=P)
    block = a_block(target, d, torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]]))
    tokens, _ = c.correct(block, Sampler(SamplingParams()))
    ref_tokens, ref_logits = reference_rollout(c.head, target.adapter.embed_tokens, block.hidden, block.logits(),
                                               block.anchor)
    assert torch.equal(tokens, ref_tokens)
    base = block.logits().argmax(-1)
    assert torch.equal(tokens[:, :P], base[:, :P])  # the pure-draft prefix is untouched
    assert not torch.equal(tokens[:, P:], base[:, P:])  # the correction really acts
    # teacher forcing with the rollout's own tokens reproduces the rollout's logits exactly
    tf = c.training_forward(DraftBlock(hidden=block.hidden, base_logits=block.logits(), anchor=block.anchor), tokens)
    torch.testing.assert_close(tf, ref_logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("cls", [DFlashDrafter, DFlareDrafter], ids=["dflash", "dflare"])
@pytest.mark.parametrize("seed", [0, 1])
def test_lossless_greedy(cls, seed):
    target, d, c = setup(cls, seed=seed)
    gen = SpeculativeGenerator(target, d, ChainVerifier(), c)
    for i, (n, max_new) in enumerate([(6, 30), (11, 13), (2, 5)]):
        prompt = torch.randint(0, V, (1, n), generator=torch.Generator().manual_seed(10 * seed + i))
        out = gen.generate(prompt, max_new, SamplingParams())
        assert out.tokens == target.greedy_reference(prompt, max_new)[0].tolist()


def test_lossless_sampling_distribution():
    """T>0: Domino samples position by position and reports its q; the output law is the target's.
    The head's correction is large (q far from the base q) so that reporting the base q fails:
    see the test below."""
    target = law_target()
    d = law_drafter(target)
    c = law_domino(target, d)
    gaps = q_gaps(target, d, c)  # per block position
    assert (gaps["base"] >= 0.1).all(), gaps  # the correction really moves q
    assert (gaps["p"] >= 0.1).all(), gaps  # and q is not p
    gen = SpeculativeGenerator(target, d, ChainVerifier(), c)
    pvalue, drafted, accepted = sample_law(gen, target, PROMPT, STEPS, TEMPERATURE, 3000)
    assert 0 < accepted < drafted
    assert pvalue > 1e-3


def test_sampling_law_rejects_a_corrector_reporting_the_base_q():
    """Guard on the test above: the real rollout (same tokens) handing the verifier the base q
    instead of its own is caught by the same check, with a sixth of its samples."""
    target = law_target()
    d = law_drafter(target)
    gen = SpeculativeGenerator(target, d, ChainVerifier(), law_domino(target, d, cls=LyingDomino))
    pvalue, _, accepted = sample_law(gen, target, PROMPT, STEPS, TEMPERATURE, 500)
    assert accepted > 0
    assert pvalue < 1e-6


class AnchorEchoDrafter(Drafter):
    """A minimal third-party parallel drafter: every position's state is the anchor's
    embedding (so its base drafts all repeat one guess) - Domino must fix the rest."""

    parallel = True

    def bind(self, target):
        self.embed, self.lm_head = target.adapter.embed_tokens, target.adapter.lm_head

    @property
    def hidden_size(self):  # the documented Drafter attribute a corrector checks (no duck typing)
        return self.embed.weight.shape[1]

    def draft(self, ctx: DraftContext) -> DraftBlock:
        k = min(self.block_size, ctx.max_draft)
        hidden = self.embed(ctx.anchor)[:, None].expand(-1, k, -1)
        return DraftBlock(hidden=hidden, base_logits=lambda: self.lm_head(hidden).float(), anchor=ctx.anchor)


def test_domino_mixes_onto_a_third_party_parallel_drafter():
    target = tiny_target(seed=2)
    d = AnchorEchoDrafter(None, 5)
    d.bind(target)
    c = domino(target, d)
    gen = SpeculativeGenerator(target, d, ChainVerifier(), c)
    prompt = torch.tensor([[7, 8, 9, 10, 11]])
    assert gen.generate(prompt, 25, SamplingParams()).tokens == target.greedy_reference(prompt, 25)[0].tolist()


def test_incompatible_mixes():
    from specforge_core.recipe import load_recipe
    from pathlib import Path

    smoke = str(Path(__file__).resolve().parents[1] / "recipes" / "smoke.yaml")
    with pytest.raises(RecipeError, match="needs a parallel drafter"):
        load_recipe(smoke, ["corrector.name=domino"])
    target = tiny_target(seed=0)
    d = block_drafter()
    d.bind(target)
    wide = block_drafter()
    wide.arch = type("A", (), {"hidden_size": 128})()  # DFlashDrafter.hidden_size reads its arch
    c = DominoCorrector(DominoOptions(config={"gru_hidden_dim": 8, "emb_dim": 8}))
    c.compatible_with(wide)  # once, after the drafter is bound; the head is checked in bind
    with pytest.raises(IncompatibleError, match="hidden states of size 64, the drafter's are 128"):
        c.bind(target)


# ---- the published Domino layout ------------------------------------------------------------
def write_domino_checkpoint(path, projector="domino", prefix="", drop=None, G=24, E=16, P=1, vocab=V):
    from test_dflash_checkpoint import write_published

    write_published(path, vocab=vocab)
    cfg = json.loads((path / "config.json").read_text())
    cfg["architectures"] = ["DominoDraftModel"]
    cfg["emb_dim"] = E
    cfg["dflash_config"].update(projector_type=projector, emb_dim=E, gru_hidden_dim=G, pure_draft_prefix_len=P,
                                shift_label=True)
    (path / "config.json").write_text(json.dumps(cfg))
    g = torch.Generator().manual_seed(1)
    head = {"prefix_gru.weight_ih_l0": (3 * G, H), "prefix_gru.weight_hh_l0": (3 * G, G),
            "embed_proj.0.weight": (E, H + G), "embed_proj.2.weight": (vocab, E)}
    tensors = {prefix + k: 0.3 * torch.randn(s, generator=g) for k, s in head.items() if k != drop}
    save_file(tensors, str(path / "head.safetensors"))  # a second shard next to the backbone's
    return path


@pytest.mark.parametrize("projector,prefix", [("domino", ""), ("causal_v5", "logit_head.")])
def test_one_checkpoint_yields_drafter_and_corrector(tmp_path, projector, prefix):
    """`drafter.checkpoint=<Domino dir>` + `corrector.name=domino`: both parts from one directory."""
    from pathlib import Path

    from specforge_core.build import build_pipeline, load_prompts
    from specforge_core.recipe import load_recipe

    ckpt = write_domino_checkpoint(tmp_path / "domino", projector, prefix, vocab=320)  # smoke target: vocab 320
    smoke = str(Path(__file__).resolve().parents[1] / "recipes" / "smoke.yaml")
    r = load_recipe(smoke, ["drafter.name=dflash", f"drafter.checkpoint={ckpt}", "drafter.block_size=4",
                            "corrector.name=domino", "generation.max_new_tokens=21"])
    pipe = build_pipeline(r)
    d, c = pipe.generator.drafter, pipe.generator.corrector
    assert d.arch.shift_label and d.drafts_per_block == 4
    assert (c.head.arch.gru_hidden_dim, c.head.arch.emb_dim, c.head.arch.pure_draft_prefix_len) == (24, 16, 1)
    for prompt in load_prompts(r)[:2]:
        ids = pipe.encode(prompt.text)
        out = pipe.generator.generate(ids, 21, pipe.sampling(), pipe.stop_token_ids())
        assert out.tokens == pipe.target.greedy_reference(ids, 21, pipe.stop_token_ids())[0].tolist()
        assert max(cy.num_drafted for cy in out.cycles) == 4  # shift_label: bs drafts per block


@pytest.mark.parametrize("damage,match", [
    (dict(projector="mlp"), "not a Domino checkpoint"),
    (dict(drop="embed_proj.2.weight"), "missing key.*embed_proj.2.weight"),
])
def test_bad_domino_checkpoints(tmp_path, damage, match):
    ckpt = write_domino_checkpoint(tmp_path / "bad", **damage)
    target = tiny_target(seed=0)
    d = DFlashDrafter(DFlashOptions(), 4, checkpoint=str(ckpt))
    c = DominoCorrector(DominoOptions())
    c.compatible_with(d)
    d.bind(target)
    with pytest.raises(ModelLoadError, match=match):
        c.bind(target)


def test_corrector_without_weights_is_a_clear_error():
    target = tiny_target(seed=0)
    d = block_drafter()
    d.bind(target)
    c = DominoCorrector(DominoOptions())
    c.compatible_with(d)
    with pytest.raises(RecipeError, match="needs weights"):
        c.bind(target)


@pytest.mark.parametrize("topk", [0, 8])
def test_corrector_triton_backend_matches_reference(topk):
    """corrector.options.backend=triton (the fused kernels, under the Triton interpreter on CPU)
    gives the same drafts as the reference rollout, with and without the top-k restriction."""
    pytest.importorskip("triton")
    import os

    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("Triton on CPU needs TRITON_INTERPRET=1")
    target, d, ref = setup(P=1, seed=3)
    fast = DominoCorrector(DominoOptions(backend="triton", exact_topk=topk, config={"gru_hidden_dim": 24, "emb_dim": 16}))
    fast.compatible_with(d)
    fast.bind(target)
    fast.head.load_state_dict(ref.head.state_dict())
    block = a_block(target, d, torch.tensor([[2, 7, 1, 8, 2, 8]]))
    tokens, probs = fast.correct(block, Sampler(SamplingParams()))
    ref_tokens, _ = ref.correct(block, Sampler(SamplingParams()))
    assert probs is None and torch.equal(tokens, ref_tokens)


def test_backend_cuda_graph_without_cuda_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    target, d, _ = setup()
    c = DominoCorrector(DominoOptions(backend="cuda_graph", config={"gru_hidden_dim": 8, "emb_dim": 8}))
    c.compatible_with(d)
    c.bind(target)
    block = a_block(target, d, torch.tensor([[1, 2, 3]]))
    with pytest.raises(RecipeError, match="cuda_graph"):
        c.correct(block, Sampler(SamplingParams()))
