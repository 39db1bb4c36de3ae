"""The public plugin API: Drafter, Corrector, Verifier and the dataclasses they exchange.

Plugins are written against this file only. The scheduler (``scheduler.py``) drives them:

    target prefill -> drafter.draft -> length_policy.choose (how many drafts to verify)
    -> corrector.correct (optional) -> verifier.propose
    -> one target forward over the candidates -> verifier.accept -> commit -> repeat

Shape letters: ``b`` batch, ``k`` drafted positions in a block, ``n`` candidate nodes to
verify (``n == k`` for a chain), ``d`` hidden size, ``V`` vocabulary, ``t`` committed tokens.

Conventions every component relies on
-------------------------------------
* The *anchor* is the last committed token. It is not yet in the target's KV cache; the
  verify forward feeds ``[anchor, candidates...]`` so row ``j`` of the target logits predicts
  the token after the ``j``-th fed token (row 0 predicts the first candidate).
* A block's ``probs`` is the draft distribution ``q`` from which its tokens were drawn,
  after the *same* temperature / top-k / top-p warping the verifier applies to the target
  (``Sampler.probs``). ``probs=None`` means the drafter is deterministic; verifiers treat the
  tokens as one-hot ``q`` (as vLLM does for n-gram), which keeps speculative sampling exact.
* Context features are hidden states of the target layers a drafter lists in
  ``context_layers`` (``hidden_states[l + 1]`` in transformers' numbering, i.e. the output of
  decoder layer ``l``), concatenated on the last axis: ``[b, rows, len(context_layers) * d]``.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Optional, Sequence, Union

import torch

if TYPE_CHECKING:  # pragma: no cover
    from .sampling import Sampler
    from .target import TargetModel

Tensor = torch.Tensor


# --------------------------------------------------------------------------------------
# Data exchanged between components
# --------------------------------------------------------------------------------------
@dataclass
class DraftContext:
    """What a drafter sees at the start of a cycle."""

    tokens: Tensor  # [b, t] every committed token (prompt + generated); tokens[:, -1] is the anchor
    max_draft: int  # drafts beyond this are wasted (remaining budget / context window)
    sampler: "Sampler"  # temperature / top-k / top-p and the seeded generator of this request

    @property
    def anchor(self) -> Tensor:  # [b]
        return self.tokens[:, -1]


@dataclass
class SparseProbs:
    """A sparse proposal: the draft distribution q of each position given on ``K`` candidate
    tokens only (q(x) = 0 for every other token), e.g. a corrector that re-ranks the base top-K
    (DFlash2's selector). Accepted wherever a dense q ``[b, k, V]`` is: ``Corrector.step`` may
    return one row of it (``ids`` / ``probs`` ``[b, K]``) instead of logits, ``Corrector.correct``
    and ``Candidates.probs`` a block of them (``[b, k, K]``). Rules: ``probs >= 0`` and each row
    sums to 1 over its candidates (it *is* the distribution the drafted token was drawn from;
    padding candidates carry probability 0); ``ids`` are distinct within a row. The verifiers
    use q(x) = the candidate's probability, 0 outside, and the residual max(p - q, 0) over the
    full vocabulary (``dense``), so speculative sampling stays exact."""

    ids: Tensor  # [..., K] long, candidate token ids
    probs: Tensor  # [..., K] their probabilities under q (rows sum to 1)
    vocab_size: int  # V, for ``dense``

    def at(self, tokens: Tensor) -> Tensor:
        """q(tokens): ``tokens [...]`` -> ``[...]`` (0 for a token that is not a candidate)."""
        hit = self.ids == tokens[..., None]
        return (self.probs.float() * hit).sum(-1)

    def dense(self) -> Tensor:
        """The same q as a dense ``[..., V]`` tensor (zeros outside the candidates)."""
        out = self.probs.new_zeros(*self.probs.shape[:-1], self.vocab_size, dtype=torch.float32)
        return out.scatter_add_(-1, self.ids, self.probs.float())

    def __getitem__(self, index) -> "SparseProbs":  # index the leading axes, like a dense tensor
        return SparseProbs(self.ids[index], self.probs[index], self.vocab_size)


Probs = Union[Tensor, SparseProbs]  # a draft distribution q: dense [..., V] or sparse


@dataclass
class DraftBlock:
    """A drafted block. Deterministic drafters fill ``tokens`` (and maybe ``probs``);
    parallel drafters fill ``hidden`` / ``base_logits`` (or ``project``) / ``anchor`` and may leave
    ``tokens`` to be sampled by a Corrector or, with no corrector, by the scheduler from ``logits()``."""

    tokens: Optional[Tensor] = None  # [b, k] long
    probs: Optional[Probs] = None  # [b, k, V] draft distribution q, or SparseProbs [b, k, K] (None: deterministic)
    hidden: Optional[Tensor] = None  # [b, k, d] per-position drafter states (parallel drafters)
    base_logits: Union[Tensor, Callable[[], Tensor], None] = None  # [b, k, V] or lazy
    anchor: Optional[Tensor] = None  # [b] the last committed token the block continues
    # lazy base logits from ``hidden`` ([b, k, d] -> [b, k, V]); after ``truncate`` only the
    # kept rows are projected (a vocabulary projection is a large part of drafting cost)
    project: Optional[Callable[[Tensor], Tensor]] = None
    # the request context of the cycle that drafted the block (committed tokens ``context.tokens``,
    # the request's sampler): set by the scheduler before the block reaches a length policy, a
    # corrector (``init_state``) or a verifier's ``propose_block`` - the one way a corrector
    # reads the committed text. Read-only; None only for a block built outside the engine.
    context: Optional[DraftContext] = None

    @property
    def num_tokens(self) -> int:
        if self.tokens is not None:
            return int(self.tokens.shape[1])
        if self.hidden is not None:
            return int(self.hidden.shape[1])
        return int(self.logits().shape[1])

    @property
    def has_logits(self) -> bool:
        """Whether ``logits()`` can produce base logits (given, lazy, or projected from hidden)."""
        return self.base_logits is not None or (self.project is not None and self.hidden is not None)

    def logits(self) -> Tensor:
        """``base_logits`` materialised (calls the lazy projection once and caches it)."""
        if callable(self.base_logits):
            self.base_logits = self.base_logits()
        if self.base_logits is None and self.project is not None and self.hidden is not None:
            self.base_logits = self.project(self.hidden)
        if self.base_logits is None:
            raise ValueError("this block carries no base_logits")
        return self.base_logits

    def truncate(self, k: int) -> "DraftBlock":
        """The first ``k`` positions of the block (used to respect the token budget)."""

        def cut(x):
            return None if x is None else x[:, :k]

        logits = self.base_logits
        if logits is not None and not callable(logits):
            logits = logits[:, :k]
        elif callable(logits):
            full = logits
            logits = lambda: full()[:, :k]  # noqa: E731
        probs = None if self.probs is None else self.probs[:, :k]
        return DraftBlock(cut(self.tokens), probs, cut(self.hidden), logits, self.anchor, self.project, self.context)


@dataclass
class Candidates:
    """What the target verifies in one forward: ``n`` nodes after the anchor.

    A chain has ``parents = [-1, 0, 1, ...]`` and ``depths = [1, 2, ...]`` and needs no mask.
    A tree gives each node its parent (``-1`` = the anchor), its depth (position offset from
    the anchor) and an ancestor-only ``attention_mask`` over the ``n + 1`` fed rows.
    """

    tokens: Tensor  # [b, n] long
    probs: Optional[Probs]  # [b, n, V] q of each node's token, or SparseProbs [b, n, K] (None: one-hot)
    parents: Tensor  # [n] long, -1 for children of the anchor
    depths: Tensor  # [n] long, >= 1
    attention_mask: Optional[Tensor] = None  # [n + 1, n + 1] bool (True = attend), None = causal
    extra: dict = field(default_factory=dict)  # verifier-private data (e.g. sibling lists)

    @property
    def num_nodes(self) -> int:
        return int(self.tokens.shape[1])

    @property
    def is_chain(self) -> bool:
        return self.attention_mask is None


@dataclass
class Accepted:
    """The verifier's decision for one cycle (batch size 1 rows are ``[1, ...]``)."""

    # [b, w] committed this cycle: the a = num_accepted accepted drafts, then the bonus token, then
    # (optionally) -1 padding up to any width w >= a + 1, so a verifier need not read a on the host
    tokens: Tensor
    num_accepted: Tensor  # [b] long, how many *draft* tokens were accepted
    path: Tensor  # [b, >= a] long, indices of the accepted nodes in Candidates (chain: 0, 1, ...); first a count


# --------------------------------------------------------------------------------------
# Components
# --------------------------------------------------------------------------------------
@dataclass
class NoOptions:
    """A component without recipe options."""


class Component(abc.ABC):
    """Base of every plugin component.

    ``Options`` is a dataclass of the component's recipe options (``drafter.options`` etc.);
    the recipe layer validates user keys against it before any model loads, and passes the
    merged instance to ``__init__``. Cross-field checks belong in the dataclass's
    ``__post_init__`` (raise ``specforge_core.errors.RecipeError``) so they too fire before
    any model loads. Constructors must not load weights: that happens in ``bind``.
    """

    kind: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    description: ClassVar[str] = ""

    def bind(self, target: "TargetModel") -> None:
        """Called once after the target is loaded: borrow its embeddings / lm_head, check
        shapes and raise a clear error (``specforge_core.errors.IncompatibleError``)."""

    @classmethod
    def claims(cls, key: str) -> bool:
        """Whether a tensor named ``key`` (as stored, e.g. ``model.layers.0.mlp.up_proj.weight``)
        in a checkpoint directory belongs to this component. One directory may hold a drafter
        and a corrector (e.g. the published Domino layout); the loader
        (``specforge_core.checkpoint.split_keys``) gives each key to the recipe component that
        claims it, and a key no installed component claims is an error naming it. A component
        loads only the keys it claims; it never lists another plugin's keys."""
        return False


class Drafter(Component):
    """Proposes a block of draft tokens.

    Class attributes / properties a drafter sets:
      * ``parallel``: True for block-parallel drafters (DFlash, DFlare) - the only ones a
        Corrector may be mixed onto - which return ``hidden`` / ``base_logits``.
      * ``context_layers``: target layer indices whose hidden states it needs (captured in the
        verify forward; an empty tuple captures nothing).
    """

    kind = "drafter"
    parallel: ClassVar[bool] = False
    checkpoint: Optional[str] = None  # set by __init__; a default for drafters that do not call it

    def __init__(self, options: Any, block_size: int, checkpoint: Optional[str] = None):
        self.options = options
        self.block_size = block_size  # max drafted tokens per cycle (recipe `drafter.block_size`)
        self.checkpoint = checkpoint  # recipe `drafter.checkpoint` (local dir / hub id) or None

    @classmethod
    def checkpoint_block_size(cls, checkpoint: str) -> Optional[int]:
        """The block size a checkpoint was trained with, if it records one (DFlash / DFlare read
        ``config.json``). The drafter runs at it unless the recipe sets ``drafter.block_size``."""
        return None

    @property
    def context_layers(self) -> Sequence[int]:
        return ()

    # What a corrector may read of its drafter (documented; no other attribute is part of the
    # interface): ``checkpoint`` (above: the directory / hub id the recipe gave, which may also hold
    # the corrector's keys), and, once bound, the size of the per-position states it returns:
    @property
    def hidden_size(self) -> Optional[int]:
        """``d`` of ``DraftBlock.hidden [b, k, d]`` (parallel drafters), None if it returns none.
        Final after ``bind``."""
        return None

    def reset(self) -> None:
        """Forget per-request state (draft KV cache, etc.)."""

    def commit(self, num_new_rows: int, context_features: Optional[Tensor]) -> None:
        """Hand the drafter the rows that became committed context this cycle:
        ``context_features`` is ``[b, num_new_rows, len(context_layers) * d]`` (or None)."""

    @abc.abstractmethod
    def draft(self, ctx: DraftContext) -> DraftBlock:
        """Propose at most ``ctx.max_draft`` tokens continuing ``ctx.tokens``."""

    # ---- training (drafters with weights implement these) --------------------------------
    def training_module(self) -> "torch.nn.Module":
        """The module whose parameters ``specforge train`` optimises."""
        raise NotImplementedError(f"drafter {type(self).__name__} cannot be trained")

    def training_loss(self, batch: dict) -> dict:
        """``batch``: ``input_ids [b, S]``, ``loss_mask [b, S]``, ``target_hidden [b, S, F]`` (the
        context features of ``context_layers``), ``generator`` (seeded, for random anchors) and
        the recipe's ``num_anchors`` / ``gamma``. Returns ``{"loss": scalar, **metrics}``."""
        raise NotImplementedError(f"drafter {type(self).__name__} has no training objective")

    def training_blocks(self, batch: dict) -> dict:
        """Parallel drafters: draft random anchor blocks of ``batch`` (as in ``training_loss``)
        and return the drafted rows for a corrector's training: ``hidden [n, k, d]``,
        ``labels [n, k]``, ``weights [n, k]`` (position decay x validity), ``anchor [n]``."""
        raise NotImplementedError(f"drafter {type(self).__name__} cannot train a corrector")

    def project_logits(self, hidden: Tensor) -> Tensor:
        """Parallel drafters: base logits ``[.., V]`` of per-position states ``[.., d]``."""
        raise NotImplementedError(f"drafter {type(self).__name__} has no base logits")

    def save_pretrained(self, directory, dtype=None, extra_tensors=None, config_updates=None) -> None:
        """Write the weights + config in the drafter's published layout (atomically);
        ``extra_tensors`` / ``config_updates`` let a corrector stored in the same checkpoint
        (the published Domino layout) add its keys and config fields."""
        raise NotImplementedError(f"drafter {type(self).__name__} has no weights to save")

    def load_weights(self, directory) -> None:
        """Load weights written by ``save_pretrained`` into the bound drafter."""
        raise NotImplementedError(f"drafter {type(self).__name__} has no weights to load")


class Corrector(Component):
    """Turns a parallel block into causally consistent draft tokens, position by position.

    The engine drives a corrector through these calls, in this order (the whole seam):

    * ``compatible_with(drafter)`` - once, after ``drafter.bind`` and before ``bind``: raise
      ``IncompatibleError`` for a drafter it cannot run on; keep what it needs of the drafter's
      documented attributes (``checkpoint``, ``hidden_size``, ``parallel``).
    * ``bind(target)`` - once: load weights, borrow the target's embeddings.
    * ``reset()`` - at the start of every request (before the prefill): forget per-request state.
    * per cycle, ``init_state(block)`` then ``step`` per position - by ``correct`` (the chain path)
      or by a tree verifier (one ``step`` per tree node, several children from one parent state).
      ``block.context`` is the cycle's ``DraftContext``: the committed tokens
      (``block.context.tokens [b, t]``, prompt + generated, the anchor last) and the request's
      sampler. This is the only way the request reaches a corrector.

    Rules (docs/plugins.md):

    * ``step`` is a pure function of ``(state, i, prev_token)``: it must not modify ``state`` (or
      any tensor in it) in place, and returns a new state. A tree verifier steps several children
      from one parent state; a mutation would leak one branch into its siblings.
      ``specforge_core.contracts.check_step_pure`` checks it.
    * ``step`` returns either logits ``[b, V]`` (the engine warps them with the request's sampler:
      ``-inf`` forbids a token, and forcing one token = every other logit ``-inf``; at least one
      logit per row must be finite) or a ``SparseProbs`` row ``[b, K]`` (q itself, already final:
      the engine samples from it and verifies against it unchanged).
    * ``correct`` returns the tokens and the q they were drawn from (dense ``[b, k, V]``, a
      ``SparseProbs`` ``[b, k, K]``, or None at T=0 for deterministic tokens). A drafted token
      must have q > 0. Fused implementations must give the same tokens at T=0 and the same q at T>0.
    """

    kind = "corrector"
    # True when ``step`` returns a ``SparseProbs`` q (a final distribution, not logits): such a
    # corrector can only be the last one of a stack (``corrector.name: [a, b]``)
    sparse_output: ClassVar[bool] = False

    def __init__(self, options: Any, checkpoint: Optional[str] = None):
        self.options = options
        self.checkpoint = checkpoint  # recipe `corrector.checkpoint` or None

    drafter_hidden_size: Optional[int] = None  # the bound drafter's, kept by compatible_with
    drafter_checkpoint: Optional[str] = None  # the drafter's checkpoint, which may hold this corrector too

    def compatible_with(self, drafter: Drafter) -> None:
        """Raise ``IncompatibleError`` naming the mismatch (hidden size, vocab, not parallel).
        Called once, after ``drafter.bind`` and before this corrector's ``bind``. Keeps the two
        drafter attributes a trained head needs: ``hidden_size`` and ``checkpoint``."""
        check_parallel(self, drafter)
        self.drafter_hidden_size = drafter.hidden_size
        self.drafter_checkpoint = drafter.checkpoint

    def weights_source(self, fresh: bool, needs: str) -> Optional[str]:
        """Where ``bind`` loads trained weights from: ``corrector.checkpoint``, else - unless ``fresh``
        (the recipe asks for new weights from a config) - the drafter's checkpoint, since one trained
        with this corrector holds both parts. None = build fresh weights. Raises ``RecipeError``
        ("<needs>") when there is neither a checkpoint nor a config."""
        if self.checkpoint is not None or fresh:
            return self.checkpoint
        if self.drafter_checkpoint is None:
            from .errors import RecipeError

            raise RecipeError(needs)
        return self.drafter_checkpoint

    def reset(self) -> None:
        """A new request starts: forget per-request state (e.g. statistics of the committed
        text gathered from ``block.context`` in earlier cycles)."""

    @abc.abstractmethod
    def init_state(self, block: DraftBlock) -> Any:
        """The state before position 0 of ``block`` (``block.context``: the request context)."""

    @abc.abstractmethod
    def step(self, state: Any, i: int, prev_token: Tensor) -> "tuple[Union[Tensor, SparseProbs], Any]":
        """Logits ``[b, V]`` (or a ``SparseProbs`` q ``[b, K]``) for block position ``i`` given the
        token realised at ``i - 1`` (``prev_token [b]``; the anchor for ``i == 0``), and the new
        state. Must not modify ``state`` in place (see the class rules)."""

    def step_on(self, state: Any, i: int, prev_token: Tensor, logits: Tensor) -> "tuple[Union[Tensor, SparseProbs], Any]":
        """Stacking (``corrector.name: [a, b]``, ``specforge_core.stack``): ``step`` applied to
        ``logits [b, V]`` - the output of the corrector before this one in the stack at position
        ``i`` - in place of the block's base logits row ``i``. Same purity rule as ``step``. A
        corrector that does not implement it can only be first in a stack."""
        raise NotImplementedError(f"corrector {type(self).__name__} cannot follow another corrector in a stack")

    def correct(self, block: DraftBlock, sampler: "Sampler") -> "tuple[Tensor, Optional[Probs]]":
        """Returns ``tokens [b, k]`` and the q of each position (``[b, k, V]`` or ``SparseProbs``)."""
        state = self.init_state(block)
        prev = block.anchor
        tokens, qs = [], []
        for i in range(block.num_tokens):
            out, state = self.step(state, i, prev)
            if isinstance(out, SparseProbs):  # q is given: draw a candidate from it
                prev = out.ids.gather(-1, sampler.sample_from_probs(out.probs.float())[:, None])[:, 0]
                qs.append(out)
            else:
                q_i = sampler.probs(out)  # [b, V]
                prev = sampler.sample_from_probs(q_i)  # [b]
                qs.append(q_i)
            tokens.append(prev)
        return torch.stack(tokens, 1), stack_probs(qs)

    # ---- training (correctors with weights implement these) -------------------------------
    def training_forward(self, block: DraftBlock, teacher_tokens: Tensor) -> Tensor:
        """Teacher forcing: final logits ``[n, k, V]`` of a block whose realised tokens are the
        ground truth ``teacher_tokens [n, k]`` (position i sees the tokens before it)."""
        raise NotImplementedError(f"corrector {type(self).__name__} has no training forward")

    def training_objective(self, block: DraftBlock, labels: Tensor, weights: Tensor) -> Optional[dict]:
        """A corrector whose output is not a full-vocabulary distribution (a re-ranker over the base
        top-K, like DFlash2's selector) returns its own loss ``{"loss": scalar, **metrics}`` on a
        teacher-forced block (``labels [n, k]`` the ground truth, ``weights [n, k]`` position decay x
        validity); None (the default) = the engine's ``training.losses.corrector_loss`` over
        ``training_forward``'s logits."""
        return None

    def training_module(self) -> "torch.nn.Module":
        raise NotImplementedError(f"corrector {type(self).__name__} cannot be trained")

    def checkpoint_tensors(self) -> dict:
        """Tensors to store next to the drafter's (one checkpoint holds both)."""
        raise NotImplementedError(f"corrector {type(self).__name__} has no weights to save")

    def checkpoint_config(self) -> dict:
        """config.json fields (merged into the drafter's) describing this corrector."""
        return {}

    def load_weights(self, directory) -> None:
        raise NotImplementedError(f"corrector {type(self).__name__} has no weights to load")


class Verifier(Component):
    """Decides which drafted tokens the target accepts - losslessly.

    A verifier that builds its own candidates from the block's distributions (a tree) sets
    ``builds_from_block = True`` and implements ``propose_block(block, corrector, sampler)``;
    the engine then skips sampling the block and hands it the drafter's block and corrector.
    """

    kind = "verifier"
    builds_from_block: ClassVar[bool] = False

    def __init__(self, options: Any = None):
        self.options = options

    @abc.abstractmethod
    def propose(self, block_tokens: Tensor, block_probs: Optional[Tensor]) -> Candidates:
        """Arrange the drafted tokens ``[b, k]`` (and q ``[b, k, V]``) into candidates."""

    def propose_block(self, block: DraftBlock, corrector: Optional[Corrector], sampler: "Sampler") -> Candidates:
        raise NotImplementedError

    @abc.abstractmethod
    def accept(self, candidates: Candidates, target_logits: Tensor, sampler: "Sampler") -> Accepted:
        """``target_logits [b, n + 1, V]``: row 0 is the anchor's, row ``j + 1`` node ``j``'s."""


@dataclass
class LengthChoice:
    """What a ``LengthPolicy`` decided for one block."""

    num_drafts: int  # drafts to verify, 0 .. limit (0 = a plain decode step: the anchor row only)
    # predicted P(the first j drafts are all accepted), j = 1 .. (positions it estimated), host floats;
    # None when the policy has no estimates. The bench compares them with what verification accepted.
    prefix_confidence: Optional[Sequence[float]] = None


class LengthPolicy(Component):
    """How many of a block's drafts the target verifies this cycle (``verifier.length``).

    The lossless rule (speculative sampling with a draft-length that varies): at T > 0 the choice
    may depend on anything *except the tokens sampled from the block* - the drafter's hidden
    states, its base logits, the request's history, the clock. Then, for every position, the
    decision to verify it is independent of the draft token drawn there, so conditioned on the
    decision that token is still distributed as q and accept / residual sampling yields p
    (Leviathan et al. 2023, Theorem 1, applied per position). The engine enforces this by
    calling ``choose`` *before* the block is realised (sampled / corrected): a parallel drafter's
    block then holds no sampled tokens. A sequential drafter's block already carries sampled
    tokens (``block.tokens`` with ``block.probs``); a policy must not read them at T > 0
    (``greedy`` says which). At T = 0 verification is deterministic and any choice is lossless.
    """

    kind = "length_policy"

    def __init__(self, options: Any = None):
        self.options = options

    def reset(self, max_drafts: int) -> None:
        """A new request starts, with at most ``max_drafts`` drafts per block. Called before the
        prefill: the only moment a policy may run the target itself (e.g. to measure its cost)."""

    def observe(self, cycle: Any) -> None:
        """After each cycle: its ``scheduler.CycleStats`` (drafts verified and accepted, stage times),
        e.g. to learn how the corrector's time grows with the drafts verified."""

    # ---- training (optional; ``specforge train`` with ``training.component: length_policy``) ------
    # The engine's own decoding collects the data: while ``collecting`` is on, the policy keeps
    # what it needs from each block it is shown and lets every draft be verified; ``examples``
    # pairs that with the cycles' outcomes. specforge_core/training/length_policy.py drives it.
    def training_module(self) -> "torch.nn.Module":
        raise NotImplementedError(f"length policy {type(self).__name__} has nothing to train")

    def collecting(self, on: bool) -> None:
        raise NotImplementedError(f"length policy {type(self).__name__} has nothing to train")

    def examples(self, cycles: Sequence[Any]) -> list:
        """The examples collected since ``collecting(True)``, one per cycle, paired with
        ``cycles`` (the ``CycleStats`` of the same generation, in order); clears the buffer."""
        raise NotImplementedError

    def training_loss(self, examples: list) -> dict:
        raise NotImplementedError

    def save_pretrained(self, directory) -> None:
        raise NotImplementedError

    def load_weights(self, directory) -> None:
        raise NotImplementedError

    @abc.abstractmethod
    def choose(self, block: DraftBlock, limit: int, greedy: bool, draft_s: float) -> LengthChoice:
        """``block`` as drafted (before realisation); ``limit`` drafts at most (budget and
        ``drafter.num_speculative_tokens``); ``greedy``: T = 0; ``draft_s``: this cycle's drafter
        wall time (a host stamp: exact on CPU, launch time only on an unprofiled GPU)."""


def check_parallel(corrector: Corrector, drafter: Drafter) -> None:
    """The one rule every corrector shares: it runs on a parallel drafter's block."""
    if not getattr(drafter, "parallel", False):
        from .errors import IncompatibleError

        raise IncompatibleError(
            f"corrector {type(corrector).__name__} needs a parallel drafter; "
            f"{type(drafter).__name__} has parallel = False"
        )


def stack_probs(qs: Sequence[Probs]) -> Probs:
    """Per-position q's (``[b, V]`` tensors or ``SparseProbs [b, K]``) -> one block q: a
    ``SparseProbs [b, k, K]`` (padded with probability-0 candidates) when every position is
    sparse, else a dense ``[b, k, V]``."""
    if qs and all(isinstance(q, SparseProbs) for q in qs):
        K = max(q.ids.shape[-1] for q in qs)
        pad = lambda x, v: torch.nn.functional.pad(x, (0, K - x.shape[-1]), value=v)  # noqa: E731
        return SparseProbs(torch.stack([pad(q.ids, 0) for q in qs], 1),
                           torch.stack([pad(q.probs.float(), 0.0) for q in qs], 1), qs[0].vocab_size)
    return torch.stack([q.dense() if isinstance(q, SparseProbs) else q for q in qs], 1)
