"""Prompt-lookup decoding (Saxena 2023; vLLM ``ngram``, transformers ``prompt_lookup_num_tokens``).

Take the last ``n`` committed tokens (``n`` from ``max_ngram`` down to ``min_ngram``), find
their most recent earlier occurrence that is followed by ``k`` tokens (else the occurrence with
the longest continuation) and propose the tokens that followed it. Deterministic: ``probs=None`` (the verifier treats drafts as one-hot q).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from specforge_core.errors import RecipeError
from specforge_core.interfaces import DraftBlock, DraftContext, Drafter


@dataclass
class NgramOptions:
    max_ngram: int = 3  # longest suffix to match (vLLM prompt_lookup_max)
    min_ngram: int = 1  # shortest suffix to match (vLLM prompt_lookup_min)

    def __post_init__(self):
        if not 1 <= self.min_ngram <= self.max_ngram:
            raise RecipeError(
                f"drafter.options: need 1 <= min_ngram <= max_ngram, got min_ngram={self.min_ngram}, "
                f"max_ngram={self.max_ngram}"
            )


class NgramDrafter(Drafter):
    """Prompt lookup: copy what followed the latest earlier occurrence of the current suffix."""

    Options = NgramOptions
    parallel = False

    def __init__(self, options: NgramOptions, block_size: int, checkpoint=None):
        super().__init__(options, block_size, checkpoint)
        if checkpoint is not None:
            raise RecipeError("drafter ngram has no weights: remove drafter.checkpoint")

    def draft(self, ctx: DraftContext) -> DraftBlock:
        k = min(self.block_size, ctx.max_draft)
        rows = [self._lookup(row, k) for row in ctx.tokens]  # batch rows are independent
        width = min(len(r) for r in rows)  # a block is rectangular: keep the common length
        tokens = torch.tensor([r[:width] for r in rows], dtype=torch.long, device=ctx.tokens.device)
        return DraftBlock(tokens=tokens.reshape(len(rows), width), probs=None, anchor=ctx.anchor)

    def _lookup(self, row: torch.Tensor, k: int) -> list[int]:
        if k <= 0:
            return []
        seq = row.tolist()
        t = len(seq)
        for n in range(min(self.options.max_ngram, t - 1), self.options.min_ngram - 1, -1):
            suffix = seq[t - n:]
            best: list[int] = []
            # most recent earlier match with a full-length continuation; otherwise the longest one
            for start in range(t - n - 1, -1, -1):
                if seq[start:start + n] == suffix:
                    follow = seq[start + n:start + n + k]
                    if len(follow) > len(best):
                        best = follow
                        if len(best) == k:
                            break
            if best:
                return best
        return []
