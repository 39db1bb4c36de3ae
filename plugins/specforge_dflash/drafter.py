"""DFlash (and, with ``fusion = True``, DFlare) as a SpecForge parallel drafter.

Per cycle (reference-implementations.md section 1, "Generation loop"):
  block = [anchor, MASK x (bs - 1)] at positions start .. start + bs - 1 (start = anchor position)
  one draft forward over [new context rows ; block]; the draft KV cache keeps context rows only
  (cropped back to ``start`` afterwards); block output k predicts token start + k (DFlash), or
  start + k + 1 with ``shift_label`` (Domino checkpoints), so a block drafts bs - 1 (bs) tokens.
The drafter returns per-position ``hidden`` and a lazy ``project`` to base logits (the target's lm_head);
tokens are sampled from them by a Corrector or, without one, by the scheduler - with q = the
warped base distribution, so speculative sampling at T>0 is exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from transformers import DynamicCache

from specforge_core.errors import RecipeError
from specforge_core.interfaces import DraftBlock, DraftContext, Drafter
from specforge_core.projection import project_rows

from .layout import check_against_target, claims, load_draft, recorded_block_size, save_draft
from .model import DFlashDraftModel, DraftArch, default_target_layer_ids
from .static_draft import StaticDraft
from .training import block_training_loss, training_blocks

Tensor = torch.Tensor


@dataclass
class DFlashOptions:
    # a fresh (untrained) drafter when drafter.checkpoint is null: fields overriding the
    # defaults derived from the target (num_hidden_layers, intermediate_size, target_layer_ids,
    # mask_token_id, ...)
    config: Optional[Dict[str, Any]] = None
    init_seed: int = 0
    # a fresh drafter only: start draft layer d from the weights of target decoder layer
    # init_from_target_layers[d] (matching parameter names; q_norm / k_norm stay at 1 when the
    # target has none). Not in the DFlash paper; meant for small-data training, but on the
    # embedded default it did not raise held-out tau (docs/training.md), so no recipe uses it.
    init_from_target_layers: Optional[list] = None
    # the block forward on fixed buffers, replayed from a CUDA graph per context-row bucket
    # (static_draft.py); null = on when the target runs on CUDA; true on a CPU runs the same padded
    # forward eagerly (tests); false = transformers' DynamicCache path
    cuda_graphs: Optional[bool] = None


class DFlashDrafter(Drafter):
    """DFlash block-parallel drafter: one forward drafts a whole block from target features."""

    Options = DFlashOptions
    parallel = True
    fusion = False  # DFlare overrides

    def __init__(self, options: DFlashOptions, block_size: int, checkpoint: Optional[str] = None):
        super().__init__(options, block_size, checkpoint)
        if checkpoint is not None and options.config is not None:
            raise RecipeError("drafter: give drafter.checkpoint or drafter.options.config, not both")
        self.model: Optional[DFlashDraftModel] = None
        self.reset()

    # ---- set-up -------------------------------------------------------------------------
    @classmethod
    def checkpoint_block_size(cls, checkpoint: str) -> Optional[int]:
        """The block size ``checkpoint``'s config.json records (None if none): the one it runs
        at unless the recipe sets ``drafter.block_size`` (specforge_core.build.drafter_block_size)."""
        from specforge_core.checkpoint import read_config, resolve_dir

        directory = resolve_dir(checkpoint)
        return recorded_block_size(read_config(directory), str(directory))

    def bind(self, target) -> None:
        if self.checkpoint is not None:
            model = load_draft(self.checkpoint, target, fusion=self.fusion)
            # the block size in force (the recipe may override the checkpoint's): training
            # blocks and a re-saved config.json use it too
            model.arch.block_size = self.block_size
        else:
            arch = fresh_arch(target, self.options.config or {}, fusion=self.fusion, block_size=self.block_size)
            check_against_target(arch, target, "drafter.options.config")
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(self.options.init_seed))
                model = DFlashDraftModel(arch)
                init_weights(model, float((self.options.config or {}).get("initializer_range", 0.02)))
            if self.options.init_from_target_layers is not None:
                init_from_target_layers(model, target, list(self.options.init_from_target_layers))
        self.attach(model.to(device=target.device, dtype=target.dtype), target)
        graphs = self.options.cuda_graphs
        use = target.device.type == "cuda" if graphs is None else bool(graphs)
        self.static = StaticDraft(self.model, target.device, cuda_graphs=use) if use else None
        self.reset()

    def attach(self, model: DFlashDraftModel, target) -> None:
        """Use ``model`` with ``target``'s embeddings and lm_head (borrowed, never copied)."""
        self.model = model
        self.arch: DraftArch = model.arch
        self.embed_tokens = target.adapter.embed_tokens
        self.lm_head = target.adapter.lm_head
        self.device = target.device

    @classmethod
    def claims(cls, key: str) -> bool:  # the DFlash network's keys (layout.OWN_PREFIXES)
        return claims(key)

    @property
    def hidden_size(self) -> Optional[int]:  # d of the block's hidden states (after bind)
        arch = getattr(self, "arch", None)
        return None if arch is None else arch.hidden_size

    @property
    def context_layers(self):
        return tuple(self.arch.target_layer_ids)

    @property
    def drafts_per_block(self) -> int:
        return self.block_size if self.arch.shift_label else self.block_size - 1

    # ---- per request --------------------------------------------------------------------
    def reset(self) -> None:
        self.cache = DynamicCache()
        self.pending: Optional[Tensor] = None  # [b, rows, T*H] context rows not yet in the draft cache
        if getattr(self, "static", None) is not None:
            self.static.reset()

    def commit(self, num_new_rows: int, context_features: Optional[Tensor]) -> None:
        if context_features is None:
            return
        self.pending = context_features if self.pending is None else torch.cat([self.pending, context_features], 1)

    @torch.inference_mode()
    def draft(self, ctx: DraftContext) -> DraftBlock:
        start = ctx.tokens.shape[1] - 1  # position of the anchor
        shift = 1 if self.arch.shift_label else 0
        # a shorter block when the budget is small: k drafts need k + 1 - shift block rows
        rows = max(1, min(self.block_size, ctx.max_draft + 1 - shift))
        b = ctx.tokens.shape[0]
        block_ids = torch.full((b, rows), self.arch.mask_token_id, dtype=torch.long, device=self.device)
        block_ids[:, 0] = ctx.anchor
        static = getattr(self, "static", None)
        cached = static.cache.length if static is not None else self.cache.get_seq_length()
        new_ctx = self.pending if self.pending is not None else self.embed_tokens.weight.new_zeros(b, 0, len(self.arch.target_layer_ids) * self.arch.hidden_size)
        assert cached + new_ctx.shape[1] == start, "context rows out of step with committed tokens"
        if static is not None:  # fixed buffers (+ CUDA graph): keeps the context rows, drops the block's
            hidden = static.forward(self.embed_tokens(block_ids), new_ctx)  # [b, rows, H]
        else:
            positions = torch.arange(cached, start + rows, device=self.device)[None].expand(b, -1)
            hidden = self.model(self.embed_tokens(block_ids), new_ctx, positions, cache=self.cache)  # [b, rows, H]
            self.cache.crop(start - self.cache.get_seq_length())  # keep context rows only (crop(-n) drops n)
        self.pending = None
        hidden = hidden if shift else hidden[:, 1:]  # [b, drafts, H]
        hidden = hidden[:, : max(ctx.max_draft, 0)]
        lm_head = self.lm_head
        return DraftBlock(hidden=hidden, project=lambda h: project_rows(h, lm_head).float(), anchor=ctx.anchor)

    # ---- training -------------------------------------------------------------------------
    def training_module(self) -> torch.nn.Module:
        return self.model

    def training_loss(self, batch: Dict[str, Tensor]) -> Dict[str, Tensor]:
        return block_training_loss(self.model, self.embed_tokens, self.lm_head, batch)

    def training_blocks(self, batch: Dict[str, Tensor]) -> Dict[str, Tensor]:
        return training_blocks(self.model, self.embed_tokens, batch)

    def project_logits(self, hidden: Tensor) -> Tensor:
        return self.lm_head(hidden)

    def save_pretrained(self, directory, dtype: Optional[torch.dtype] = None, extra_tensors=None,
                        config_updates=None) -> None:
        save_draft(Path(directory), self.model, dtype=dtype or next(self.model.parameters()).dtype,
                   extra_tensors=extra_tensors, config_updates=config_updates)

    def load_weights(self, directory) -> None:
        from specforge_core.checkpoint import check_keys, load_state_dict

        tensors = load_state_dict(Path(directory), None, {"model.": ""}, claims=claims)
        check_keys(tensors, self.model.expected_shapes(), str(directory))
        self.model.load_state_dict({k: v.to(next(self.model.parameters()).dtype) for k, v in tensors.items()})


def fresh_arch(target, overrides: Dict[str, Any], fusion: bool, block_size: int) -> DraftArch:
    """Architecture of a new drafter for ``target``: Qwen3 shapes of the target unless overridden."""
    tc = target.model.config
    tc = tc.get_text_config() if hasattr(tc, "get_text_config") else tc
    o = dict(overrides)
    o.pop("initializer_range", None)
    heads = int(o.pop("num_attention_heads", tc.num_attention_heads))
    layers = int(o.pop("num_hidden_layers", 1))
    L = target.num_layers
    ids = o.pop("target_layer_ids", None)
    if ids is None:
        ids = [min(max(i, 0), L - 1) for i in default_target_layer_ids(L, layers)]
    tok = target.tokenizer
    mask_id = o.pop("mask_token_id", None)
    if mask_id is None:  # the first id past the tokenizer (as Qwen3's 151669), else the last id
        mask_id = len(tok) if tok is not None and len(tok) < target.vocab_size else target.vocab_size - 1
    arch = DraftArch(
        hidden_size=target.hidden_size, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=int(o.pop("num_key_value_heads", getattr(tc, "num_key_value_heads", heads))),
        head_dim=int(o.pop("head_dim", getattr(tc, "head_dim", None) or target.hidden_size // heads)),
        intermediate_size=int(o.pop("intermediate_size", tc.intermediate_size)), vocab_size=target.vocab_size,
        target_layer_ids=[int(i) for i in ids], mask_token_id=int(mask_id), block_size=block_size,
        num_target_layers=L, rms_norm_eps=float(o.pop("rms_norm_eps", getattr(tc, "rms_norm_eps", 1e-6))),
        rope_theta=float(o.pop("rope_theta", 1e6)), max_position_embeddings=target.context_length,
        fusion=fusion, shift_label=bool(o.pop("shift_label", False)),
    )
    if o:
        raise RecipeError(f"drafter.options.config: unknown field(s) {', '.join(sorted(o))}")
    return arch


def init_from_target_layers(model: DFlashDraftModel, target, layer_ids: list) -> None:
    """Copy target decoder layer ``layer_ids[d]`` into draft layer ``d`` wherever a parameter
    has the same name and shape (``self_attn.{q,k,v,o}_proj``, ``mlp.*``, the two layer norms)."""
    if len(layer_ids) != len(model.layers):
        raise RecipeError(f"drafter.options.init_from_target_layers: {len(layer_ids)} ids for "
                          f"{len(model.layers)} draft layers")
    for draft_layer, lid in zip(model.layers, layer_ids):
        if not 0 <= int(lid) < target.num_layers:
            raise RecipeError(f"drafter.options.init_from_target_layers: layer {lid} does not exist "
                              f"(the target has {target.num_layers})")
        source = target.adapter.layers[int(lid)].state_dict()
        own = draft_layer.state_dict()
        copied = {k: v for k, v in source.items() if k in own and own[k].shape == v.shape}
        if not any(k.startswith("self_attn.q_proj") for k in copied):
            raise RecipeError(f"drafter.options.init_from_target_layers: target layer {lid} has no "
                              "weights shaped like a draft layer's (different head counts?)")
        draft_layer.load_state_dict(copied, strict=False)


def init_weights(model: torch.nn.Module, std: float) -> None:
    """Qwen3's init: normal(0, std) for Linear weights; norms stay at 1; fusion weights keep theirs."""
    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            torch.nn.init.normal_(m.weight, std=std)
