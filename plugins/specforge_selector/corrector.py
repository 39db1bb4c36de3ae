"""DFlash2's candidate selector as a SpecForge Corrector (z-lab PyPI ``dflash`` 0.1.0,
``dflash/model.py::CandidateSelector.select``), mixable onto any parallel drafter whose blocks carry
per-position hidden states (DFlash, DFlare, DFlash2, third-party ones).

Per block position ``i``, given the token realised at ``i - 1`` (the anchor for ``i = 0``):

    unary_i, c_i = top_K(logits_i)                                 # K = selector_top_k
    s_i[j] = unary_i[j] + < P[x_{i-1}] * (W h_i), S[c_i[j]] >       # selector.py
    q_i = softmax(s_i / T) on c_i, 0 elsewhere                     # a sparse q (SparseProbs)

``logits_i`` is the block's base logits row ``i`` (``step``), or, in a stack
(``corrector.name: [domino, selector]``), the previous corrector's output at ``i`` (``step_on``).
At T = 0 the engine takes the argmax of q, i.e. ``argmax_j s_i[j]`` (the reference's T = 0 path:
``softmax`` is monotone, so the first maximum is the same candidate); q itself is ``softmax(s_i)``,
the ranking a tree verifier expands by. At T > 0 the request's temperature divides the scores as
in the reference; the request's top-k / top-p do not apply (q is final: the verifier checks the
drafts against it, so the output law is the target's either way).

Weights: ``corrector.checkpoint`` (a z-lab DFlash2 directory, or one written by ``specforge train``
/ ``scripts/extract_corrector.py``), else ``drafter.checkpoint`` (a checkpoint trained here holds
both parts), else a fresh selector from ``corrector.options.config``. Only the
``candidate_selector.*`` tensors are read; ``selector_rank`` / ``selector_top_k`` come from
``config.json`` (``dflash_config`` first, then the top level: the reference's ``_draft_value``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, NamedTuple, Optional

import torch

from specforge_core.checkpoint import load_state_dict, read_config, resolve_dir
from specforge_core.errors import IncompatibleError, ModelLoadError, RecipeError
from specforge_core.interfaces import Corrector, DraftBlock, Drafter, SparseProbs

from .selector import CandidateSelector

Tensor = torch.Tensor
PREFIX = "candidate_selector."  # the selector's attribute name in the reference's DFlash2DraftModel
CODEBOOKS = ("predecessor_codebook", "successor_codebook")  # bare [V, r] tensors in z-lab's layout
INITS = ("normal", "zero")
CONFIG_FIELDS = {"selector_rank": 16, "selector_top_k": 8, "initializer_range": 0.02, "init": "zero"}


@dataclass
class SelectorOptions:
    # a fresh selector when no checkpoint is given: selector_rank (16), selector_top_k (8; at most the
    # vocabulary), initializer_range (0.02), init (zero: successor codebook = 0, so a fresh selector picks
    # the base argmax and samples softmax(top-K / T); normal: every weight normal(0, initializer_range))
    config: Optional[Dict[str, Any]] = None
    init_seed: int = 0
    # training (training_objective): the weight of positions whose gold token is not among the base
    # top-K and was injected in place of the lowest candidate (the selector can never draft it there)
    alpha: float = 0.5

    def __post_init__(self):
        if not 0.0 <= float(self.alpha) <= 1.0:
            raise RecipeError(f"corrector.options.alpha must be in [0, 1] (got {self.alpha})")
        if self.config is None:
            return
        c = dict(self.config)
        unknown = sorted(set(c) - set(CONFIG_FIELDS))
        if unknown:
            raise RecipeError(f"corrector.options.config: unknown field(s) {', '.join(unknown)} "
                              f"(selector takes {', '.join(CONFIG_FIELDS)})")
        for name in ("selector_rank", "selector_top_k"):
            v = c.get(name, CONFIG_FIELDS[name])
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise RecipeError(f"corrector.options.config.{name} must be an integer >= 1 (got {v!r})")
        if c.get("init", "zero") not in INITS:
            raise RecipeError(f"corrector.options.config.init must be zero or normal (got {c.get('init')!r})")


class SelectorState(NamedTuple):
    """Immutable: ``step`` returns it unchanged (the selector carries nothing across positions
    but the previous token, which the engine passes), so tree children share it safely."""

    logits: Tensor  # [b, k, V] the block's base logits
    projected: Tensor  # [b, k, r] W h_i
    temperature: float  # the request's (0 = greedy)


class SelectorCorrector(Corrector):
    """DFlash2's candidate selector: rescoring the base top-K by a previous-token bilinear term."""

    Options = SelectorOptions
    sparse_output = True  # step returns a SparseProbs q over the K candidates
    description = "DFlash2 candidate selector (z-lab): top-K re-ranking by the previous token, sparse q"

    def __init__(self, options: SelectorOptions, checkpoint: Optional[str] = None):
        super().__init__(options, checkpoint)
        if checkpoint is not None and options.config is not None:
            raise RecipeError("corrector: give corrector.checkpoint or corrector.options.config, not both")
        self.head: Optional[CandidateSelector] = None
        self.drafter_hidden_size: Optional[int] = None
        self.drafter_checkpoint: Optional[str] = None

    # ---- set-up -------------------------------------------------------------------------------
    @classmethod
    def claims(cls, key: str) -> bool:
        """``candidate_selector.*`` (maybe under ``model.``) in a shared checkpoint directory."""
        name = key[len("model."):] if key.startswith("model.") else key
        return name.startswith(PREFIX)

    def compatible_with(self, drafter: Drafter) -> None:
        super().compatible_with(drafter)  # parallel drafters only
        if drafter.hidden_size is None:
            raise IncompatibleError(f"corrector selector reads the block's per-position hidden states; drafter "
                                    f"{type(drafter).__name__} returns none (hidden_size is None)")

    def bind(self, target) -> None:
        source = self.weights_source(self.options.config is not None, (
            "corrector selector needs weights: corrector.checkpoint (a DFlash2 directory or an exported selector), "
            "a checkpoint trained with it as drafter.checkpoint, or corrector.options.config for a fresh (untrained) "
            "selector"))
        H, V = self.drafter_hidden_size, target.vocab_size
        if source is not None:
            head = load_selector(source, V, H)
        else:
            head = fresh_selector(self.options.config, V, H, self.options.init_seed)
        self.head = head.to(device=target.device, dtype=target.dtype).eval()

    # ---- the Corrector API --------------------------------------------------------------------
    def init_state(self, block: DraftBlock) -> SelectorState:
        sampler = block.context.sampler if block.context is not None else None
        temperature = 0.0 if sampler is None or sampler.greedy else float(sampler.params.temperature)
        dtype = self.head.hidden_projection.weight.dtype
        return SelectorState(block.logits(), self.head.project(block.hidden.to(dtype)), temperature)

    def step(self, state: SelectorState, i: int, prev_token: Tensor) -> "tuple[SparseProbs, SelectorState]":
        return self.step_on(state, i, prev_token, state.logits[:, i])

    def step_on(self, state: SelectorState, i: int, prev_token: Tensor, logits: Tensor) -> "tuple[SparseProbs, SelectorState]":
        # CandidateSelector.select, one iteration: top-K of this row, bilinear rescoring, softmax(s / T)
        unary, ids = self.head.candidates(logits.to(state.projected.dtype))  # [b, K], [b, K]
        scores = self.head.scores(unary, ids, state.projected[:, i], prev_token).float()  # [b, K]
        q = torch.softmax(scores / (state.temperature if state.temperature > 0 else 1.0), dim=-1)
        return SparseProbs(ids, q, logits.shape[-1]), state

    @torch.inference_mode()
    def correct(self, block: DraftBlock, sampler) -> "tuple[Tensor, SparseProbs]":
        """The default per-position loop (interfaces.Corrector.correct), without autograd."""
        return super().correct(block, sampler)

    # ---- training -----------------------------------------------------------------------------
    def training_module(self) -> torch.nn.Module:
        return self.head

    def training_objective(self, block: DraftBlock, labels: Tensor, weights: Tensor) -> dict:
        from .training import selector_loss

        return selector_loss(self.head, block, labels, weights, float(self.options.alpha))

    def checkpoint_tensors(self) -> dict:
        return {PREFIX + k: v for k, v in self.head.state_dict().items()}

    def checkpoint_config(self) -> dict:
        # z-lab's layout keeps the selector's fields in dflash_config (merged into the drafter's)
        return {"dflash_config": {"selector_rank": self.head.rank, "selector_top_k": self.head.top_k}}

    def load_weights(self, directory) -> None:
        tensors = read_selector_tensors(Path(directory), expected_shapes(self.head))
        dtype = self.head.hidden_projection.weight.dtype
        self.head.load_state_dict({k[len(PREFIX):]: v.to(dtype) for k, v in tensors.items()})


# ---- weights ------------------------------------------------------------------------------------
def expected_shapes(head: CandidateSelector) -> dict:
    return {PREFIX + k: tuple(v.shape) for k, v in head.state_dict().items()}


def field(cfg: dict, name: str, where: str) -> int:
    """Reference ``_draft_value``: ``dflash_config[name]``, else the top-level field."""
    value = (cfg.get("dflash_config") or {}).get(name, cfg.get(name))
    if value is None:
        raise ModelLoadError(f"{where}/config.json: missing field dflash_config.{name} (not a DFlash2 / selector checkpoint)")
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ModelLoadError(f"{where}/config.json: dflash_config.{name} must be an integer >= 1 (got {value!r})")
    return value


def read_selector_tensors(directory: Path, shapes: dict) -> dict:
    """The ``candidate_selector.*`` tensors of every shard (``model.`` prefix dropped; an HF-style
    ``...codebook.weight`` read as the bare ``...codebook``), checked against ``shapes``."""
    tensors = {}
    for name, t in load_state_dict(directory, aliases={"model.": ""}, claims=SelectorCorrector.claims).items():
        for book in CODEBOOKS:
            if name == f"{PREFIX}{book}.weight":
                name = PREFIX + book
        tensors[name] = t
    missing = sorted(set(shapes) - set(tensors))
    if missing:
        raise ModelLoadError(f"{directory}: missing selector tensor(s) {', '.join(missing)}")
    extra = sorted(set(tensors) - set(shapes))
    if extra:
        raise ModelLoadError(f"{directory}: unexpected selector tensor(s) {', '.join(extra)}")
    for k, shape in shapes.items():
        if tuple(tensors[k].shape) != tuple(shape):
            dims = "[selector_rank, hidden_size]" if k.endswith("hidden_projection.weight") else "[vocab_size, selector_rank]"
            raise IncompatibleError(f"{directory}: {k} has shape {list(tensors[k].shape)}, expected {list(shape)} = {dims} "
                                    "(the drafter's hidden_size, the target's vocab_size, config.json's selector_rank)")
    return tensors


def load_selector(id_or_path: str, vocab_size: int, hidden_size: int) -> CandidateSelector:
    directory = resolve_dir(id_or_path)
    cfg = read_config(directory)
    rank, top_k = field(cfg, "selector_rank", str(directory)), field(cfg, "selector_top_k", str(directory))
    if top_k > vocab_size:
        raise IncompatibleError(f"{directory}/config.json: dflash_config.selector_top_k {top_k} is larger than the "
                                f"vocabulary ({vocab_size})")
    if "vocab_size" in cfg and int(cfg["vocab_size"]) != vocab_size:
        raise IncompatibleError(f"{directory}/config.json: vocab_size {cfg['vocab_size']} != the target's {vocab_size}")
    if "hidden_size" in cfg and int(cfg["hidden_size"]) != hidden_size:
        raise IncompatibleError(f"{directory}/config.json: hidden_size {cfg['hidden_size']} != the drafter's hidden_size "
                                f"{hidden_size} (the selector projects its hidden states)")
    with torch.device("meta"):
        shapes = expected_shapes(CandidateSelector(vocab_size, hidden_size, rank, top_k))
    tensors = read_selector_tensors(directory, shapes)
    head = CandidateSelector(vocab_size, hidden_size, rank, top_k)
    head.load_state_dict({k[len(PREFIX):]: v.float() for k, v in tensors.items()})
    return head


def fresh_selector(config: Dict[str, Any], vocab_size: int, hidden_size: int, seed: int = 0) -> CandidateSelector:
    c = {**CONFIG_FIELDS, **config}
    top_k = int(c["selector_top_k"])
    if top_k > vocab_size:
        raise IncompatibleError(f"corrector.options.config.selector_top_k {top_k} is larger than the vocabulary "
                                f"({vocab_size})")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = CandidateSelector(vocab_size, hidden_size, int(c["selector_rank"]), top_k)
        for p in head.parameters():
            torch.nn.init.normal_(p, std=float(c["initializer_range"]))
        if c["init"] == "zero":  # the bilinear term starts at 0: a fresh selector keeps the base ranking
            torch.nn.init.zeros_(head.successor_codebook)
    return head
