"""z-lab's DFlash2 checkpoint layout: ``config.json`` (Qwen3 fields, ``layer_types`` /
``sliding_window`` / ``use_sliding_window``, and a ``dflash_config`` with ``mask_token_id``,
``target_layer_ids``, ``block_size``, ``conv_kernel_size``, ``conv_group_size``, ``output_multiplier``,
``final_logit_softcapping``, ``input_embedding_scale``) + ``model.safetensors`` with the keys of
``model.py``. Read offline with safetensors, no ``trust_remote_code``. The selector's part of a
z-lab directory (``candidate_selector.*``, ``dflash_config.selector_rank`` / ``selector_top_k``) is
claimed and read by the ``selector`` corrector; this drafter carries those fields through untouched.

Field lookup mirrors the reference: ``_draft_value(config, name)`` = ``dflash_config[name]``, else the
top-level field; the Qwen3 fields take ``transformers.Qwen3Config``'s defaults (the reference loads
the config as a ``Qwen3Config``) - in particular ``sliding_window`` counts only with
``use_sliding_window: true``, and a sliding layer without a window is causal with no window.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from specforge_core.checkpoint import check_keys, load_state_dict, read_config, resolve_dir, save_checkpoint
from specforge_core.errors import IncompatibleError, ModelLoadError
from specforge_dflash.model import default_target_layer_ids

from .model import FULL, SLIDING, DFlash2Arch, DFlash2DraftModel

ARCHITECTURE = "DFlash2DraftModel"
# the DFlash2 network's own keys (model.py), as stored: optionally nested under `model.`; a
# corrector stored in the same directory (the selector, Domino, Markov) claims and reads its own
OWN_PREFIXES = ("layers.", "fc.", "hidden_norm.", "norm.")


def claims(key: str) -> bool:
    name = key[len("model."):] if key.startswith("model.") else key
    return name.startswith(OWN_PREFIXES)

# dflash_config fields DFlash2Arch owns
_DFLASH_OWN = {"mask_token_id", "target_layer_ids", "block_size", "conv_kernel_size", "conv_group_size",
               "output_multiplier", "final_logit_softcapping",
               "input_embedding_scale"}
# top-level config.json fields DFlash2Arch owns; everything else is carried through untouched
_OWN = _DFLASH_OWN | {
    "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
    "intermediate_size", "vocab_size", "rms_norm_eps", "rope_theta", "rope_parameters", "rope_scaling",
    "max_position_embeddings", "num_target_layers", "dflash_config", "architectures", "model_type",
    "layer_types", "sliding_window", "use_sliding_window", "max_window_layers", "is_causal",
    "attention_bias", "tie_word_embeddings", "dtype", "torch_dtype", "hidden_act"}


def draft_value(cfg: dict, name: str, default=None):
    """Reference ``_draft_value``: ``dflash_config[name]``, else the top-level field, else default."""
    return (cfg.get("dflash_config") or {}).get(name, cfg.get(name, default))


def _int(value, name: str, where: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ModelLoadError(f"{where}: {name} must be an integer >= {minimum} (got {value!r})")
    return value


def arch_from_config(cfg: dict, where: str) -> DFlash2Arch:
    """config.json -> DFlash2Arch; a missing or bad field is a one-line error naming it."""
    def need(name):
        value = draft_value(cfg, name)
        if value is None:
            raise ModelLoadError(f"{where}: missing field dflash_config.{name}")
        return value

    for name in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size"):
        if name not in cfg:
            raise ModelLoadError(f"{where}: missing field {name}")
    H, D = _int(cfg["hidden_size"], "hidden_size", where), _int(cfg["num_hidden_layers"], "num_hidden_layers", where)
    V = _int(cfg["vocab_size"], "vocab_size", where)
    if cfg.get("hidden_act", "silu") != "silu":
        raise ModelLoadError(f"{where}: hidden_act {cfg['hidden_act']!r} is not supported (Qwen3's silu only)")
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise ModelLoadError(f"{where}: rope_parameters.rope_type {rope.get('rope_type')!r} is not supported "
                             "(default RoPE only)")
    use_window = bool(cfg.get("use_sliding_window", False))
    window = cfg.get("sliding_window", 4096) if use_window else None
    layer_types = cfg.get("layer_types")
    if layer_types is None:  # Qwen3Config's rule
        layer_types = [SLIDING if window is not None and i >= int(cfg.get("max_window_layers", 28)) else FULL
                       for i in range(D)]
    layer_types = list(layer_types)
    if len(layer_types) != D or set(layer_types) - {FULL, SLIDING}:
        raise ModelLoadError(f"{where}: layer_types must list {D} of {FULL!r} / {SLIDING!r} (got {layer_types})")
    if window is not None:
        window = _int(window, "sliding_window", where)
    L = int(cfg.get("num_target_layers", 36))
    ids = draft_value(cfg, "target_layer_ids") or default_target_layer_ids(L, D)
    heads = _int(cfg["num_attention_heads"], "num_attention_heads", where)
    nkv = cfg.get("num_key_value_heads", 32)  # Qwen3Config's defaults
    group = _int(need("conv_group_size"), "dflash_config.conv_group_size", where)
    if H % group:
        raise ModelLoadError(f"{where}: dflash_config.conv_group_size {group} does not divide hidden_size {H}")
    cap = draft_value(cfg, "final_logit_softcapping")
    dcfg = cfg.get("dflash_config") or {}
    return DFlash2Arch(
        hidden_size=H, num_hidden_layers=D, num_attention_heads=heads,
        num_key_value_heads=heads if nkv is None else _int(nkv, "num_key_value_heads", where),
        head_dim=_int(cfg.get("head_dim", 128), "head_dim", where),
        intermediate_size=_int(cfg["intermediate_size"], "intermediate_size", where), vocab_size=V,
        target_layer_ids=[int(i) for i in ids], mask_token_id=_int(need("mask_token_id"), "dflash_config.mask_token_id", where, 0),
        conv_kernel_size=_int(need("conv_kernel_size"), "dflash_config.conv_kernel_size", where),
        conv_group_size=group, block_size=_int(draft_value(cfg, "block_size", 16), "block_size", where),
        num_target_layers=L, rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        rope_theta=float(cfg.get("rope_theta", rope.get("rope_theta", 10000.0))),
        max_position_embeddings=int(cfg.get("max_position_embeddings", 32768)),
        attention_bias=bool(cfg.get("attention_bias", False)), layer_types=layer_types, sliding_window=window,
        is_causal=cfg.get("is_causal"), output_multiplier=float(draft_value(cfg, "output_multiplier", 1.0)),
        final_logit_softcapping=None if cap is None else float(cap),
        input_embedding_scale=float(draft_value(cfg, "input_embedding_scale", 1.0)),
        extra={**{k: v for k, v in cfg.items() if k not in _OWN},
               "dflash_config_extra": {k: v for k, v in dcfg.items() if k not in _DFLASH_OWN}},
    )


def config_from_arch(arch: DFlash2Arch) -> dict:
    cfg = dict(arch.extra)
    extra_d = cfg.pop("dflash_config_extra", None) or {}
    sliding = SLIDING in arch.layer_types
    cfg.update(
        architectures=[ARCHITECTURE], model_type="qwen3", hidden_size=arch.hidden_size,
        num_hidden_layers=arch.num_hidden_layers, num_attention_heads=arch.num_attention_heads,
        num_key_value_heads=arch.num_key_value_heads, head_dim=arch.head_dim,
        intermediate_size=arch.intermediate_size, vocab_size=arch.vocab_size, rms_norm_eps=arch.rms_norm_eps,
        rope_theta=arch.rope_theta, max_position_embeddings=arch.max_position_embeddings,
        layer_types=[arch.layer_type(i) for i in range(arch.num_hidden_layers)],
        use_sliding_window=sliding and arch.sliding_window is not None, sliding_window=arch.sliding_window,
        attention_bias=arch.attention_bias, tie_word_embeddings=False, hidden_act="silu",
        block_size=arch.block_size, num_target_layers=arch.num_target_layers,
        dflash_config={**extra_d, "mask_token_id": arch.mask_token_id, "target_layer_ids": list(arch.target_layer_ids),
                       "block_size": arch.block_size, "conv_kernel_size": arch.conv_kernel_size,
                       "conv_group_size": arch.conv_group_size, "output_multiplier": arch.output_multiplier,
                       "final_logit_softcapping": arch.final_logit_softcapping,
                       "input_embedding_scale": arch.input_embedding_scale},
    )
    if arch.is_causal is not None:
        cfg["is_causal"] = arch.is_causal
    return cfg


def check_against_target(arch: DFlash2Arch, target, where: str) -> None:
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


def read_tensors(directory: Path) -> dict:
    """The checkpoint's own tensors (``claims``), ``model.`` prefix dropped; other keys are left to
    their owners."""
    return {k: v for k, v in load_state_dict(Path(directory), None, {"model.": ""}).items() if claims(k)}


def load_draft(id_or_path: str, target) -> DFlash2DraftModel:
    directory = resolve_dir(id_or_path)
    arch = arch_from_config(read_config(directory), str(directory))
    check_against_target(arch, target, str(directory))
    with torch.device("meta"):
        shapes = DFlash2DraftModel(arch).expected_shapes()
    tensors = read_tensors(directory)
    check_keys(tensors, shapes, str(directory))
    model = DFlash2DraftModel(arch)
    model.load_state_dict(tensors, strict=True)
    return model


def save_draft(directory: Path, model: DFlash2DraftModel, dtype: torch.dtype = torch.bfloat16,
               extra_tensors: Optional[dict] = None, config_updates: Optional[dict] = None) -> None:
    cfg = config_from_arch(model.arch)
    cfg["dtype"] = str(dtype).replace("torch.", "")
    for k, v in (config_updates or {}).items():
        cfg[k] = {**cfg[k], **v} if isinstance(v, dict) and isinstance(cfg.get(k), dict) else v
    tensors = {k: v.to(dtype) for k, v in model.state_dict().items()}
    tensors.update({k: v.to(dtype) for k, v in (extra_tensors or {}).items()})
    save_checkpoint(Path(directory), cfg, tensors)
