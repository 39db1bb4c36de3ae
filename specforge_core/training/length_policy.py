"""``specforge train`` with ``training.component: length_policy``: train the recipe's verify-length
policy (``verifier.length``, e.g. the confidence head) on a frozen drafter (+ corrector).

The data is the engine's own decoding - the same ``SpeculativeGenerator`` inference runs, with the
recipe's drafter, corrector, verifier and ``drafter.num_speculative_tokens`` - on the training
prompts at T=0, while the policy is ``collecting``: it keeps what it needs from every block and lets
every draft be verified, so every position gets an outcome. ``policy.examples(cycles)`` pairs the two
(for the confidence head: hidden states per block and how many drafts were accepted).

Collection is cached under ``<output_dir>/data``, keyed by the content that decides it (target
identity, drafter / corrector weights, prompts, generation settings), saved every few prompts and
resumed after a kill; training then runs on the generic ``Trainer`` (resumable checkpoints, warm-up
+ cosine schedule, atomic saves), one batch = ``training.batch_size`` cycles.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import torch

from ..build import build_pipeline, load_target
from ..checkpoint import save_file_atomic
from ..errors import RecipeError
from ..prompts import encode_prompt
from ..recipe import ResolvedRecipe, resolve_path
from ..sampling import SamplingParams
from .data import read_prompts
from .fingerprint import target_identity, weights_fingerprint
from .trainer import Trainer, TrainerConfig

SAVE_EVERY_PROMPTS = 8


def train_length_policy(resolved: ResolvedRecipe, registry=None, progress: bool = True) -> dict:
    cfg = resolved.cfg
    tr = cfg.training
    if tr.data.prompts is None:
        raise RecipeError("training.data.prompts is required: a local JSONL file or a Hugging Face dataset id")
    target = load_target(cfg.target, registry)
    target.model.requires_grad_(False)
    pipe = build_pipeline(resolved, registry, target=target)
    gen, policy = pipe.generator, pipe.generator.length_policy
    try:
        module = policy.training_module()
    except NotImplementedError as e:
        raise RecipeError(f"cannot train verifier.length '{cfg.verifier.length}': {e}") from None
    for comp in (gen.drafter, gen.corrector):
        try:
            if comp is not None:
                comp.training_module().requires_grad_(False)  # frozen: only the policy learns
        except NotImplementedError:
            pass
    module.float().requires_grad_(True)

    base = resolved.path.parent if resolved.path else None
    out = Path(resolve_path(tr.output_dir, None))
    prompts = read_prompts(tr.data.prompts, tr.data.split, tr.data.field, tr.data.limit, base)
    stop = [i for i in [getattr(target.tokenizer, "eos_token_id", None)] if i is not None]
    max_new = tr.data.regen_max_new_tokens
    key = _collection_key(target, cfg, gen, prompts, max_new)
    cache = (Path(tr.data.cache_dir) if tr.data.cache_dir else out / "data") / f"length-examples-{key}.safetensors"
    examples = _collect(gen, policy, target, cfg, prompts, max_new, stop, cache, progress)
    if not examples:
        raise RecipeError("the training prompts produced no verified drafts to learn from")
    random.Random(tr.seed).shuffle(examples)

    def make_batch(idx: list[int]) -> dict:
        return {"examples": [examples[i] for i in idx]}

    def loss_fn(batch: dict, generator: torch.Generator) -> dict:
        return policy.training_loss(batch["examples"])

    evaluate = _evaluator(resolved, gen, policy, target, stop)
    trainer = Trainer(
        TrainerConfig(output_dir=str(out), lr=tr.lr, weight_decay=tr.weight_decay, warmup_ratio=tr.warmup_ratio,
                      max_grad_norm=tr.max_grad_norm, epochs=tr.epochs, max_steps=tr.max_steps,
                      batch_size=tr.batch_size, grad_accum=tr.grad_accum, save_every=tr.save_every,
                      keep_last=tr.keep_last, eval_every=tr.eval_every, seed=tr.seed, progress=progress,
                      # a checkpoint of a run on other collected data must not be resumed on this one
                      schedule_extra={"collected data (training.data, drafter, corrector, target)": key}),
        module, len(examples), make_batch, loss_fn,
        save_model=lambda d, dtype=torch.float32: policy.save_pretrained(d), load_model=policy.load_weights,
        evaluate=evaluate, device=target.device)
    metrics = trainer.train()
    export = Path(tr.export_dir) if tr.export_dir else out / "final"
    policy.save_pretrained(export)
    metrics.update({"export_dir": str(export), "examples": len(examples)})
    trainer.release()
    return metrics


def _collection_key(target, cfg, gen, prompts, max_new) -> str:
    def weights(component):
        try:
            return weights_fingerprint(component.training_module())
        except NotImplementedError:  # no weights (e.g. n-gram): its name and options decide it
            return None

    parts = {"target": target_identity(target, cfg.target), "drafter": weights(gen.drafter),
             "corrector": weights(gen.corrector) if gen.corrector else None,
             "options": [dict(cfg.drafter.options), dict(cfg.corrector.options)],
             "method": [cfg.drafter.name, cfg.corrector.name, cfg.verifier.name, dict(cfg.verifier.options)],
             "block": [gen.drafter.block_size, cfg.drafter.num_speculative_tokens],
             "generation": [cfg.generation.chat_template, cfg.generation.system_prompt, max_new],
             "prompts": hashlib.sha256(json.dumps(prompts).encode()).hexdigest()}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _collect(gen, policy, target, cfg, prompts, max_new, stop, cache: Path, progress: bool) -> list:
    """Decode every prompt at T=0 with the policy collecting; resumable (saved every few prompts)."""
    done, examples = load_collection(cache) if cache.is_file() else (0, [])
    if done >= len(prompts):
        return examples
    from tqdm.auto import tqdm

    bar = tqdm(total=len(prompts), initial=done, desc="collecting blocks (engine decode, T=0)", unit="prompt",
               disable=not progress, dynamic_ncols=True)
    accepted = cycles = 0
    policy.collecting(True)
    try:
        for i in range(done, len(prompts)):
            ids = torch.tensor([encode_prompt(target.tokenizer, prompts[i], cfg.generation.chat_template,
                                              cfg.generation.system_prompt)])
            target.check_prompt(ids.shape[1], max_new)
            res = gen.generate(ids, max_new, SamplingParams(), stop)
            examples.extend(policy.examples(res.cycles))
            accepted += sum(c.num_accepted for c in res.cycles)
            cycles += len(res.cycles)
            bar.update(1)
            bar.set_postfix(tau=f"{1 + accepted / max(cycles, 1):.2f}", blocks=len(examples))
            if (i + 1) % SAVE_EVERY_PROMPTS == 0 or i + 1 == len(prompts):
                save_collection(cache, i + 1, examples)
    finally:
        policy.collecting(False)
        bar.close()
    return examples


def save_collection(path: Path, done: int, examples: list) -> None:
    """Atomically, as safetensors (no pickle): each example's tensors under ``"{i}.{key}"``, its other
    (JSON) values and the number of prompts done in the metadata. Examples are the policy's dicts."""
    tensors = {f"{i}.{k}": v.contiguous() for i, ex in enumerate(examples) for k, v in ex.items()
               if isinstance(v, torch.Tensor)}
    plain = [{k: v for k, v in ex.items() if not isinstance(v, torch.Tensor)} for ex in examples]
    save_file_atomic(tensors, path, metadata={"done": str(done), "plain": json.dumps(plain)})


def load_collection(path: Path) -> "tuple[int, list]":
    """``(prompts done, examples)`` from ``save_collection``'s file."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        examples = json.loads(meta["plain"])
        for name in f.keys():
            i, k = name.split(".", 1)
            examples[int(i)][k] = f.get_tensor(name)
    return int(meta["done"]), examples


def _evaluator(resolved, gen, policy, target, stop):
    """The policy's loss / accuracy on held-out prompts (``training.eval_prompts``), collected the same
    way once. (Calibration per position - ECE / AUROC / Brier - is the bench's, on the trained head.)"""
    cfg = resolved.cfg
    tr = cfg.training
    if not tr.eval_prompts:
        return None
    texts = read_prompts(tr.eval_prompts, limit=tr.eval_limit, base_dir=resolved.path.parent if resolved.path else None)
    held_out: list = []

    def evaluate() -> dict:
        if not held_out:
            policy.collecting(True)
            try:
                for t in texts:
                    ids = torch.tensor([encode_prompt(target.tokenizer, t, cfg.generation.chat_template,
                                                      cfg.generation.system_prompt)])
                    res = gen.generate(ids, tr.eval_max_new_tokens, SamplingParams(), stop)
                    held_out.extend(policy.examples(res.cycles))
            finally:
                policy.collecting(False)
        if not held_out:
            return {}
        with torch.no_grad():
            m = policy.training_loss(held_out)
        return {f"heldout_{k}": float(v) for k, v in m.items()}

    return evaluate
