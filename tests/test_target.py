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


def test_features_are_output_hidden_states_including_the_post_norm_last_layer():
    """Features of layer l = transformers' hidden_states[l + 1] for the first, a middle and the
    last layer (there: after the final norm, as the reference DFlash code takes it), in the
    prefill, in a verify forward and in the training capture."""
    t = tiny_target(seed=4, layers=4)
    with torch.no_grad():  # a final norm that is not the identity
        t.model.model.norm.weight.copy_(0.5 + torch.rand(64))
    t.capture([0, 2, 3])
    ids = torch.tensor([[3, 4, 5, 6, 7, 8]])
    raw = []  # the last decoder layer's own output, for contrast
    hook = t.model.model.layers[3].register_forward_hook(lambda m, i, o: raw.append(o[0] if isinstance(o, tuple) else o))
    ref = t.model(ids, output_hidden_states=True).hidden_states
    hook.remove()
    assert not torch.allclose(raw[0], ref[4], atol=1e-3)  # hidden_states[-1] is post-norm ...
    torch.testing.assert_close(t.model.model.norm(raw[0]), ref[4])  # ... of the last layer's output
    expected = torch.cat([ref[1], ref[3], ref[4]], -1)  # [1, 6, 3 * 64]
    _, prefill_feats = t.prefill(ids[:, :4])
    _, verify_feats = t.verify(ids[:, 4], chain(ids[:, 5:]))
    torch.testing.assert_close(torch.cat([prefill_feats, verify_feats], 1), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(t.hidden_features(ids), expected)


def test_last_layer_feature_needs_a_final_norm_in_the_adapter():
    from specforge_core.target import default_adapter

    model = tiny_target(seed=0, layers=2).model
    adapter = default_adapter(model)
    assert adapter.final_norm is model.model.norm
    adapter.final_norm = None
    t = TargetModel(model, adapter=adapter)
    t.capture([0])
    with pytest.raises(IncompatibleError, match="final norm"):
        t.capture([1])


def test_cache_goes_by_the_keyword_the_forward_takes():
    """transformers >= 5.24 takes `cache` (`past_key_values` is deprecated, removed in 5.40);
    older models only `past_key_values` - never a keyword that **kwargs would swallow."""
    import inspect
    import warnings

    from specforge_core.target import cache_argument_name

    t = tiny_target(seed=0)
    expected = "cache" if "cache" in inspect.signature(t.model.forward).parameters else "past_key_values"
    assert t.cache_argument == expected
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # transformers' deprecation notice
        t.prefill(torch.tensor([[1, 2, 3]]))
        t.verify(torch.tensor([4]), chain(torch.tensor([[5, 6]])))
    assert t.cache_len == 6  # the forwards ran with the cache

    class OldStyle(torch.nn.Module):
        def forward(self, input_ids, past_key_values=None, use_cache=None, **kwargs):
            return input_ids

    class NoCache(torch.nn.Module):
        def forward(self, input_ids, **kwargs):
            return input_ids

    assert cache_argument_name(OldStyle()) == "past_key_values"
    with pytest.raises(IncompatibleError, match="neither `cache` nor `past_key_values`"):
        cache_argument_name(NoCache())
