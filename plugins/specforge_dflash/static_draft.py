"""The DFlash / DFlare block forward on fixed buffers, replayed from CUDA graphs (issue 17:
"the drafter's block forward captured the same way" as the target's verify).

A cycle's draft forward feeds ``c`` new context rows (the target features of the tokens committed
since the last draft: 1 .. block + 1 after a verify, the prompt after the prefill) and the ``q``
block rows ``[anchor, MASK ...]``; every layer's queries (the block) attend to the cached context
rows, the new ones and the whole block (bidirectional), and only the context rows are kept.

Here the draft KV cache is one buffer ``kv [L, 2, b, kv_heads, capacity, hd]`` written at the
positions ``write_rows`` (a device tensor) and read through an explicit mask, so one forward has
fixed shapes for a given (context bucket ``C >= c``, block rows ``q``):

* the ``c`` real context rows are written at ``past .. past + c - 1`` and the block rows right after
  them at ``past + c .. past + c + q - 1`` (the next draft overwrites the block rows: nothing to crop);
* the ``C - c`` padding context rows are zeros written to the scratch tail of the buffer
  (``capacity - (C - c) ..``), which no mask ever shows;
* the mask ``[b, 1, q, capacity]`` shows positions ``< past + c + q``.

With ``cuda_graphs`` on a CUDA device each (C, q) is captured once (after warm-up runs on a side
stream) and replayed; without CUDA the same padded forward runs eagerly, so CPU tests check that it
gives the dynamic path's drafts. Context chunks larger than the largest bucket (the prompt, right
after the prefill) run eagerly on the same buffers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import torch

log = logging.getLogger("specforge.dflash")
Tensor = torch.Tensor

CONTEXT_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 20, 24, 32, 48, 64)  # new context rows a graph is captured for
MIN_CAPACITY = 1024
HEADROOM = 512


class StaticDraftCache:
    """The draft layers' context K/V in one buffer; ``update`` is what ``DraftAttention`` calls
    (transformers' Cache signature): write at ``write_rows``, return every position."""

    def __init__(self, num_layers: int, capacity: int):
        self.num_layers, self.capacity = num_layers, int(capacity)
        self.length = 0  # committed context rows (host int)
        self.write_rows: Optional[Tensor] = None  # [c + q] positions of the next forward's rows
        self.kv: Optional[Tensor] = None  # [L, 2, b, kv_heads, capacity, hd]

    def update(self, keys: Tensor, values: Tensor, layer_idx: int) -> "tuple[Tensor, Tensor]":
        if self.kv is None:
            b, h, _, hd = keys.shape
            self.kv = keys.new_zeros(self.num_layers, 2, b, h, self.capacity, hd)
        self.kv[layer_idx, 0].index_copy_(2, self.write_rows, keys)  # [b, h, capacity, hd] <- [b, h, n, hd]
        self.kv[layer_idx, 1].index_copy_(2, self.write_rows, values)
        return self.kv[layer_idx, 0], self.kv[layer_idx, 1]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.length

    def grow(self, capacity: int) -> None:
        old, self.capacity = self.kv, int(capacity)
        if old is not None:
            shape = list(old.shape)
            shape[4] = self.capacity
            self.kv = old.new_zeros(shape)
            self.kv[..., : self.length, :] = old[..., : self.length, :]


@dataclass
class _Graph:
    embeds: Tensor  # [b, q, H]
    ctx: Tensor  # [b, C, T*H]
    positions: Tensor  # [b, C + q]
    rows: Tensor  # [C + q]
    mask: Tensor  # [b, 1, q, capacity]
    graph: Optional["torch.cuda.CUDAGraph"] = None
    out: Optional[Tensor] = None  # [b, q, H], the graph's output


class StaticDraft:
    """``forward(block_embeds, new_ctx, past)`` of a ``DFlashDraftModel`` on a ``StaticDraftCache``."""

    def __init__(self, model, device: torch.device, cuda_graphs: bool):
        self.model, self.device = model, device
        self.use_graphs = bool(cuda_graphs) and device.type == "cuda"
        self.cache = StaticDraftCache(len(model.layers), MIN_CAPACITY)
        self._graphs: dict = {}
        self.num_captures = 0

    def reset(self) -> None:
        self.cache.length = 0  # the buffers (and the graphs reading them) stay

    def forward(self, block_embeds: Tensor, new_ctx: Tensor) -> Tensor:
        """block_embeds [b, q, H], new_ctx [b, c, T*H] -> block hidden [b, q, H]; the c context
        rows are kept in the cache (committed), the block rows are not."""
        cache = self.cache
        b, q, _ = block_embeds.shape
        c, past = new_ctx.shape[1], cache.length
        C = next((x for x in CONTEXT_BUCKETS if x >= c), None) or c  # past the largest: unpadded, eager
        if past + c + q + C > cache.capacity:  # + C: the scratch tail for padding rows
            cache.grow(max(2 * cache.capacity, past + c + q + C + HEADROOM))
            self._graphs.clear()  # they point at the old buffer
        g = self._inputs(b, C, q, new_ctx, block_embeds.dtype)
        g.embeds.copy_(block_embeds)
        g.ctx[:, :c].copy_(new_ctx)
        g.ctx[:, c:].zero_()
        # rows: real context, padding (scratch tail), then the block
        real = torch.arange(past, past + c, device=self.device)
        pad = torch.arange(cache.capacity - (C - c), cache.capacity, device=self.device)
        block = torch.arange(past + c, past + c + q, device=self.device)
        g.rows.copy_(torch.cat([real, pad, block]))
        g.positions.copy_(torch.cat([real, torch.zeros_like(pad), block]).expand_as(g.positions))
        g.mask.zero_()
        g.mask[..., : past + c + q] = True
        if self.use_graphs and C in CONTEXT_BUCKETS:
            out = self._replay(g)
        else:
            out = self._run(g)
        cache.length = past + c
        return out

    def _run(self, g: _Graph) -> Tensor:
        self.cache.write_rows = g.rows
        return self.model(g.embeds, g.ctx, g.positions, cache=self.cache, mask=g.mask)

    def _inputs(self, b: int, C: int, q: int, like_ctx: Tensor, dtype) -> _Graph:
        key = (b, C, q)
        g = self._graphs.get(key)
        if g is None or g.mask.shape[-1] != self.cache.capacity:
            H = self.model.arch.hidden_size
            g = _Graph(embeds=torch.zeros(b, q, H, dtype=dtype, device=self.device),
                       ctx=like_ctx.new_zeros(b, C, like_ctx.shape[-1]),
                       positions=torch.zeros(b, C + q, dtype=torch.long, device=self.device),
                       rows=torch.zeros(C + q, dtype=torch.long, device=self.device),
                       mask=torch.zeros(b, 1, q, self.cache.capacity, dtype=torch.bool, device=self.device))
            self._graphs[key] = g
        return g

    def _replay(self, g: _Graph) -> Tensor:
        if g.graph is None:
            if self.cache.kv is None:  # allocate the buffer outside the capture
                self._run(g)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm-up runs of this very call's forward
                for _ in range(2):
                    self._run(g)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                g.out = self._run(g)
            g.graph = graph
            self.num_captures += 1
        g.graph.replay()
        return g.out
