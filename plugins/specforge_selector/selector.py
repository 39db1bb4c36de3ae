"""DFlash2's ``CandidateSelector`` (reference ``dflash/model.py::CandidateSelector``), model code only.

Per block position ``i`` the selector keeps the ``top_k`` base-logit candidates ``c_i`` (with their
logits as unary scores) and rescores them with a rank-``r`` bilinear term between the token chosen
at ``i - 1`` (the anchor for ``i = 0``) and each candidate, gated by the position's hidden state:

    s_i[j] = unary_i[j] + sum_r P[x_{i-1}, r] * (W h_i)[r] * S[c_i[j], r]

(``P`` / ``S`` = ``predecessor_codebook`` / ``successor_codebook`` ``[V, r]``, ``W`` =
``hidden_projection`` ``[r, H]``). At T = 0 the selector takes ``argmax_j s_i[j]``; at T > 0 it samples
from ``softmax(s_i / T)`` over the ``top_k`` candidates (a sparse q: zero outside ``c_i``).

The corrector (``corrector.py``) calls the pieces step by step from ``Corrector.step``:
``candidates(logits)`` -> (unary, ids), ``project(hidden)`` once per block, and
``scores(unary_i, ids_i, projected_i, prev_token)`` per position; ``select`` runs the reference's
whole loop (used by the parity check, ``scripts/dflash2_parity.py``).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

Tensor = torch.Tensor


class CandidateSelector(nn.Module):
    """Keys ``candidate_selector.predecessor_codebook`` / ``.successor_codebook`` are bare
    ``[V, r]`` tensors in z-lab's checkpoints (the reference maps them onto ``nn.Embedding.weight``
    when loading); here they are bare parameters, so the state dict has exactly those keys."""

    def __init__(self, vocab_size: int, hidden_size: int, rank: int, top_k: int):
        super().__init__()
        self.top_k = int(top_k)  # K
        self.rank = int(rank)  # r
        self.predecessor_codebook = nn.Parameter(torch.zeros(vocab_size, rank))  # [V, r]
        self.successor_codebook = nn.Parameter(torch.zeros(vocab_size, rank))  # [V, r]
        self.hidden_projection = nn.Linear(hidden_size, rank, bias=False)

    def candidates(self, logits: Tensor) -> "tuple[Tensor, Tensor]":
        """logits [b, k, V] (after output_multiplier / softcapping) -> unary [b, k, K], ids [b, k, K].
        ``sorted=False`` as in the reference (the candidates' order decides argmax ties)."""
        return torch.topk(logits, self.top_k, dim=-1, sorted=False)

    def project(self, hidden: Tensor) -> Tensor:
        """hidden [b, k, H] -> [b, k, r]."""
        return self.hidden_projection(hidden)

    def scores(self, unary: Tensor, ids: Tensor, projected: Tensor, prev_token: Tensor) -> Tensor:
        """One position: unary [b, K], ids [b, K], projected [b, r], prev_token [b] -> scores [b, K]."""
        gate = F.embedding(prev_token, self.predecessor_codebook) * projected  # [b, r]
        return unary + torch.einsum("br,bkr->bk", gate, F.embedding(ids, self.successor_codebook))

    def select(self, hidden: Tensor, logits: Tensor, anchor: Tensor, temperature: float,
               generator: Optional[torch.Generator] = None) -> "tuple[Tensor, Tensor, Optional[Tensor]]":
        """Reference ``CandidateSelector.select``: -> tokens [b, k], candidate ids [b, k, K] and, at
        T > 0, q [b, k, K] over the candidates (None at T = 0)."""
        unary, ids = self.candidates(logits)
        projected = self.project(hidden)
        prev, path, q_rows = anchor, [], []
        for i in range(projected.shape[1]):
            s = self.scores(unary[:, i], ids[:, i], projected[:, i], prev)
            if temperature > 0:
                q = torch.softmax(s.float() / temperature, dim=-1)
                index = torch.multinomial(q, 1, generator=generator)[:, 0]
                q_rows.append(q)
            else:
                index = torch.argmax(s, dim=-1)
            prev = ids[:, i].gather(-1, index[:, None])[:, 0]
            path.append(prev)
        return torch.stack(path, 1), ids, (torch.stack(q_rows, 1) if q_rows else None)
