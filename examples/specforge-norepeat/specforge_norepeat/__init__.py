"""A complete third-party SpecForge corrector.

Block-parallel drafters predict every position at once, so they often draft the same token
twice in a row. This corrector walks the block causally and lowers the logit of the token
realised just before each position by ``penalty``. It only implements ``init_state`` and
``step``; the engine's default ``correct`` samples each position with the request's sampler
and hands the resulting q to the verifier, so any combination stays lossless.
"""

from dataclasses import dataclass

import torch

from specforge_core import Corrector, hookimpl


@dataclass
class NoRepeatOptions:
    penalty: float = 2.0  # subtracted from the logit of the previous token


class NoRepeatCorrector(Corrector):
    """Lowers the logit of the token drafted just before each position."""

    Options = NoRepeatOptions

    def init_state(self, block):
        return block.logits()  # [b, k, V] base logits of the parallel drafter

    def step(self, base_logits, i, prev_token):
        logits = base_logits[:, i].float().clone()  # [b, V]
        rows = torch.arange(logits.shape[0], device=logits.device)
        logits[rows, prev_token] -= self.options.penalty
        return logits, base_logits


@hookimpl
def specforge_register(registry):
    registry.add(NoRepeatCorrector, name="norepeat")
