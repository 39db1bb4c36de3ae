"""``verifier.length: confidence`` - verify, per cycle, the prefix of the block that maximises
expected tokens per second (DSpark's hardware-aware scheduler, deepseek-ai/DeepSpec).

Per block, estimates c_j = P(draft j accepted | drafts < j accepted) for j = 1..K come from

* ``head``: a trained confidence head on the drafter's hidden states (head.py), or
* ``draft_probs`` (training-free): the drafter's own probability of its top token at each position,
  ``max_v softmax(base_logits_j)`` - what the realised token's q is at T=0 for a parallel drafter.

The prefix acceptance is ``P_j = prod_{i<=j} c_i``; verifying n drafts commits ``1 + sum_{j<=n} P_j``
tokens in expectation (the bonus token always) and costs ``t_verify(n + 1) + t_draft + n t_propose``,
with ``t_verify`` the target's measured verify-cost curve (specforge_core.verify_cost: cached per machine,
model, dtype, threads; re-measured when stale), ``t_draft`` the drafter's time per cycle and ``t_propose``
the time per verified draft of what follows the cut (a corrector's rollout, sampling, building the
candidates): running means of what the engine measured. The policy keeps ``n* = argmax_{0 <= n <= limit}`` of the ratio;
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
from specforge_core.interfaces import DraftBlock, LengthChoice, LengthPolicy, SparseProbs
from specforge_core.verify_cost import interp, verify_cost_curve

from .head import ConfidenceHead, load_head, save_head

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
        if self.head:  # read now (a small file): a bad directory is a recipe error before any model loads
            load_head(self.head)
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
        self._propose_s_per_draft = 0.0  # running mean of CycleStats.propose_s / drafts verified
        self._warned: set = set()
        # training data (specforge_core/training/length_policy.py): per choose() call, the block's
        # hidden states [limit, d]; None = not collecting
        self.recording: Optional[list] = None

    def bind(self, target) -> None:
        self.target = target
        if self.head is not None and self.head.hidden_size != target.hidden_size:
            raise IncompatibleError(
                f"verifier.length_options.head: the head takes hidden size {self.head.hidden_size}, "
                f"the drafter's blocks have {target.hidden_size} (the target's)")
        if self.head is not None:
            self.head.to(target.device).eval()

    def reset(self, max_drafts: int) -> None:
        # the cost curve is measured here, never inside choose(): timing runs the target, which
        # would overwrite the request's KV cache in the middle of a generation
        if self.options.schedule and self.recording is None:
            self._curve(max_drafts + 1)

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
        if isinstance(block.probs, SparseProbs):  # q on candidates only (0 elsewhere)
            return block.probs[0, :k].at(block.tokens[0, :k].long())
        q = block.probs[0, :k].float()  # [k, V]
        return q.gather(-1, block.tokens[0, :k, None].long()).squeeze(-1)  # the realised tokens' q (T=0)

    # ---- the choice -------------------------------------------------------------------------
    def choose(self, block: DraftBlock, limit: int, greedy: bool, draft_s: float) -> LengthChoice:
        if self.recording is not None:  # collecting training data: every draft is verified, so every position gets a label
            if block.hidden is None:
                raise IncompatibleError("training the confidence head needs a drafter whose blocks carry hidden "
                                        "states (a parallel drafter: dflash, dflare)")
            self.recording.append(block.hidden[0, :limit].detach().float().cpu())
            return LengthChoice(limit)
        if limit <= 0:
            return LengthChoice(0)
        c = self.step_confidence(block, limit, greedy)
        if c is None:
            return LengthChoice(limit)
        prefix = torch.cumprod(c, 0).tolist()  # [limit], P(first j accepted); the policy's one host read
        if not self.options.schedule:
            return LengthChoice(limit, prefix)
        t_draft, t_propose = self._draft_time(draft_s), self._propose_s_per_draft
        curve = self.curve  # measured in reset() for this request's largest block
        best_n, best_rate, expected = 0, 1.0 / (interp(curve, 1) + t_draft), 1.0
        for n in range(1, limit + 1):
            expected += prefix[n - 1]
            rate = expected / (interp(curve, n + 1) + t_draft + n * t_propose)
            if rate > best_rate:
                best_n, best_rate = n, rate
        return LengthChoice(best_n, prefix)

    def observe(self, cycle) -> None:
        if cycle.timed and cycle.num_positions > 0 and self.options.draft_ms is None:
            per_draft = cycle.propose_s / cycle.num_positions
            self._propose_s_per_draft = 0.8 * self._propose_s_per_draft + 0.2 * per_draft

    def _draft_time(self, draft_s: float) -> float:
        if self.options.draft_ms is not None:
            return self.options.draft_ms / 1e3
        # running mean of the drafter's measured time (the first cycles include warm-up)
        self._draft_s = draft_s if self._draft_s is None else 0.8 * self._draft_s + 0.2 * draft_s
        return self._draft_s

    def _curve(self, rows: int) -> dict:
        if self.curve is None or max(self.curve) < rows:
            self.curve = verify_cost_curve(self.target, max(rows, 2))
        return self.curve

    # ---- training (DSpark's confidence head: BCE on the conditional acceptance of each position) ------
    def training_module(self) -> torch.nn.Module:
        if self.head is None:
            self.head = ConfidenceHead(self.target.hidden_size).to(self.target.device)
        return self.head

    def collecting(self, on: bool) -> None:
        self.recording = [] if on else None

    def examples(self, cycles) -> list:
        """One example per cycle: the block's hidden states ``[n, d]`` (n = drafts verified) and
        how many of them were accepted."""
        recorded, self.recording = self.recording, []
        if len(recorded) != len(cycles):
            raise RuntimeError(f"confidence head data: {len(recorded)} blocks recorded for {len(cycles)} cycles")
        return [{"hidden": h[: c.num_positions], "accepted": int(c.num_accepted)}
                for h, c in zip(recorded, cycles) if c.num_positions > 0]

    def training_loss(self, examples: list) -> dict:
        """BCE of sigmoid(head(h_j)) against 1{draft j accepted}, on the positions whose prefix was
        accepted up to j - 1 (c_j is conditional on it): j = 1 .. min(accepted + 1, verified) - the
        labels the reference's prefix-acceptance mask implies for a conditional head."""
        head = self.training_module()
        dev = head.proj.weight.device
        hidden, labels = [], []
        for ex in examples:
            n = min(ex["accepted"] + 1, ex["hidden"].shape[0])
            hidden.append(ex["hidden"][:n])
            labels.append((torch.arange(n) < ex["accepted"]).float())
        hidden, labels = torch.cat(hidden).to(dev), torch.cat(labels).to(dev)  # [N, d], [N]
        logits = head(hidden.to(head.proj.weight.dtype)).float()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
        acc = ((logits > 0).float() == labels).float().mean()
        return {"loss": loss, "accuracy": acc.detach(), "positive_rate": labels.mean()}

    def save_pretrained(self, directory) -> None:
        save_head(self.training_module(), directory)

    def load_weights(self, directory) -> None:
        loaded = load_head(directory)
        self.training_module().load_state_dict(loaded.state_dict())
