"""The T>0 law check shared by the sampling tests, the models it runs on, and the gap measures
that show each test can fail.

* ``sample_law``: many seeded generations -> chi-square p-value of the joint law of the first
  ``steps`` tokens against the target's exact law (enumerated; vocab 4, so 4 ** steps cells).
* ``law_target`` / ``law_drafter`` / ``law_domino``: a vocab-4 target, a parallel drafter whose
  q is spread out and far from p, and a Domino head whose correction moves q far from the
  base q. (The earlier settings had a nearly one-hot drafter q (max ~0.995) and a head that
  corrected by ~0.07 logits, TV(q, q_base) ~0.002: a corrector reporting the base q passed the
  law check with p = 0.87 at 3000 samples, a sharpened q with p = 0.008.)
* ``q_gaps``: per block position, the mean total variation TV(q, q_base) and TV(q, p) over
  blocks drafted from several anchors - asserted in the tests, so the check keeps its power.
* Deliberately wrong q (mutations the law check must reject): ``LyingDomino`` (right tokens,
  base q), ``tempered_q_drafter`` (tokens from q, a sharpened q reported) and ``BaseQTree``
  (children drawn from the corrector's q, accepted against the base q).
* ``SparseTopK``: a corrector proposing a *sparse* q (``SparseProbs``: its top-K candidates and
  their renormalised probabilities, zero elsewhere), and its mutations ``SparseBaseQ`` (reports
  the dense base q) and ``SparseUniformQ`` (renormalised wrongly: 1 / K per candidate).
"""

from __future__ import annotations

import contextlib
import itertools
from typing import Optional

import torch
from tiny import tiny_target

from specforge_core.interfaces import Corrector, DraftBlock, DraftContext, SparseProbs
from specforge_core.sampling import Sampler, SamplingParams
from specforge_dflash.drafter import DFlashDrafter, DFlashOptions
from specforge_domino.corrector import DominoCorrector, DominoOptions
from specforge_verify.tree import TreeVerifier

VOCAB, STEPS, TEMPERATURE = 4, 4, 0.9
PROMPT = torch.tensor([[0, 1, 2, 3, 0, 1]])


# ---- the statistic ----------------------------------------------------------------------------
def chi_square_pvalue(counts: torch.Tensor, probs: torch.Tensor, min_expected: float = 5.0) -> float:
    """Pearson chi-square goodness of fit; cells with small expectation are pooled."""
    n = counts.sum()
    expected = probs.double() * n
    big = expected >= min_expected
    obs = torch.cat([counts[big].double(), counts[~big].double().sum()[None]])
    exp = torch.cat([expected[big], expected[~big].sum()[None]])
    keep = exp > 0
    obs, exp = obs[keep], exp[keep]
    stat = ((obs - exp) ** 2 / exp).sum()
    dof = obs.numel() - 1
    return float(torch.special.gammaincc(torch.tensor(dof / 2.0, dtype=torch.float64), stat / 2))


def exact_joint(target, prompt: torch.Tensor, steps: int, sampler: Sampler) -> torch.Tensor:
    """P(x_1..x_steps) under the warped target, by enumerating every sequence: [V ** steps]."""
    vocab = target.vocab_size
    seqs = torch.tensor(list(itertools.product(range(vocab), repeat=steps)))  # [V^s, s]
    ids = torch.cat([prompt.expand(len(seqs), -1), seqs], 1)
    with torch.inference_mode():
        logits = target.model(ids).logits[:, prompt.shape[1] - 1 : -1]  # [V^s, s, V]
    p = sampler.probs(logits)
    return p.gather(-1, seqs[..., None]).squeeze(-1).prod(-1)


@contextlib.contextmanager
def one_thread():
    """Tiny models on a shared 2-core machine: a second intra-op thread only spin-waits
    (measured: 80 ms -> 18 ms per generation under load). Results do not depend on it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def sample_law(gen, target, prompt, steps: int, temperature: float, n_samples: int):
    """Run ``n_samples`` seeded generations; return (chi-square p-value of the joint law of the
    ``steps`` tokens against the exact target law, drafted tokens, accepted tokens)."""
    vocab = target.vocab_size
    p = exact_joint(target, prompt, steps, Sampler(SamplingParams(temperature=temperature)))
    counts = torch.zeros(vocab ** steps, dtype=torch.long)
    drafted = accepted = 0
    with one_thread():
        for seed in range(n_samples):
            out = gen.generate(prompt, steps, SamplingParams(temperature=temperature, seed=seed))
            idx = 0
            for t in out.tokens:
                idx = idx * vocab + t
            counts[idx] += 1
            drafted += sum(c.num_drafted for c in out.cycles)
            accepted += sum(c.num_accepted for c in out.cycles)
    return chi_square_pvalue(counts, p), drafted, accepted


# ---- the models -------------------------------------------------------------------------------
def law_target():
    """Vocab 4, peaked enough that p differs from position to position (max p ~0.6-0.7)."""
    return tiny_target(seed=5, vocab=VOCAB, hidden=32, init_range=0.6)


def law_drafter(target, cls=DFlashDrafter, seed: Optional[int] = None, init_range: float = 0.5,
                logit_scale: float = 0.4):
    """A fresh block drafter (3-row blocks: 2 drafts) whose q is spread out and far from p.
    ``logit_scale`` multiplies its final norm's weight, i.e. its logits (a drafter temperature of
    1 / logit_scale): unscaled, q is nearly one-hot (seed 2 of the older tests: max q ~0.995), so
    a wrong q that keeps the argmax (e.g. a sharpened one) changed nothing the law could see.
    Default seeds (6 DFlash, 7 DFlare): among 8 tried, TV(q, p) and TV(sharpen(q), q) both >= 0.2."""
    if seed is None:
        seed = 7 if cls.fusion else 6
    d = cls(DFlashOptions(config={"num_hidden_layers": 1, "target_layer_ids": [1], "mask_token_id": 3,
                                  "initializer_range": init_range}, init_seed=seed), block_size=3)
    d.bind(target)
    with torch.no_grad():
        d.model.norm.weight.mul_(logit_scale)
    return d


def law_domino(target, drafter, cls=DominoCorrector, init_range: float = 0.2, w2_std: float = 1.0, seed: int = 0):
    """A fresh Domino head (P = 0: every position corrected) whose correction moves q far from
    the base q (TV ~0.3): W1 / GRU at ``init_range`` (at the default 0.02 the correction was
    ~0.07 logits, TV ~0.002) and a random W2 (a fresh head starts with W2 = 0)."""
    c = cls(DominoOptions(config={"gru_hidden_dim": 8, "emb_dim": 8, "pure_draft_prefix_len": 0,
                                  "initializer_range": init_range}, init_seed=seed))
    c.compatible_with(drafter)
    c.bind(target)
    with torch.no_grad():
        c.head.w2.normal_(0, w2_std, generator=torch.Generator().manual_seed(seed + 3))
    return c


# ---- how far apart the distributions are ------------------------------------------------------
def total_variation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return 0.5 * (a - b).abs().sum(-1)


def sharpen(q: torch.Tensor) -> torch.Tensor:
    """q ** 2 renormalised: the same logits warped at half the temperature."""
    return q.square() / q.square().sum(-1, keepdim=True)


def q_gaps(target, drafter, corrector=None, temperature: float = TEMPERATURE, n_seeds: int = 6) -> dict:
    """Per block position ``[k]``, means over the first cycle's blocks (every anchor, ``n_seeds``
    samplings each): ``base`` = TV(q, q_base), ``p`` = TV(q, p) with p the target's law given the
    drafted prefix, ``sharp`` = TV(sharpen(q), q). q is the corrector's if there is one, else the
    warped base distribution (what the scheduler samples a parallel block from)."""
    k = STEPS - 2  # the first cycle drafts STEPS - 2 tokens (one from the prefill, one bonus)
    rows = []
    with torch.inference_mode(), one_thread():
        target.capture(drafter.context_layers)
        for anchor in range(target.vocab_size):
            prompt = torch.cat([PROMPT, torch.tensor([[anchor]])], 1)
            for seed in range(n_seeds):
                sampler = Sampler(SamplingParams(temperature=temperature, seed=seed))
                drafter.reset()
                _, feats = target.prefill(prompt[:, :-1])
                drafter.commit(prompt.shape[1] - 1, feats)
                ctx = DraftContext(tokens=prompt, max_draft=k, sampler=sampler)
                block = drafter.draft(ctx)
                block.context = ctx  # as the scheduler does
                q_base = sampler.probs(block.logits())  # [1, k, V]
                if corrector is None:
                    q = q_base
                    tokens = sampler.sample_from_probs(q)  # [1, k]
                else:
                    tokens, q = corrector.correct(block, sampler)
                    if isinstance(q, SparseProbs):
                        q = q.dense()
                ids = torch.cat([prompt, tokens], 1)
                p = sampler.probs(target.model(ids).logits[:, prompt.shape[1] - 1 : -1])  # [1, k, V]
                rows.append(torch.stack([total_variation(q, q_base)[0], total_variation(q, p)[0],
                                         total_variation(sharpen(q), q)[0]]))  # [3, k]
    base, p, sharp = torch.stack(rows).mean(0)
    return {"base": base, "p": p, "sharp": sharp}


# ---- deliberately wrong q ---------------------------------------------------------------------
class LyingDomino(DominoCorrector):
    """The real Domino rollout (same tokens) that reports the drafter's base q instead of its own."""

    def correct(self, block: DraftBlock, sampler: Sampler):
        tokens, _ = super().correct(block, sampler)
        return tokens, sampler.probs(block.logits())


def tempered_q_drafter(cls):
    """``cls`` drafting as usual, sampling its tokens from q, but reporting ``sharpen(q)``."""

    class TemperedQ(cls):
        def draft(self, ctx: DraftContext) -> DraftBlock:
            block = super().draft(ctx)
            q = ctx.sampler.probs(block.logits())  # [1, k, V]
            return DraftBlock(tokens=ctx.sampler.sample_from_probs(q), probs=sharpen(q), base_logits=block.logits(),
                              anchor=block.anchor)

    return TemperedQ


class BaseQTree(TreeVerifier):
    """The real tree (children drawn from the corrector's q) whose sampled-scheme acceptance is
    handed the block's base q at each depth instead of the q the children were drawn from."""

    def propose_block(self, block, corrector, sampler):
        cands = super().propose_block(block, corrector, sampler)
        base = sampler.probs(block.logits()[0])  # [k, V]
        depth = [0] + cands.depths.tolist()  # row -> depth (row 0 = the anchor)
        cands.extra["node_q"] = {row: base[depth[row]] for row in cands.extra.get("node_q", {})}
        return cands


class SparseTopK(Corrector):
    """A sparse-q corrector (as DFlash2's selector): at each position the base logits plus a
    previous-token bias (a fixed random table), restricted to their top ``K`` candidates; q is the
    warped softmax over those candidates only (renormalised), zero elsewhere. Step is pure; the
    request's temperature is read from ``block.context`` (the request context)."""

    def __init__(self, K: int = 2, scale: float = 2.0, seed: int = 0):
        super().__init__(None)
        self.K, self.scale, self.seed = K, scale, seed

    def bind(self, target) -> None:
        V = target.vocab_size
        self.bias = self.scale * torch.randn(V, V, generator=torch.Generator().manual_seed(self.seed))

    def init_state(self, block: DraftBlock):
        s = block.context.sampler
        return block.logits(), (0.0 if s.greedy else s.params.temperature)

    def step(self, state, i, prev_token):
        base, temperature = state
        logits = base[:, i].float() + self.bias[prev_token]  # [b, V]
        ids = logits.topk(self.K, -1).indices  # [b, K]
        cand = logits.gather(-1, ids)
        if temperature <= 0:
            probs = torch.nn.functional.one_hot(cand.argmax(-1), self.K).float()
        else:
            probs = (cand / temperature).softmax(-1)
        return SparseProbs(ids, probs, logits.shape[-1]), state


class SparseBaseQ(SparseTopK):
    """Mutation: tokens drawn from the sparse q, the dense base q reported."""

    def correct(self, block, sampler):
        tokens, _ = super().correct(block, sampler)
        return tokens, sampler.probs(block.logits())


class SparseUniformQ(SparseTopK):
    """Mutation: tokens drawn from the sparse q, reported renormalised wrongly (1 / K each)."""

    def correct(self, block, sampler):
        tokens, q = super().correct(block, sampler)
        return tokens, SparseProbs(q.ids, torch.full_like(q.probs, 1.0 / self.K), q.vocab_size)
