"""The draft -> (correct) -> verify -> accept -> commit loop.

Batch size 1 for now; every tensor keeps its batch axis so batching can follow.
The whole decode loop is ``SpeculativeGenerator.generate`` below.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch

from .errors import InputError
from .interfaces import Candidates, Corrector, DraftBlock, DraftContext, Drafter, LengthPolicy, Verifier, check_parallel
from .sampling import Sampler, SamplingParams
from .target import TargetModel

Tensor = torch.Tensor


@dataclass
class CycleStats:
    """One draft -> verify cycle. The stage times are wall seconds between the scheduler's
    stamps; on a GPU they mean something only when the generator was asked to ``profile``
    (which synchronises the device at each stamp), so ``timed`` says whether to trust them."""

    num_drafted: int  # draft tokens (tree: nodes) verified this cycle
    num_accepted: int  # of which accepted
    draft_s: float = 0.0  # drafter.draft: the block's forward (+ projection if eager)
    propose_s: float = 0.0  # corrector rollout / sampling the drafts / building the chain or tree
    verify_s: float = 0.0  # the target's forward over [anchor, candidates]
    accept_s: float = 0.0  # verifier.accept + KV-cache trim + drafter.commit + reading the result
    timed: bool = False
    num_positions: int = 0  # block positions the verifier could accept (the block after the cut; tree: its depth)
    # the length policy's predicted P(first j drafts accepted) for the verified positions j = 1 .. num_positions
    prefix_confidence: Optional[tuple] = None


@dataclass
class CycleView:
    """What one verification exposed, for ``SpeculativeGenerator.on_cycle`` (read-only)."""

    tokens: Tensor  # [1, t] committed before the cycle; tokens[:, -1] is the anchor (at position t - 1)
    candidates: "Candidates"  # the verified drafts (a chain: candidates.tokens [1, n])
    target_logits: Tensor  # [1, n + 1, V] row j: the target's logits after the anchor and the first j drafts
    num_accepted: int  # drafts accepted (then the bonus token)


@dataclass
class GenerationResult:
    tokens: list[int]  # new tokens (stop token included if hit)
    prompt_len: int
    cycles: list[CycleStats] = field(default_factory=list)
    prefill_s: float = 0.0
    wall_s: float = 0.0
    stopped: bool = False  # True if a stop token ended generation

    @property
    def num_target_forwards(self) -> int:  # verify forwards (prefill excluded)
        return len(self.cycles)

    @property
    def tau(self) -> float:
        """Mean tokens committed per verify forward, bonus included (= 1 + accepted / drafts
        with every verify forward counted as a draft)."""
        if not self.cycles:
            return 0.0
        return 1.0 + sum(c.num_accepted for c in self.cycles) / len(self.cycles)

    def accepted_per_position(self, width: int) -> list[int]:
        """How many cycles accepted draft position i (vLLM's num_accepted_tokens_per_pos)."""
        counts = [0] * width
        for c in self.cycles:
            for i in range(min(c.num_accepted, width)):
                counts[i] += 1
        return counts


def _stamp(device: torch.device, profile: bool) -> float:
    """A time stamp; with ``profile`` on a GPU, after the queued work has finished (a host sync,
    so never on the hot path unless asked). On a CPU work is synchronous and stamps are exact."""
    if profile and device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


class SpeculativeGenerator:
    def __init__(self, target: TargetModel, drafter: Drafter, verifier: Verifier,
                 corrector: Optional[Corrector] = None, num_speculative_tokens: Optional[int] = None,
                 profile: bool = False, length_policy: Optional[LengthPolicy] = None,
                 on_cycle: Optional[Callable[["CycleView"], None]] = None):
        self.target, self.drafter, self.verifier, self.corrector = target, drafter, verifier, corrector
        # drafts verified per cycle at most (the block is drafted whole, then cut): fewer rows
        # per verify forward when the target's cost grows faster than acceptance
        self.num_speculative_tokens = num_speculative_tokens
        # picks how many of the (capped) drafts to verify, per cycle; None = all of them
        self.length_policy = length_policy
        self.profile = profile  # per-stage times on a GPU (costs a device sync per stage)
        # called once per cycle after acceptance with what verification exposed (CycleView): the
        # states on-policy training replays (training/draft_opd.py); None = nothing extra is done
        self.on_cycle = on_cycle
        if corrector is not None:  # the core rule only; compatible_with is called once, by build_pipeline
            check_parallel(corrector, drafter)
        target.capture(drafter.context_layers)

    @torch.inference_mode()
    def generate(self, prompt_ids: Tensor, max_new_tokens: int, sampling: SamplingParams = SamplingParams(),
                 stop_token_ids: Sequence[int] = ()) -> GenerationResult:
        """``prompt_ids [1, t]`` -> the new tokens, lossless w.r.t. the target's own decoding.

        Host syncs: one at prefill (the first token) and one per cycle (the accepted count and the
        committed tokens, read together); everything else stays on the device."""
        if prompt_ids.dim() == 1:
            prompt_ids = prompt_ids[None]
        if prompt_ids.shape[0] != 1:
            raise InputError(f"batch size {prompt_ids.shape[0]} is not supported yet; pass one prompt")
        target, drafter = self.target, self.drafter
        target.check_prompt(prompt_ids.shape[1], max_new_tokens)
        target.capture(drafter.context_layers)  # the target may be shared with other generators
        device, profile = target.device, self.profile
        timed = profile or device.type != "cuda"
        prompt_ids = prompt_ids.to(device)
        sampler = Sampler(sampling, device)
        stop = set(int(s) for s in stop_token_ids)
        drafter.reset()
        if self.corrector is not None:  # per-request state of the corrector (interfaces.Corrector.reset)
            self.corrector.reset()
        if self.length_policy is not None:  # before the prefill: the policy may time the target now
            cap = drafter.block_size if self.num_speculative_tokens is None else self.num_speculative_tokens
            self.length_policy.reset(max(0, min(cap, max_new_tokens - 1)))
        t_start = time.perf_counter()

        # prefill: the first new token comes from the prompt's last logits
        logits, features = target.prefill(prompt_ids)
        first = sampler.sample(logits)  # [1]
        drafter.commit(prompt_ids.shape[1], features)
        tokens = torch.cat([prompt_ids, first[:, None]], 1)  # [1, t+1]; tokens[:, -1] = anchor
        new = [int(first)]  # host sync (prefill)
        result = GenerationResult(tokens=new, prompt_len=prompt_ids.shape[1],
                                  prefill_s=_stamp(device, profile) - t_start)
        result.stopped = new[0] in stop

        while len(new) < max_new_tokens and not result.stopped:
            # at most (remaining - 1) drafts: the cycle always adds a bonus token
            budget = max_new_tokens - len(new) - 1
            t0 = time.perf_counter()
            ctx = DraftContext(tokens=tokens, max_draft=budget, sampler=sampler)
            block = drafter.draft(ctx)
            # the request context travels with the block: a corrector's init_state reads it, whether the
            # corrector runs here (_realise) or inside a tree verifier's propose_block
            block.context = ctx
            keep = budget if self.num_speculative_tokens is None else min(budget, self.num_speculative_tokens)
            keep = min(keep, block.num_tokens)
            confidence = None
            if self.length_policy is not None:  # before realisation: lossless rule in interfaces.LengthPolicy
                choice = self.length_policy.choose(block, keep, sampler.greedy, time.perf_counter() - t0)
                if not 0 <= choice.num_drafts <= keep:
                    raise ValueError(f"length policy {type(self.length_policy).__name__} chose "
                                     f"{choice.num_drafts} drafts; allowed 0..{keep}")
                keep = choice.num_drafts
                if choice.prefix_confidence is not None:
                    confidence = tuple(float(c) for c in choice.prefix_confidence[:keep])
            if block.num_tokens > keep:
                block = block.truncate(keep)
            t1 = _stamp(device, profile)
            if getattr(self.verifier, "builds_from_block", False):  # e.g. a tree over the block's distributions
                candidates = self.verifier.propose_block(block, self.corrector, sampler)
            else:
                draft_tokens, draft_probs = self._realise(block, sampler)  # [1, k], [1, k, V] | None
                candidates = self.verifier.propose(draft_tokens, draft_probs)
            t2 = _stamp(device, profile)

            target_logits, features = target.verify(tokens[:, -1], candidates)  # [1, n+1, V]
            t3 = _stamp(device, profile)
            accepted = self.verifier.accept(candidates, target_logits, sampler)
            # the cycle's one host sync: the accepted count and the committed tokens together
            host = torch.cat([accepted.num_accepted[:1], accepted.tokens[0]]).tolist()
            a = host[0]
            committed = host[1 : a + 2]  # accepted drafts + the bonus token
            if self.on_cycle is not None:
                self.on_cycle(CycleView(tokens, candidates, target_logits, a))
            rows = torch.cat([accepted.path.new_zeros(1), accepted.path[0, :a] + 1])  # anchor + accepted nodes
            target.keep(rows, contiguous=candidates.attention_mask is None)  # a chain keeps a prefix
            drafter.commit(a + 1, None if features is None else features[:, rows.to(features.device)])

            for i, tok in enumerate(committed):  # stop at the first stop token
                if tok in stop:
                    committed = committed[: i + 1]
                    result.stopped = True
                    break
            committed = committed[: max_new_tokens - len(new)]
            new.extend(committed)
            tokens = torch.cat([tokens, accepted.tokens[:, : len(committed)]], 1)
            t4 = _stamp(device, profile)
            result.cycles.append(CycleStats(candidates.num_nodes, a, t1 - t0, t2 - t1, t3 - t2, t4 - t3, timed,
                                            block.num_tokens, confidence))
            if self.length_policy is not None:
                self.length_policy.observe(result.cycles[-1])

        result.wall_s = _stamp(device, True) - t_start
        return result

    def _realise(self, block: DraftBlock, sampler: Sampler) -> "tuple[Tensor, Optional[Tensor]]":
        """Tokens and q for the verifier: from the corrector, from the drafter, or sampled here
        from the block's base logits (a parallel drafter with no corrector)."""
        if self.corrector is not None and block.num_tokens > 0:
            return self.corrector.correct(block, sampler)
        if block.tokens is not None:
            return block.tokens, block.probs
        q = sampler.probs(block.logits())  # [1, k, V]
        return sampler.sample_from_probs(q), q
