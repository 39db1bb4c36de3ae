"""The training caches are keyed by content: a prompt file that grows by appending reuses the
regenerated responses of its earlier full shards and the features of every earlier sequence.
And a fresh DFlash drafter can start from the target's own decoder layers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import specforge_core.training.data as data
from specforge_core.build import load_target
from specforge_core.errors import RecipeError
from specforge_core.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]
RECIPE = str(ROOT / "recipes" / "train_dflash_tiny.yaml")


@pytest.fixture(scope="module")
def target():
    return load_target(load_recipe(RECIPE).cfg.target)


def test_grown_prompt_file_reuses_cached_shards_and_features(target, tmp_path, monkeypatch):
    cfg = data.RegenConfig(max_new_tokens=6, max_length=64, chat_template=False)
    generated = []  # prompts the target actually generated for (the real function, counted)
    real = data._generate_batch
    monkeypatch.setattr(data, "_generate_batch", lambda t, batch, c, stop: generated.extend(batch) or real(t, batch, c, stop))
    first = [f"prompt number {i}" for i in range(5)]
    grown = first + [f"another prompt {i}" for i in range(3)]

    seqs_first = data.regenerate(target, first, cfg, tmp_path, "tiny", progress=False, shard_size=2)
    assert len(generated) == 5
    generated.clear()
    seqs_grown = data.regenerate(target, grown, cfg, tmp_path, "tiny", progress=False, shard_size=2)
    # shards [0, 1] and [2, 3] are reused; [4, 5] and [6, 7] are new (prompt 4's shard changed)
    assert len(generated) == 4
    assert len(seqs_grown) == 8
    for a, b in zip(seqs_first, seqs_grown):
        assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.loss_mask, b.loss_mask)

    target.capture([0, 1])
    computed = []
    real_features = target.hidden_features
    monkeypatch.setattr(target, "hidden_features", lambda ids, *a: computed.append(ids) or real_features(ids, *a))
    feats_dir = tmp_path / "features"
    data.cache_features(target, seqs_first, feats_dir, progress=False)
    assert len(computed) == 5
    computed.clear()
    data.cache_features(target, seqs_grown, feats_dir, progress=False)
    assert len(computed) == 3  # only the appended sequences
    length = max(len(s.input_ids) for s in seqs_grown)
    batch = data.load_features(feats_dir, seqs_grown[4:6], length)  # [2, length, F]
    direct = real_features(seqs_grown[5].input_ids[None])[0]
    assert torch.allclose(batch[1, : direct.shape[0]], direct)
    assert batch[1, direct.shape[0]:].abs().sum() == 0  # right padding


def _fresh_drafter(target, layers):
    r = load_recipe(RECIPE, [f"drafter.options.init_from_target_layers={layers}"])
    d = r.drafter_cls(r.drafter_options, block_size=r.cfg.drafter.block_size, checkpoint=None)
    d.bind(target)
    return d


def test_drafter_layers_can_start_from_the_target_layers(target):
    d = _fresh_drafter(target, "[1]")
    source = target.adapter.layers[1]
    mine = d.model.layers[0]
    assert torch.equal(mine.self_attn.q_proj.weight, source.self_attn.q_proj.weight)
    assert torch.equal(mine.mlp.down_proj.weight, source.mlp.down_proj.weight)
    assert torch.equal(mine.post_attention_layernorm.weight, source.post_attention_layernorm.weight)
    assert mine.self_attn.q_proj.weight.data_ptr() != source.self_attn.q_proj.weight.data_ptr()  # a copy
    with pytest.raises(RecipeError, match="does not exist"):
        _fresh_drafter(target, "[7]")
    with pytest.raises(RecipeError, match="2 ids for 1 draft layers"):
        _fresh_drafter(target, "[0,1]")
