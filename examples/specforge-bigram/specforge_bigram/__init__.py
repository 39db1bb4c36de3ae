"""A complete third-party SpecForge plugin: a drafter that follows bigram statistics.

It counts, over the tokens committed so far (prompt + output), which token most often
followed each token, and drafts a chain by following those counts greedily. Deterministic,
so it returns ``probs=None`` and the verifier treats drafts as one-hot q - still lossless.
"""

from collections import Counter, defaultdict
from dataclasses import dataclass

import torch

from specforge_core import DraftBlock, DraftContext, Drafter, hookimpl


@dataclass
class BigramOptions:
    min_count: int = 1  # stop drafting when the best continuation was seen fewer times


class BigramDrafter(Drafter):
    """Drafts the most frequent successor of each token, seen in this request so far."""

    Options = BigramOptions
    parallel = False

    def draft(self, ctx: DraftContext) -> DraftBlock:
        seq = ctx.tokens[0].tolist()
        follows = defaultdict(Counter)
        for a, b in zip(seq, seq[1:]):
            follows[a][b] += 1
        out, last = [], seq[-1]
        for _ in range(min(self.block_size, ctx.max_draft)):
            if not follows[last]:
                break
            nxt, count = follows[last].most_common(1)[0]
            if count < self.options.min_count:
                break
            out.append(nxt)
            last = nxt
        tokens = torch.tensor([out], dtype=torch.long, device=ctx.tokens.device).reshape(1, len(out))
        return DraftBlock(tokens=tokens, probs=None, anchor=ctx.anchor)


@hookimpl
def specforge_register(registry):
    registry.add(BigramDrafter, name="bigram")
