"""Linear layers over a handful of rows: ``x [..., k, d] @ W[N, d]^T``.

Hand-written because of one measured CPU quirk: for k = 2..16 rows, MKL on this project's
2-core AMD EPYC runs ``x @ W^T`` (what ``nn.Linear`` calls) 2-3x slower than the same product
laid out as ``(W @ x^T)^T`` (SmolLM2's tied lm_head, k = 8: 12.4 ms vs 6.7 ms), while a GPU's
BLAS does not care. The first call for a given (rows, N, d, dtype) on a CPU times both layouts
and keeps the faster, for this process only (never from disk), keyed by everything that changes the
answer: the shape, the dtype and torch's thread count (a run that changes threads re-times). Both compute the same sums up to float summation order - as a gemm and a
gemv already differ - so this changes how fast a block is drafted or verified, not what the
target computes.

* ``project_rows(hidden, lm_head)``: a drafter's block onto the vocabulary.
* ``few_row_linears(model)``: a context in which every ``nn.Linear`` of ``model`` does the
  same for inputs of at most ``MAX_ROWS`` rows (the target's verify forward).
"""

from __future__ import annotations

import contextlib
import statistics
import time
import weakref

import torch
import torch.nn.functional as F
from torch import nn

Tensor = torch.Tensor

MAX_ROWS = 16  # above this both layouts run as a proper gemm
_transposed_is_faster: dict = {}  # (rows, N, d, dtype, threads) -> bool, decided once per process
_linears_of = weakref.WeakKeyDictionary()  # model -> [(nn.Linear, its few-row forward)], found once


def linear_rows(x: Tensor, weight: Tensor, bias: "Tensor | None" = None) -> Tensor:
    """``F.linear(x, weight, bias)``, in the faster layout for few rows on a CPU."""
    rows = x.reshape(-1, x.shape[-1])  # [m, d]
    if x.device.type != "cpu" or rows.shape[0] > MAX_ROWS or rows.shape[0] < 2:
        return F.linear(x, weight, bias)
    key = (rows.shape[0], *weight.shape, weight.dtype, torch.get_num_threads())
    if key not in _transposed_is_faster:
        _transposed_is_faster[key] = _faster_is_transposed(rows, weight)
    out = _product(rows, weight, _transposed_is_faster[key])
    if bias is not None:
        out = out + bias
    return out.reshape(*x.shape[:-1], weight.shape[0])


def project_rows(hidden: Tensor, head: "nn.Module | Tensor") -> Tensor:
    """``head`` is a linear layer (an lm_head) or a bare weight ``[V, d]``."""
    if torch.is_tensor(head):
        return linear_rows(hidden, head)
    if isinstance(head, nn.Linear):
        return linear_rows(hidden, head.weight, head.bias)
    return head(hidden)


@contextlib.contextmanager
def few_row_linears(model: nn.Module):
    """Route ``model``'s ``nn.Linear`` layers through ``linear_rows`` inside the block (an
    instance-level ``forward``, removed on exit; a layer that already has one is left alone).
    The model's linear layers are looked up once (a verify runs this every cycle)."""
    linears = _linears_of.get(model)
    if linears is None:
        linears = _linears_of[model] = [(m, _forward_of(m)) for m in model.modules() if isinstance(m, nn.Linear)]
    patched = []
    for module, forward in linears:
        if "forward" not in module.__dict__:
            module.forward = forward
            patched.append(module)
    try:
        yield
    finally:
        for module in patched:
            del module.forward


def _forward_of(module: nn.Linear):
    def forward(x: Tensor) -> Tensor:
        return linear_rows(x, module.weight, module.bias)

    return forward


def _product(rows: Tensor, weight: Tensor, transposed: bool) -> Tensor:
    return (weight @ rows.T).T if transposed else F.linear(rows, weight)  # [m, N]


def _faster_is_transposed(rows: Tensor, weight: Tensor, rounds: int = 5) -> bool:
    """The layouts alternate, one product each per round, so a load spike hits both alike;
    the medians decide."""
    times = {True: [], False: []}
    with torch.inference_mode():
        for layout in (True, False):
            _product(rows, weight, layout)  # warm-up
        for _ in range(rounds):
            for layout in (True, False):
                t0 = time.perf_counter()
                _product(rows, weight, layout)
                times[layout].append(time.perf_counter() - t0)
    return statistics.median(times[True]) < statistics.median(times[False])
