"""Does a block drafter train on what it computes at decode time?

For one sequence and the same anchors, compare the training forward (every anchor block at
once under the block attention mask, the target's features of the whole sequence: the
drafter's ``training_blocks``, as a Domino head's training reads them) with the decode-time
drafts (``reset`` / ``commit`` / ``draft``: the draft KV cache grown cycle by cycle, cropped
back to the context after each block, as ``SpeculativeGenerator`` drives it).

A mismatch (a mask that lets a block see the anchor's own target feature, a position
off by one, a cache that keeps block rows) never breaks losslessness - the verifier fixes
every wrong draft - it only lowers tau, silently. Used by
``tests/test_draft_train_matches_inference.py`` (tiny models) and
``scripts/draft_agreement_smollm2.py`` (the shipped SmolLM2 drafter on its training data).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..interfaces import DraftContext

Tensor = torch.Tensor


@dataclass
class AnchorDrafts:
    anchor: int  # position of the block's anchor token in the sequence
    training: Tensor  # [k, H] drafted rows of the training forward
    decode: Tensor  # [k, H] the same rows drafted at decode time


def training_and_decode_drafts(drafter, ids: Tensor, feats: Tensor, prompt_len: int,
                               steps: Sequence[int] = (1, 2, 3, 4)) -> list[AnchorDrafts]:
    """``ids [1, S]``, ``feats [1, S, F]`` (the target's context features of the whole sequence,
    ``target.hidden_features(ids)``), the response starting at ``prompt_len``. The drafter is
    bound and in eval mode. Decoding starts at anchor ``prompt_len - 1`` and each cycle commits
    the next ``steps[i % len(steps)]`` tokens (as if that many were accepted), so the draft cache
    grows by varying amounts. Returns one entry per decode-time anchor."""
    S = ids.shape[1]
    loss_mask = torch.zeros(1, S, dtype=torch.long, device=ids.device)
    loss_mask[:, prompt_len:] = 1  # every position from prompt_len - 1 on is an anchor
    anchors = list(range(prompt_len - 1, S - 1))
    batch = {"input_ids": ids, "loss_mask": loss_mask, "target_hidden": feats, "num_anchors": S}
    with torch.no_grad():
        rows = drafter.training_blocks(batch)["hidden"]  # [A, k, H], anchors in sequence order
    assert rows.shape[0] == len(anchors), (rows.shape, len(anchors))

    drafter.reset()
    drafter.commit(prompt_len - 1, feats[:, : prompt_len - 1])  # prefill: the prompt's rows but the last
    out: list[AnchorDrafts] = []
    a, cycle = prompt_len - 1, 0
    while a < S - 1:
        block = drafter.draft(DraftContext(tokens=ids[:, : a + 1], max_draft=drafter.block_size, sampler=None))
        out.append(AnchorDrafts(a, rows[anchors.index(a)], block.hidden[0]))
        nxt = min(a + int(steps[cycle % len(steps)]), S - 1)
        drafter.commit(nxt - a, feats[:, a:nxt])  # the verify forward's rows for the accepted tokens
        a, cycle = nxt, cycle + 1
    return out


def differing_drafts(pairs: list[AnchorDrafts], project) -> "tuple[int, int]":
    """(drafted positions whose greedy token differs, positions compared); ``project`` maps
    hidden ``[k, H]`` to logits ``[k, V]`` (the drafter's ``project_logits``)."""
    differ = total = 0
    with torch.no_grad():
        for p in pairs:
            a, b = project(p.training).argmax(-1), project(p.decode).argmax(-1)  # [k], [k]
            differ += int((a != b).sum())
            total += a.numel()
    return differ, total
