"""DFlash / DFlare checkpoints in the published layout: written by hand from the documented
key list, loaded offline, round-tripped, and every kind of damage reported by name."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from tiny import tiny_target

from specforge_core.errors import IncompatibleError, ModelLoadError
from specforge_core.sampling import SamplingParams
from specforge_core.scheduler import SpeculativeGenerator
from specforge_dflare.plugin import DFlareDrafter
from specforge_dflash.drafter import DFlashDrafter, DFlashOptions
from specforge_dflash.layout import save_draft
from specforge_verify.chain import ChainVerifier

H, V, I, D, HEADS, KV, HD = 64, 96, 128, 2, 4, 2, 16
IDS = [0, 1]


def published_keys(fusion: bool) -> dict[str, tuple]:
    """The key list of reference-implementations.md sections 1 and 3, written out by hand."""
    keys = {"hidden_norm.weight": (H,), "norm.weight": (H,)}
    keys.update({"layer_fusion_weights": (D, len(IDS))} if fusion else {"fc.weight": (H, len(IDS) * H)})
    for i in range(D):
        p = f"layers.{i}."
        keys.update({
            p + "input_layernorm.weight": (H,), p + "post_attention_layernorm.weight": (H,),
            p + "self_attn.q_proj.weight": (HEADS * HD, H), p + "self_attn.k_proj.weight": (KV * HD, H),
            p + "self_attn.v_proj.weight": (KV * HD, H), p + "self_attn.o_proj.weight": (H, HEADS * HD),
            p + "self_attn.q_norm.weight": (HD,), p + "self_attn.k_norm.weight": (HD,),
            p + "mlp.gate_proj.weight": (I, H), p + "mlp.up_proj.weight": (I, H), p + "mlp.down_proj.weight": (H, I),
        })
        if fusion:
            keys[p + "self_attn.k_proj_target.weight"] = (KV * HD, H)
            keys[p + "self_attn.v_proj_target.weight"] = (KV * HD, H)
    return keys


def write_published(path, fusion=False, drop=None, add=None, reshape=None, vocab=V, seed=0):
    path.mkdir(parents=True, exist_ok=True)
    config = {
        "architectures": ["QwenDFlareDraftModel" if fusion else "DFlashDraftModel"], "model_type": "qwen3",
        "hidden_size": H, "num_hidden_layers": D, "num_attention_heads": HEADS, "num_key_value_heads": KV,
        "head_dim": HD, "intermediate_size": I, "vocab_size": vocab, "rms_norm_eps": 1e-6, "rope_theta": 1e6,
        "max_position_embeddings": 512, "block_size": 4, "num_target_layers": 2, "tie_word_embeddings": False,
        "dflash_config": {"mask_token_id": V - 1, "target_layer_ids": IDS},
    }
    (path / "config.json").write_text(json.dumps(config))
    g = torch.Generator().manual_seed(seed)
    tensors = {k: 0.2 * torch.randn(s, generator=g) for k, s in published_keys(fusion).items()}
    for k in [k for k in tensors if k.endswith("norm.weight")]:
        tensors[k] = torch.ones_like(tensors[k])
    if drop:
        del tensors[drop]
    if add:
        tensors[add] = torch.zeros(3)
    if reshape:
        tensors[reshape] = torch.zeros(7, 7)
    save_file({k: v.to(torch.bfloat16) for k, v in tensors.items()}, str(path / "model.safetensors"))
    return path


def drafter_for(cls, path, block_size=4):
    d = cls(DFlashOptions(), block_size, checkpoint=str(path))
    return d


@pytest.mark.parametrize("cls,fusion", [(DFlashDrafter, False), (DFlareDrafter, True)])
def test_loads_published_layout_and_round_trips(tmp_path, cls, fusion):
    target = tiny_target(seed=0)
    src = write_published(tmp_path / "published", fusion=fusion)
    d = drafter_for(cls, src)
    d.bind(target)
    assert d.context_layers == tuple(IDS) and d.arch.mask_token_id == V - 1 and d.arch.fusion == fusion
    # the borrowed parts are the target's own modules, not copies
    assert d.embed_tokens is target.model.get_input_embeddings() and d.lm_head is target.model.get_output_embeddings()
    gen = SpeculativeGenerator(target, d, ChainVerifier())
    prompt = torch.tensor([[1, 2, 3, 4, 5, 6]])
    out = gen.generate(prompt, 24, SamplingParams())
    assert out.tokens == target.greedy_reference(prompt, 24)[0].tolist()

    # save in the same layout and load again: same keys, same config fields, same drafts
    save_draft(tmp_path / "saved", d.model, dtype=torch.bfloat16)
    saved_cfg = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert saved_cfg["dflash_config"] == {"mask_token_id": V - 1, "target_layer_ids": IDS}
    assert saved_cfg["block_size"] == 4
    from safetensors import safe_open

    with safe_open(str(tmp_path / "saved" / "model.safetensors"), "pt") as f:
        assert set(f.keys()) == set(published_keys(fusion))
    d2 = drafter_for(cls, tmp_path / "saved")
    d2.bind(target)
    for a, b in zip(d.model.state_dict().values(), d2.model.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("damage,match", [
    (dict(drop="layers.1.mlp.up_proj.weight"), "missing key.*layers.1.mlp.up_proj.weight"),
    (dict(add="layers.0.self_attn.bogus.weight"), "unexpected key.*layers.0.self_attn.bogus.weight"),
    (dict(reshape="fc.weight"), r"fc.weight has shape \[7, 7\], expected \[64, 128\]"),
    (dict(vocab=100), "vocab_size 100 != target vocab_size 96"),
])
def test_damaged_checkpoints_name_the_problem(tmp_path, damage, match):
    path = write_published(tmp_path / "bad", **damage)
    d = drafter_for(DFlashDrafter, path)
    with pytest.raises((ModelLoadError, IncompatibleError), match=match):
        d.bind(tiny_target(seed=0))


def test_truncated_file_and_wrong_hidden_size(tmp_path):
    path = write_published(tmp_path / "trunc")
    f = path / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(ModelLoadError, match="corrupt or truncated"):
        drafter_for(DFlashDrafter, path).bind(tiny_target(seed=0))
    path = write_published(tmp_path / "wide")
    with pytest.raises(IncompatibleError, match="hidden_size 64 != target hidden_size 32"):
        drafter_for(DFlashDrafter, path).bind(tiny_target(seed=0, hidden=32))


def test_default_target_layer_ids_rule():
    from specforge_dflash.model import default_target_layer_ids

    assert default_target_layer_ids(36, 5) == [1, 9, 17, 25, 33]  # Qwen3-8B DFlash
    assert default_target_layer_ids(36, 1) == [18]


def test_missing_local_dir_and_hub_id_offline(tmp_path):
    with pytest.raises(ModelLoadError, match="z-lab/Qwen3-8B-DFlash-b16"):
        drafter_for(DFlashDrafter, "z-lab/Qwen3-8B-DFlash-b16").bind(tiny_target(seed=0))
