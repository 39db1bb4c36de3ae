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
    buffer (not in the checkpoint) that stays float32 when the module is cast (``.to(bf16)``), as
    in z-lab's reference after ``from_pretrained(dtype=...)``: a bf16 ``inv_freq`` moves the
    angles of long positions."""

    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        self.head_dim, self.theta = head_dim, theta
        self.inv_freq = nn.Buffer(self._inv_freq(), persistent=False)

    def _inv_freq(self) -> Tensor:
        return 1.0 / (self.theta ** (torch.arange(0, self.head_dim, 2, dtype=torch.float) / self.head_dim))  # [hd/2]

    def _apply(self, fn, recurse=True):  # .to / .cuda / .half: move inv_freq, keep it float32
        super()._apply(fn, recurse)
        self.inv_freq = self._inv_freq().to(self.inv_freq.device)
        return self

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
