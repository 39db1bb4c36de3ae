"""The Qwen3 building blocks the DFlash draft network is made of, written out here.

Why hand-written: transformers keeps ``Qwen3RMSNorm``, ``Qwen3MLP``, ``Qwen3RotaryEmbedding``
and ``rotate_half`` in the private ``transformers.models.qwen3.modeling_qwen3`` module, whose
names and signatures change between releases; each is a few lines. ``torch.nn.RMSNorm`` is
not a drop-in: it multiplies by the weight before casting back to the input dtype, Qwen3
after, so bf16 drafts would differ from the published checkpoints' training numerics.
Each block below computes exactly what the Qwen3 one does (checked bit for bit against a
transformers Qwen3 model's own modules in tests/test_dflash_parts.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

Tensor = torch.Tensor


class RMSNorm(nn.Module):
    """``y = w * (x / sqrt(mean(x^2) + eps))``, the normalisation in fp32, cast back to the
    input dtype before the weight multiply (Qwen3RMSNorm)."""

    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))  # [d]
        self.variance_epsilon = eps

    def forward(self, x: Tensor) -> Tensor:  # [.., d] -> [.., d]
        dtype = x.dtype
        x = x.to(torch.float32)
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * x.to(dtype)


class SwiGLU(nn.Module):
    """Qwen3's MLP: ``down(silu(gate(x)) * up(x))`` (``hidden_act = "silu"``), no biases."""

    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: Tensor) -> Tensor:  # [.., H] -> [.., H]
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class RotaryEmbedding(nn.Module):
    """Default RoPE (RoFormer): ``inv_freq_i = theta^(-2i / hd)``; for position p the angles
    are ``p * inv_freq`` repeated twice along the head dim. ``inv_freq`` is a non-persistent
    buffer (not in the checkpoint) and, as in transformers, follows the module's dtype."""

    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim))  # [hd/2]
        self.inv_freq = nn.Buffer(inv_freq, persistent=False)

    def forward(self, x: Tensor, position_ids: Tensor) -> "tuple[Tensor, Tensor]":
        """position_ids [b, n] -> cos, sin [b, n, hd] in ``x``'s dtype."""
        freqs = position_ids[..., None].float() * self.inv_freq.to(device=x.device, dtype=torch.float)
        angles = torch.cat((freqs, freqs), dim=-1)
        return angles.cos().to(x.dtype), angles.sin().to(x.dtype)


def rotate_half(x: Tensor) -> Tensor:
    """``[x1, x2] -> [-x2, x1]`` on the last dim: with cos / sin above, ``x * cos +
    rotate_half(x) * sin`` rotates each (x1_i, x2_i) pair by its angle."""
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)
