"""A complete third-party SpecForge corrector that uses the request context.

A parallel drafter predicts every block position from the target's features, not from the
words it is continuing; text repeats its own words (names, identifiers). This corrector adds
``boost`` to the logit of every token that already occurs in the request: the committed tokens
(``block.context.tokens``, the request context the engine attaches to every block) and the
tokens drafted earlier in the same block. The set of committed tokens is per-request state,
updated with the new tokens of each cycle and cleared by ``reset()``; the per-block state is
immutable: ``step`` returns a new one and never modifies the one it is given.
"""

from dataclasses import dataclass

import torch

from specforge_core import Corrector, hookimpl


@dataclass
class SeenOptions:
    boost: float = 1.0  # added to the logit of each token already in the request


class SeenCorrector(Corrector):
    """Boosts the tokens already seen in the request (committed, or drafted earlier in the block)."""

    Options = SeenOptions

    def __init__(self, options, checkpoint=None):
        super().__init__(options, checkpoint)
        self.reset()

    def reset(self):
        """A new request: forget the previous request's tokens."""
        self.seen = None  # [b, V] bool, the committed tokens of this request
        self.num_read = 0  # how many committed tokens are in it

    def init_state(self, block):
        committed = block.context.tokens  # [b, t]: prompt + generated, the anchor last
        base = block.logits()  # [b, k, V] the parallel drafter's base logits
        if self.seen is None:
            self.seen = torch.zeros(base.shape[0], base.shape[-1], dtype=torch.bool, device=base.device)
        self.seen = self.seen.scatter(1, committed[:, self.num_read:], True)  # only the new tokens
        self.num_read = committed.shape[1]
        return base, self.seen

    def step(self, state, i, prev_token):
        base, seen = state
        seen = seen.scatter(1, prev_token[:, None], True)  # a new tensor: the given state is untouched
        logits = base[:, i].float() + self.options.boost * seen
        return logits, (base, seen)


@hookimpl
def specforge_register(registry):
    registry.add(SeenCorrector, name="seen")
