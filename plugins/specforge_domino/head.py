"""The Domino head (Domino paper section 4.1.2; reference-implementations.md section 2).

* Causal encoder: a GRU (1 layer, no bias, zero initial state, PyTorch gate order [r, z, n])
  over the target embeddings of the block's realised tokens: ``S_{i-1} = GRU(E_{<=i-1})``.
* Low-rank correction: ``delta_i = W2 SiLU(W1 [H_i ; S_{i-1}])`` (rank ``emb_dim`` = 256),
  ``logits_i = base_logits_i + delta_i``.

Keys match the published checkpoints: ``prefix_gru.weight_ih_l0 [3G, H]``,
``prefix_gru.weight_hh_l0 [3G, G]``, ``embed_proj.0.weight [E, H+G]``,
``embed_proj.2.weight [V, E]`` (older checkpoints nest them under ``logit_head.``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

Tensor = torch.Tensor


@dataclass
class DominoArch:
    hidden_size: int  # H: drafter hidden states and target embeddings
    vocab_size: int  # V
    gru_hidden_dim: int = 1024  # G
    emb_dim: int = 256  # E, the rank of the correction
    pure_draft_prefix_len: int = 1  # P: the first P drafts come from the base logits alone


class DominoHead(nn.Module):
    def __init__(self, arch: DominoArch):
        super().__init__()
        self.arch = arch
        H, G, E, V = arch.hidden_size, arch.gru_hidden_dim, arch.emb_dim, arch.vocab_size
        self.prefix_gru = nn.GRU(H, G, num_layers=1, bias=False, batch_first=True)
        self.embed_proj = nn.Sequential(nn.Linear(H + G, E, bias=False), nn.SiLU(), nn.Linear(E, V, bias=False))

    # ---- the pieces, named as in the paper ------------------------------------------------
    @property
    def w1(self) -> Tensor:  # [E, H+G]
        return self.embed_proj[0].weight

    @property
    def w2(self) -> Tensor:  # [V, E]
        return self.embed_proj[2].weight

    def gru_cell(self, x: Tensor, s: Tensor) -> Tensor:
        """One GRU step: x [b, H] (a token embedding), s [b, G] -> [b, G]."""
        return torch.gru_cell(x, s, self.prefix_gru.weight_ih_l0, self.prefix_gru.weight_hh_l0, None, None)

    def correction(self, hidden: Tensor, state: Tensor) -> Tensor:
        """delta = W2 SiLU(W1 [H ; S]): hidden [..., H], state [..., G] -> [..., V]."""
        return self.embed_proj(torch.cat([hidden, state.to(hidden.dtype)], -1))

    def teacher_forced(self, hidden: Tensor, base_logits: Tensor, prev_embeds: Tensor) -> Tensor:
        """Training (section 4.2, teacher forcing): hidden [n, k, H], base_logits [n, k, V],
        prev_embeds [n, k, H] = embeddings of the ground-truth token *before* each position
        (the anchor, then the labels shifted by one). Returns final logits [n, k, V]; the first
        ``pure_draft_prefix_len`` positions keep their base logits."""
        states, _ = self.prefix_gru(prev_embeds)  # [n, k, G]: state after consuming prev_embeds[:, :i+1]
        P = self.arch.pure_draft_prefix_len
        delta = self.correction(hidden[:, P:], states[:, P:])
        return torch.cat([base_logits[:, :P], base_logits[:, P:] + delta.to(base_logits.dtype)], 1)

    def expected_shapes(self) -> dict[str, tuple]:
        return {k: tuple(v.shape) for k, v in self.state_dict().items()}


def reference_rollout(head: DominoHead, embed: nn.Module, hidden: Tensor, base_logits: Tensor,
                      anchor: Tensor) -> "tuple[Tensor, Tensor]":
    """Greedy rollout of a block, in plain PyTorch (the reference the fast paths must match).
    hidden [b, k, H], base_logits [b, k, V], anchor [b] -> tokens [b, k], final logits [b, k, V]."""
    b, k, _ = hidden.shape
    state = hidden.new_zeros(b, head.arch.gru_hidden_dim, dtype=torch.float32)
    prev = anchor
    tokens, logits = [], []
    for i in range(k):
        state = head.gru_cell(embed(prev).float(), state)  # consume the token realised before i
        if i < head.arch.pure_draft_prefix_len:
            logit_i = base_logits[:, i].float()
        else:
            logit_i = base_logits[:, i].float() + head.correction(hidden[:, i].float(), state).float()
        prev = logit_i.argmax(-1)
        tokens.append(prev)
        logits.append(logit_i)
    return torch.stack(tokens, 1), torch.stack(logits, 1)

