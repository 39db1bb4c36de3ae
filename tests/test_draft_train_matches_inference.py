"""A block drafter is trained on what it computes at inference: for the same sequence and the
same anchor, the training forward (every anchor block at once, block attention mask, features
of the whole sequence) and the decode-time draft (draft KV cache grown cycle by cycle, cropped
back to the context after each block) give the same hidden states, so the same drafts.

A mismatch here (a mask that lets a block see the anchor's own target feature, an off-by-one in
positions, a cache that keeps block rows) would not break losslessness - the verifier still
fixes every wrong draft - it would only lower tau, silently. The embedded SmolLM2 default was
checked the same way on 360 anchors of its training data (identical predictions)."""

from __future__ import annotations

import pytest
import torch
from test_domino import block_drafter
from tiny import tiny_target

from specforge_core.interfaces import DraftContext
from specforge_dflare.plugin import DFlareDrafter
from specforge_dflash import training
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
    feats = target.hidden_features(ids)  # [1, S, T*H]
    loss_mask = torch.zeros(1, S, dtype=torch.long)
    loss_mask[:, prompt_len:] = 1  # the response: every position from prompt_len - 1 on is an anchor
    batch = {"input_ids": ids, "loss_mask": loss_mask, "target_hidden": feats}
    with torch.no_grad():
        hidden, _, _, anchors = training.block_forward(drafter.model, drafter.embed_tokens, batch, num_anchors=S)
    anchors = anchors[0].tolist()
    assert anchors == list(range(prompt_len - 1, S - 1))
    first = 0 if shift_label else 1  # DFlash: block row 0 is the anchor and drafts nothing

    # decode order: cycles whose anchors advance by 1, 2, 3, ... accepted tokens, one draft cache
    drafter.reset()
    drafter.commit(prompt_len - 1, feats[:, : prompt_len - 1])  # prefill: the prompt's rows but the last
    a, step, checked = prompt_len - 1, 1, 0
    while a < S - 1:
        block = drafter.draft(DraftContext(tokens=ids[:, : a + 1], max_draft=bs, sampler=None))
        j = anchors.index(a)
        torch.testing.assert_close(block.hidden[0], hidden[0, j, first:], rtol=1e-4, atol=1e-4)
        checked += 1
        nxt = min(a + step, S - 1)
        drafter.commit(nxt - a, feats[:, a:nxt])  # the verify forward's rows for the accepted tokens
        a, step = nxt, step % 4 + 1
    assert checked >= 10
