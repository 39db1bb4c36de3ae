"""Losses shared by drafters and correctors (generic: no plugin names here).

* ``weighted_ce``: cross-entropy weighted per position (position decay x validity) and
  normalised by the weight sum, as in DFlash / DFlare / Domino training.
* ``corrector_loss``: the base-anchored curriculum of the Domino paper (section 4.2),
  ``L = (1 - lambda_t) L_final + lambda_t L_anchor`` with lambda_t decaying linearly from
  ``lambda_start`` to 0 over the first ``decay_ratio`` of training; the corrector is trained
  with teacher forcing (ground-truth prefix tokens), on blocks drafted by a parallel drafter.

  ``L_anchor`` is the paper's ``L_base = CE(L^base)`` when the drafter trains too (it is the
  backbone's gradient, as in SpecForge's ``OnlineDominoModel``, the paper's training code).
  With a frozen drafter (``training.component=corrector``) that term has no gradient at all,
  and ``lambda_t`` would only scale the gradient of ``L_final`` by ``1 - lambda_t`` - which
  AdamW normalises away. There the anchor is put on the corrector's output instead:
  ``L_anchor = KL(p_base || p_final)``, so the corrected distribution starts held to the
  backbone's and is released as ``lambda_t`` decays. Its gradient in the final logits is
  ``p_final - ((1 - lambda_t) onehot(y) + lambda_t p_base)``: cross-entropy against a target
  that moves linearly from the backbone's distribution to the label.

  A corrector whose output is not a full-vocabulary distribution (``Corrector.training_objective``
  returns a loss, e.g. the selector's K-way cross-entropy) is trained on its own loss instead,
  plus ``L_base`` when the drafter trains too; the curriculum does not apply to it.
"""

from __future__ import annotations

from typing import Dict

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def weighted_ce(logits: Tensor, labels: Tensor, weights: Tensor) -> Tensor:
    ce = F.cross_entropy(logits.float().flatten(0, -2), labels.flatten(), reduction="none").view_as(labels)
    return (ce * weights).sum() / weights.sum().clamp_min(1e-6)


def block_metrics(logits: Tensor, labels: Tensor, weights: Tensor, prefix: str = "") -> Dict[str, Tensor]:
    """Accuracy on supervised positions and the estimated accept length of each block
    (consecutive correct drafts from the first position, + 1 bonus)."""
    with torch.no_grad():
        supervised = weights > 0
        correct = (logits.argmax(-1) == labels) & supervised
        acc = correct.sum() / supervised.sum().clamp_min(1)
        run = (correct | ~supervised).long().cumprod(-1) * supervised.long()
        blocks = supervised.any(-1)
        accept = (run.sum(-1).float() + 1)[blocks].mean() if blocks.any() else torch.tensor(1.0)
    return {f"{prefix}accuracy": acc, f"{prefix}accept_len": accept}


def curriculum_lambda(progress: float, start: float = 1.0, decay_ratio: float = 1.0) -> float:
    """lambda_t = clamp(start * (1 - progress / decay_ratio), 0, 1); progress = step / total."""
    if decay_ratio <= 0:
        return 0.0
    return float(min(1.0, max(0.0, start * (1.0 - progress / decay_ratio))))


def weighted_kl(teacher_logits: Tensor, student_logits: Tensor, weights: Tensor) -> Tensor:
    """KL(p_teacher || p_student) per position [n, k], weighted and normalised like
    ``weighted_ce``; no gradient into the teacher."""
    log_p = F.log_softmax(teacher_logits.detach().float(), -1)  # [n, k, V]
    log_q = F.log_softmax(student_logits.float(), -1)  # [n, k, V]
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)  # [n, k]
    return (kl * weights).sum() / weights.sum().clamp_min(1e-6)


def weighted_kd(logits: Tensor, teacher_ids: Tensor, teacher_logprobs: Tensor, weights: Tensor,
                temperature: float = 1.0) -> Tensor:
    """Distillation from the target's distribution, weighted and normalised like ``weighted_ce``:
    per position ``KL(p || q) = sum_j p_j (log p_j - log q_j)`` over the target's top-K tokens
    (``teacher_ids`` / ``teacher_logprobs [..., K]``: log-probabilities at ``temperature``, from
    ``teacher_topk``), p renormalised over them, q = softmax(logits / temperature) over the full
    vocabulary (mass q puts outside the top-K is what the normalisation takes from the K)."""
    log_p = torch.log_softmax(teacher_logprobs.float(), -1)  # renormalised over the K
    log_q = torch.log_softmax(logits.float() / temperature, -1).gather(-1, teacher_ids)  # [..., K]
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)  # [...]
    return (kl * weights).sum() / weights.sum().clamp_min(1e-6)


def teacher_topk(logits: Tensor, k: int, temperature: float = 1.0) -> "tuple[Tensor, Tensor]":
    """The target's distributions to distil from, truncated: logits ``[..., V]`` -> the top-``k``
    token ids and their log-probabilities under softmax(logits / temperature), ``[..., k]`` each
    (ids long, log-probabilities float32: what the cache stores)."""
    log_p = torch.log_softmax(logits.float() / temperature, -1)
    top = log_p.topk(min(k, log_p.shape[-1]), -1)
    return top.indices, top.values


def corrector_loss(drafter, corrector, batch: dict, lambda_base: float, frozen_drafter: bool = False) -> Dict[str, Tensor]:
    """Domino paper section 4.2: teacher-forced corrector + base-anchored curriculum. With
    ``frozen_drafter`` the anchor is KL(p_base || p_final) (see the module docstring)."""
    from ..interfaces import DraftBlock

    blocks = drafter.training_blocks(batch)  # hidden [n, k, H], labels / weights [n, k], anchor [n]
    base = drafter.project_logits(blocks["hidden"])  # [n, k, V]
    block = DraftBlock(hidden=blocks["hidden"], base_logits=base, anchor=blocks["anchor"])
    labels, weights = blocks["labels"], blocks["weights"]
    own = corrector.training_objective(block, labels, weights)  # a re-ranker's own loss (interfaces.Corrector)
    if own is not None:  # frozen drafter: that loss alone; jointly: + the backbone's CE (its own logits stay strong)
        l_base = weighted_ce(base, labels, weights)
        loss = own["loss"] if frozen_drafter else own["loss"] + l_base
        return {**own, "loss": loss, "loss_corrector": own["loss"].detach(), "loss_base": l_base.detach(),
                **block_metrics(base, labels, weights, prefix="base_")}
    final = corrector.training_forward(block, labels)  # teacher forcing, [n, k, V]
    l_final = weighted_ce(final, labels, weights)
    l_base = weighted_ce(base, labels, weights)
    extra = {}
    if frozen_drafter:  # L_base has no gradient here: anchor the corrected distribution to the base one
        l_anchor = weighted_kl(base, final, weights)
        extra["loss_anchor"] = l_anchor.detach()
    else:  # the paper's L_base: keeps the trained backbone's own logits strong
        l_anchor = l_base
    loss = (1.0 - lambda_base) * l_final + lambda_base * l_anchor
    return {"loss": loss, "loss_final": l_final.detach(), "loss_base": l_base.detach(), **extra,
            "lambda_base": torch.tensor(lambda_base), **block_metrics(final, labels, weights),
            **block_metrics(base, labels, weights, prefix="base_")}
