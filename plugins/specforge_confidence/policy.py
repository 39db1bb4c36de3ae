"""``verifier.length: confidence`` - verify, per cycle, the prefix of the block that maximises
expected tokens per second (DSpark's hardware-aware scheduler, deepseek-ai/DeepSpec).

Per block, estimates c_j = P(draft j accepted | drafts < j accepted) for j = 1..K come from

* ``head``: a trained confidence head on the drafter's hidden states (head.py), or
* ``draft_probs`` (training-free): the drafter's own probability of its top token at each position,
  ``max_v softmax(base_logits_j)`` - what the realised token's q is at T=0 for a parallel drafter.

The prefix acceptance is ``P_j = prod_{i<=j} c_i``; verifying n drafts commits ``1 + sum_{j<=n} P_j``
tokens in expectation (the bonus token always) and costs ``t_verify(n + 1) + t_draft``, with
``t_verify`` the target's measured verify-cost curve (specforge_core.verify_cost: cached per machine,
model, dtype, threads; re-measured when stale) and ``t_draft`` the drafter's time per cycle (a running
mean of what the engine measured). The policy keeps ``n* = argmax_{0 <= n <= limit}`` of the ratio;
n = 0 is a plain decode step.

Lossless: both estimates read the block before it is realised - hidden states and base logits,
never a sampled draft token (interfaces.LengthPolicy states the rule and why it suffices). A
sequential drafter's block already holds sampled tokens; at T > 0 this policy then has no lawful
estimate and verifies the whole block (one log line), at T = 0 it uses the tokens' own q.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import torch

from specforge_core.errors import IncompatibleError, RecipeError
from specforge_core.interfaces import DraftBlock, LengthChoice, LengthPolicy
from specforge_core.verify_cost import interp, verify_cost_curve

from .head import ConfidenceHead, load_head

log = logging.getLogger("specforge.confidence")
ESTIMATORS = ("auto", "head", "draft_probs")


@dataclass
class ConfidenceOptions:
    estimator: str = "auto"  # auto (head if given, else draft_probs) | head | draft_probs
    head: Optional[str] = None  # directory of a trained confidence head (specforge train ... component length_policy)
    schedule: bool = True  # false: predict only (calibration) and verify every draft, like `fixed`
    draft_ms: Optional[float] = None  # drafter time per cycle for the rate; null = measured (running mean)

    def __post_init__(self):
        if self.estimator not in ESTIMATORS:
            raise RecipeError(f"verifier.length_options.estimator must be one of {', '.join(ESTIMATORS)}, "
                              f"got '{self.estimator}'")
        if self.estimator == "head" and not self.head:
            raise RecipeError("verifier.length_options.estimator=head needs verifier.length_options.head (a directory)")
        if self.draft_ms is not None and self.draft_ms < 0:
            raise RecipeError(f"verifier.length_options.draft_ms must be >= 0 or null, got {self.draft_ms}")


class ConfidencePolicy(LengthPolicy):
    """Verify the prefix that maximises expected tokens / (t_verify(n + 1) + t_draft)."""

    Options = ConfidenceOptions

    def __init__(self, options: ConfidenceOptions = ConfidenceOptions()):
        super().__init__(options)
        self.head: Optional[ConfidenceHead] = load_head(options.head) if options.head else None
        self.target = None
        self.curve: Optional[dict] = None
        self._draft_s: Optional[float] = None
        self._warned: set = set()
        # training data collection (training/length_policy.py): per choose() call, the block's
        # hidden states [limit, d] and the number of drafts verified; None = not recording
        self.recording: Optional[list] = None

    def bind(self, target) -> None:
        self.target = target
        if self.head is not None and self.head.hidden_size != target.hidden_size:
            raise IncompatibleError(
                f"verifier.length_options.head: the head takes hidden size {self.head.hidden_size}, "
                f"the drafter's blocks have {target.hidden_size} (the target's)")
        if self.head is not None:
            self.head.to(target.device).eval()

    def _say_once(self, key: str, msg: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(msg)

    # ---- estimates --------------------------------------------------------------------------
    def step_confidence(self, block: DraftBlock, k: int, greedy: bool) -> Optional[torch.Tensor]:
        """c_j for j = 1..k (a float tensor [k] on the block's device), or None (no lawful estimate)."""
        use_head = self.head is not None and self.options.estimator in ("auto", "head")
        if use_head and block.hidden is not None:
            with torch.no_grad():
                return torch.sigmoid(self.head(block.hidden[0, :k].to(self.head.proj.weight.dtype)).float())
        if use_head:
            self._say_once("no-hidden", "verifier.length=confidence: the drafter's blocks carry no hidden states "
                                        "for the confidence head; using the drafter's own probabilities instead")
        if block.tokens is None:  # a parallel block, not yet realised: its base distribution
            return torch.softmax(block.logits()[0, :k].float(), -1).amax(-1)
        if block.probs is None:
            self._say_once("no-q", "verifier.length=confidence: this drafter gives no probabilities (no head, "
                                   "no q): every draft is verified, as with verifier.length=fixed")
            return None
        if not greedy:  # sampled sequential drafts: reading them at T > 0 would bias the output
            self._say_once("sampled", "verifier.length=confidence: at T > 0 a sequential drafter's block holds "
                                      "sampled tokens, which the length must not depend on: every draft is verified")
            return None
        q = block.probs[0, :k].float()  # [k, V]
        return q.gather(-1, block.tokens[0, :k, None].long()).squeeze(-1)  # the realised tokens' q (T=0)

    # ---- the choice -------------------------------------------------------------------------
    def choose(self, block: DraftBlock, limit: int, greedy: bool, draft_s: float) -> LengthChoice:
        if self.recording is not None and block.hidden is not None:
            self.recording.append((block.hidden[0, :limit].detach().float().cpu(), limit))
        if limit <= 0:
            return LengthChoice(0)
        c = self.step_confidence(block, limit, greedy)
        if c is None:
            return LengthChoice(limit)
        prefix = torch.cumprod(c, 0).tolist()  # [limit], P(first j accepted); the policy's one host read
        if not self.options.schedule:
            return LengthChoice(limit, prefix)
        t_draft = self._draft_time(draft_s)
        curve = self._curve(block.num_tokens + 1)
        best_n, best_rate, expected = 0, 1.0 / (interp(curve, 1) + t_draft), 1.0
        for n in range(1, limit + 1):
            expected += prefix[n - 1]
            rate = expected / (interp(curve, n + 1) + t_draft)
            if rate > best_rate:
                best_n, best_rate = n, rate
        return LengthChoice(best_n, prefix)

    def _draft_time(self, draft_s: float) -> float:
        if self.options.draft_ms is not None:
            return self.options.draft_ms / 1e3
        # running mean of the drafter's measured time (the first cycles include warm-up)
        self._draft_s = draft_s if self._draft_s is None else 0.8 * self._draft_s + 0.2 * draft_s
        return self._draft_s

    def _curve(self, rows: int) -> dict:
        if self.curve is None or max(self.curve) < rows:
            self.curve = verify_cost_curve(self.target, rows)
        return self.curve
