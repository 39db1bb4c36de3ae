"""DFlash2 (z-lab) as a SpecForge parallel drafter.

One cycle is the reference ``dflash_generate`` loop's draft step: block = ``[anchor, MASK x (bs - 1)]``
at positions ``start .. start + bs - 1`` embedded with the target's raw embedding matrix times
``input_embedding_scale`` (reference ``_raw_input_embeddings``); one draft forward over
``[new context rows ; block]``; the draft KV cache keeps the context rows only (cropped back to
``start``); block rows ``1 .. bs - 1`` are the drafts. The block carries the hidden states and lazy
base logits = the target's lm_head, then ``output_multiplier`` / ``final_logit_softcapping``
(reference ``compute_logits``), so the engine (or any corrector: domino, markov, ...) samples
from them. z-lab's drafting rescores the base top-K with DFlash2's candidate selector: that is the
``selector`` corrector (``corrector.name: selector``, reading the ``candidate_selector.*`` keys of the
same directory); without a corrector the drafts are the base logits' (argmax at T = 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from specforge_core.errors import RecipeError
from specforge_core.interfaces import DraftBlock, DraftContext, Drafter
from specforge_core.projection import project_rows
from specforge_dflash.model import default_target_layer_ids

from .layout import _int, arch_from_config, claims, check_against_target, draft_value, load_draft, read_tensors, save_draft
from .model import FULL, DFlash2Arch, DFlash2DraftModel

Tensor = torch.Tensor

# a fresh drafter's DFlash2 fields when drafter.options.config does not give them
FRESH_DEFAULTS = {"conv_kernel_size": 2, "conv_group_size": 16}


@dataclass
class DFlash2Options:
    # a fresh (untrained) drafter when drafter.checkpoint is null: config.json fields (top level or
    # dflash_config names) overriding the defaults derived from the target - num_hidden_layers (1, or
    # len(layer_types)), intermediate_size, target_layer_ids, mask_token_id, conv_kernel_size (2), conv_group_size (16),
    # layer_types, sliding_window, output_multiplier (1.0),
    # final_logit_softcapping (null), input_embedding_scale (1.0), initializer_range (0.02), ...
    config: Optional[Dict[str, Any]] = None
    init_seed: int = 0


class DFlash2Drafter(Drafter):
    """DFlash2 block-parallel drafter (z-lab checkpoint layout)."""

    Options = DFlash2Options
    parallel = True
    description = "DFlash2 block drafter (z-lab): DFlash + dynamic causal convs, sliding layers, softcapped logits"

    def __init__(self, options: DFlash2Options, block_size: int, checkpoint: Optional[str] = None):
        super().__init__(options, block_size, checkpoint)
        if checkpoint is not None and options.config is not None:
            raise RecipeError("drafter: give drafter.checkpoint or drafter.options.config, not both")
        self.model: Optional[DFlash2DraftModel] = None
        self.reset()

    # ---- set-up -------------------------------------------------------------------------
    @classmethod
    def checkpoint_block_size(cls, checkpoint: str) -> Optional[int]:
        from specforge_core.checkpoint import read_config, resolve_dir

        directory = resolve_dir(checkpoint)
        value = draft_value(read_config(directory), "block_size")
        return None if value is None else _int(value, "block_size", f"{directory}/config.json")

    def bind(self, target) -> None:
        if self.checkpoint is not None:
            model = load_draft(self.checkpoint, target)
            model.arch.block_size = self.block_size
        else:
            config = dict(self.options.config or {})
            std = float(config.pop("initializer_range", 0.02))
            arch = fresh_arch(target, config, self.block_size)
            check_against_target(arch, target, "drafter.options.config")
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(self.options.init_seed))
                model = DFlash2DraftModel(arch)
                init_weights(model, std)
        self.attach(model.to_runtime(target.device, target.dtype), target)

    def attach(self, model: DFlash2DraftModel, target) -> None:
        """Use ``model`` with ``target``'s embedding matrix and lm_head (borrowed, never copied)."""
        self.model = model
        self.arch: DFlash2Arch = model.arch
        self.embed_tokens = target.adapter.embed_tokens
        self.lm_head = target.adapter.lm_head
        self.device = target.device

    @classmethod
    def claims(cls, key: str) -> bool:  # the DFlash2 network's keys (layout.OWN_PREFIXES)
        return claims(key)

    @property
    def hidden_size(self) -> Optional[int]:  # d of the block's hidden states (after bind)
        arch = getattr(self, "arch", None)
        return None if arch is None else arch.hidden_size

    @property
    def context_layers(self):
        return tuple(self.arch.target_layer_ids)

    # ---- per request --------------------------------------------------------------------
    def reset(self) -> None:
        self.cache = DynamicCache()
        self.pending: Optional[Tensor] = None  # [b, rows, T*H] context rows not yet in the draft cache

    def commit(self, num_new_rows: int, context_features: Optional[Tensor]) -> None:
        if context_features is None:
            return
        self.pending = context_features if self.pending is None else torch.cat([self.pending, context_features], 1)

    def block_embeddings(self, block_ids: Tensor) -> Tensor:
        """Reference ``_raw_input_embeddings``: ``F.embedding(ids, W_embed) * input_embedding_scale``."""
        return F.embedding(block_ids, self.embed_tokens.weight) * float(self.arch.input_embedding_scale)

    def logits(self, hidden: Tensor) -> Tensor:
        """Base logits [.., V] (float32) of block states: lm_head, then the reference's
        ``compute_logits`` (multiplier, softcap) in the head's dtype."""
        return self.model.compute_logits(project_rows(hidden, self.lm_head)).float()

    @torch.inference_mode()
    def draft(self, ctx: DraftContext) -> DraftBlock:
        start = ctx.tokens.shape[1] - 1  # position of the anchor
        rows = max(1, min(self.block_size, ctx.max_draft + 1))  # k drafts need k + 1 block rows
        b = ctx.tokens.shape[0]
        block_ids = torch.full((b, rows), self.arch.mask_token_id, dtype=torch.long, device=self.device)
        block_ids[:, 0] = ctx.anchor
        cached = self.cache.get_seq_length()
        width = len(self.arch.target_layer_ids) * self.arch.hidden_size
        new_ctx = self.pending if self.pending is not None else self.embed_tokens.weight.new_zeros(b, 0, width)
        assert cached + new_ctx.shape[1] == start, "context rows out of step with committed tokens"
        positions = torch.arange(cached, start + rows, device=self.device)[None].expand(b, -1)
        hidden = self.model(self.block_embeddings(block_ids), new_ctx, positions, cache=self.cache)  # [b, rows, H]
        self.pending = None
        self.cache.crop(start - self.cache.get_seq_length())  # keep context rows only (crop(-n) drops n)
        hidden = hidden[:, 1:][:, : max(ctx.max_draft, 0)]  # [b, drafts, H]
        return DraftBlock(hidden=hidden, project=self.logits, anchor=ctx.anchor)

    def project_logits(self, hidden: Tensor) -> Tensor:
        return self.model.compute_logits(self.lm_head(hidden))

    # ---- checkpoints ----------------------------------------------------------------------
    def save_pretrained(self, directory, dtype: Optional[torch.dtype] = None, extra_tensors=None,
                        config_updates=None) -> None:
        save_draft(Path(directory), self.model, dtype=dtype or next(self.model.parameters()).dtype,
                   extra_tensors=extra_tensors, config_updates=config_updates)

    def load_weights(self, directory) -> None:
        from specforge_core.checkpoint import check_keys

        tensors = read_tensors(Path(directory))
        check_keys(tensors, self.model.expected_shapes(), str(directory))
        dtype = next(self.model.parameters()).dtype
        self.model.load_state_dict({k: v.to(dtype) for k, v in tensors.items()})


def fresh_arch(target, overrides: Dict[str, Any], block_size: int) -> DFlash2Arch:
    """A new drafter for ``target``: its Qwen3 shapes and FRESH_DEFAULTS unless ``overrides`` (a
    config.json-like dict, DFlash2 fields at the top level or under ``dflash_config``) says otherwise;
    validated by the checkpoint parser, so a bad field fails the same way."""
    tc = target.model.config
    tc = tc.get_text_config() if hasattr(tc, "get_text_config") else tc
    o = dict(overrides)
    dcfg = dict(o.pop("dflash_config", None) or {})
    known = {"hidden_size", "vocab_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
             "head_dim", "intermediate_size", "rms_norm_eps", "rope_theta", "max_position_embeddings",
             "attention_bias", "layer_types", "sliding_window", "use_sliding_window", "is_causal",
             "num_target_layers", "mask_token_id", "target_layer_ids", "conv_kernel_size", "conv_group_size",
             "output_multiplier", "final_logit_softcapping",
             "input_embedding_scale"}
    unknown = set(o) - known
    if unknown:
        raise RecipeError(f"drafter.options.config: unknown field(s) {', '.join(sorted(unknown))}")
    heads = int(o.pop("num_attention_heads", tc.num_attention_heads))
    layers = int(o.pop("num_hidden_layers", len(o.get("layer_types") or [FULL])))  # 1 unless layer_types says
    L = target.num_layers
    tok = target.tokenizer
    mask_id = len(tok) if tok is not None and len(tok) < target.vocab_size else target.vocab_size - 1
    cfg = {
        "hidden_size": target.hidden_size, "vocab_size": target.vocab_size, "num_hidden_layers": layers,
        "num_attention_heads": heads, "num_key_value_heads": getattr(tc, "num_key_value_heads", None) or heads,
        "head_dim": getattr(tc, "head_dim", None) or target.hidden_size // heads,
        "intermediate_size": tc.intermediate_size, "rms_norm_eps": float(getattr(tc, "rms_norm_eps", 1e-6)),
        "rope_theta": 1e6, "max_position_embeddings": target.context_length, "num_target_layers": L,
        "layer_types": [FULL] * layers,
    }
    cfg.update(o)
    if "sliding_window" in o and "use_sliding_window" not in o:
        cfg["use_sliding_window"] = True
    ids = draft_value({**cfg, "dflash_config": dcfg}, "target_layer_ids")
    if ids is None:
        ids = [min(max(i, 0), L - 1) for i in default_target_layer_ids(L, layers)]
    cfg["dflash_config"] = {**FRESH_DEFAULTS, "mask_token_id": mask_id, "block_size": block_size,
                            **{k: cfg.pop(k) for k in list(cfg) if k in FRESH_DEFAULTS or k in (
                                "mask_token_id", "output_multiplier", "final_logit_softcapping",
                                "input_embedding_scale")},
                            **dcfg, "target_layer_ids": [int(i) for i in ids]}
    cfg.pop("target_layer_ids", None)
    return arch_from_config(cfg, "drafter.options.config")


def init_weights(model: DFlash2DraftModel, std: float) -> None:
    """Linear weights and conv base kernels normal(0, std); norms stay at 1."""
    for name, p in model.named_parameters():
        if not name.endswith("norm.weight"):
            torch.nn.init.normal_(p, std=std)
