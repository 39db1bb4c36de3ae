"""``specforge train RECIPE``: recipe -> frozen target + trainable drafter + regenerated data
-> Trainer -> exported weights in the drafter's published layout."""

from __future__ import annotations

from pathlib import Path
import torch
import torch.distributed as dist

from ..build import load_prompts, load_target
from ..errors import RecipeError
from ..recipe import ResolvedRecipe, resolve_path
from ..sampling import SamplingParams
from ..scheduler import SpeculativeGenerator
from .data import RegenConfig, cache_features, cache_key, collate, load_features, read_prompts, regenerate
from .trainer import Trainer, TrainerConfig, init_distributed, world

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def build_drafter_for_training(resolved: ResolvedRecipe, target):
    cfg = resolved.cfg
    ckpt = cfg.drafter.checkpoint
    drafter = resolved.drafter_cls(resolved.drafter_options, block_size=int(cfg.drafter.block_size),
                                   checkpoint=None if ckpt is None else resolve_path(ckpt, resolved.path))
    drafter.bind(target)
    try:
        module = drafter.training_module()
    except NotImplementedError as e:
        raise RecipeError(f"drafter '{cfg.drafter.name}' cannot be trained: {e}") from None
    module.float().requires_grad_(True)  # fp32 master weights; bf16 autocast on GPU
    return drafter, module


def train(resolved: ResolvedRecipe, registry=None, progress: bool = True) -> dict:
    cfg = resolved.cfg
    tr = cfg.training
    if tr.data.prompts is None:
        raise RecipeError("training.data.prompts is required: a local JSONL file or a Hugging Face dataset id")
    target = load_target(cfg.target, registry)
    init_distributed(target.device)
    rank, world_size = world()
    target.model.requires_grad_(False)
    drafter, module = build_drafter_for_training(resolved, target)
    target.capture(drafter.context_layers)

    out = Path(resolve_path(tr.output_dir, None))
    base = resolved.path.parent if resolved.path else None
    prompts = read_prompts(tr.data.prompts, tr.data.split, tr.data.field, tr.data.limit, base)
    regen = RegenConfig(max_new_tokens=tr.data.regen_max_new_tokens, temperature=tr.data.regen_temperature,
                        max_length=tr.data.max_length, chat_template=cfg.generation.chat_template,
                        system_prompt=cfg.generation.system_prompt, seed=tr.seed)
    cache_dir = Path(tr.data.cache_dir) if tr.data.cache_dir else out / "data"
    target_id = cfg.target.model or f"config:{dict(cfg.target.config)}:seed{cfg.target.init_seed}"
    if rank == 0:
        sequences = regenerate(target, prompts, regen, cache_dir, target_id, progress=progress)
    if world_size > 1:
        dist.barrier()
        if rank != 0:
            sequences = regenerate(target, prompts, regen, cache_dir, target_id, progress=False)
    pad = getattr(target.tokenizer, "pad_token_id", None) or 0
    features_dir = None
    if tr.features == "offline":  # computed once, reused by every epoch and every later run
        layers = "-".join(map(str, drafter.context_layers))
        features_dir = cache_dir / f"features-{cache_key(target_id, prompts, regen)}-L{layers}-{target.dtype}".replace("torch.", "")
        if rank == 0:
            cache_features(target, sequences, features_dir, progress)
        if world_size > 1:
            dist.barrier()

    def make_batch(idx: list[int]) -> dict:
        batch = {k: v.to(target.device) for k, v in collate([sequences[i] for i in idx], pad).items()}
        if features_dir is not None:
            batch["target_hidden"] = load_features(features_dir, idx, batch["input_ids"].shape[1]).to(target.device)
        else:
            batch["target_hidden"] = target.hidden_features(batch["input_ids"], batch["attention_mask"])
        batch["num_anchors"], batch["gamma"] = tr.num_anchors, tr.gamma
        return batch

    def loss_fn(batch: dict, generator: torch.Generator) -> dict:
        batch["generator"] = generator
        return drafter.training_loss(batch)

    evaluate = make_evaluator(resolved, target, drafter, registry) if rank == 0 or world_size == 1 else None
    trainer = Trainer(
        TrainerConfig(output_dir=str(out), lr=tr.lr, weight_decay=tr.weight_decay, warmup_ratio=tr.warmup_ratio,
                      max_grad_norm=tr.max_grad_norm, epochs=tr.epochs, max_steps=tr.max_steps,
                      batch_size=tr.batch_size, grad_accum=tr.grad_accum, save_every=tr.save_every,
                      keep_last=tr.keep_last, eval_every=tr.eval_every, seed=tr.seed, progress=progress),
        module, len(sequences), make_batch, loss_fn,
        save_model=lambda d: drafter.save_pretrained(d, dtype=torch.float32),
        load_model=drafter.load_weights, evaluate=evaluate, device=target.device,
    )
    metrics = trainer.train()
    if rank == 0:
        export = Path(tr.export_dir) if tr.export_dir else out / "final"
        drafter.save_pretrained(export, dtype=DTYPES[tr.export_dtype])
        metrics["export_dir"] = str(export)
    if world_size > 1:
        dist.barrier()
    return metrics


def make_evaluator(resolved: ResolvedRecipe, target, drafter, registry=None):
    """tau of the drafter (with the recipe's verifier, T=0) on held-out prompts."""
    cfg = resolved.cfg
    tr = cfg.training
    if tr.eval_prompts:
        texts = read_prompts(tr.eval_prompts, limit=tr.eval_limit,
                             base_dir=resolved.path.parent if resolved.path else None)
    else:
        texts = [p.text for p in load_prompts(resolved)][: tr.eval_limit]
    if not texts:
        return None
    from .data import prompt_ids

    encoded = [torch.tensor([prompt_ids(target.tokenizer, t, cfg.generation.chat_template,
                                        cfg.generation.system_prompt)]) for t in texts]
    verifier = resolved.verifier_cls(resolved.verifier_options)
    stop = [i for i in [getattr(target.tokenizer, "eos_token_id", None)] if i is not None]

    def evaluate() -> dict:
        gen = SpeculativeGenerator(target, drafter, verifier)
        drafted = accepted = cycles = 0
        for ids in encoded:
            res = gen.generate(ids, tr.eval_max_new_tokens, SamplingParams(), stop)
            cycles += len(res.cycles)
            accepted += sum(c.num_accepted for c in res.cycles)
        return {"tau": 1.0 + accepted / max(cycles, 1)}

    return evaluate
