"""DSpark's Markov head as a SpecForge Corrector (DeepSeek DeepSpec, ``deepspec/modeling/dspark/``).

Works on any drafter with ``parallel = True`` (DFlash, DFlare, third-party ones): it needs the
block's base logits, its anchor and - for the gated head only - the per-position ``hidden``
states. The block is sampled left to right (``sample_block_tokens`` of the reference):

    prev = anchor
    for i in 0 .. k-1:
        logits_i = base_i + bias(prev[, h_i])       # head.py: vanilla or gated bias
        prev = argmax(logits_i) at T=0, else a sample of warp(logits_i)

and reports q_i = warp(logits_i) so the verifier's speculative sampling stays exact at T>0.

Weights: ``corrector.checkpoint`` (a DeepSpec DSpark draft directory, or one written by
``specforge train``), else ``drafter.checkpoint`` (a checkpoint trained here holds the drafter
and the head), else a fresh head from ``corrector.options.config``. Only the ``markov_head.*``
tensors are read; ``config.json`` gives ``markov_rank`` / ``markov_head_type`` (the reference's
field names, ``deepspec/modeling/dspark/qwen3/config.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, NamedTuple, Optional

import torch

from specforge_core.checkpoint import load_state_dict, read_config, resolve_dir
from specforge_core.errors import IncompatibleError, ModelLoadError, RecipeError
from specforge_core.interfaces import Corrector, DraftBlock
from specforge_core.sampling import Sampler

from .head import HEAD_TYPES, PREFIX, MarkovArch, MarkovHead

Tensor = torch.Tensor
INITS = ("zero", "normal")
CONFIG_FIELDS = {"markov_rank": 16, "markov_head_type": "vanilla", "initializer_range": 0.02, "init": "zero"}


@dataclass
class MarkovOptions:
    # a fresh head when no checkpoint is given: markov_rank (16), markov_head_type (vanilla | gated),
    # initializer_range (0.02), init (zero: markov_w2 = 0, the head starts as no correction;
    # normal: every weight normal(0, initializer_range), biases 0, as the reference's post_init)
    config: Optional[Dict[str, Any]] = None
    init_seed: int = 0

    def __post_init__(self):
        if self.config is None:
            return
        c = dict(self.config)
        unknown = sorted(set(c) - set(CONFIG_FIELDS))
        if unknown:
            raise RecipeError(f"corrector.options.config: unknown field(s) {', '.join(unknown)} "
                              f"(markov takes {', '.join(CONFIG_FIELDS)})")
        rank = c.get("markov_rank", CONFIG_FIELDS["markov_rank"])
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise RecipeError(f"corrector.options.config.markov_rank must be an integer >= 1 (got {rank!r})")
        kind = str(c.get("markov_head_type", "vanilla")).lower()
        if kind not in HEAD_TYPES:
            raise RecipeError(f"corrector.options.config.markov_head_type must be vanilla or gated (got {kind!r})")
        if c.get("init", "zero") not in INITS:
            raise RecipeError(f"corrector.options.config.init must be zero or normal (got {c.get('init')!r})")


class MarkovState(NamedTuple):
    """Immutable: ``step`` returns a new one, so a tree can branch many children from one state."""

    base: Tensor  # [b, k, V] the block's base logits
    hidden: Optional[Tensor]  # [b, k, H] (gated) or None
    position: int  # the next block position to correct


class MarkovCorrector(Corrector):
    """DSpark's Markov head: a low-rank previous-token bias on a parallel block's base logits."""

    Options = MarkovOptions

    def __init__(self, options: MarkovOptions, checkpoint: Optional[str] = None):
        super().__init__(options, checkpoint)
        if checkpoint is not None and options.config is not None:
            raise RecipeError("corrector: give corrector.checkpoint or corrector.options.config, not both")
        self.head: Optional[MarkovHead] = None
        self.drafter_hidden_size: Optional[int] = None  # from compatible_with (the drafter's documented attributes)
        self.drafter_checkpoint: Optional[str] = None

    # ---- set-up -------------------------------------------------------------------------------
    @classmethod
    def claims(cls, key: str) -> bool:
        """The head's keys in a shared checkpoint directory (``markov_head.*``, maybe under ``model.``)."""
        name = key[len("model."):] if key.startswith("model.") else key
        return name.startswith(PREFIX)

    def bind(self, target) -> None:
        source = self.weights_source(self.options.config is not None, (
            "corrector markov needs weights: corrector.checkpoint (a DSpark draft directory), a checkpoint trained "
            "with it as drafter.checkpoint, or corrector.options.config for a fresh (untrained) head"))
        hidden_size = self.drafter_hidden_size or target.hidden_size
        if source is not None:
            head = load_head(source, target.vocab_size, hidden_size)
        else:
            head = fresh_head(self.options.config, target.vocab_size, hidden_size, self.options.init_seed)
        H = self.drafter_hidden_size
        if head.arch.gated and H is not None and H != head.arch.hidden_size:
            raise IncompatibleError(f"gated Markov head expects drafter hidden states of size (hidden_size) "
                                    f"{head.arch.hidden_size}, the drafter's are {H}")
        self.head = head.to(device=target.device, dtype=target.dtype).eval()

    # ---- the Corrector API --------------------------------------------------------------------
    def init_state(self, block: DraftBlock) -> MarkovState:
        if self.head.arch.gated and block.hidden is None:
            raise IncompatibleError("the gated Markov head needs the block's hidden states; this drafter's "
                                    "blocks carry none (use markov_head_type vanilla)")
        return MarkovState(block.logits(), block.hidden if self.head.arch.gated else None, 0)

    def step(self, state: MarkovState, i: int, prev_token: Tensor) -> "tuple[Tensor, MarkovState]":
        return self.step_on(state, i, prev_token, state.base[:, i])

    def step_on(self, state: MarkovState, i: int, prev_token: Tensor, logits: Tensor) -> "tuple[Tensor, MarkovState]":
        """``step`` on ``logits [b, V]`` (the previous corrector's, in a stack) instead of base row ``i``."""
        # apply_step_logits of the reference: logits of position i + bias(token realised at i - 1)
        hidden = None if state.hidden is None else state.hidden[:, i]
        logits = self.head.step_logits(logits, prev_token, hidden)  # [b, V] fp32
        return logits, state._replace(position=i + 1)

    @torch.inference_mode()
    def correct(self, block: DraftBlock, sampler: Sampler) -> "tuple[Tensor, Optional[Tensor]]":
        """``sample_block_tokens`` of the reference. T=0: the argmax chain, no q (deterministic
        drafts, as Domino's fused path); T>0: the default per-position sampling, which reports the
        warped corrected q of each position."""
        if not sampler.greedy:
            return super().correct(block, sampler)
        state, prev, tokens = self.init_state(block), block.anchor, []
        for i in range(block.num_tokens):
            logits, state = self.step(state, i, prev)
            prev = logits.argmax(-1)
            tokens.append(prev)
        return torch.stack(tokens, 1), None

    # ---- training -----------------------------------------------------------------------------
    def training_module(self) -> torch.nn.Module:
        return self.head

    def training_forward(self, block: DraftBlock, teacher_tokens: Tensor) -> Tensor:
        """Teacher forcing, as the reference's ``Qwen3DSparkModel.forward``: the previous token of
        position i is the anchor for i = 0, else the ground-truth token i - 1; then
        ``apply_block_logits``. The loss is the trainer's corrector loss (``specforge_core.training.
        losses.corrector_loss``, the one Domino heads train with): DSpark's own loss (``loss.py``:
        0.1 x position-decayed CE + 0.9 x L1(p_draft, p_target)) needs the target's next-token
        distributions at every drafted position, which our training batches do not carry (they hold
        the context layers' features only); its CE term is our ``weighted_ce`` with the same
        ``exp(-k / gamma)`` decay."""
        prev = torch.cat([block.anchor[:, None], teacher_tokens[:, :-1]], 1)  # [n, k]
        hidden = block.hidden if self.head.arch.gated else None
        return self.head.block_logits(block.logits(), prev, hidden)

    def checkpoint_tensors(self) -> dict:
        return {PREFIX + k: v for k, v in self.head.state_dict().items()}

    def checkpoint_config(self) -> dict:
        return {"markov_rank": self.head.arch.markov_rank, "markov_head_type": self.head.arch.markov_head_type}

    def load_weights(self, directory) -> None:
        tensors = read_markov_tensors(Path(directory), self.head.arch.expected_shapes(), self.head.arch)
        dtype = next(self.head.parameters()).dtype
        self.head.load_state_dict({k[len(PREFIX):]: v.to(dtype) for k, v in tensors.items()})


# ---- weights ------------------------------------------------------------------------------------
def arch_from_config(cfg: dict, where: str, vocab_size: int, hidden_size: int) -> MarkovArch:
    """``build_markov_head``'s reading of a DSpark draft config.json, checked against the drafter."""
    if "markov_rank" not in cfg:
        raise ModelLoadError(f"{where}/config.json: no markov_rank field (not a DSpark draft with a Markov head)")
    rank = cfg["markov_rank"]
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
        raise ModelLoadError(f"{where}/config.json: markov_rank must be an integer >= 0 (got {rank!r})")
    if rank == 0:
        raise ModelLoadError(f"{where}/config.json: markov_rank is 0, this draft has no Markov head")
    if "markov_head_type" not in cfg:
        raise ModelLoadError(f"{where}/config.json: markov_head_type is missing (needed when markov_rank > 0)")
    kind = str(cfg["markov_head_type"]).lower()
    if kind not in HEAD_TYPES:
        hint = " (the reference's rnn head carries a state across positions; not implemented)" if kind == "rnn" else ""
        raise ModelLoadError(f"{where}/config.json: markov_head_type {cfg['markov_head_type']!r} is not supported, "
                             f"expected vanilla or gated{hint}")
    if "vocab_size" in cfg and int(cfg["vocab_size"]) != vocab_size:
        raise IncompatibleError(f"{where}/config.json: vocab_size {cfg['vocab_size']} != the drafter's (target's) "
                                f"vocab_size {vocab_size}")
    if kind == "gated" and "hidden_size" in cfg and int(cfg["hidden_size"]) != hidden_size:
        raise IncompatibleError(f"{where}/config.json: hidden_size {cfg['hidden_size']} != the drafter's hidden_size "
                                f"{hidden_size} (the gated head reads its hidden states)")
    return MarkovArch(vocab_size=vocab_size, markov_rank=rank, markov_head_type=kind,
                      hidden_size=hidden_size if kind == "gated" else 0)


def read_markov_tensors(directory: Path, shapes: dict, arch: MarkovArch) -> dict:
    """The ``markov_head.*`` tensors of every ``*.safetensors`` shard (the rest of a DSpark draft -
    backbone, embeddings, confidence head - is never read), checked against ``shapes``."""
    tensors = load_state_dict(directory, aliases={"model.": ""}, claims=MarkovCorrector.claims)
    missing = sorted(set(shapes) - set(tensors))
    if missing:
        raise ModelLoadError(f"{directory}: missing Markov head tensor(s) {', '.join(missing)} "
                             f"(markov_head_type {arch.markov_head_type})")
    extra = sorted(set(tensors) - set(shapes))
    if extra:
        raise ModelLoadError(f"{directory}: unexpected Markov head tensor(s) {', '.join(extra)} "
                             f"for markov_head_type {arch.markov_head_type}")
    dims = {"markov_w1.weight": "[vocab_size, markov_rank]", "markov_w2.weight": "[vocab_size, markov_rank]",
            "gate_proj.weight": "[markov_rank, hidden_size + markov_rank]", "gate_proj.bias": "[markov_rank]"}
    for k, shape in shapes.items():
        if tuple(tensors[k].shape) != tuple(shape):
            raise IncompatibleError(
                f"{directory}: {k} has shape {list(tensors[k].shape)}, expected {list(shape)} = "
                f"{dims[k[len(PREFIX):]]} with vocab_size {arch.vocab_size}, markov_rank {arch.markov_rank}"
                + (f", hidden_size {arch.hidden_size}" if arch.gated else ""))
    return tensors


def load_head(id_or_path: str, vocab_size: int, hidden_size: int) -> MarkovHead:
    directory = resolve_dir(id_or_path)
    arch = arch_from_config(read_config(directory), str(directory), vocab_size, hidden_size)
    tensors = read_markov_tensors(directory, arch.expected_shapes(), arch)
    head = MarkovHead(arch)
    head.load_state_dict({k[len(PREFIX):]: v.float() for k, v in tensors.items()})
    return head


def fresh_head(config: Dict[str, Any], vocab_size: int, hidden_size: int, seed: int = 0) -> MarkovHead:
    c = {**CONFIG_FIELDS, **config}
    kind = str(c["markov_head_type"]).lower()
    arch = MarkovArch(vocab_size=vocab_size, markov_rank=int(c["markov_rank"]), markov_head_type=kind,
                      hidden_size=hidden_size if kind == "gated" else 0)
    std = float(c["initializer_range"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = MarkovHead(arch)
        # the reference's init (Qwen3PreTrainedModel._init_weights via post_init): weights normal(0, std), biases 0
        for name, p in head.named_parameters():
            if name.endswith("bias"):
                torch.nn.init.zeros_(p)
            else:
                torch.nn.init.normal_(p, std=std)
        if c["init"] == "zero":  # start as "no correction": a fresh head leaves its drafter unchanged
            torch.nn.init.zeros_(head.markov_w2.weight)
    return head
