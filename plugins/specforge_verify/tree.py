"""Tree verifier: a budgeted draft tree over the block, verified in ONE target forward.

Building (``propose_block``) - best-first over prefixes by summed log-probability (DDTree,
Ringel & Romano 2026): a heap holds candidate nodes; popping a node adds it to the tree and
pushes its next sibling and its first child. Scores only decrease along both moves, so the
popped set is the top-``budget`` prefixes and is prefix-closed (parents pop before children).
Children come from a pluggable **node scorer**:

* ``marginal`` - the block's per-position distributions, shared by every node of a depth
  (DDTree). A block drafter's marginals are conditioned on its own top-1 path, so siblings'
  subtrees are mostly noise (trees-and-dflash2.md section 3);
* ``corrector`` - parent-conditioned: each expanded node runs one ``Corrector.step`` from its
  parent's state with its own token (no backbone pass), so every branch is drafted given its
  own prefix. A step may return logits or a sparse q (``SparseProbs``: zero outside its
  candidates); the sampled scheme's rejection sampling then uses that q and the residual
  max(p - q, 0) over the whole vocabulary.

Verifying - the tree is flattened in pop order with parent indices and depths; the target
sees ``[anchor, nodes]`` with an ancestor-only mask and positions ``start + depth``; after
acceptance the accepted path's KV and features are compacted (``TargetModel.keep``).

Acceptance (lossless; the argument next to each scheme):

* ``scheme = deterministic`` (children = top-k, a deterministic function of the draft): sample
  ONE token y from the target's p at every node (argmax at T=0) and walk from the root while y
  is a child of the current node; the first y that is not a child is the bonus token. Every
  committed token is a plain sample of p given the committed prefix, so the output law is the
  target's, for any tree built without looking at the target. For a fixed tree this accepts a
  child with probability p(children), the most any lossless scheme can.
* ``scheme = sampled`` (children drawn WITHOUT replacement from q by Gumbel-top-k, a static
  number per depth): recursive rejection sampling (Jeon et al. 2024). At a node with children
  x_1..x_m drawn in that order, p_1 = p, q_1 = q; try x_j: accept with prob
  min(1, p_j(x_j) / q_j(x_j)); on rejection p_{j+1} = norm(max(p_j - q_j, 0)) and
  q_{j+1} = q_j without x_j, renormalised; after m rejections emit a sample of p_{m+1}.
  Each trial is a speculative-sampling step whose continuation (another trial, or the final
  draw) outputs exactly p_{j+1} whatever proposal it uses, so by induction the emitted token
  is distributed as p_j at every step, i.e. as p. (Rejecting x_j implies p_j(x_j) <= q_j(x_j),
  so p_{j+1}(x_j) = 0 - no mass is lost on the removed token.) The number of children per
  depth is fixed before drawing so that selection never depends on the drawn values.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import List, Optional

import torch

from specforge_core.errors import IncompatibleError, RecipeError
from specforge_core.interfaces import Accepted, Candidates, Corrector, DraftBlock, SparseProbs, Verifier
from specforge_core.sampling import Sampler, residual
from specforge_core.verify_cost import interp, verify_cost_curve

Tensor = torch.Tensor


@dataclass
class TreeOptions:
    budget: Optional[int] = 32  # tree nodes verified per cycle; null = cost-aware (measured t_verify(n))
    topk: int = 4  # most children per node
    scheme: str = "deterministic"  # deterministic (top-k children, target-sample walk) | sampled (RRS)
    scorer: str = "auto"  # auto (corrector if the recipe has one) | marginal | corrector
    widths: Optional[List[int]] = None  # sampled scheme: children per node by depth (default [topk, 2, 1, ...])
    max_budget: int = 128  # upper end of the cost-aware search

    def __post_init__(self):
        if self.budget is not None and self.budget < 1:
            raise RecipeError(f"verifier.options.budget must be >= 1 (got {self.budget})")
        if self.topk < 1:
            raise RecipeError(f"verifier.options.topk must be >= 1 (got {self.topk})")
        if self.scheme not in ("deterministic", "sampled"):
            raise RecipeError(f"verifier.options.scheme must be deterministic or sampled (got '{self.scheme}')")
        if self.scorer not in ("auto", "marginal", "corrector"):
            raise RecipeError(f"verifier.options.scorer must be auto, marginal or corrector (got '{self.scorer}')")
        if self.widths is not None and (not self.widths or min(self.widths) < 1):
            raise RecipeError(f"verifier.options.widths must be a list of counts >= 1 (got {self.widths})")
        if self.max_budget < 1:
            raise RecipeError(f"verifier.options.max_budget must be >= 1 (got {self.max_budget})")


# ---- node scorers -------------------------------------------------------------------------------
def tree_probs(sampler: Sampler, logits: Tensor) -> Tensor:
    """Distributions to rank children by: the warped q at T>0; at T=0 (where q is one-hot)
    the plain softmax, so the tree can branch. Any tree is lossless under the target walk."""
    return logits.float().softmax(-1) if sampler.greedy else sampler.probs(logits)


class MarginalScorer:
    """DDTree: the same distribution for every node of a depth (the block's marginals)."""

    def __init__(self, dists: Tensor):  # [k, V] warped draft distributions per block position
        self.dists = dists

    def root(self):
        return None

    def children(self, depth: int, parent_state, parent_token: int):
        """Distribution [V] over the tokens at ``depth`` (0-based block position) and the
        state to hand to those children."""
        return self.dists[depth], None


class CorrectorScorer:
    """Parent-conditioned: one corrector step per expanded node, from the parent's state.

    Several children step from one parent state; that is sound because ``Corrector.step`` must not
    modify its state (interfaces.Corrector; ``specforge_core.contracts.check_step_pure``), so no
    copy is made here and no corrector's state layout is known to the tree."""

    def __init__(self, corrector: Corrector, block: DraftBlock, sampler: Sampler):
        self.corrector, self.sampler, self.anchor = corrector, sampler, block.anchor
        self.state0 = corrector.init_state(block)  # block.context: the request context

    def root(self):
        return self.state0

    def children(self, depth: int, parent_state, parent_token: int):
        prev = self.anchor if parent_token < 0 else torch.tensor([parent_token], device=self.anchor.device)
        out, state = self.corrector.step(parent_state, depth, prev)  # [1, V] logits or a SparseProbs q
        if isinstance(out, SparseProbs):  # q is given (zero outside its candidates): use it as is
            return out.dense()[0], state
        return tree_probs(self.sampler, out)[0], state


# ---- the verifier -----------------------------------------------------------------------------
class TreeVerifier(Verifier):
    """Budgeted draft tree (best-first), one target forward, lossless acceptance."""

    Options = TreeOptions
    builds_from_block = True

    def __init__(self, options: TreeOptions = None):
        super().__init__(options or TreeOptions())
        self.cost_curve: Optional[dict] = None

    def bind(self, target) -> None:
        o = self.options
        if o.budget is not None and o.budget + 1 > target.context_length:
            raise IncompatibleError(f"verifier.options.budget {o.budget} does not fit the target's context window "
                                    f"of {target.context_length} tokens")
        self.target = target
        if o.budget is None:
            self.cost_curve = verify_cost_curve(target, o.max_budget + 1)  # rows = nodes + the anchor

    # -- building ---------------------------------------------------------------------------------
    def propose(self, block_tokens: Tensor, block_probs: Optional[Tensor]) -> Candidates:
        """A drafted chain as a one-branch tree (used when only tokens are available)."""
        n = block_tokens.shape[1]
        ar = torch.arange(n, device=block_tokens.device)
        mask = _chain_mask(n, block_tokens.device)
        return Candidates(tokens=block_tokens, probs=block_probs, parents=ar - 1, depths=ar + 1, attention_mask=mask,
                          extra={"children": [{} if i == n else {int(block_tokens[0, i]): i + 1} for i in range(n + 1)],
                                 "deterministic": True})

    def propose_block(self, block: DraftBlock, corrector: Optional[Corrector], sampler: Sampler) -> Candidates:
        k = block.num_tokens
        if k == 0:
            return self.propose(block.anchor.new_zeros(1, 0), None)
        has_dists = block.has_logits or block.probs is not None
        if not has_dists:  # a deterministic drafter's chain (e.g. n-gram): nothing to branch on
            return self.propose(block.tokens, None)
        o = self.options
        use_corrector = corrector is not None and o.scorer in ("auto", "corrector")
        if o.scorer == "corrector" and corrector is None:
            raise RecipeError("verifier.options.scorer=corrector needs a corrector (corrector.name)")
        if use_corrector:
            scorer = CorrectorScorer(corrector, block, sampler)
        else:
            if block.has_logits:
                dists = tree_probs(sampler, block.logits()[0])
            else:  # a sampling drafter's q, dense or sparse (zero outside its candidates)
                dists = block.probs.dense()[0] if isinstance(block.probs, SparseProbs) else block.probs[0]
            scorer = MarginalScorer(dists.float())
        if o.scheme == "sampled" and not sampler.greedy:
            return self._build_sampled(scorer, k, sampler, block.anchor.device)
        return self._build_best_first(scorer, k, block.anchor.device)

    def _budget(self, scores_in_pop_order: list[float]) -> int:
        """Cost-aware: the prefix of the pop order maximising expected tokens per second,
        (1 + sum of path probabilities) / t_verify(n + 1)."""
        curve = self.cost_curve
        best_n, best_rate, acc = 1, -1.0, 1.0
        for n, logp in enumerate(scores_in_pop_order, 1):
            acc += math.exp(logp)
            rate = acc / interp(curve, n + 1)
            if rate > best_rate:
                best_n, best_rate = n, rate
        return best_n

    def _build_best_first(self, scorer, depth_limit: int, device) -> Candidates:
        o = self.options
        budget = o.budget if o.budget is not None else o.max_budget
        W = o.topk
        tokens: list[int] = []
        parents: list[int] = []
        depths: list[int] = []
        scores: list[float] = []
        children: list[dict] = [{}]  # row 0 = anchor; row j = node j - 1
        states = [scorer.root()]
        # candidates of each expanded row: (sorted log-probs, token ids) of its top-W children
        dist0, st0 = scorer.children(0, states[0], -1)
        cand = {0: _topk(dist0, W)}
        child_state = {0: st0}
        heap = [(-cand[0][0][0], 0, 0)]  # (-score, parent row, rank)
        auto = o.budget is None and self.cost_curve is not None
        expected, best_rate, since_best = 1.0, 0.0, 0
        while heap and len(tokens) < budget:
            if auto:  # cost-aware: stop once 8 more nodes have not raised expected tokens / verify time
                expected += math.exp(-heap[0][0])
                rate = expected / interp(self.cost_curve, len(tokens) + 2)
                best_rate, since_best = (rate, 0) if rate > best_rate else (best_rate, since_best + 1)
                if since_best >= 8:
                    break
            neg, prow, rank = heapq.heappop(heap)
            logps, ids = cand[prow]
            tok = ids[rank]
            row = len(tokens) + 1
            tokens.append(tok)
            parents.append(prow - 1)
            d = 1 if prow == 0 else depths[prow - 1] + 1
            depths.append(d)
            scores.append(-neg)
            children[prow][tok] = row
            children.append({})
            states.append(child_state[prow])
            if rank + 1 < len(ids):  # next sibling
                heapq.heappush(heap, (neg + logps[rank] - logps[rank + 1], prow, rank + 1))
            if d < depth_limit:  # first child: the node's own children distribution
                dist, st = scorer.children(d, states[row], tok)
                cand[row] = _topk(dist, W)
                child_state[row] = st
                heapq.heappush(heap, (neg - cand[row][0][0], row, 0))
        if o.budget is None and self.cost_curve is not None:
            keep = self._budget(scores)
            tokens, parents, depths = tokens[:keep], parents[:keep], depths[:keep]
            children = [{t: r for t, r in c.items() if r <= keep} for c in children[: keep + 1]]
        return _candidates(tokens, parents, depths, children, device, probs=None, deterministic=True)

    def _build_sampled(self, scorer, depth_limit: int, sampler: Sampler, device) -> Candidates:
        """Static shape: children per node by depth (``widths``), drawn without replacement
        from the node's q by Gumbel-top-k, breadth first, cut at the budget."""
        o = self.options
        widths = o.widths or [o.topk, 2]
        budget = o.budget if o.budget is not None else o.max_budget
        tokens, parents, depths, children = [], [], [], [{}]
        frontier = [(0, scorer.root(), -1, 0)]  # (row, state, token, depth)
        node_q = {}
        while frontier and len(tokens) < budget:
            nxt = []
            for row, state, tok, d in frontier:
                if d >= depth_limit or len(tokens) >= budget:
                    continue
                q, st = scorer.children(d, state, tok)
                w = widths[d] if d < len(widths) else 1
                g = -torch.log(-torch.log(sampler.uniform(q.shape, q.device).clamp_min(1e-20)))
                keys = torch.where(q > 0, q.clamp_min(1e-30).log() + g, torch.full_like(q, float("-inf")))
                order = keys.topk(min(w, int((q > 0).sum()))).indices.tolist()
                node_q[row] = q
                for c in order:
                    if len(tokens) >= budget:
                        break
                    r = len(tokens) + 1
                    tokens.append(c)
                    parents.append(row - 1)
                    depths.append(d + 1)
                    children[row][c] = r
                    children.append({})
                    nxt.append((r, st, c, d + 1))
            frontier = nxt
        cands = _candidates(tokens, parents, depths, children, device, probs=None, deterministic=False)
        cands.extra["node_q"] = node_q  # row -> q [V] its children were drawn from
        return cands

    # -- accepting ----------------------------------------------------------------------------------
    def accept(self, candidates: Candidates, target_logits: Tensor, sampler: Sampler) -> Accepted:
        children = candidates.extra["children"]
        device = target_logits.device
        path: list[int] = []
        row = 0
        if candidates.extra.get("deterministic", True) or sampler.greedy:
            # one target sample per node, then walk (a loop over depth, not over nodes)
            y = target_logits[0].argmax(-1) if sampler.greedy else sampler.sample(target_logits[0])  # [n+1]
            y = y.tolist()
            while y[row] in children[row]:
                row = children[row][y[row]]
                path.append(row - 1)
            bonus = y[row]
        else:
            p_all = sampler.probs(target_logits[0])  # [n+1, V]
            node_q = candidates.extra["node_q"]
            while True:
                kids = list(children[row].items())  # in draw order (dicts keep insertion order)
                p = p_all[row]
                if not kids:
                    bonus = int(sampler.sample_from_probs(p))
                    break
                q = node_q[row].to(p.dtype)
                accepted_row = None
                for tok, child_row in kids:
                    u = float(sampler.uniform((), device))
                    if u * float(q[tok]) < float(p[tok]):
                        accepted_row = child_row
                        break
                    p = residual(p, q, None)  # norm(max(p - q, 0))
                    q = q.clone()
                    q[tok] = 0
                    q = q / q.sum().clamp_min(1e-30)
                if accepted_row is None:
                    bonus = int(sampler.sample_from_probs(p))
                    break
                row = accepted_row
                path.append(row - 1)
        toks = [int(candidates.tokens[0, i]) for i in path] + [int(bonus)]
        return Accepted(tokens=torch.tensor([toks], device=device),
                        num_accepted=torch.tensor([len(path)], device=device),
                        path=torch.tensor([path], dtype=torch.long, device=device).reshape(1, len(path)))


def _topk(dist: Tensor, W: int) -> "tuple[list[float], list[int]]":
    k = min(W, int((dist > 0).sum()) or 1)
    vals, ids = dist.topk(k)
    return vals.clamp_min(1e-30).log().tolist(), ids.tolist()


def _chain_mask(n: int, device) -> Tensor:
    return torch.ones(n + 1, n + 1, dtype=torch.bool, device=device).tril()


def _candidates(tokens, parents, depths, children, device, probs, deterministic) -> Candidates:
    n = len(tokens)
    parents_t = torch.tensor(parents, dtype=torch.long, device=device)
    # ancestor-only visibility: follow parent pointers, one vectorised hop per tree level
    parent_row = torch.cat([parents_t.new_zeros(1), parents_t + 1])  # [n+1], the anchor is its own parent
    rows = torch.arange(n + 1, device=device)
    mask = torch.eye(n + 1, dtype=torch.bool, device=device)
    cur = rows
    for _ in range(max(depths, default=0)):
        cur = parent_row[cur]
        mask[rows, cur] = True
    return Candidates(tokens=torch.tensor([tokens], dtype=torch.long, device=device).reshape(1, n), probs=probs,
                      parents=parents_t, depths=torch.tensor(depths, dtype=torch.long, device=device),
                      attention_mask=mask, extra={"children": children, "deterministic": deterministic})


