"""The DFlash network's hand-written Qwen3 parts (specforge_dflash/qwen3_parts.py) compute
exactly what a transformers Qwen3 model's own modules compute - bit for bit, in fp32 and bf16 -
so published checkpoints draft as they did when the network used transformers' classes."""

from __future__ import annotations

import pytest
import torch
from tiny import tiny_model

from specforge_dflash.qwen3_parts import RMSNorm, RotaryEmbedding, SwiGLU, rotate_half


@pytest.fixture
def qwen3():  # fresh per test: the tests cast its modules to bf16
    m = tiny_model(seed=3)
    with torch.no_grad():  # non-trivial norm weights
        m.model.norm.weight.copy_(1 + 0.3 * torch.randn(m.model.norm.weight.shape))
    return m


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rmsnorm_equals_qwen3_rmsnorm(qwen3, dtype):
    theirs = qwen3.model.norm
    ours = RMSNorm(theirs.weight.shape[0], eps=theirs.variance_epsilon)
    ours.load_state_dict(theirs.state_dict())
    x = 3 * torch.randn(2, 5, theirs.weight.shape[0])
    with torch.no_grad():
        assert torch.equal(ours.to(dtype)(x.to(dtype)), theirs.to(dtype)(x.to(dtype)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_swiglu_equals_qwen3_mlp(qwen3, dtype):
    theirs = qwen3.model.layers[0].mlp
    ours = SwiGLU(theirs.gate_proj.in_features, theirs.gate_proj.out_features)
    ours.load_state_dict(theirs.state_dict())  # same keys: gate_proj / up_proj / down_proj
    x = torch.randn(2, 5, theirs.gate_proj.in_features)
    with torch.no_grad():
        assert torch.equal(ours.to(dtype)(x.to(dtype)), theirs.to(dtype)(x.to(dtype)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rotary_equals_qwen3_rotary(qwen3, dtype):
    """Against transformers' Qwen3 rotary as ``from_pretrained(dtype=...)`` leaves it (inv_freq in
    float32, cos / sin in the input's dtype); ours keeps inv_freq float32 even through ``.to(bf16)``."""
    cfg = qwen3.config
    theirs = qwen3.model.rotary_emb.float()
    ours = RotaryEmbedding(cfg.head_dim, cfg.rope_parameters["rope_theta"])
    assert ours.state_dict() == {}  # inv_freq is not a checkpoint key
    positions = torch.tensor([[0, 1, 7, 300], [5, 6, 7, 8]])
    x = torch.zeros(1, dtype=dtype)
    ours = ours.to(dtype)
    assert ours.inv_freq.dtype == torch.float32
    for a, b in zip(ours(x, positions), theirs(x, positions)):
        assert a.dtype == b.dtype == dtype and torch.equal(a, b)


def test_rotate_half_rotates_each_pair_by_its_angle():
    q = torch.randn(3, 8)
    angle = torch.rand(3, 4) * 6
    cos, sin = torch.cat([angle.cos()] * 2, -1), torch.cat([angle.sin()] * 2, -1)
    out = q * cos + rotate_half(q) * sin
    x1, x2 = q[:, :4], q[:, 4:]  # pair i = (x1_i, x2_i)
    expected = torch.cat([x1 * angle.cos() - x2 * angle.sin(), x2 * angle.cos() + x1 * angle.sin()], -1)
    torch.testing.assert_close(out, expected)
