"""``specforge train RECIPE``: recipe -> frozen target + trainable drafter + regenerated data
-> Trainer -> exported weights in the drafter's published layout."""

from __future__ import annotations

from pathlib import Path
import torch
import torch.distributed as dist

from ..build import bind_parts, drafter_block_size, load_prompts, load_target
from ..errors import RecipeError
from ..recipe import ResolvedRecipe, corrector_members, resolve_path
from ..sampling import SamplingParams
from ..scheduler import SpeculativeGenerator
from .losses import corrector_loss, curriculum_lambda, teacher_topk
from .data import RegenConfig, cache_features, cache_key, cache_teacher, collate, load_features, read_prompts, regenerate
from .fingerprint import target_identity
from .trainer import Trainer, TrainerConfig, init_distributed, world

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def refuse_stack(cfg) -> None:
    """A stacked corrector (``corrector.name: [a, b]``) is not trained (or saved) as one."""
    if corrector_members(cfg) is not None:
        raise RecipeError(f"specforge train does not take a stacked corrector ({' + '.join(corrector_members(cfg))}): "
                          "train the drafter with corrector.name=none, or each member alone (corrector.name: <member>)")


def checkpoint_io(drafter, corrector):
    """``save_model(directory, dtype)`` / ``load_model(directory)`` of the trained parts: one checkpoint
    holds the drafter and, next to its keys, the corrector's (the published Domino layout)."""

    def save_model(directory: Path, dtype=torch.float32) -> None:
        if corrector is None:
            drafter.save_pretrained(directory, dtype=dtype)
        else:
            drafter.save_pretrained(directory, dtype=dtype, extra_tensors=corrector.checkpoint_tensors(),
                                    config_updates=corrector.checkpoint_config())

    def load_model(directory: Path) -> None:
        drafter.load_weights(directory)
        if corrector is not None:
            corrector.load_weights(directory)

    return save_model, load_model


def build_for_training(resolved: ResolvedRecipe, target):
    """Bind the drafter (and corrector) and return the module whose parameters are trained:
    the drafter, the corrector alone (frozen drafter), or both (``training.component``)."""
    cfg = resolved.cfg
    component = cfg.training.component
    refuse_stack(cfg)

    def ckpt(p):
        return None if p is None else resolve_path(p, resolved.path)

    checkpoint = ckpt(cfg.drafter.checkpoint)
    block_size, _ = drafter_block_size(cfg.drafter.block_size, resolved.drafter_cls, checkpoint)  # as inference
    drafter = resolved.drafter_cls(resolved.drafter_options, block_size=block_size, checkpoint=checkpoint)
    corrector = None
    if resolved.corrector_cls is not None:
        corrector = resolved.corrector_cls(resolved.corrector_options, checkpoint=ckpt(cfg.corrector.checkpoint))
    bind_parts(drafter, corrector, target)  # drafter.bind, corrector.compatible_with (once), corrector.bind
    parts = {}
    try:
        if component in ("drafter", "both"):
            parts["drafter"] = drafter.training_module()
        if component in ("corrector", "both"):
            parts["corrector"] = corrector.training_module()
        if component == "corrector":
            drafter.training_module().float().requires_grad_(False)  # frozen backbone
    except NotImplementedError as e:
        raise RecipeError(f"cannot train {component}: {e}") from None
    module = torch.nn.ModuleDict(parts)
    module.float().requires_grad_(True)  # fp32 master weights; bf16 autocast on GPU
    return drafter, corrector, module


def train(resolved: ResolvedRecipe, registry=None, progress: bool = True) -> dict:
    cfg = resolved.cfg
    tr = cfg.training
    if tr.strategy == "draft_opd":  # on-policy distillation from the engine's own rollouts
        from .draft_opd import train_draft_opd

        refuse_stack(cfg)
        return train_draft_opd(resolved, registry, progress)
    if tr.component == "length_policy":  # the verify-length policy (e.g. a confidence head), frozen drafter
        from .length_policy import train_length_policy

        return train_length_policy(resolved, registry, progress)
    if tr.component != "drafter" and cfg.corrector.name == "none":
        raise RecipeError(f"training.component is '{tr.component}' but the recipe has no corrector (corrector.name=none)")
    refuse_stack(cfg)  # before the target loads
    if tr.data.prompts is None:
        raise RecipeError("training.data.prompts is required: a local JSONL file or a Hugging Face dataset id")
    target = load_target(cfg.target, registry)
    init_distributed(target.device)
    rank, world_size = world()
    target.model.requires_grad_(False)
    drafter, corrector, module = build_for_training(resolved, target)
    target.capture(drafter.context_layers)

    out = Path(resolve_path(tr.output_dir, None))
    base = resolved.path.parent if resolved.path else None
    prompts = read_prompts(tr.data.prompts, tr.data.split, tr.data.field, tr.data.limit, base)
    regen = RegenConfig(max_new_tokens=tr.data.regen_max_new_tokens, temperature=tr.data.regen_temperature,
                        max_length=tr.data.max_length, chat_template=cfg.generation.chat_template,
                        system_prompt=cfg.generation.system_prompt, seed=tr.seed,
                        batch_size=tr.data.regen_batch_size, static_cache=tr.data.regen_static_cache)
    cache_dir = Path(tr.data.cache_dir) if tr.data.cache_dir else out / "data"
    target_id = target_identity(target, cfg.target)  # name, GGUF file, weights hash, tokenizer
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
        target_key = cache_key(target_id, [], regen)  # the target and generation settings, not the prompts
        features_dir = cache_dir / f"features-{target_key}-L{layers}-{target.dtype}".replace("torch.", "")
        if rank == 0:
            cache_features(target, sequences, features_dir, progress)
        if world_size > 1:
            dist.barrier()

    kd = tr.loss != "ce" and tr.component == "drafter"  # the drafter distils from the target's distributions
    teacher_dir = None
    if kd and tr.features == "offline":  # the target distribution cache, next to the features
        teacher_dir = cache_dir / f"teacher-{cache_key(target_id, [], regen)}-k{tr.kd_top_k}-T{tr.kd_temperature:g}"
        if rank == 0:
            cache_teacher(target, sequences, teacher_dir, tr.kd_top_k, tr.kd_temperature, progress)
        if world_size > 1:
            dist.barrier()

    def make_batch(idx: list[int]) -> dict:
        seqs = [sequences[i] for i in idx]
        batch = {k: v.to(target.device) for k, v in collate(seqs, pad).items()}
        S = batch["input_ids"].shape[1]
        if features_dir is not None:
            batch["target_hidden"] = load_features(features_dir, seqs, S).to(target.device)
        elif kd:  # one forward gives the features and the distributions
            batch["target_hidden"], logits = target.features_and_logits(batch["input_ids"], batch["attention_mask"])
            batch["teacher_ids"], batch["teacher_logprobs"] = teacher_topk(logits, tr.kd_top_k, tr.kd_temperature)
        else:
            batch["target_hidden"] = target.hidden_features(batch["input_ids"], batch["attention_mask"])
        if kd and teacher_dir is not None:
            batch["teacher_ids"] = load_features(teacher_dir, seqs, S, "teacher_ids").long().to(target.device)
            batch["teacher_logprobs"] = load_features(teacher_dir, seqs, S, "teacher_logprobs").to(target.device)
        batch["num_anchors"], batch["gamma"] = tr.num_anchors, tr.gamma
        batch["loss"], batch["kd_temperature"] = tr.loss if kd else "ce", tr.kd_temperature
        return batch

    def loss_fn(batch: dict, generator: torch.Generator) -> dict:
        batch["generator"] = generator
        if tr.component == "drafter":
            return drafter.training_loss(batch)
        lam = curriculum_lambda(trainer.step / trainer.total_steps, tr.lambda_base_start, tr.lambda_base_decay_ratio)
        return corrector_loss(drafter, corrector, batch, lam, frozen_drafter=tr.component == "corrector")

    save_model, load_model = checkpoint_io(drafter, corrector)
    evaluate = make_evaluator(resolved, target, drafter, corrector) if rank == 0 or world_size == 1 else None
    curriculum = {"training.loss": tr.loss, "training.kd_top_k": tr.kd_top_k, "training.kd_temperature": tr.kd_temperature} \
        if kd else {} if tr.component == "drafter" else {  # lambda_t is a schedule over the steps too
        "training.lambda_base_start": tr.lambda_base_start, "training.lambda_base_decay_ratio": tr.lambda_base_decay_ratio}
    trainer = Trainer(
        TrainerConfig(output_dir=str(out), lr=tr.lr, weight_decay=tr.weight_decay, warmup_ratio=tr.warmup_ratio,
                      max_grad_norm=tr.max_grad_norm, epochs=tr.epochs, max_steps=tr.max_steps,
                      batch_size=tr.batch_size, grad_accum=tr.grad_accum, save_every=tr.save_every,
                      keep_last=tr.keep_last, eval_every=tr.eval_every, seed=tr.seed, progress=progress,
                      parallelism=tr.parallelism, schedule_extra=curriculum),
        module, len(sequences), make_batch, loss_fn,
        save_model=save_model, load_model=load_model, evaluate=evaluate, device=target.device,
    )
    metrics = trainer.train()
    export = Path(tr.export_dir) if tr.export_dir else out / "final"
    with trainer.full_params():  # FSDP: every rank gathers, rank 0 writes
        if rank == 0:
            save_model(export, DTYPES[tr.export_dtype])
            metrics["export_dir"] = str(export)
    trainer.release()
    if world_size > 1:
        dist.barrier()
        dist.destroy_process_group()
    return metrics


def make_evaluator(resolved: ResolvedRecipe, target, drafter, corrector=None):
    """tau of the drafter (+ corrector) with the recipe's verifier, T=0, on held-out prompts."""
    cfg = resolved.cfg
    tr = cfg.training
    if tr.eval_prompts:
        texts = read_prompts(tr.eval_prompts, limit=tr.eval_limit,
                             base_dir=resolved.path.parent if resolved.path else None)
    else:
        texts = [p.text for p in load_prompts(resolved)][: tr.eval_limit]
    if not texts:
        return None
    from ..prompts import encode_prompt

    encoded = [torch.tensor([encode_prompt(target.tokenizer, t, cfg.generation.chat_template,
                                           cfg.generation.system_prompt)]) for t in texts]
    verifier = resolved.verifier_cls(resolved.verifier_options)
    stop = [i for i in [getattr(target.tokenizer, "eos_token_id", None)] if i is not None]

    def evaluate() -> dict:
        gen = SpeculativeGenerator(target, drafter, verifier, corrector)
        accepted = cycles = 0
        for ids in encoded:
            res = gen.generate(ids, tr.eval_max_new_tokens, SamplingParams(), stop)
            cycles += len(res.cycles)
            accepted += sum(c.num_accepted for c in res.cycles)
        return {"tau": 1.0 + accepted / max(cycles, 1)}

    return evaluate
