"""Stacked correctors (``corrector.name: [a, b, ...]``): members compose in order, one q at the end.

At block position ``i`` the first member's ``step`` gives logits; each later member's ``step_on``
takes the previous member's output logits in place of the block's base logits row ``i``; the last
member's output (logits, or a ``SparseProbs`` q) is the stack's. The state is a tuple of the
members' states (each from its own ``init_state(block)``), replaced, never modified. Knows the
``Corrector`` interface only; ``check_stack`` runs when the recipe is resolved, before any model loads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import torch

from .errors import RecipeError
from .interfaces import Corrector, DraftBlock, Drafter


@dataclass
class StackMember:
    name: str  # the registered corrector name (recipe ``corrector.name`` entry)
    cls: type  # its Corrector class
    options: Any  # its validated Options instance


@dataclass
class StackOptions:
    members: Sequence[StackMember]


def check_stack(names: Sequence[str], classes: Sequence[type]) -> None:
    """The stacking rules, as one-line ``RecipeError``s: no duplicate, only a member that
    implements ``step_on`` after the first, a ``sparse_output`` member only last."""
    if not names:
        raise RecipeError("corrector.name is an empty list: name a corrector, a list of them, or none")
    names = list(names)
    twice = next((n for j, n in enumerate(names) if n in names[:j]), None)
    if twice is not None:
        raise RecipeError(f"corrector '{twice}' appears twice in corrector.name")
    for j, (n, cls) in enumerate(zip(names, classes)):
        if getattr(cls, "sparse_output", False) and j < len(names) - 1:
            raise RecipeError(f"corrector '{n}' returns a sparse q and must be last in corrector.name")
        if j > 0 and cls.step_on is Corrector.step_on:
            raise RecipeError(f"corrector '{n}' cannot follow another corrector (it implements no step_on)")


class CorrectorStack(Corrector):
    """Correctors applied in order at every position; built from a recipe (``StackOptions``, one
    checkpoint per member: None, one shared string, or a mapping name -> checkpoint) or from
    built members (``CorrectorStack.of``)."""

    Options = StackOptions

    def __init__(self, options: StackOptions, checkpoint: "Optional[str | Mapping[str, Optional[str]]]" = None):
        super().__init__(options, None)
        members = list(options.members)
        check_stack([m.name for m in members], [m.cls for m in members])
        per = dict(checkpoint) if isinstance(checkpoint, Mapping) else {m.name: checkpoint for m in members}
        self.names = [m.name for m in members]
        self.members = [m.cls(m.options, checkpoint=per.get(m.name)) for m in members]

    @classmethod
    def of(cls, members: Sequence[Corrector], names: Optional[Sequence[str]] = None) -> "CorrectorStack":
        """A stack of already-built correctors (tests, embedding); ``names`` default to class names."""
        names = list(names) if names is not None else [type(m).__name__ for m in members]
        check_stack(names, [type(m) for m in members])
        stack = cls.__new__(cls)
        Corrector.__init__(stack, StackOptions([StackMember(n, type(m), m.options) for n, m in zip(names, members)]))
        stack.names, stack.members = names, list(members)
        return stack

    # ---- the seam: every member, in order --------------------------------------------------------
    def compatible_with(self, drafter: Drafter) -> None:
        for m in self.members:
            m.compatible_with(drafter)

    def bind(self, target) -> None:
        for m in self.members:
            m.bind(target)

    def reset(self) -> None:
        for m in self.members:
            m.reset()

    def init_state(self, block: DraftBlock) -> tuple:
        return tuple(m.init_state(block) for m in self.members)

    def step(self, state: tuple, i: int, prev_token: torch.Tensor):
        out, first = self.members[0].step(state[0], i, prev_token)
        new = [first]
        for m, s in zip(self.members[1:], state[1:]):  # logits: check_stack keeps a sparse member last
            out, s = m.step_on(s, i, prev_token, out)
            new.append(s)
        return out, tuple(new)

    def correct(self, block: DraftBlock, sampler):
        if len(self.members) == 1:  # keep the member's own (maybe fused) rollout
            return self.members[0].correct(block, sampler)
        with torch.inference_mode():
            return super().correct(block, sampler)

    # ---- training: not for a stack (train each member alone) --------------------------------------
    def _no_training(self):
        raise NotImplementedError(f"a stacked corrector ({' + '.join(self.names)}) cannot be trained or saved "
                                  "as one: train each member alone (corrector.name: <member>)")

    def training_module(self) -> torch.nn.Module:
        """The members' weights together, read-only (weight fingerprints, parameter counts in the
        bench): ``specforge train`` refuses a stack before it would train one (training/run.py)."""
        return torch.nn.ModuleList([m.training_module() for m in self.members])

    def training_forward(self, block, teacher_tokens):
        self._no_training()

    def checkpoint_tensors(self) -> dict:
        self._no_training()

    def load_weights(self, directory) -> None:
        self._no_training()
