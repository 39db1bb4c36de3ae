"""Temperature / top-k / top-p warping, sampling and residual distributions.

One ``Sampler`` per request. Drafters, correctors and verifiers all warp logits through the
same ``Sampler.probs`` so the draft q and the target p are shaped identically - the
condition under which speculative sampling is exact (Leviathan et al. 2023, Thm 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

Tensor = torch.Tensor


@dataclass
class SamplingParams:
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    seed: int = 0


class Sampler:
    def __init__(self, params: SamplingParams, device: torch.device | str = "cpu"):
        self.params = params
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(int(params.seed))

    @property
    def greedy(self) -> bool:
        return self.params.temperature <= 0.0

    def probs(self, logits: Tensor) -> Tensor:
        """Warped distribution ``[..., V]`` (fp32). Greedy -> one-hot of the argmax, which is the
        limit of temperature -> 0 and keeps q / p comparisons meaningful at T=0."""
        logits = logits.float()
        if self.greedy:
            return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).float()
        logits = logits / self.params.temperature
        vocab = logits.shape[-1]
        if 0 < self.params.top_k < vocab:
            kth = torch.topk(logits, self.params.top_k, dim=-1).values[..., -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if self.params.top_p < 1.0:
            # keep the smallest prefix of the sorted distribution whose mass reaches top_p
            # (the token that crosses the threshold is kept, as in transformers' TopPLogitsWarper)
            sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
            cum = sorted_logits.softmax(-1).cumsum(-1)
            drop_sorted = (cum - sorted_logits.softmax(-1)) >= self.params.top_p
            drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
            logits = logits.masked_fill(drop, float("-inf"))
        return logits.softmax(-1)

    def sample_from_probs(self, probs: Tensor) -> Tensor:
        """One token per row of ``probs [..., V]`` -> ``[...]`` long."""
        if self.greedy:
            return probs.argmax(-1)
        flat = probs.reshape(-1, probs.shape[-1])
        out = torch.multinomial(flat, 1, generator=self.generator).squeeze(-1)
        return out.reshape(probs.shape[:-1])

    def sample(self, logits: Tensor) -> Tensor:
        if self.greedy:
            return logits.argmax(-1)
        return self.sample_from_probs(self.probs(logits))

    def uniform(self, shape, device) -> Tensor:
        return torch.rand(shape, generator=self.generator, device=device)


def residual(p: Tensor, q: Optional[Tensor], rejected: Tensor) -> Tensor:
    """``normalize(max(0, p - q))`` over the last axis; ``q=None`` means one-hot at ``rejected``.

    If the residual has no mass (p == q up to rounding, so a rejection had probability 0),
    fall back to ``p`` - it can only happen through floating-point noise.
    """
    if q is None:
        q = torch.nn.functional.one_hot(rejected, p.shape[-1]).to(p.dtype)
    r = (p - q).clamp_min(0)
    mass = r.sum(-1, keepdim=True)
    return torch.where(mass > 0, r / mass.clamp_min(1e-30), p)
