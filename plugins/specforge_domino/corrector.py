"""Domino as a SpecForge Corrector (Domino paper section 4; reference-implementations.md section 2).

Works on any drafter with ``parallel = True`` (DFlash, DFlare, third-party ones): it reads the
block's per-position ``hidden`` states and ``base_logits`` and samples the block causally:

    S = 0;  prev = anchor
    for i in 0 .. k-1:
        S = GRU(E[prev], S)                                   # state after the realised prefix
        logits_i = base_i            if i < P  (pure_draft_prefix_len)
                 = base_i + W2 SiLU(W1 [H_i ; S])   otherwise
        prev = argmax(logits_i) at T=0, else a sample of warp(logits_i)

and reports q_i = warp(logits_i) so the verifier's speculative sampling stays exact at T>0.
At T=0 a fused path (Triton kernels, optionally one CUDA graph for the whole rollout) gives
the same tokens; on CPU it falls back to the PyTorch reference with a log line.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from specforge_core.checkpoint import check_keys, load_state_dict, read_config, resolve_dir
from specforge_core.errors import IncompatibleError, ModelLoadError, RecipeError
from specforge_core.interfaces import Corrector, DraftBlock
from specforge_core.sampling import Sampler

from .head import DominoArch, DominoHead

log = logging.getLogger("specforge.domino")
Tensor = torch.Tensor
PROJECTOR_TYPES = ("domino", "causal_v5")  # causal_v5: the older name of the same head
KEY_ALIASES = {"logit_head.": "", "model.": ""}  # older checkpoints nest the head under logit_head.
OWN_PREFIXES = ("prefix_gru.", "embed_proj.")  # the head's keys (head.py)


@dataclass
class DominoOptions:
    # a fresh head when no Domino checkpoint is given: gru_hidden_dim (1024), emb_dim (256),
    # pure_draft_prefix_len (1), initializer_range (0.02)
    config: Optional[Dict[str, Any]] = None
    init_seed: int = 0
    backend: str = "auto"  # auto | torch | triton | cuda_graph  (fused paths: T=0 only)
    exact_topk: int = 0  # >0: T=0 variant reading only the base top-k rows of W2 (exact, see fast.py)

    def __post_init__(self):
        if self.backend not in ("auto", "torch", "triton", "cuda_graph"):
            raise RecipeError(f"corrector.options.backend must be auto, torch, triton or cuda_graph (got '{self.backend}')")
        if self.exact_topk < 0:
            raise RecipeError(f"corrector.options.exact_topk must be >= 0 (got {self.exact_topk})")


class DominoCorrector(Corrector):
    """Domino: a GRU over the realised draft tokens + a low-rank logit correction."""

    Options = DominoOptions

    def __init__(self, options: DominoOptions, checkpoint: Optional[str] = None):
        super().__init__(options, checkpoint)
        if checkpoint is not None and options.config is not None:
            raise RecipeError("corrector: give corrector.checkpoint or corrector.options.config, not both")
        self.head: Optional[DominoHead] = None
        self.drafter_hidden_size: Optional[int] = None  # from compatible_with (the drafter's documented attributes)
        self.drafter_checkpoint: Optional[str] = None
        self._fast = None

    # ---- set-up -------------------------------------------------------------------------------
    @classmethod
    def claims(cls, key: str) -> bool:
        """The head's keys in a shared checkpoint directory (published Domino layout; older ones nest
        them under ``logit_head.`` / ``model.``)."""
        for old in KEY_ALIASES:
            if key.startswith(old):
                key = key[len(old):]
                break
        return key.startswith(OWN_PREFIXES)

    def bind(self, target) -> None:
        self.embed = target.adapter.embed_tokens
        source = self.weights_source(self.options.config is not None, (
            "corrector domino needs weights: corrector.checkpoint, a Domino checkpoint as drafter.checkpoint, "
            "or corrector.options.config for a fresh (untrained) head"))
        if source is not None:
            head = load_head(source, target)
        else:
            head = fresh_head(target, self.options.config, self.options.init_seed)
        H = self.drafter_hidden_size
        if H is not None and H != head.arch.hidden_size:
            raise IncompatibleError(f"Domino head expects drafter hidden states of size {head.arch.hidden_size}, "
                                    f"the drafter's are {H}")
        self.head = head.to(device=target.device, dtype=target.dtype)
        self._fast = None

    # ---- the Corrector API --------------------------------------------------------------------
    def init_state(self, block: DraftBlock) -> dict:
        b = block.hidden.shape[0]
        state = block.hidden.new_zeros(b, self.head.arch.gru_hidden_dim)
        return {"S": state, "hidden": block.hidden, "base": block.logits()}

    def step(self, state: dict, i: int, prev_token: Tensor) -> "tuple[Tensor, dict]":
        return self.step_on(state, i, prev_token, state["base"][:, i])

    def step_on(self, state: dict, i: int, prev_token: Tensor, logits: Tensor) -> "tuple[Tensor, dict]":
        """``step`` on ``logits [b, V]`` (the previous corrector's, in a stack) instead of base row ``i``."""
        # pure (interfaces.Corrector): the GRU state after prev_token goes into a NEW dict; the
        # caller's state is untouched, so a tree can step several children from it
        S = self.head.gru_cell(self.embed(prev_token).to(state["S"].dtype), state["S"])  # [b, G]
        logits = logits.float()  # [b, V]
        if i >= self.head.arch.pure_draft_prefix_len:
            logits = logits + self.head.correction(state["hidden"][:, i], S).float()
        return logits, {**state, "S": S}

    @torch.inference_mode()
    def correct(self, block: DraftBlock, sampler: Sampler) -> "tuple[Tensor, Optional[Tensor]]":
        if sampler.greedy:
            fast = self._fast_path(block.hidden)
            if fast is not None:
                return fast.rollout(block.hidden, block.logits(), block.anchor), None
        return super().correct(block, sampler)

    def _fast_path(self, hidden: Tensor):
        """The fused T=0 rollout for this device, or None (reference path)."""
        if self._fast is not None:
            return self._fast if self._fast is not False else None
        backend = self.options.backend
        self._fast = False
        if backend == "torch":
            return None
        if backend == "cuda_graph" and hidden.device.type != "cuda":
            raise RecipeError(f"corrector.options.backend=cuda_graph needs a CUDA device; this run is on "
                              f"{hidden.device.type} (use backend=auto)")
        if backend == "auto" and hidden.device.type != "cuda":
            log.info("Domino: no CUDA device, using the PyTorch reference rollout (the fused Triton / "
                     "CUDA-graph paths need a GPU)")
            return None
        try:
            from .fast import CudaGraphRollout, FusedRollout
            from .kernels import triton_available
        except ImportError as e:  # triton not installed
            if backend != "auto":
                raise RecipeError(f"corrector.options.backend={backend} needs Triton: {e}") from None
            log.info("Domino: Triton unavailable (%s); using the PyTorch reference rollout", e)
            return None
        if not triton_available(hidden.device):
            raise RecipeError(f"corrector.options.backend={backend} cannot run on {hidden.device.type} here "
                              "(CUDA, or TRITON_INTERPRET=1 for testing on CPU)")
        use_graph = backend in ("auto", "cuda_graph") and hidden.device.type == "cuda"
        self._fast = _FastRollout(FusedRollout(self.head, self.embed.weight), CudaGraphRollout if use_graph else None,
                                  self.options.exact_topk)
        return self._fast

    # ---- training -----------------------------------------------------------------------------
    def training_module(self) -> torch.nn.Module:
        return self.head

    def training_forward(self, block: DraftBlock, teacher_tokens: Tensor) -> Tensor:
        prev = torch.cat([block.anchor[:, None], teacher_tokens[:, :-1]], 1)  # token before each position
        return self.head.teacher_forced(block.hidden, block.logits(), self.embed(prev).to(block.hidden.dtype))

    def checkpoint_tensors(self) -> dict:
        return dict(self.head.state_dict())

    def checkpoint_config(self) -> dict:
        a = self.head.arch
        return {"emb_dim": a.emb_dim, "dflash_config": {
            "projector_type": "domino", "emb_dim": a.emb_dim, "gru_hidden_dim": a.gru_hidden_dim,
            "pure_draft_prefix_len": a.pure_draft_prefix_len}}

    def load_weights(self, directory) -> None:
        tensors = _head_tensors(Path(directory), self.head.expected_shapes())
        dtype = next(self.head.parameters()).dtype
        self.head.load_state_dict({k: v.to(dtype) for k, v in tensors.items()})


def head_arch_from_config(cfg: dict, where: str) -> DominoArch:
    d = cfg.get("dflash_config") or {}
    kind = d.get("projector_type")
    if kind not in PROJECTOR_TYPES:
        raise ModelLoadError(f"{where}: not a Domino checkpoint (dflash_config.projector_type is {kind!r}, "
                             f"expected one of {', '.join(PROJECTOR_TYPES)})")
    for unsupported in ("use_bias_gate", "use_bias_norm", "use_hidden_proj"):
        if d.get(unsupported):
            raise ModelLoadError(f"{where}: Domino variant with {unsupported}=true is not supported")
    try:
        return DominoArch(hidden_size=int(cfg["hidden_size"]), vocab_size=int(cfg["vocab_size"]),
                          gru_hidden_dim=int(d.get("gru_hidden_dim", 1024)),
                          emb_dim=int(d.get("emb_dim", cfg.get("emb_dim", 256))),
                          pure_draft_prefix_len=int(d.get("pure_draft_prefix_len", 1)))
    except KeyError as e:
        raise ModelLoadError(f"{where}/config.json: missing field {e.args[0]}") from None


def _head_tensors(directory: Path, shapes: dict) -> dict:
    mine = load_state_dict(directory, None, KEY_ALIASES, claims=DominoCorrector.claims)
    check_keys(mine, shapes, str(directory))
    return mine


def load_head(id_or_path: str, target) -> DominoHead:
    directory = resolve_dir(id_or_path)
    arch = head_arch_from_config(read_config(directory), str(directory))
    check_head_against_target(arch, target, str(directory))
    with torch.device("meta"):
        shapes = DominoHead(arch).expected_shapes()
    head = DominoHead(arch)
    head.load_state_dict(_head_tensors(directory, shapes))
    return head


def fresh_head(target, config: Dict[str, Any], seed: int = 0) -> DominoHead:
    c = dict(config)
    std = float(c.pop("initializer_range", 0.02))
    try:
        arch = DominoArch(hidden_size=target.hidden_size, vocab_size=target.vocab_size, **c)
    except TypeError as e:
        raise RecipeError(f"corrector.options.config: {e}") from None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = DominoHead(arch)
        for p in head.parameters():
            torch.nn.init.normal_(p, std=std)
        # start as "no correction": W2 = 0, so a fresh head leaves its drafter unchanged
        torch.nn.init.zeros_(head.embed_proj[2].weight)
    return head


def check_head_against_target(arch: DominoArch, target, where: str) -> None:
    if arch.hidden_size != target.hidden_size:
        raise IncompatibleError(f"{where}: Domino hidden_size {arch.hidden_size} != target hidden_size {target.hidden_size}")
    if arch.vocab_size != target.vocab_size:
        raise IncompatibleError(f"{where}: Domino vocab_size {arch.vocab_size} != target vocab_size {target.vocab_size}")


class _FastRollout:
    """T=0 rollout on the fused kernels: one CUDA graph per (batch, block length) when graphs are
    on (blocks are shorter near the end of the token budget), top-k restricted if asked."""

    def __init__(self, fused, graph_cls, topk: int):
        self.fused, self.graph_cls, self.topk = fused, graph_cls, topk
        self.graphs: dict = {}
        self.fallbacks = 0  # (row, step) pairs where the top-k certificate failed (T=0 exact fallback)

    def rollout(self, hidden: Tensor, base_logits: Tensor, anchor: Tensor) -> Tensor:
        if self.graph_cls is not None:
            key = (hidden.shape[0], hidden.shape[1])
            graph = self.graphs.get(key)
            if graph is None:
                graph = self.graphs[key] = self.graph_cls(self.fused, key[0], key[1], hidden.device,
                                                          k_cand=self.topk or None,
                                                          hidden_dtype=hidden.dtype, logits_dtype=base_logits.dtype)
            return graph.rollout(hidden, base_logits, anchor)
        if self.topk:
            tokens, fallbacks = self.fused.topk_rollout(hidden, base_logits, anchor, self.topk)
            self.fallbacks += int(fallbacks)  # one sync per block, after the loop
            return tokens
        return self.fused.rollout(hidden, base_logits, anchor)
