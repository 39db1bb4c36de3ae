"""Checks of the plugin contracts a test (or a plugin author) can run on a component.

``check_step_pure(corrector, block)``: ``Corrector.step`` must not modify its state in place
(interfaces.Corrector). It steps every position twice from a snapshot of each state - along the
rollout, and again from a deep copy - and raises ``ContractError`` naming the first position
where a state's tensors changed under ``step`` or the two steps disagree.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from .interfaces import Corrector, DraftBlock, SparseProbs


class ContractError(AssertionError):
    """A component breaks a rule of specforge_core/interfaces.py."""


def _tensors(state: Any) -> list:
    """Every tensor reachable in a state (tensors, dicts, lists / tuples / NamedTuples, dataclasses)."""
    if torch.is_tensor(state):
        return [state]
    if isinstance(state, dict):
        return [t for v in state.values() for t in _tensors(v)]
    if isinstance(state, (list, tuple)):
        return [t for v in state for t in _tensors(v)]
    if hasattr(state, "__dict__") and not isinstance(state, type):
        return [t for v in vars(state).values() for t in _tensors(v)]
    return []


def _same(a, b) -> bool:
    if isinstance(a, SparseProbs):
        return torch.equal(a.ids, b.ids) and torch.equal(a.probs, b.probs)
    return torch.equal(a, b)


@torch.inference_mode()
def check_step_pure(corrector: Corrector, block: DraftBlock, tokens=None) -> None:
    """Raise ``ContractError`` if ``corrector.step`` modifies its state. ``tokens [b, k]``: the
    realised tokens fed back (default: the argmax of each step)."""
    state = corrector.init_state(block)
    prev = block.anchor
    for i in range(block.num_tokens):
        before = [t.clone() for t in _tensors(state)]
        twin = copy.deepcopy(state)
        out, new_state = corrector.step(state, i, prev)
        after = _tensors(state)
        if len(after) != len(before) or any(not torch.equal(a, b) for a, b in zip(after, before)):
            raise ContractError(f"{type(corrector).__name__}.step modified its state in place at position {i} "
                                "(a tree verifier branches several children from one state; return a new state)")
        again, _ = corrector.step(twin, i, prev)
        if not _same(out, again):
            raise ContractError(f"{type(corrector).__name__}.step gave different outputs from equal states at "
                                f"position {i} (it depends on something other than (state, i, prev_token))")
        if tokens is not None:
            prev = tokens[:, i]
        elif isinstance(out, SparseProbs):
            prev = out.ids.gather(-1, out.probs.argmax(-1, keepdim=True))[:, 0]
        else:
            prev = out.argmax(-1)
        state = new_state
