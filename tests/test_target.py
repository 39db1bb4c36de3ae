"""TargetModel: feature capture, verify forward, KV crop / compaction, adapter errors."""

from __future__ import annotations

import pytest
import torch
from tiny import tiny_target

from specforge_core.errors import IncompatibleError
from specforge_core.interfaces import Candidates
from specforge_core.target import TargetModel


def chain(tokens: torch.Tensor) -> Candidates:
    n = tokens.shape[1]
    return Candidates(tokens=tokens, probs=None, parents=torch.arange(n) - 1, depths=torch.arange(n) + 1)


def test_captures_only_requested_layers():
    t = tiny_target(seed=0, layers=4)
    t.capture([2, 0])
    ids = torch.tensor([[3, 4, 5, 6, 7]])
    logits, feats = t.prefill(ids)
    ref = t.model(ids, output_hidden_states=True).hidden_states
    assert feats.shape == (1, 5, 2 * 64)
    torch.testing.assert_close(feats[..., :64], ref[3])  # layer 2 -> hidden_states[3]
    torch.testing.assert_close(feats[..., 64:], ref[1])  # layer 0 -> hidden_states[1]
    assert len(t._hooks) == 2
    with pytest.raises(IncompatibleError, match="4 layers"):
        t.capture([5])


def test_verify_then_crop_matches_fresh_forward():
    t = tiny_target(seed=1)
    t.capture([1])
    prompt = torch.tensor([[1, 2, 3, 4]])
    t.prefill(prompt[:, :-1])
    logits, feats = t.verify(prompt[:, -1], chain(torch.tensor([[9, 8, 7]])))
    full = t.model(torch.tensor([[1, 2, 3, 4, 9, 8, 7]])).logits
    torch.testing.assert_close(logits, full[:, 3:], rtol=1e-4, atol=1e-4)
    t.keep(torch.arange(2))  # keep anchor + first draft
    assert t.cache_len == 5
    nxt, _ = t.verify(torch.tensor([5]), chain(torch.tensor([[6]])))
    ref = t.model(torch.tensor([[1, 2, 3, 4, 9, 5, 6]])).logits[:, 5:]
    torch.testing.assert_close(nxt, ref, rtol=1e-4, atol=1e-4)


def test_tree_verify_and_path_compaction():
    """A tree (anchor -> {a, b}, a -> c) in one forward equals the separate chains, and keeping
    the non-contiguous path [anchor, b] leaves a cache equal to committing that chain."""
    t = tiny_target(seed=2)
    prompt = torch.tensor([[5, 6, 7]])
    t.prefill(prompt[:, :-1])
    a, b, c = 11, 12, 13
    mask = torch.tensor([[1, 0, 0, 0],  # anchor
                         [1, 1, 0, 0],  # a
                         [1, 0, 1, 0],  # b (sibling of a)
                         [1, 1, 0, 1]], dtype=torch.bool)  # c (child of a)
    cands = Candidates(tokens=torch.tensor([[a, b, c]]), probs=None, parents=torch.tensor([-1, -1, 0]),
                       depths=torch.tensor([1, 1, 2]), attention_mask=mask)
    logits, _ = t.verify(prompt[:, -1], cands)
    ref_ac = t.model(torch.tensor([[5, 6, 7, a, c]])).logits[0]
    ref_b = t.model(torch.tensor([[5, 6, 7, b]])).logits[0]
    torch.testing.assert_close(logits[0, [0, 1, 3]], ref_ac[2:5], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(logits[0, 2], ref_b[3], rtol=1e-4, atol=1e-4)
    t.keep(torch.tensor([0, 2]))  # anchor + b
    assert t.cache_len == 4
    nxt, _ = t.verify(torch.tensor([9]), chain(torch.zeros(1, 0, dtype=torch.long)))
    ref = t.model(torch.tensor([[5, 6, 7, b, 9]])).logits[0, -1]
    torch.testing.assert_close(nxt[0, 0], ref, rtol=1e-4, atol=1e-4)


def test_model_without_decoder_layers_needs_an_adapter():
    class Odd(torch.nn.Module):
        config = None

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Linear(2, 2)

    with pytest.raises(IncompatibleError, match="specforge_target_adapter"):
        TargetModel(Odd())
