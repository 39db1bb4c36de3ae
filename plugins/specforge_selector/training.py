"""Training the candidate selector: K-way cross-entropy over the base top-K.

The reference (``dflash`` 0.1.0) ships inference code only; this objective follows the selector's
inference exactly and is ours. On a teacher-forced block (the previous token of position ``i`` is
the anchor for ``i = 0``, else the ground-truth token ``i - 1``):

    unary_i, c_i = top_K(base_i)
    if y_i not in c_i: c_i[argmin unary_i] = y_i, unary_i[...] = base_i[y_i]     # gold injected
    s_i = unary_i + < P[y_{i-1}] * (W h_i), S[c_i] >                               # selector.py
    L = sum_i w_i a_i CE_K(s_i, index of y_i in c_i) / sum_i w_i a_i

with ``w_i`` the trainer's position decay x validity and ``a_i = 1`` when the gold token was a
candidate, ``alpha`` when it was injected (the selector cannot draft it there; alpha < 1 keeps such
positions from dominating). Metrics: ``candidate_recall`` (gold among the base top-K),
``accuracy`` (the selector's pick is the gold token; ``base_accuracy``: the base argmax is) and
``accept_len`` (consecutive correct picks from position 0, + 1), all on supervised positions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from specforge_core.interfaces import DraftBlock

from .selector import CandidateSelector

Tensor = torch.Tensor


def selector_loss(head: CandidateSelector, block: DraftBlock, labels: Tensor, weights: Tensor, alpha: float) -> dict:
    base = block.logits()  # [n, k, V]
    dtype = head.hidden_projection.weight.dtype
    unary, ids = head.candidates(base.to(dtype))  # [n, k, K]
    present = ids == labels[..., None]  # [n, k, K]
    hit = present.any(-1)  # [n, k] the gold token is a candidate
    lowest = unary.argmin(-1)  # [n, k]
    ids = torch.where(hit[..., None], ids, ids.scatter(-1, lowest[..., None], labels[..., None]))
    unary = base.to(dtype).gather(-1, ids)  # [n, k, K] (the injected candidate's own base logit)
    gold = torch.where(hit, present.float().argmax(-1), lowest)  # [n, k]
    prev = torch.cat([block.anchor[:, None], labels[:, :-1]], 1)  # [n, k]
    gate = F.embedding(prev, head.predecessor_codebook) * head.project(block.hidden.to(dtype))  # [n, k, r]
    scores = unary + torch.einsum("nkr,nkjr->nkj", gate, F.embedding(ids, head.successor_codebook))  # [n, k, K]
    ce = F.cross_entropy(scores.float().flatten(0, 1), gold.flatten(), reduction="none").view_as(labels)
    w = weights * torch.where(hit, torch.ones_like(weights), torch.full_like(weights, alpha))
    loss = (ce * w).sum() / w.sum().clamp_min(1e-6)
    with torch.no_grad():
        supervised = weights > 0
        n_sup = supervised.sum().clamp_min(1)
        correct = (scores.argmax(-1) == gold) & hit & supervised  # the pick is the gold token
        run = (correct | ~supervised).long().cumprod(-1) * supervised.long()
        blocks = supervised.any(-1)
        accept = (run.sum(-1).float() + 1)[blocks].mean() if blocks.any() else torch.tensor(1.0)
        metrics = {"candidate_recall": (hit & supervised).sum() / n_sup, "accuracy": correct.sum() / n_sup,
                   "base_accuracy": ((base.argmax(-1) == labels) & supervised).sum() / n_sup, "accept_len": accept}
    return {"loss": loss, **metrics}
