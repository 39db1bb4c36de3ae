"""Chain verifier: the drafted block is one path; accept its longest valid prefix.

Notation: drafts ``x_1..x_n`` with draft distributions ``q_i``; target distributions
``p_i`` (row ``i - 1`` of the verify forward, i.e. conditioned on the anchor and
``x_1..x_{i-1}``); both warped by the same temperature / top-k / top-p.

T = 0 (greedy)
    accept while ``x_i == argmax p_i``; the bonus token is ``argmax p_{a+1}`` where ``a`` is the
    number accepted. Every committed token is the target's argmax given the committed prefix,
    so the output equals plain greedy decoding token for token.

T > 0 (speculative sampling, Leviathan et al. 2023 / Chen et al. 2023)
    for i = 1..n: draw u ~ U(0, 1) and accept ``x_i`` if ``u < min(1, p_i(x_i) / q_i(x_i))``;
    at the first rejection emit a token from the residual ``normalize(max(0, p_i - q_i))`` and
    stop; if all n are accepted emit the bonus token from ``p_{n+1}``.
    Why it is exact: P(emit y at step i) = q(y) min(1, p(y)/q(y)) + P(reject) r(y)
      = min(q(y), p(y)) + (1 - sum_z min(q(z), p(z))) * max(0, p(y) - q(y)) / sum_z max(0, p(z) - q(z))
      = min(q, p)(y) + max(0, p - q)(y) = p(y),
    because sum_z max(0, p - q) = 1 - sum_z min(p, q). Deterministic drafters (``q=None``) are
    one-hot q: accept with probability p(x_i), residual = p with x_i removed, renormalised.
    A sparse q (``SparseProbs``: K candidates) is the same rule with q(x) = 0 outside the
    candidates: the residual max(0, p - q) keeps p's mass on every other token of the vocabulary.
    A drafted token must have q(x_i) > 0 (it was drawn from q); a row of q that is all zero is a
    corrector bug (there is nothing to draw from), not something the verifier repairs.

rule = "match" (the loop of the published block-drafter reference code, kept for parity)
    draw y_i ~ p_i at every position and accept while x_i == y_i; emit y_{a+1}. Exact too (every
    emitted token is a draw from p given the committed prefix), but it accepts with
    probability sum_x q(x) p(x) <= sum_x min(q(x), p(x)) - never more than residual sampling.
"""

from __future__ import annotations

import torch

from dataclasses import dataclass

from specforge_core.errors import RecipeError
from specforge_core.interfaces import Accepted, Candidates, SparseProbs, Verifier
from specforge_core.sampling import Sampler, residual


@dataclass
class ChainOptions:
    rule: str = "residual"  # T>0 acceptance: residual (speculative sampling) | match (reference loop)

    def __post_init__(self):
        if self.rule not in ("residual", "match"):
            raise RecipeError(f"verifier.options.rule must be 'residual' or 'match' (got '{self.rule}')")


class ChainVerifier(Verifier):
    """Longest accepted prefix (T=0) / speculative sampling with the residual (T>0)."""

    Options = ChainOptions

    def __init__(self, options: ChainOptions = None):
        super().__init__(options or ChainOptions())

    def propose(self, block_tokens: torch.Tensor, block_probs) -> Candidates:
        n = block_tokens.shape[1]
        ar = torch.arange(n, device=block_tokens.device)
        return Candidates(tokens=block_tokens, probs=block_probs, parents=ar - 1, depths=ar + 1)

    def accept(self, candidates: Candidates, target_logits: torch.Tensor, sampler: Sampler) -> Accepted:
        drafts = candidates.tokens  # [b, n]
        b, n = drafts.shape
        rows = torch.arange(b, device=drafts.device)
        if sampler.greedy or self.options.rule == "match":
            # greedy: the target's argmax; match: one sample of p at every position
            target_tokens = target_logits.argmax(-1) if sampler.greedy else sampler.sample(target_logits)  # [b, n+1]
            match = (drafts == target_tokens[:, :n]).long()  # [b, n]
            num_accepted = match.cumprod(1).sum(1)  # [b]
            bonus = target_tokens[rows, num_accepted]  # [b]
        else:
            p = sampler.probs(target_logits)  # [b, n+1, V]
            p_draft = p[:, :n].gather(-1, drafts[..., None]).squeeze(-1)  # [b, n] p_i(x_i)
            q = candidates.probs
            if q is None:
                q_draft = torch.ones_like(p_draft)  # one-hot q
            elif isinstance(q, SparseProbs):  # q(x) = the candidate's probability, 0 outside the candidates
                q_draft = q.at(drafts)
            else:
                q_draft = q.gather(-1, drafts[..., None]).squeeze(-1).float()
            u = sampler.uniform((b, n), device=drafts.device)
            # u < p/q  <=>  u * q < p   (no division; q > 0 for a token the drafter produced)
            ok = (u * q_draft < p_draft).long()  # [b, n]
            num_accepted = ok.cumprod(1).sum(1)  # [b]
            p_next = p[rows, num_accepted]  # [b, V]: p_{a+1}
            rejected = num_accepted < n
            safe_idx = num_accepted.clamp_max(max(n - 1, 0))
            if n > 0:
                if q is None:
                    q_next = None
                elif isinstance(q, SparseProbs):  # the rejected position's q over the full vocabulary
                    q_next = q[rows, safe_idx].dense()
                else:
                    q_next = q[rows, safe_idx].float()
                resid = residual(p_next, q_next, drafts[rows, safe_idx])
                dist = torch.where(rejected[:, None], resid, p_next)
            else:
                dist = p_next
            bonus = sampler.sample_from_probs(dist)  # [b]
        # full width n+1 (no host read of the accepted count here: the scheduler reads it once):
        # row = accepted drafts, then the bonus token, then -1 padding
        idx = torch.arange(n + 1, device=drafts.device)
        padded = torch.cat([drafts, drafts.new_zeros(b, 1)], 1)  # [b, n+1]
        tokens = torch.where(idx[None] < num_accepted[:, None], padded, bonus[:, None])
        tokens = torch.where(idx[None] <= num_accepted[:, None], tokens, tokens.new_full((), -1))
        return Accepted(tokens=tokens, num_accepted=num_accepted, path=idx[None, :n].expand(b, -1))
