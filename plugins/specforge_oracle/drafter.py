"""An oracle drafter for timing the decode loop at a known acceptance (issue 17).

It proposes the target's own greedy continuation, precomputed by a plain decode (transformers'
``generate`` through ``TargetModel.greedy_reference``), so on random weights at real shapes - where
any real drafter accepts nothing - the loop still commits ``block_size + 1`` tokens per verify
forward (``accept_len = None``), or exactly ``accept_len + 1`` when the proposal is cut: the first
``accept_len`` drafts are the continuation, the rest are deliberately wrong (``(x + 1) mod V``), so
the verify forward still runs over the whole block and rejects at position ``accept_len``.

Not a drafter for users: the continuation costs a full autoregressive decode. Lossless like any
drafter (the verifier decides; drafts are deterministic, ``probs=None`` = one-hot q).

Timing use (scripts/gpu_check.py): ``follow(prompt + continuation)`` before ``generate`` and
``check=False``, so ``draft`` reads no tensor on the host (shapes only). With ``check=True`` (the
default) each cycle compares the committed tokens with the continuation (one host read) and decodes
again from the committed tokens when they differ (e.g. at T>0, or a bf16 near-tie that the batched
verify forward resolves differently from the one-row decode).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from specforge_core.errors import InputError, RecipeError
from specforge_core.interfaces import DraftBlock, DraftContext, Drafter

Tensor = torch.Tensor


@dataclass
class OracleOptions:
    accept_len: Optional[int] = None  # drafts that match the continuation per block (null = all of them)
    check: bool = True  # compare the committed tokens with the continuation each cycle; off for timing

    def __post_init__(self):
        if self.accept_len is not None and self.accept_len < 0:
            raise RecipeError(f"drafter.options.accept_len must be >= 0 or null, got {self.accept_len}")


class OracleDrafter(Drafter):
    """Measurement only: proposes the target's greedy continuation (cut at ``accept_len``)."""

    Options = OracleOptions
    parallel = False

    def __init__(self, options: OracleOptions, block_size: int, checkpoint=None):
        super().__init__(options, block_size, checkpoint)
        if checkpoint is not None:
            raise RecipeError("drafter oracle has no weights: remove drafter.checkpoint")
        self.target = None
        self.sequence: Optional[Tensor] = None  # [1, T] prompt + the target's greedy continuation

    def bind(self, target) -> None:
        self.target = target

    # ---- the continuation -----------------------------------------------------------------
    def follow(self, sequence: Tensor) -> None:
        """Use ``sequence [1, T]`` (a prompt followed by the tokens the target commits after it)."""
        sequence = torch.as_tensor(sequence)
        if sequence.dim() == 1:
            sequence = sequence[None]
        if sequence.dim() != 2 or sequence.shape[0] != 1:
            raise InputError(f"oracle: expected one sequence [1, T], got shape {tuple(sequence.shape)}")
        self.sequence = sequence.to(self._device(), torch.long)

    def prepare(self, prompt_ids: Tensor, max_new_tokens: int) -> Tensor:
        """Decode the target's greedy continuation of ``prompt_ids [1, t]`` once (plain decode) and
        follow it; returns the new tokens ``[1, <=max_new_tokens]``."""
        prompt_ids = torch.as_tensor(prompt_ids).reshape(1, -1).to(self._device())
        new = self._target().greedy_reference(prompt_ids, max_new_tokens)
        self.follow(torch.cat([prompt_ids, new], 1))
        return new

    # ---- drafting -------------------------------------------------------------------------
    def draft(self, ctx: DraftContext) -> DraftBlock:
        tokens = ctx.tokens  # [1, t]
        if tokens.shape[0] != 1:
            raise InputError(f"oracle: batch size {tokens.shape[0]} is not supported; pass one prompt")
        t = tokens.shape[1]
        k = max(0, min(self.block_size, ctx.max_draft))
        seq = self.sequence
        off_track = seq is None or seq.shape[1] < t + k  # shapes only: no device read
        if not off_track and self.options.check:
            off_track = not torch.equal(seq[:, :t], tokens)  # one host read
        if off_track and k > 0:
            self.prepare(tokens, ctx.max_draft + 1)  # the rest of the budget: one bonus + max_draft
            seq = self.sequence
        k = max(0, min(k, seq.shape[1] - t)) if seq is not None else 0  # the context may end first
        drafts = (seq[:, t:t + k] if k else tokens.new_zeros(1, 0)).clone()  # [1, k]
        cut = self.options.accept_len
        if cut is not None and cut < k:
            # deliberately wrong after the cut: never the target's argmax, so T=0 rejects here
            drafts[:, cut:] = (drafts[:, cut:] + 1) % self._target().vocab_size
        return DraftBlock(tokens=drafts, probs=None, anchor=ctx.anchor)

    # ---- helpers --------------------------------------------------------------------------
    def _target(self):
        if self.target is None:
            raise RecipeError("oracle drafter is not bound to a target: call bind(target) first")
        return self.target

    def _device(self) -> torch.device:
        return self._target().device
