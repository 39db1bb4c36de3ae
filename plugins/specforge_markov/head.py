"""The DSpark Markov head (DeepSeek DeepSpec, ``deepspec/modeling/dspark/markov_head.py``).

A block-parallel drafter drafts every position of a block at once, so position ``i`` cannot see
the token realised at ``i - 1``. The Markov head adds a bias that depends only on that previous
token (and, gated, on the position's drafter state), applied left to right:

    vanilla:  bias_i = W2 W1[x_{i-1}]
    gated:    e = W1[x_{i-1}];  g = sigmoid(G [h_i ; e] + b_G);  bias_i = W2 (g * e)
    logits_i = base_logits_i + bias_i,          x_{-1} = the anchor (the last committed token)

``W1`` is an embedding table ``[V, r]`` (rank ``r`` = ``markov_rank``), ``W2`` a linear map
``r -> V`` without bias, ``G`` a linear map ``H + r -> r`` with bias; ``h_i`` is the drafter's
post-norm hidden state of position ``i`` (the input of its lm_head). Unlike Domino there is no
recurrent state: the bias of position ``i`` is a function of ``x_{i-1}`` alone.

Keys as in a DSpark draft checkpoint (``Qwen3DSparkModel.markov_head``):
``markov_head.markov_w1.weight [V, r]``, ``markov_head.markov_w2.weight [V, r]``, gated also
``markov_head.gate_proj.weight [r, H + r]`` and ``markov_head.gate_proj.bias [r]``.
The reference's third type, ``rnn`` (``RNNHead``: a recurrent state across positions), is not
implemented here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

Tensor = torch.Tensor
HEAD_TYPES = ("vanilla", "gated")
PREFIX = "markov_head."  # the head's attribute name in the reference's draft model


@dataclass
class MarkovArch:
    vocab_size: int  # V
    markov_rank: int = 16  # r
    markov_head_type: str = "vanilla"  # vanilla | gated
    hidden_size: int = 0  # H: the drafter's hidden states (gated only)

    @property
    def gated(self) -> bool:
        return self.markov_head_type == "gated"

    def expected_shapes(self) -> dict:
        """Checkpoint key -> shape (with the ``markov_head.`` prefix)."""
        V, r, H = self.vocab_size, self.markov_rank, self.hidden_size
        shapes = {f"{PREFIX}markov_w1.weight": (V, r), f"{PREFIX}markov_w2.weight": (V, r)}
        if self.gated:
            shapes.update({f"{PREFIX}gate_proj.weight": (r, H + r), f"{PREFIX}gate_proj.bias": (r,)})
        return shapes


class MarkovHead(nn.Module):
    """``VanillaMarkov`` / ``GatedMarkovHead`` of the reference, in one module (``arch.markov_head_type``)."""

    def __init__(self, arch: MarkovArch):
        super().__init__()
        if arch.markov_head_type not in HEAD_TYPES:
            raise ValueError(f"markov_head_type must be one of {', '.join(HEAD_TYPES)} (got {arch.markov_head_type!r})")
        self.arch = arch
        V, r, H = arch.vocab_size, arch.markov_rank, arch.hidden_size
        self.markov_w1 = nn.Embedding(V, r)
        self.markov_w2 = nn.Linear(r, V, bias=False)
        if arch.gated:
            self.gate_proj = nn.Linear(H + r, r)  # with bias, as nn.Linear's default in the reference

    def prev_embeddings(self, prev_tokens: Tensor) -> Tensor:
        """``VanillaMarkov.get_prev_embeddings``: W1[x_{i-1}], [...] -> [..., r]."""
        return self.markov_w1(prev_tokens.long())

    def step_bias(self, prev_tokens: Tensor, hidden: Optional[Tensor] = None) -> Tensor:
        """``compute_step_bias`` (vanilla: ``VanillaMarkov``; gated: ``GatedMarkovHead``, gate from
        ``GatedMarkovHead.compute_gate``): prev_tokens [...], hidden [..., H] (gated) -> [..., V]."""
        e = self.prev_embeddings(prev_tokens)  # [..., r]
        if self.arch.gated:
            if hidden is None:
                raise ValueError("a gated Markov head needs the drafter's hidden states")
            gate = torch.sigmoid(self.gate_proj(torch.cat([hidden.to(e.dtype), e], -1)))  # [..., r]
            e = gate.to(e.dtype) * e
        return self.markov_w2(e)  # VanillaMarkov.project_bias

    def step_logits(self, base_logits: Tensor, prev_tokens: Tensor, hidden: Optional[Tensor] = None) -> Tensor:
        """``apply_step_logits``: base logits of one position [b, V] + its bias (fp32)."""
        return base_logits.float() + self.step_bias(prev_tokens, hidden).float()

    def block_logits(self, base_logits: Tensor, prev_tokens: Tensor, hidden: Optional[Tensor] = None) -> Tensor:
        """``apply_block_logits`` (teacher-forced training): base_logits [n, k, V], prev_tokens
        [n, k] (the anchor, then the ground-truth tokens shifted by one), hidden [n, k, H] ->
        [n, k, V]. Every position's bias at once: no state is carried between positions."""
        if base_logits.shape[-2] == 0:
            return base_logits
        return base_logits + self.step_bias(prev_tokens, hidden).to(base_logits.dtype)


def reference_rollout(head: MarkovHead, base_logits: Tensor, anchor: Tensor,
                      hidden: Optional[Tensor] = None) -> "tuple[Tensor, Tensor]":
    """``sample_block_tokens`` at temperature 0, in plain PyTorch: base_logits [b, k, V], anchor
    [b], hidden [b, k, H] -> greedy tokens [b, k] and corrected logits [b, k, V]. The first
    position's previous token is the anchor; each later one's is the token just chosen."""
    prev, tokens, logits = anchor.long(), [], []
    for i in range(base_logits.shape[1]):
        logit_i = head.step_logits(base_logits[:, i], prev, None if hidden is None else hidden[:, i])
        prev = logit_i.argmax(-1)
        tokens.append(prev)
        logits.append(logit_i)
    return torch.stack(tokens, 1), torch.stack(logits, 1)
