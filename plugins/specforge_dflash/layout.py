"""Published checkpoint layout of DFlash / DFlare (z-lab, AngelSlim, sgl-project SpecForge):
``config.json`` (Qwen3 fields + top-level ``block_size`` / ``num_target_layers`` +
``dflash_config: {mask_token_id, target_layer_ids}``) and safetensors with the key names of
``model.py``. Loaded without conversion and without ``trust_remote_code``; saved the same way
so vLLM (``method: dflash``) and SGLang (``--speculative-algorithm DFLASH``) can serve it."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from specforge_core.checkpoint import load_state_dict, read_config, resolve_dir, save_checkpoint
from specforge_core.errors import IncompatibleError, ModelLoadError

from .model import DFlashDraftModel, DraftArch, default_target_layer_ids

# the DFlash / DFlare network's own keys (model.py), as stored: optionally nested under `model.`.
# The drafter claims these and nothing else (interfaces.Component.claims); a corrector stored in
# the same directory claims its own keys - this plugin never lists another plugin's.
OWN_PREFIXES = ("layers.", "fc.", "hidden_norm.", "norm.", "layer_fusion_weights")


def claims(key: str) -> bool:
    name = key[len("model."):] if key.startswith("model.") else key
    return name.startswith(OWN_PREFIXES)


# config.json fields DraftArch owns; everything else is carried through untouched
_OWN = {"hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
        "intermediate_size", "vocab_size", "rms_norm_eps", "rope_theta", "rope_parameters",
        "max_position_embeddings", "block_size", "num_target_layers", "dflash_config", "architectures",
        "model_type", "layer_types", "tie_word_embeddings", "attention_bias", "dtype", "torch_dtype"}


def recorded_block_size(cfg: dict, where: str) -> Optional[int]:
    """The ``block_size`` a checkpoint's config.json records: top level (z-lab, AngelSlim), or
    inside ``dflash_config`` (some Domino releases); None when it records none."""
    value = cfg.get("block_size", (cfg.get("dflash_config") or {}).get("block_size"))
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ModelLoadError(f"{where}/config.json: block_size must be an integer >= 1 (got {value!r})")
    return value


def arch_from_config(cfg: dict, where: str, fusion: bool) -> DraftArch:
    try:
        H = int(cfg["hidden_size"])
        heads = int(cfg["num_attention_heads"])
        D = int(cfg["num_hidden_layers"])
        dcfg = cfg.get("dflash_config") or {}
        L = int(cfg.get("num_target_layers", 36))
        ids = dcfg.get("target_layer_ids") or default_target_layer_ids(L, D)
        mask_id = dcfg.get("mask_token_id", cfg.get("mask_token_id"))
        if mask_id is None:
            raise KeyError("dflash_config.mask_token_id")
        rope = cfg.get("rope_parameters") or {}
        return DraftArch(
            hidden_size=H, num_hidden_layers=D, num_attention_heads=heads,
            num_key_value_heads=int(cfg.get("num_key_value_heads", heads)),
            head_dim=int(cfg.get("head_dim") or H // heads), intermediate_size=int(cfg["intermediate_size"]),
            vocab_size=int(cfg["vocab_size"]), target_layer_ids=[int(i) for i in ids], mask_token_id=int(mask_id),
            block_size=recorded_block_size(cfg, where) or 16, num_target_layers=L,
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            rope_theta=float(cfg.get("rope_theta", rope.get("rope_theta", 1e6))),
            max_position_embeddings=int(cfg.get("max_position_embeddings", 40960)), fusion=fusion,
            shift_label=bool(dcfg.get("shift_label", False)),
            extra={**{k: v for k, v in cfg.items() if k not in _OWN},
                   "dflash_config_extra": {k: v for k, v in dcfg.items()
                                           if k not in ("mask_token_id", "target_layer_ids", "shift_label")}},
        )
    except KeyError as e:
        raise ModelLoadError(f"{where}/config.json: missing field {e.args[0]}") from None


def config_from_arch(arch: DraftArch, architecture: str) -> dict:
    cfg = dict(arch.extra)
    cfg.update(
        architectures=[architecture], model_type="qwen3", hidden_size=arch.hidden_size,
        num_hidden_layers=arch.num_hidden_layers, num_attention_heads=arch.num_attention_heads,
        num_key_value_heads=arch.num_key_value_heads, head_dim=arch.head_dim,
        intermediate_size=arch.intermediate_size, vocab_size=arch.vocab_size, rms_norm_eps=arch.rms_norm_eps,
        rope_theta=arch.rope_theta, max_position_embeddings=arch.max_position_embeddings,
        layer_types=["full_attention"] * arch.num_hidden_layers, attention_bias=False,
        tie_word_embeddings=False, block_size=arch.block_size, num_target_layers=arch.num_target_layers,
        dflash_config={**(arch.extra.get("dflash_config_extra") or {}), "mask_token_id": arch.mask_token_id,
                       "target_layer_ids": list(arch.target_layer_ids),
                       **({"shift_label": True} if arch.shift_label else {})},
    )
    cfg.pop("dflash_config_extra", None)
    return cfg


def check_against_target(arch: DraftArch, target, where: str) -> None:
    if arch.hidden_size != target.hidden_size:
        raise IncompatibleError(f"{where}: drafter hidden_size {arch.hidden_size} != target hidden_size "
                                f"{target.hidden_size} (it borrows the target's embeddings and lm_head)")
    if arch.vocab_size != target.vocab_size:
        raise IncompatibleError(f"{where}: drafter vocab_size {arch.vocab_size} != target vocab_size {target.vocab_size}")
    bad = [i for i in arch.target_layer_ids if not 0 <= i < target.num_layers]
    if bad:
        raise IncompatibleError(f"{where}: target_layer_ids {bad} out of range for a target with "
                                f"{target.num_layers} layers")
    if not 0 <= arch.mask_token_id < target.vocab_size:
        raise IncompatibleError(f"{where}: mask_token_id {arch.mask_token_id} outside the target vocab "
                                f"({target.vocab_size})")


def load_draft(id_or_path: str, target, fusion: Optional[bool] = None) -> DFlashDraftModel:
    directory = resolve_dir(id_or_path)
    cfg = read_config(directory)
    if fusion is None:
        fusion = any("dflare" in a.lower() for a in cfg.get("architectures", []))
    arch = arch_from_config(cfg, str(directory), fusion)
    check_against_target(arch, target, str(directory))
    with torch.device("meta"):
        shapes = DFlashDraftModel(arch).expected_shapes()
    aliases = {"model.": ""}  # some exports nest the tree under `model.`
    # only the drafter's keys: a corrector stored in the same directory reads its own
    own = load_state_dict(directory, None, aliases, claims=claims)
    from specforge_core.checkpoint import check_keys

    check_keys(own, shapes, str(directory))
    model = DFlashDraftModel(arch)
    model.load_state_dict(own, strict=True)
    return model


def save_draft(directory: Path, model: DFlashDraftModel, dtype: torch.dtype = torch.bfloat16,
               extra_tensors: Optional[dict] = None, config_updates: Optional[dict] = None) -> None:
    architecture = "QwenDFlareDraftModel" if model.arch.fusion else "DFlashDraftModel"
    cfg = config_from_arch(model.arch, architecture)
    cfg["dtype"] = str(dtype).replace("torch.", "")
    if config_updates:
        for k, v in config_updates.items():
            if isinstance(v, dict) and isinstance(cfg.get(k), dict):
                cfg[k] = {**cfg[k], **v}
            else:
                cfg[k] = v
    tensors = {k: v.to(dtype) for k, v in model.state_dict().items()}
    tensors.update({k: v.to(dtype) for k, v in (extra_tensors or {}).items()})
    save_checkpoint(directory, cfg, tensors)
