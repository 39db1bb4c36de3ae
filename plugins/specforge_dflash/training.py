"""The DFlash / DFlare training objective (reference-implementations.md section 4).

For each sequence: sample random anchor positions; each anchor ``a`` gets a block
``[x_a, MASK x (bs - 1)]`` at positions ``a .. a + bs - 1``. All blocks are drafted in one
forward with a block attention mask over ``KV = [context S | block_0 | block_1 | ...]``:
a query of block j sees context rows ``< a_j`` (strictly: the anchor's own target feature is
not visible, as at inference) and every row of its own block (bidirectional); other blocks
are invisible. Block position k predicts ``x[a + k]`` (k = 1 .. bs - 1) with weight
``w_k = exp(-(k - 1) / gamma)`` (DFlash), or with ``shift_label`` position k predicts
``x[a + k + 1]`` (k = 0 .. bs - 1) with ``w_k = exp(-k / gamma)`` (Domino). Weights are zeroed
where the label is outside the sequence or not an assistant token (``loss_mask``).
"""

from __future__ import annotations

from typing import Dict

import torch

from specforge_core.training.losses import block_metrics, weighted_ce, weighted_kd

Tensor = torch.Tensor


def sample_anchors(loss_mask: Tensor, num_anchors: int, generator=None) -> "tuple[Tensor, Tensor]":
    """loss_mask [b, S] -> anchors [b, A] (sorted) and keep [b, A] (False = padding).
    An anchor p needs an assistant token right after it (loss_mask[p + 1])."""
    b, S = loss_mask.shape
    valid = torch.zeros_like(loss_mask, dtype=torch.bool)
    valid[:, :-1] = loss_mask[:, 1:].bool()
    counts = valid.sum(1)
    A = max(1, min(num_anchors, int(counts.max())))
    anchors = torch.zeros(b, A, dtype=torch.long, device=loss_mask.device)
    keep = torch.zeros(b, A, dtype=torch.bool, device=loss_mask.device)
    for i in range(b):
        cand = valid[i].nonzero().squeeze(-1)
        n = min(A, cand.numel())
        if n == 0:
            continue
        pick = cand[torch.randperm(cand.numel(), generator=generator, device="cpu")[:n].to(cand.device)]
        anchors[i, :n] = pick.sort().values
        keep[i, :n] = True
    return anchors, keep


def block_mask(anchors: Tensor, keep: Tensor, seq_len: int, bs: int) -> Tensor:
    """[b, 1, A*bs, S + A*bs] bool, True = attend."""
    b, A = anchors.shape
    q_block = torch.arange(A * bs, device=anchors.device) // bs  # [A*bs] block of each query
    ctx_ok = torch.arange(seq_len, device=anchors.device)[None, None, :] < anchors.repeat_interleave(bs, 1)[:, :, None]
    own = q_block[:, None] == q_block[None, :]  # [A*bs, A*bs]
    blk_ok = own[None].expand(b, -1, -1)
    mask = torch.cat([ctx_ok, blk_ok], -1) & keep.repeat_interleave(bs, 1)[:, :, None]
    # a padded block sees nothing; give it its own row so softmax stays finite (weights are 0)
    mask |= (~keep.repeat_interleave(bs, 1))[:, :, None] & torch.cat(
        [torch.zeros(b, A * bs, seq_len, dtype=torch.bool, device=anchors.device), blk_ok], -1)
    return mask[:, None]


def block_forward(model, embed_tokens, batch: Dict[str, Tensor], num_anchors: int, generator=None):
    """Draft every anchor block in one forward. Returns hidden [b, A, bs, H], labels [b, A, bs],
    weights [b, A, bs] (decay x validity), anchors [b, A], label positions [b, A, bs]. The anchors
    are sampled at random, or given: ``batch["anchors"] [b, A]`` with ``batch["anchor_keep"] [b, A]``
    (on-policy training replays the anchors its rollouts drafted from)."""
    ids, loss_mask, feats = batch["input_ids"], batch["loss_mask"], batch["target_hidden"]
    arch = model.arch
    bs, b, S = arch.block_size, ids.shape[0], ids.shape[1]
    if "anchors" in batch:
        anchors, keep = batch["anchors"], batch["anchor_keep"]
    else:
        anchors, keep = sample_anchors(loss_mask, num_anchors, generator)
    A = anchors.shape[1]
    offs = torch.arange(bs, device=ids.device)
    block_ids = torch.full((b, A, bs), arch.mask_token_id, dtype=torch.long, device=ids.device)
    block_ids[:, :, 0] = ids.gather(1, anchors)
    positions = torch.cat([torch.arange(S, device=ids.device)[None].expand(b, -1),
                           (anchors[:, :, None] + offs).reshape(b, A * bs)], 1)
    mask = block_mask(anchors, keep, S, bs)
    hidden = model(embed_tokens(block_ids.reshape(b, A * bs)), feats, positions, cache=None, mask=mask)
    hidden = hidden.reshape(b, A, bs, -1)
    shift = 1 if arch.shift_label else 0
    label_pos = anchors[:, :, None] + offs + shift  # [b, A, bs]
    in_bounds = label_pos < S
    labels = ids.gather(1, label_pos.clamp_max(S - 1).reshape(b, -1)).reshape(b, A, bs)
    label_mask = loss_mask.gather(1, label_pos.clamp_max(S - 1).reshape(b, -1)).reshape(b, A, bs).bool()
    k = offs.float()
    gamma = float(batch.get("gamma", 7.0))
    decay = torch.exp(-(k - (1 - shift)).clamp_min(0) / gamma)  # DFlash: exp(-(k-1)/g), k>=1; Domino: exp(-k/g)
    position_ok = offs >= (1 - shift)  # DFlash: position 0 (the anchor) has no label
    weights = decay * (position_ok & in_bounds & label_mask & keep[:, :, None]).float()
    return hidden, labels, weights, anchors, label_pos.clamp_max(S - 1)


def block_training_loss(model, embed_tokens, lm_head, batch: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """``batch["loss"]`` (recipe ``training.loss``): ce, or with the target's distributions
    (``teacher_ids`` / ``teacher_logprobs [b, S, K]``, row t = the target's top-K for token t + 1)
    kd or kd+ce (``specforge_core.training.losses.weighted_kd``)."""
    hidden, labels, weights, _, label_pos = block_forward(model, embed_tokens, batch, int(batch.get("num_anchors", 512)),
                                                          batch.get("generator"))
    logits = lm_head(hidden)  # [b, A, bs, V]
    kind = batch.get("loss", "ce")
    out = {}
    if kind != "ce":  # the target's distribution of each label: its row label_pos - 1
        b, A, bs = labels.shape
        rows = (label_pos - 1).clamp_min(0).reshape(b, -1, 1)  # [b, A*bs, 1]
        t_ids = batch["teacher_ids"].gather(1, rows.expand(-1, -1, batch["teacher_ids"].shape[-1]))
        t_lp = batch["teacher_logprobs"].gather(1, rows.expand(-1, -1, batch["teacher_logprobs"].shape[-1]))
        kd = weighted_kd(logits, t_ids.view(b, A, bs, -1), t_lp.view(b, A, bs, -1), weights,
                         float(batch.get("kd_temperature", 1.0)))
        out["loss_kd"] = kd.detach()
    ce = weighted_ce(logits, labels, weights)
    loss = ce if kind == "ce" else kd if kind == "kd" else kd + ce
    return {"loss": loss, "loss_ce": ce.detach(), **out, **block_metrics(logits, labels, weights)}


def training_blocks(model, embed_tokens, batch: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """The drafted rows of every kept anchor block, flattened for a corrector's training:
    hidden [n, k, H], labels [n, k], weights [n, k], anchor [n] (token ids)."""
    hidden, labels, weights, anchors, _ = block_forward(model, embed_tokens, batch, int(batch.get("num_anchors", 512)),
                                                        batch.get("generator"))
    first = 0 if model.arch.shift_label else 1  # DFlash: block row 0 (the anchor) drafts nothing
    anchor_ids = batch["input_ids"].gather(1, anchors)  # [b, A]
    # blocks with a label; given anchors are all kept, in their (b, A) order (on-policy replay)
    keep = batch["anchor_keep"] if "anchors" in batch else weights.sum(-1) > 0  # [b, A]
    return {"hidden": hidden[:, :, first:][keep], "labels": labels[:, :, first:][keep],
            "weights": weights[:, :, first:][keep], "anchor": anchor_ids[keep]}
