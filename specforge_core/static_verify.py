"""The target's prefill and verify forwards on a ``StaticKVCache``, the verify forward replayed
from one CUDA graph per bucketed row count (issue 17; ``target.kv_cache: static``,
``target.cuda_graphs: true``).

Verify of ``n`` rows (anchor + candidates) at committed length ``past``:

* the rows are padded to the bucket ``B >= n`` (``BUCKETS``; more rows than the largest bucket run
  eagerly, unpadded). Padding rows are token 0 at positions ``past + n ..``; they write their K/V
  to cache positions ``past + n .. past + B - 1``, beyond what is kept, and no real row sees them;
* inputs go into the bucket's static buffers: ids ``[b, B]``, positions ``[b, B]`` (``past +
  depth``), cache write positions ``[B]`` (``past ..``) and the mask ``[b, 1, B, capacity]``
  (committed rows, then a causal block or the tree's ancestor mask, see ``static_cache.fill_mask``),
  all from host ints and device tensors: no host sync;
* with CUDA and ``cuda_graphs``, the bucket's forward is captured once (after warm-up runs on a side
  stream, which are real forwards of this very call) and replayed; the logits and the captured
  context features are the graph's static outputs, read back as the first ``n`` rows. Without CUDA
  the same padded forward runs eagerly (one log line says so), so the bucket logic is tested on CPU.

The graphs hold the cache buffer's address: they are recaptured when the cache grows (rare: the
capacity is sized at prefill with headroom) or when the captured layers change.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import torch

from .interfaces import Candidates
from .static_cache import StaticKVCache, causal_block, check_full_attention, fill_mask

log = logging.getLogger("specforge.static_verify")
Tensor = torch.Tensor

BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 20, 24, 32, 48, 64)  # verify row counts a graph is captured for
MIN_CAPACITY = 1024  # cache positions allocated at least (Qwen3-8B: 147 KB per position in bf16)
HEADROOM = 512  # positions beyond the prompt reserved at prefill before the cache has to grow


def bucket_for(n: int) -> Optional[int]:
    return next((b for b in BUCKETS if b >= n), None)


@dataclass
class _Bucket:
    """Static inputs of a B-row verify forward (and, with CUDA graphs, its graph and outputs)."""

    ids: Tensor  # [b, B] long
    positions: Tensor  # [b, B] long
    rows: Tensor  # [B] long, cache write positions
    mask: Tensor  # [b, 1, B, capacity] bool
    causal: Tensor  # [B, B] bool, the chain's local block
    graph: Optional["torch.cuda.CUDAGraph"] = None
    logits: Optional[Tensor] = None  # [b, B, V], the graph's output
    features: Optional[dict] = None  # layer -> [b, B, d], the graph's captured layer outputs


class StaticVerify:
    """Prefill / verify of a ``TargetModel`` on a ``StaticKVCache`` (optionally CUDA-graphed)."""

    def __init__(self, target, cuda_graphs: bool = False):
        check_full_attention(target.model.config)
        self.target = target
        self.cache: Optional[StaticKVCache] = None
        self.keyword = target.cache_argument  # `cache` or `past_key_values` (target.cache_argument_name)
        self.use_graphs = bool(cuda_graphs) and target.device.type == "cuda"
        self.padded = bool(cuda_graphs)  # buckets without graphs on CPU: the same padding, eagerly
        if cuda_graphs and not self.use_graphs:
            log.warning("target.cuda_graphs: no CUDA device (%s); verify runs eagerly on the static cache",
                        target.device)
        self._buckets: dict[int, _Bucket] = {}
        self._graph_key = None  # (cache buffer id, captured layers) the graphs were captured for
        self.num_captures = 0  # graphs captured so far (tests, gpu_check)

    # ---- per request ------------------------------------------------------------------------
    def reset(self) -> StaticKVCache:
        """The cache for a new request: the same buffers, emptied (graphs stay valid)."""
        if self.cache is None:
            self.cache = StaticKVCache(self.target.model.config, MIN_CAPACITY)
        self.cache.reset()
        return self.cache

    def _ensure_capacity(self, needed: int) -> None:
        cache = self.cache
        if needed > cache.capacity:
            cache.grow(max(2 * cache.capacity, needed + HEADROOM))
            self._buckets.clear()  # inputs and graphs were sized for / point at the old buffer

    # ---- forwards ---------------------------------------------------------------------------
    def _forward(self, ids: Tensor, positions: Tensor, rows: Tensor, mask: Tensor, logits_to_keep: int = 0):
        self.cache.write_rows = rows
        kwargs = {self.keyword: self.cache}
        return self.target.model(input_ids=ids, position_ids=positions, attention_mask=mask, use_cache=True,
                                 logits_to_keep=logits_to_keep, **kwargs)

    @torch.inference_mode()
    def prefill(self, input_ids: Tensor) -> "tuple[Tensor, Optional[Tensor]]":
        """``input_ids [b, t]`` -> (last logits ``[b, V]``, features ``[b, t, F]``), on the static cache."""
        b, t = input_ids.shape
        dev = input_ids.device
        self._ensure_capacity(t + HEADROOM)
        cache = self.cache
        mask = torch.empty(b, 1, t, cache.capacity, dtype=torch.bool, device=dev)
        fill_mask(mask, 0, causal_block(t, dev))
        positions = torch.arange(t, device=dev)
        out = self._forward(input_ids, positions[None].expand(b, -1), positions, mask, logits_to_keep=1)
        cache.length = t
        return out.logits[:, -1].float(), self.target._features()

    @torch.inference_mode()
    def verify(self, anchor: Tensor, candidates: Candidates) -> "tuple[Tensor, Optional[Tensor]]":
        """Forward ``[anchor, candidates]`` -> (logits ``[b, n, V]``, features ``[b, n, F]``), n = nodes + 1."""
        target, cache = self.target, self.cache
        past = cache.length
        ids = torch.cat([anchor[:, None], candidates.tokens], dim=1)  # [b, n]
        b, n = ids.shape
        B = bucket_for(n) if self.padded else None
        size = B or n
        self._ensure_capacity(past + size)
        bucket = self._bucket(b, size, ids.device)
        self._fill(bucket, ids, candidates, past, n)
        if self.use_graphs and B is not None:
            logits, feats = self._replay(bucket)
        else:
            with target.verify_kernels():
                out = self._forward(bucket.ids, bucket.positions, bucket.rows, bucket.mask)
            logits, feats = out.logits, target._features()
        cache.length = past + n  # the padding rows are never kept
        target._last_fed = n
        return logits[:, :n].float(), None if feats is None else feats[:, :n]

    # ---- buckets ----------------------------------------------------------------------------
    def _bucket(self, b: int, size: int, device) -> _Bucket:
        bucket = self._buckets.get(size)
        if bucket is None or bucket.ids.shape[0] != b:
            bucket = _Bucket(
                ids=torch.zeros(b, size, dtype=torch.long, device=device),
                positions=torch.zeros(b, size, dtype=torch.long, device=device),
                rows=torch.zeros(size, dtype=torch.long, device=device),
                mask=torch.zeros(b, 1, size, self.cache.capacity, dtype=torch.bool, device=device),
                causal=causal_block(size, device))
            self._buckets[size] = bucket
        return bucket

    @staticmethod
    def _fill(bucket: _Bucket, ids: Tensor, candidates: Candidates, past: int, n: int) -> None:
        """Write this call's inputs into the bucket's buffers (host ints and device copies only)."""
        size = bucket.ids.shape[1]
        bucket.ids[:, :n].copy_(ids)
        torch.arange(past, past + size, out=bucket.rows)  # rows past .. past + size - 1
        if candidates.is_chain:  # positions = rows, causal among the fed rows
            bucket.positions.copy_(bucket.rows.expand_as(bucket.positions))
            fill_mask(bucket.mask, past, bucket.causal)
        else:  # tree: position = past + depth; ancestor-only mask among the real rows
            dev = ids.device
            depths = candidates.depths.to(dev, non_blocking=True)
            bucket.positions[:, 0] = past
            bucket.positions[:, 1:n] = past + depths
            bucket.positions[:, n:] = bucket.rows[n:]  # padding: distinct, valid positions
            local = bucket.causal.clone()
            local[:n, :n] = candidates.attention_mask.to(dev, non_blocking=True)
            fill_mask(bucket.mask, past, local)

    def _replay(self, bucket: _Bucket) -> "tuple[Tensor, Optional[Tensor]]":
        target = self.target
        key = (id(self.cache.kv), tuple(target._capture_layers))
        if key != self._graph_key:
            for other in self._buckets.values():
                other.graph = None
            self._graph_key = key
        if bucket.graph is None:
            self._capture(bucket)
        bucket.graph.replay()
        if bucket.features is None:
            return bucket.logits, None
        target._captured.update(bucket.features)
        return bucket.logits, target._features()

    def _capture(self, bucket: _Bucket, warmup: int = 2) -> None:
        """Capture the bucket's forward (the inputs already hold this call's values: the warm-up runs
        are this call's forward, and the replay that follows repeats it on the same inputs)."""
        target = self.target
        run = lambda: self._forward(bucket.ids, bucket.positions, bucket.rows, bucket.mask)  # noqa: E731
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # cuBLAS workspaces, allocator warm-up, lazy inits outside capture
            for _ in range(warmup):
                run()
        torch.cuda.current_stream().wait_stream(side)
        target._captured.clear()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = run()
        bucket.graph, bucket.logits = graph, out.logits
        layers = tuple(target._capture_layers)
        bucket.features = {l: target._captured[l] for l in layers} if layers else None
        target._captured.clear()
        self.num_captures += 1
