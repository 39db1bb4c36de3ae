"""The DFlash draft network (z-lab/dflash; reference-implementations.md section 1), and the
DFlare variant (AngelSlim; section 3) as a flag.

A small Qwen3-style stack with no embeddings and no lm_head of its own (both borrowed from
the target). Every layer attends from the block's queries to keys / values of
``[context rows ; block rows]``, with **no mask inside the block** (bidirectional) and all
committed context visible. Context = target hidden states of ``target_layer_ids``:

* DFlash: ``ctx = hidden_norm(fc(cat_l h_l))`` - one projected context shared by every layer;
* DFlare: per draft layer ``d``, ``ctx_d = hidden_norm(sum_t softmax(W[d])_t h_t)`` with
  ``W = layer_fusion_weights [D, T]``, and separate ``k_proj_target`` / ``v_proj_target``
  projecting the context (``k_proj`` / ``v_proj`` serve the block only).

State-dict keys match the published checkpoints exactly (no ``model.`` prefix):
``fc.weight`` | ``layer_fusion_weights``, ``hidden_norm.weight``, ``norm.weight``,
``layers.{i}.{input_layernorm,post_attention_layernorm}.weight``,
``layers.{i}.self_attn.{q,k,v,o}_proj.weight``, ``layers.{i}.self_attn.{q,k}_norm.weight``,
(DFlare) ``layers.{i}.self_attn.{k,v}_proj_target.weight``, ``layers.{i}.mlp.{gate,up,down}_proj.weight``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .qwen3_parts import RMSNorm, RotaryEmbedding, SwiGLU, rotate_half

Tensor = torch.Tensor


def default_target_layer_ids(num_target_layers: int, num_draft_layers: int) -> list[int]:
    """z-lab's rule when ``dflash_config.target_layer_ids`` is missing:
    ``round(1 + i * (L - 4) / (D - 1))`` for ``i < D``; ``[L // 2]`` when ``D == 1``."""
    L, D = num_target_layers, num_draft_layers
    if D == 1:
        return [L // 2]
    return [int(round(1 + i * (L - 4) / (D - 1))) for i in range(D)]


@dataclass
class DraftArch:
    """Everything that shapes the network; read from / written to ``config.json``."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    target_layer_ids: list[int]
    mask_token_id: int
    block_size: int = 16
    num_target_layers: int = 36
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    max_position_embeddings: int = 40960
    fusion: bool = False  # DFlare's layer_fusion_weights + separate context projections
    shift_label: bool = False  # Domino: block output j predicts token start+j+1 (bs drafts, not bs-1)
    extra: dict = field(default_factory=dict)  # other config.json fields, kept on save


class DraftAttention(nn.Module):
    def __init__(self, arch: DraftArch, layer_idx: int):
        super().__init__()
        H, nh, nkv, hd = arch.hidden_size, arch.num_attention_heads, arch.num_key_value_heads, arch.head_dim
        self.layer_idx, self.nh, self.nkv, self.hd = layer_idx, nh, nkv, hd
        self.q_proj = nn.Linear(H, nh * hd, bias=False)
        self.k_proj = nn.Linear(H, nkv * hd, bias=False)
        self.v_proj = nn.Linear(H, nkv * hd, bias=False)
        self.o_proj = nn.Linear(nh * hd, H, bias=False)
        self.q_norm = RMSNorm(hd, eps=arch.rms_norm_eps)
        self.k_norm = RMSNorm(hd, eps=arch.rms_norm_eps)
        if arch.fusion:  # DFlare: the context gets its own K / V projections
            self.k_proj_target = nn.Linear(H, nkv * hd, bias=False)
            self.v_proj_target = nn.Linear(H, nkv * hd, bias=False)

    def forward(self, h: Tensor, ctx: Tensor, cos: Tensor, sin: Tensor, cache=None,
                mask: Optional[Tensor] = None) -> Tensor:
        """h [b, q, H] block states, ctx [b, c, H] new context rows; cos / sin [b, c + q, hd]
        for positions ``[ctx ; block]``; mask [b|1, 1, q, kv] bool (None = attend everything)."""
        b, q, _ = h.shape
        c = ctx.shape[1]
        k_ctx_proj = getattr(self, "k_proj_target", self.k_proj)
        v_ctx_proj = getattr(self, "v_proj_target", self.v_proj)
        queries = self.q_norm(self.q_proj(h).view(b, q, self.nh, self.hd)).transpose(1, 2)  # [b, nh, q, hd]
        keys = torch.cat([k_ctx_proj(ctx), self.k_proj(h)], 1).view(b, c + q, self.nkv, self.hd)
        keys = self.k_norm(keys).transpose(1, 2)  # [b, nkv, c+q, hd]
        values = torch.cat([v_ctx_proj(ctx), self.v_proj(h)], 1).view(b, c + q, self.nkv, self.hd).transpose(1, 2)
        cos, sin = cos[:, None], sin[:, None]  # [b, 1, c+q, hd]
        queries = queries * cos[:, :, c:] + rotate_half(queries) * sin[:, :, c:]
        keys = keys * cos + rotate_half(keys) * sin
        if cache is not None:  # prepend the cached context rows of earlier cycles
            keys, values = cache.update(keys, values, self.layer_idx)
        out = F.scaled_dot_product_attention(queries, keys, values, attn_mask=mask, enable_gqa=True)
        return self.o_proj(out.transpose(1, 2).reshape(b, q, self.nh * self.hd))


class DraftLayer(nn.Module):
    def __init__(self, arch: DraftArch, layer_idx: int):
        super().__init__()
        self.input_layernorm = RMSNorm(arch.hidden_size, eps=arch.rms_norm_eps)
        self.self_attn = DraftAttention(arch, layer_idx)
        self.post_attention_layernorm = RMSNorm(arch.hidden_size, eps=arch.rms_norm_eps)
        self.mlp = SwiGLU(arch.hidden_size, arch.intermediate_size)

    def forward(self, h, ctx, cos, sin, cache=None, mask=None):
        h = h + self.self_attn(self.input_layernorm(h), ctx, cos, sin, cache, mask)
        return h + self.mlp(self.post_attention_layernorm(h))


class DFlashDraftModel(nn.Module):
    def __init__(self, arch: DraftArch):
        super().__init__()
        self.arch = arch
        H, T, D = arch.hidden_size, len(arch.target_layer_ids), arch.num_hidden_layers
        if arch.fusion:
            # DFlare init: zeros, then 2.0 on target layer min(T-1, int(d / D * T)) for draft layer d
            w = torch.zeros(D, T)
            for d in range(D):
                w[d, min(T - 1, int(d / D * T))] = 2.0
            self.layer_fusion_weights = nn.Parameter(w)
        else:
            self.fc = nn.Linear(T * H, H, bias=False)
        self.hidden_norm = RMSNorm(H, eps=arch.rms_norm_eps)
        self.layers = nn.ModuleList(DraftLayer(arch, i) for i in range(D))
        self.norm = RMSNorm(H, eps=arch.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(arch.head_dim, arch.rope_theta)

    def project_context(self, target_hidden: Tensor) -> list[Tensor]:
        """target_hidden [b, c, T*H] -> one context [b, c, H] per draft layer."""
        if self.arch.fusion:
            b, c, _ = target_hidden.shape
            per_layer = target_hidden.view(b, c, len(self.arch.target_layer_ids), self.arch.hidden_size)
            mix = self.layer_fusion_weights.softmax(-1).to(per_layer.dtype)  # [D, T]
            fused = self.hidden_norm(torch.einsum("bcth,dt->bcdh", per_layer, mix))  # [b, c, D, H]
            return list(fused.unbind(2))
        ctx = self.hidden_norm(self.fc(target_hidden))
        return [ctx] * len(self.layers)

    def forward(self, block_embeds: Tensor, target_hidden: Tensor, position_ids: Tensor, cache=None,
                mask: Optional[Tensor] = None) -> Tensor:
        """block_embeds [b, q, H] (target-embedded block ids), target_hidden [b, c, T*H] (new
        context rows), position_ids [b, c + q] -> final-normed block states [b, q, H]."""
        contexts = self.project_context(target_hidden.to(block_embeds.dtype))
        cos, sin = self.rotary_emb(block_embeds, position_ids)
        h = block_embeds
        for layer, ctx in zip(self.layers, contexts):
            h = layer(h, ctx, cos, sin, cache, mask)
        return self.norm(h)

    def expected_shapes(self) -> dict[str, tuple]:
        return {k: tuple(v.shape) for k, v in self.state_dict().items()}
