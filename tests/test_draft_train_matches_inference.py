"""A block drafter is trained on what it computes at inference: for the same sequence and the
same anchor, the training forward (every anchor block at once, block attention mask, features
of the whole sequence) and the decode-time draft (draft KV cache grown cycle by cycle, cropped
back to the context after each block) give the same hidden states, so the same drafts.

A mismatch here (a mask that lets a block see the anchor's own target feature, an off-by-one in
positions, a cache that keeps block rows) would not break losslessness - the verifier still
fixes every wrong draft - it would only lower tau, silently. The comparison lives in
specforge_core/training/draft_agreement.py; scripts/draft_agreement_smollm2.py runs it on the
embedded SmolLM2 default's training data (0 of 1624 drafts differ, docs/results/diagnostics.json)."""

from __future__ import annotations

import pytest
import torch
from test_domino import block_drafter
from tiny import tiny_target

from specforge_core.training.draft_agreement import training_and_decode_drafts
from specforge_dflare.plugin import DFlareDrafter
from specforge_dflash.drafter import DFlashDrafter


@pytest.mark.parametrize("cls,shift_label", [(DFlashDrafter, False), (DFlareDrafter, False), (DFlashDrafter, True)])
def test_training_blocks_equal_decode_time_drafts(cls, shift_label):
    bs, prompt_len, S = 6, 9, 40
    target = tiny_target(seed=3)
    drafter = block_drafter(cls, bs, seed=1, num_hidden_layers=2, shift_label=shift_label)
    drafter.bind(target)
    target.capture(drafter.context_layers)
    drafter.model.eval()
    ids = torch.randint(0, 90, (1, S), generator=torch.Generator().manual_seed(0))
    # decode order: cycles whose anchors advance by 1, 2, 3, 4, 1, ... accepted tokens, one draft cache
    pairs = training_and_decode_drafts(drafter, ids, target.hidden_features(ids), prompt_len, steps=(1, 2, 3, 4))
    for p in pairs:
        torch.testing.assert_close(p.decode, p.training, rtol=1e-4, atol=1e-4)
    assert len(pairs) >= 10
