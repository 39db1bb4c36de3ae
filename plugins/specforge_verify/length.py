"""The default verify-length policy: verify every draft of the block (up to the budget and
``drafter.num_speculative_tokens``). Lossless trivially: the length depends on nothing sampled."""

from __future__ import annotations

from specforge_core.interfaces import DraftBlock, LengthChoice, LengthPolicy, NoOptions


class FixedLength(LengthPolicy):
    """Verify all drafts of each block, up to ``drafter.num_speculative_tokens``."""

    Options = NoOptions

    def choose(self, block: DraftBlock, limit: int, greedy: bool, draft_s: float) -> LengthChoice:
        return LengthChoice(num_drafts=limit)
