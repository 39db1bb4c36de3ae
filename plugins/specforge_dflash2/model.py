"""The DFlash2 draft network (z-lab ``dflash`` 0.1.0, ``dflash/model.py``), written for SpecForge.

DFlash2 = the DFlash block drafter (``specforge_dflash.model``) plus, per decoder layer, a
``GroupedDynamicCausalConv`` wrapped around the attention and around the MLP sublayer, optional
sliding-window (causal) layers, and ``output_multiplier`` / ``final_logit_softcapping`` on the
logits. Each class / function below names the reference piece it implements; equations and the
order of operations follow it exactly. The reference's ``CandidateSelector`` (its
``candidate_selector.*`` keys, ``selector_rank`` / ``selector_top_k``) is the ``selector`` corrector
plugin: ``drafter.name: dflash2`` + ``corrector.name: selector`` is z-lab's DFlash2 drafting.

State-dict keys = the z-lab checkpoint keys (no ``model.`` prefix):
``fc.weight``, ``hidden_norm.weight``, ``norm.weight``,
``layers.{i}.{input_layernorm,post_attention_layernorm}.weight``,
``layers.{i}.self_attn.{q,k,v,o}_proj.weight`` (+ ``.bias`` with ``attention_bias``),
``layers.{i}.self_attn.{q,k}_norm.weight``, ``layers.{i}.mlp.{gate,up,down}_proj.weight``,
``layers.{i}.{attention_conv,mlp_conv}.base_kernel`` ``[2, kernel, H]``,
``layers.{i}.{attention_conv,mlp_conv}.kernel_projection.weight`` ``[2 * kernel * H / group, H]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from specforge_dflash.qwen3_parts import RMSNorm, RotaryEmbedding, SwiGLU, rotate_half

Tensor = torch.Tensor

FULL, SLIDING = "full_attention", "sliding_attention"


@dataclass
class DFlash2Arch:
    """Everything that shapes the network; read from / written to ``config.json``."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    target_layer_ids: list
    mask_token_id: int
    conv_kernel_size: int
    conv_group_size: int
    block_size: int = 16
    num_target_layers: int = 36
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_position_embeddings: int = 40960
    attention_bias: bool = False
    layer_types: list = field(default_factory=list)  # FULL / SLIDING per draft layer ([] = all FULL)
    sliding_window: Optional[int] = None  # Qwen3Config: None unless use_sliding_window
    is_causal: Optional[bool] = None  # config.is_causal; None = causal exactly on sliding layers
    output_multiplier: float = 1.0
    final_logit_softcapping: Optional[float] = None
    input_embedding_scale: float = 1.0
    extra: dict = field(default_factory=dict)  # other config.json fields, kept on save

    def layer_type(self, i: int) -> str:
        return self.layer_types[i] if self.layer_types else FULL


# ---- GroupedDynamicCausalConv ---------------------------------------------------------------
def grouped_dynamic_convolve(hidden: Tensor, dynamic: Tensor, base: Tensor, group_size: int) -> Tensor:
    """Reference ``_grouped_dynamic_convolve``: a causal depthwise conv along the block axis,
    ``out[t] = sum_o (base[o] + dynamic[t, o, g]) * x[t - o]`` (x = 0 before the block start),
    ``base [K, H]`` per channel, ``dynamic [b, L, K, H / group_size]`` per position and channel
    group. hidden [b, L, H] -> [b, L, H]. Same accumulation order as the reference: for each tap,
    first the base term (``out + base * x``), then the dynamic one (``addcmul``)."""
    b, length, h = hidden.shape
    groups = h // group_size
    blocks = hidden.view(b, length, groups, group_size)
    dynamic = dynamic.view(b, length, base.shape[0], groups, 1)
    out = torch.zeros_like(blocks)
    for offset in range(base.shape[0]):
        shifted = blocks if offset == 0 else F.pad(blocks[:, :-offset], (0, 0, 0, 0, offset, 0))
        out = out + base[offset].view(1, 1, groups, group_size).to(hidden.dtype) * shifted
        out = torch.addcmul(out, dynamic[:, :, offset], shifted)
    return out.view_as(hidden)


class GroupedDynamicCausalConv(nn.Module):
    """Reference ``GroupedDynamicCausalConv``. One projection of the sublayer's (normed) input
    gives two dynamic kernels: ``prepare`` convolves the input with (``base_kernel[0]``, the
    first), ``finish`` convolves the sublayer's output with (``base_kernel[1]``, the second)."""

    def __init__(self, hidden_size: int, kernel_size: int, group_size: int):
        super().__init__()
        self.kernel_size, self.group_size = kernel_size, group_size
        groups = hidden_size // group_size
        self.base_kernel = nn.Parameter(torch.zeros(2, kernel_size, hidden_size))  # [2, K, H]
        self.kernel_projection = nn.Linear(hidden_size, 2 * kernel_size * groups, bias=False)

    def prepare(self, hidden: Tensor) -> "tuple[Tensor, Tensor]":
        groups = hidden.shape[-1] // self.group_size
        dynamic = self.kernel_projection(hidden).view(*hidden.shape[:-1], 2, self.kernel_size, groups)
        out = grouped_dynamic_convolve(hidden, dynamic[..., 0, :, :], self.base_kernel[0], self.group_size)
        return out, dynamic[..., 1, :, :]

    def finish(self, hidden: Tensor, dynamic: Tensor) -> Tensor:
        return grouped_dynamic_convolve(hidden, dynamic, self.base_kernel[1], self.group_size)


# ---- attention --------------------------------------------------------------------------------
def layer_mask(q_len: int, kv_len: int, is_causal: bool, window: Optional[int], device) -> Tensor:
    """Reference ``_attention_mask``: the queries are the last ``q_len`` of ``kv_len`` positions;
    causal: key <= query; window w: query - key < w (and key - query < w when not causal).
    -> bool [1, 1, q, kv] (True = attend)."""
    qpos = kv_len - q_len + torch.arange(q_len, device=device)[:, None]
    kpos = torch.arange(kv_len, device=device)[None, :]
    visible = torch.ones(q_len, kv_len, dtype=torch.bool, device=device)
    if is_causal:
        visible &= kpos <= qpos
    if window is not None:
        visible &= qpos - kpos < window
        if not is_causal:
            visible &= kpos - qpos < window
    return visible[None, None]


class DFlash2Attention(nn.Module):
    """Reference ``Qwen3DFlashAttention``: queries from the block, keys / values from
    ``[context rows ; block rows]`` (one k_proj / v_proj for both), q_norm / k_norm per head,
    RoPE (queries at the block's positions). Full layers see everything (no mask; the block is
    bidirectional); sliding layers are causal with a window unless ``config.is_causal`` says
    otherwise."""

    def __init__(self, arch: DFlash2Arch, layer_idx: int):
        super().__init__()
        H, nh, nkv, hd = arch.hidden_size, arch.num_attention_heads, arch.num_key_value_heads, arch.head_dim
        self.layer_idx, self.nh, self.nkv, self.hd = layer_idx, nh, nkv, hd
        bias = arch.attention_bias
        self.q_proj = nn.Linear(H, nh * hd, bias=bias)
        self.k_proj = nn.Linear(H, nkv * hd, bias=bias)
        self.v_proj = nn.Linear(H, nkv * hd, bias=bias)
        self.o_proj = nn.Linear(nh * hd, H, bias=bias)
        self.q_norm = RMSNorm(hd, eps=arch.rms_norm_eps)
        self.k_norm = RMSNorm(hd, eps=arch.rms_norm_eps)
        kind = arch.layer_type(layer_idx)
        self.is_causal = kind == SLIDING if arch.is_causal is None else bool(arch.is_causal)
        self.sliding_window = arch.sliding_window if kind == SLIDING else None

    def forward(self, h: Tensor, ctx: Tensor, cos: Tensor, sin: Tensor, cache=None) -> Tensor:
        """h [b, q, H] (conv-prepared) block states, ctx [b, c, H] new context rows,
        cos / sin [b, c + q, hd] for positions [ctx ; block] -> [b, q, H]."""
        b, q, _ = h.shape
        c = ctx.shape[1]
        queries = self.q_norm(self.q_proj(h).view(b, q, self.nh, self.hd)).transpose(1, 2)  # [b, nh, q, hd]
        keys = torch.cat([self.k_proj(ctx), self.k_proj(h)], 1).view(b, c + q, self.nkv, self.hd)
        keys = self.k_norm(keys).transpose(1, 2)  # [b, nkv, c+q, hd]
        values = torch.cat([self.v_proj(ctx), self.v_proj(h)], 1).view(b, c + q, self.nkv, self.hd).transpose(1, 2)
        cos, sin = cos[:, None], sin[:, None]  # [b, 1, c+q, hd]
        queries = queries * cos[:, :, c:] + rotate_half(queries) * sin[:, :, c:]
        keys = keys * cos + rotate_half(keys) * sin
        if cache is not None:  # prepend the cached context rows of earlier cycles
            keys, values = cache.update(keys, values, self.layer_idx)
        mask = None
        if self.is_causal or self.sliding_window is not None:
            mask = layer_mask(q, keys.shape[2], self.is_causal, self.sliding_window, h.device)
        out = F.scaled_dot_product_attention(queries, keys, values, attn_mask=mask, scale=self.hd ** -0.5,
                                             enable_gqa=True)
        return self.o_proj(out.transpose(1, 2).reshape(b, q, self.nh * self.hd))


class DFlash2Layer(nn.Module):
    """Reference ``Qwen3DFlashDecoderLayer`` with DFlash2's ``attention_conv`` / ``mlp_conv``:
    ``x = x + conv_a.finish(attn(conv_a.prepare(ln1(x))))``, then the same around the MLP."""

    def __init__(self, arch: DFlash2Arch, layer_idx: int):
        super().__init__()
        H = arch.hidden_size
        self.self_attn = DFlash2Attention(arch, layer_idx)
        self.mlp = SwiGLU(H, arch.intermediate_size)
        self.input_layernorm = RMSNorm(H, eps=arch.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(H, eps=arch.rms_norm_eps)
        self.attention_conv = GroupedDynamicCausalConv(H, arch.conv_kernel_size, arch.conv_group_size)
        self.mlp_conv = GroupedDynamicCausalConv(H, arch.conv_kernel_size, arch.conv_group_size)

    def forward(self, h, ctx, cos, sin, cache=None):
        x, kernel = self.attention_conv.prepare(self.input_layernorm(h))
        h = h + self.attention_conv.finish(self.self_attn(x, ctx, cos, sin, cache), kernel)
        x, kernel = self.mlp_conv.prepare(self.post_attention_layernorm(h))
        return h + self.mlp_conv.finish(self.mlp(x), kernel)


class DFlash2DraftModel(nn.Module):
    """Reference ``DFlash2DraftModel`` (= ``DFlashDraftModel`` + convs; its selector is the
    ``selector`` corrector): the context ``hidden_norm(fc(cat_l h_l))`` shared by every layer, the
    layer stack over the block, the final norm. Logits: ``compute_logits`` (reference ``DFlashDraftModel.compute_logits``)."""

    def __init__(self, arch: DFlash2Arch):
        super().__init__()
        self.arch = arch
        H, T = arch.hidden_size, len(arch.target_layer_ids)
        self.layers = nn.ModuleList(DFlash2Layer(arch, i) for i in range(arch.num_hidden_layers))
        self.norm = RMSNorm(H, eps=arch.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(arch.head_dim, arch.rope_theta)
        self.fc = nn.Linear(T * H, H, bias=False)
        self.hidden_norm = RMSNorm(H, eps=arch.rms_norm_eps)

    def forward(self, block_embeds: Tensor, target_hidden: Tensor, position_ids: Tensor, cache=None) -> Tensor:
        """block_embeds [b, q, H] (raw target embeddings x input_embedding_scale), target_hidden
        [b, c, T*H] (new context rows), position_ids [b, c + q] -> final-normed states [b, q, H]."""
        ctx = self.hidden_norm(self.fc(target_hidden.to(block_embeds.dtype)))
        cos, sin = self.rotary_emb(block_embeds, position_ids)
        h = block_embeds
        for layer in self.layers:
            h = layer(h, ctx, cos, sin, cache)
        return self.norm(h)

    def compute_logits(self, logits: Tensor) -> Tensor:
        """Reference ``compute_logits`` after the output head: ``logits * output_multiplier``, then,
        if ``final_logit_softcapping`` > 0, ``tanh(logits / cap) * cap`` (in the head's dtype)."""
        logits = logits * float(self.arch.output_multiplier)
        cap = self.arch.final_logit_softcapping
        if cap is not None and float(cap) > 0:
            logits = torch.tanh(logits / float(cap)) * float(cap)
        return logits

    def to_runtime(self, device, dtype) -> "DFlash2DraftModel":
        """``.to(device, dtype)`` with RoPE's ``inv_freq`` kept in float32, as the reference has it
        after ``from_pretrained(dtype=...)`` (a bf16 ``inv_freq`` moves the angles of long positions)."""
        self.to(device=device, dtype=dtype)
        self.rotary_emb.inv_freq = RotaryEmbedding(self.arch.head_dim, self.arch.rope_theta).inv_freq.to(device)
        return self

    def expected_shapes(self) -> dict:
        return {k: tuple(v.shape) for k, v in self.state_dict().items()}
