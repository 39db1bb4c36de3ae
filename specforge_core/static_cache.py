"""A request's KV cache in fixed buffers: transformers' ``StaticLayer`` with two changes (issue 17).

* All layers' K/V live in ONE buffer ``kv [L, 2, b, kv_heads, capacity, head_dim]``; each layer's
  ``keys`` / ``values`` are views of it. A tree path's accepted rows are then moved for every layer
  in one gather (``move_rows``), and the buffer is allocated once per capacity: keeping the accepted
  rows never reallocates (a chain keeps a prefix: nothing moves at all).
* A forward writes its rows at the cache positions ``write_rows [n]`` the caller sets (a device
  tensor, so a captured CUDA graph writes wherever its input buffer says), not at transformers'
  ``cumulative_length``; the committed length is a host int (``length``), so ``get_seq_length`` /
  ``crop`` read or touch no device memory. Stale rows beyond ``length`` stay in the buffer and are
  hidden by the explicit 4D mask every forward on this cache passes (``causal_block``): row ``i`` of
  a forward sees the committed rows ``< past`` and, among the fed rows, its own ancestors.

Only full-attention decoder stacks (Qwen2/3, Llama, Mistral without sliding window): a sliding or
linear-attention layer is an ``IncompatibleError``.
"""

from __future__ import annotations

from typing import Optional

import torch
from transformers.cache_utils import Cache, StaticLayer

from .errors import IncompatibleError

Tensor = torch.Tensor


def check_full_attention(config) -> None:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    kinds = set(getattr(text, "layer_types", None) or ["full_attention"])
    if kinds != {"full_attention"} or getattr(text, "use_sliding_window", False):
        raise IncompatibleError(
            f"target.kv_cache=static supports full-attention models only; this one has layer types {sorted(kinds)}"
            f"{' and a sliding window' if getattr(text, 'use_sliding_window', False) else ''}: use kv_cache=dynamic")


class _SharedBufferLayer(StaticLayer):
    """One decoder layer's K/V: views of the owner's buffer, written at ``owner.write_rows``."""

    def __init__(self, owner: "StaticKVCache", index: int, max_cache_len: int):
        super().__init__(max_cache_len=max_cache_len)
        self.owner, self.index = owner, index

    def lazy_initialization(self, key_states: Tensor, value_states: Tensor) -> None:
        self.owner.allocate(key_states, value_states)

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> "tuple[Tensor, Tensor]":
        if not self.is_initialized:
            self.owner.allocate(key_states, value_states)
        rows = self.owner.write_rows  # [n] long, on the cache's device
        self.keys.index_copy_(2, rows, key_states)  # [b, h, capacity, hd] <- [b, h, n, hd]
        self.values.index_copy_(2, rows, value_states)
        return self.keys, self.values  # every position: the caller's mask hides the stale ones

    def get_seq_length(self) -> int:
        return self.owner.length

    def crop(self, tokens_to_remove: int) -> None:  # the owner crops once for all layers
        pass

    def reset(self) -> None:
        pass


class StaticKVCache(Cache):
    """Fixed K/V buffers of ``capacity`` positions for every layer of ``config``; the committed
    length is the host int ``length`` (the caller of a forward sets ``write_rows`` first and
    ``length`` after)."""

    def __init__(self, config, capacity: int):
        check_full_attention(config)
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        self.capacity = int(capacity)
        self.length = 0
        self.write_rows: Optional[Tensor] = None  # [n] cache positions of the next forward's rows
        self.kv: Optional[Tensor] = None  # [L, 2, b, kv_heads, capacity, hd] once allocated
        layers = [_SharedBufferLayer(self, i, self.capacity) for i in range(int(text.num_hidden_layers))]
        super().__init__(layers=layers)

    # ---- buffers ----------------------------------------------------------------------------
    def allocate(self, key_states: Tensor, value_states: Tensor) -> None:
        """Allocate ``kv`` for every layer from the first layer's K/V shapes (lazily, like
        transformers' static layers: dtype, device and kv heads come from the model itself)."""
        b, h, _, hd = key_states.shape
        if value_states.shape[-1] != hd:
            raise IncompatibleError(f"static KV cache: key head_dim {hd} != value head_dim {value_states.shape[-1]}")
        self.kv = torch.zeros(len(self.layers), 2, b, h, self.capacity, hd, dtype=key_states.dtype,
                              device=key_states.device)
        self._bind_views()

    def _bind_views(self) -> None:
        kv = self.kv
        for i, layer in enumerate(self.layers):
            layer.keys, layer.values = kv[i, 0], kv[i, 1]  # [b, h, capacity, hd], contiguous views
            layer.device, layer.dtype = kv.device, kv.dtype
            layer.batch_size, layer.num_heads = kv.shape[2], kv.shape[3]
            layer.k_head_dim = layer.v_head_dim = kv.shape[-1]
            layer.max_cache_len = self.capacity
            layer.is_initialized = True

    def grow(self, capacity: int) -> None:
        """Reallocate with room for ``capacity`` positions, keeping the committed rows (rare: the
        capacity is sized per request; a CUDA graph captured on the old buffer is then stale)."""
        old = self.kv
        self.capacity = int(capacity)
        if old is None:
            for layer in self.layers:
                layer.max_cache_len = self.capacity
            return
        shape = list(old.shape)
        shape[4] = self.capacity
        self.kv = old.new_zeros(shape)
        self.kv[:, :, :, :, : self.length] = old[:, :, :, :, : self.length]
        self._bind_views()

    def move_rows(self, start: int, rows: Tensor) -> None:
        """Cache positions ``start + rows`` (ascending) -> ``start .. start + m - 1``, every layer at
        once (a tree path's accepted rows next to the committed ones)."""
        idx = (start + rows).to(self.kv.device)
        m = int(rows.numel())
        self.kv[:, :, :, :, start:start + m] = self.kv.index_select(4, idx)

    # ---- transformers' Cache API: the host length, no device reads -------------------------
    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.length

    def get_max_length(self, layer_idx: Optional[int] = None) -> int:
        return self.capacity

    def crop(self, tokens_to_remove: int) -> None:
        """transformers 5 convention: ``crop(-n)`` drops the last n positions (host-side only)."""
        if tokens_to_remove > 0:
            raise ValueError(f"crop takes minus the number of positions to drop, got {tokens_to_remove}")
        self.length = max(0, self.length + tokens_to_remove)

    def reset(self) -> None:
        self.length = 0


def causal_block(size: int, device) -> Tensor:
    """``[size, size]`` bool, True on and below the diagonal (row i attends to fed rows 0..i)."""
    return torch.ones(size, size, dtype=torch.bool, device=device).tril_()


def fill_mask(mask: Tensor, past: int, local: Tensor) -> Tensor:
    """``mask [b, 1, n, capacity]`` (bool, True = attend) for a forward of n rows written at
    ``past .. past + n - 1``: every committed row ``< past``, then ``local [n, n]`` among the fed
    rows, nothing beyond (stale rows). Host ints only: no device read."""
    n = local.shape[-1]
    mask.zero_()
    mask[..., :past] = True
    mask[..., past:past + n] = local
    return mask
