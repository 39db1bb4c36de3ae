"""Draft-OPD: on-policy distillation of a block drafter (``training.strategy: draft_opd``).

Lei et al. 2026, "Draft-OPD: On-Policy Distillation for Speculative Draft Models" (arXiv
2605.29343); the equations below follow the official code (``bingyang-lei/Draft-OPD``: rollout
records in ``sglang-dflash/.../speculative/dflash_info.py``, replay in
``verl/verl/models/transformers/dflash_student.py::_forward_opd``, losses in
``verl/verl/trainer/distillation/losses.py``, its ``run_qwen_gsm8k_forward-ins.sh`` settings).

Rounds. Round ``r`` takes the next ``opd.prompts_per_round`` prompts and

1. **rolls out** with the engine itself - ``SpeculativeGenerator`` with the recipe's drafter
   (+ corrector), chain verifier and the drafter's current weights - so the blocks are the ones
   inference proposes, and the text is the target's greedy text at T = 0 (the reference's rollout
   temperature) or, with ``opd.rollout_temperature > 0``, a sample of the target's distribution
   (speculative sampling is lossless), new text each round. ``on_cycle`` records what
   each verification exposed: the anchor's position, the drafted block, how many drafts were
   accepted, and the target's log-probability of every drafted token (``log_softmax`` of the
   verify logits, T = 1: conditioned on the drafts before it, as the reference records it);
2. **replays** every recorded block from its anchor with the current weights (one parallel block
   forward, ``Drafter.training_blocks`` with the anchors given) on the target's features of the
   rollout text, and trains on two streams (``draft_opd_loss``):

   * response: block offsets ``j = 1 .. a + 1`` (the accepted drafts and the target's correction)
     against the committed token ``y_j`` with p = the target's probability of ``y_j`` (T = 1):
     the binary KL ``p log(p / q) + (1 - p) log((1 - p) / (1 - q))``, q = the drafter's
     probability of ``y_j`` (the reference's forward-KL on the sampled token, top-1);
   * rejected: each rejected draft ``d`` at offset ``j = a + 1 .. n`` with ``r = log p_T(d) - log q(d)``:
     ``exp(r) - r - 1`` (the k3 estimator), weighted ``rejected_decay ** (j - 1)``;

   ``L = (sum_resp + w sum_j decay_j rej_j) / (N_resp + w sum_j decay_j)`` (w = ``rejected_weight``),
   log-probabilities clamped at -10 and per-token losses at +-10 as the reference does.

   ``opd.response_loss: kd`` (ours, not the reference's) replaces the response stream's binary KL by
   the KL to the target's whole top-K distribution at each of those positions (``training.kd_top_k``,
   ``training.kd_temperature``; ``losses.weighted_kd``): the binary KL only moves q(y_j) toward
   p(y_j), so with a flat target (p(y_j) < 1/2) it can push a correct argmax down; the top-K KL
   keeps the target's ranking - the signal that made KD beat CE in supervised training.

With a corrector in the recipe its q is the policy trained: the block's logits are the
corrector's teacher-forced ones (``Corrector.training_forward``) - on the committed tokens for the
response stream, on the drafted ones for the rejected stream - and the drafter learns through it
(``training.component: drafter``), or the drafter and the corrector both (``both``).

``opd.epochs_per_round`` (the reference: 1) replays a round's rollouts that many times, in a fresh
order each pass, before the next round rolls out (verl's ``ppo_epochs``).

Resumable: each round's rollouts are saved (``<output_dir>/rollouts/round-NNNNN.safetensors``,
atomically) before its first step; the trainer's checkpoints do the rest, so a killed run
resumes with the same rollouts, no step lost or repeated. Rollouts are made with the weights at
the round's start, so a resumed run makes the same ones.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from ..checkpoint import save_file_atomic
from ..errors import ModelLoadError, RecipeError
from ..interfaces import Corrector, DraftBlock
from ..sampling import SamplingParams
from ..scheduler import CycleView, SpeculativeGenerator

Tensor = torch.Tensor
LOG_FLOOR, LOSS_CLAMP = -10.0, 10.0  # the reference's clamps (losses.py)


# ---- 1. rollouts --------------------------------------------------------------------------------
def rollout(gen: SpeculativeGenerator, prompt_ids: list[int], max_new: int, stop: list[int],
            sampling: SamplingParams | None = None) -> dict:
    """One generation with the engine (T = 0 unless ``sampling`` says otherwise), recording every
    verification (``on_cycle``).
    Returns ``input_ids [S]``, ``loss_mask [S]`` (the generated tokens), ``anchors [C]`` (position of
    each cycle's anchor), ``accepted [C]``, ``drafted [C, n]`` (-1 padded) and ``drafted_logprob [C, n]``."""
    records = []

    def record(view: CycleView) -> None:
        drafted = view.candidates.tokens[0]  # [n]
        n = int(drafted.shape[0])
        lp = torch.log_softmax(view.target_logits[0, :n].float(), -1).gather(-1, drafted[:, None])[:, 0]
        records.append((view.tokens.shape[1] - 1, view.num_accepted, drafted.cpu(), lp.cpu()))

    gen.on_cycle = record
    try:
        prompt = torch.tensor([prompt_ids])
        out = gen.generate(prompt, max_new, sampling or SamplingParams(), stop)
    finally:
        gen.on_cycle = None
    width = max([len(r[2]) for r in records], default=1) or 1
    drafted = torch.full((len(records), width), -1, dtype=torch.long)
    logprob = torch.zeros(len(records), width)
    for c, (_, _, d, lp) in enumerate(records):
        drafted[c, : len(d)], logprob[c, : len(d)] = d, lp
    ids = torch.cat([prompt[0], torch.tensor(out.tokens, dtype=torch.long)])
    return {"input_ids": ids, "loss_mask": torch.cat([torch.zeros(len(prompt_ids), dtype=torch.long),
                                                      torch.ones(len(out.tokens), dtype=torch.long)]),
            "anchors": torch.tensor([r[0] for r in records], dtype=torch.long),
            "accepted": torch.tensor([r[1] for r in records], dtype=torch.long),
            "drafted": drafted, "drafted_logprob": logprob, "tau": torch.tensor(out.tau)}


def save_round(path: Path, rows: list[dict], meta: dict) -> None:
    tensors = {f"{i}.{k}": v.contiguous() for i, row in enumerate(rows) for k, v in row.items()}
    save_file_atomic(tensors, path, metadata={"meta": json.dumps(meta, sort_keys=True), "n": str(len(rows))})


def load_round(path: Path, meta: dict) -> list[dict]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        stored = f.metadata() or {}
        if stored.get("meta") != json.dumps(meta, sort_keys=True):
            raise ModelLoadError(f"{path}: rollouts made with other settings (prompts, rollout length, target, "
                                 "drafter start); use a new training.output_dir")
        rows = [{} for _ in range(int(stored["n"]))]
        for key in f.keys():
            i, name = key.split(".", 1)
            rows[int(i)][name] = f.get_tensor(key)
    return rows


# ---- 2. replay + loss ---------------------------------------------------------------------------
def replay_batch(rows: list[dict], target, pad: int, teacher_top_k: int = 0, teacher_temperature: float = 1.0) -> dict:
    """The rollouts as a training batch: the target's features and next-token log-probabilities of
    the text, and the recorded anchors (``anchors`` / ``anchor_keep [b, C]``) with their records.
    ``teacher_top_k > 0`` adds the target's top-K next-token distributions (``teacher_ids`` /
    ``teacher_logprobs [b, S, K]``, row t the distribution of token t + 1) for ``response_loss: kd``."""
    b, S = len(rows), max(int(r["input_ids"].shape[0]) for r in rows)
    C = max(int(r["anchors"].shape[0]) for r in rows) or 1
    n = max(int(r["drafted"].shape[1]) for r in rows)
    dev = target.device
    batch = {"input_ids": torch.full((b, S), pad, dtype=torch.long), "loss_mask": torch.zeros(b, S, dtype=torch.long),
             "attention_mask": torch.zeros(b, S, dtype=torch.long), "anchors": torch.zeros(b, C, dtype=torch.long),
             "anchor_keep": torch.zeros(b, C, dtype=torch.bool), "accepted": torch.zeros(b, C, dtype=torch.long),
             "drafted": torch.full((b, C, n), -1, dtype=torch.long), "drafted_logprob": torch.zeros(b, C, n)}
    for i, r in enumerate(rows):
        L, c, w = int(r["input_ids"].shape[0]), int(r["anchors"].shape[0]), int(r["drafted"].shape[1])
        batch["input_ids"][i, :L], batch["loss_mask"][i, :L], batch["attention_mask"][i, :L] = r["input_ids"], r["loss_mask"], 1
        batch["anchors"][i, :c], batch["anchor_keep"][i, :c], batch["accepted"][i, :c] = r["anchors"], True, r["accepted"]
        batch["drafted"][i, :c, :w], batch["drafted_logprob"][i, :c, :w] = r["drafted"], r["drafted_logprob"]
    batch = {k: v.to(dev) for k, v in batch.items()}
    feats, logits = target.features_and_logits(batch["input_ids"], batch["attention_mask"])
    batch["target_hidden"] = feats
    nxt = batch["input_ids"][:, 1:]  # the target's log-prob of each next token of the text, [b, S]
    lp = torch.log_softmax(logits[:, :-1], -1).gather(-1, nxt[..., None])[..., 0]
    batch["target_logprob"] = F.pad(lp, (0, 1))
    if teacher_top_k > 0:
        from .losses import teacher_topk

        batch["teacher_ids"], batch["teacher_logprobs"] = teacher_topk(logits, teacher_top_k, teacher_temperature)
    batch["rollout_tau"] = sum(float(r["tau"]) for r in rows) / b
    return batch


def draft_opd_loss(drafter, corrector, batch: dict, rejected_weight: float, rejected_decay: float,
                   response_loss: str = "binary_kl", kd_temperature: float = 1.0) -> dict:
    """The two streams of the module docstring on the replayed blocks."""
    blocks = drafter.training_blocks(batch)  # the kept anchors in (b, C) order: hidden [m, k, H], labels [m, k]
    keep = batch["anchor_keep"]
    hidden, labels = blocks["hidden"], blocks["labels"]  # labels: the committed text after each anchor
    k = labels.shape[1]  # block offsets 1 .. k; m = labels.shape[0] replayed blocks
    accepted = batch["accepted"][keep]  # [m]
    drafted = batch["drafted"][keep][:, :k]  # [m, <=k]
    d_lp = batch["drafted_logprob"][keep][:, :k]  # [m, <=k] the target's log-prob of each draft
    drafted, d_lp = F.pad(drafted, (0, k - drafted.shape[1]), value=-1), F.pad(d_lp, (0, k - d_lp.shape[1]))
    anchors = batch["anchors"][keep]  # [m] positions
    seq = torch.arange(keep.shape[0], device=keep.device)[:, None].expand_as(keep)[keep]  # [m] sequence of each block
    offs = torch.arange(1, k + 1, device=labels.device)  # block offsets j = 1 .. k
    pos = anchors[:, None] + offs  # [m, k] the text position each offset predicts
    S = batch["input_ids"].shape[1]
    in_text = (pos < S) & (batch["loss_mask"][seq[:, None], pos.clamp_max(S - 1)] > 0)
    p_label = batch["target_logprob"][seq[:, None], (pos - 1).clamp_max(S - 1)].clamp_min(LOG_FLOOR)  # [m, k]
    base = drafter.project_logits(hidden)  # [m, k, V]
    if corrector is None:
        resp_logits = base
        logq_resp = logq_rej = torch.log_softmax(base.float(), -1)
    else:  # the corrected q: teacher-forced on the committed text, and on the drafts
        block = DraftBlock(hidden=hidden, base_logits=base, anchor=batch["input_ids"][seq, anchors])
        resp_logits = corrector.training_forward(block, labels)
        logq_resp = torch.log_softmax(resp_logits.float(), -1)
        forced = torch.where(drafted >= 0, drafted, labels)
        logq_rej = torch.log_softmax(corrector.training_forward(block, forced).float(), -1)
    # response stream: offsets 1 .. a + 1 of the text
    resp = (offs[None] <= accepted[:, None] + 1) & in_text
    lq = logq_resp.gather(-1, labels[..., None])[..., 0].clamp_min(LOG_FLOOR)
    if response_loss == "kd":  # the target's top-K distribution at each position (module docstring)
        from .losses import weighted_kd

        row = (seq[:, None], (pos - 1).clamp_max(S - 1))
        resp_loss = weighted_kd(resp_logits, batch["teacher_ids"][row], batch["teacher_logprobs"][row], resp.float(),
                                kd_temperature) * resp.sum()
    else:  # the reference's binary KL on the committed token
        p, q = p_label.exp(), lq.exp()
        binary_kl = p * (p_label - lq) + (1 - p) * (torch.log1p(-p.clamp_max(1 - 1e-6)) - torch.log1p(-q.clamp_max(1 - 1e-6)))
        resp_loss = (binary_kl.clamp(-LOSS_CLAMP, LOSS_CLAMP) * resp).sum()
    # rejected stream: the drafts at offsets a + 1 .. n
    rej = (offs[None] > accepted[:, None]) & (drafted >= 0)
    lq_d = logq_rej.gather(-1, drafted.clamp_min(0)[..., None])[..., 0].clamp_min(LOG_FLOOR)
    r = d_lp.clamp_min(LOG_FLOOR) - lq_d
    k3 = (r.exp() - r - 1).clamp(-LOSS_CLAMP, LOSS_CLAMP)
    decay = rejected_decay ** (offs.float() - 1)[None].expand_as(k3) * rej
    rej_loss = (k3 * decay).sum()
    norm = resp.sum() + rejected_weight * decay.sum()
    loss = (resp_loss + rejected_weight * rej_loss) / norm.clamp_min(1e-6)
    with torch.no_grad():
        correct = (logq_resp.argmax(-1) == labels) & resp
        first = (offs == 1)[None] & resp
        out = {"loss_response": resp_loss / resp.sum().clamp_min(1), "loss_rejected": rej_loss / decay.sum().clamp_min(1e-6),
               "accuracy": correct.sum() / resp.sum().clamp_min(1),
               "first_accuracy": (correct & first).sum() / first.sum().clamp_min(1),
               "rollout_tau": torch.tensor(batch["rollout_tau"])}
    return {"loss": loss, **out}


# ---- 3. the run ---------------------------------------------------------------------------------
def train_draft_opd(resolved, registry=None, progress: bool = True) -> dict:
    """``specforge train`` with ``training.strategy: draft_opd`` (run.train dispatches here)."""
    from ..build import load_target
    from ..prompts import encode_prompt
    from .data import fit_prompt, read_prompts
    from .fingerprint import target_identity
    from .run import DTYPES, build_for_training, checkpoint_io, make_evaluator, resolve_path
    from .trainer import Trainer, TrainerConfig

    cfg = resolved.cfg
    tr, opd = cfg.training, cfg.training.opd
    if cfg.verifier.name != "chain":
        raise RecipeError(f"training.strategy draft_opd rolls out with the chain verifier (verifier.name: chain, "
                          f"got '{cfg.verifier.name}')")
    if tr.data.prompts is None:
        raise RecipeError("training.data.prompts is required: the prompts to roll out")
    target = load_target(cfg.target, registry)
    target.model.requires_grad_(False)
    drafter, corrector, module = build_for_training(resolved, target)
    if corrector is not None and type(corrector).training_objective is not Corrector.training_objective:
        raise RecipeError(f"training.strategy draft_opd trains through the corrector's logits (training_forward); "
                          f"corrector '{cfg.corrector.name}' has an objective of its own (a re-ranker) and is not supported")
    if not getattr(drafter, "parallel", False):
        raise RecipeError(f"training.strategy draft_opd replays parallel blocks; drafter '{cfg.drafter.name}' is not parallel")
    target.capture(drafter.context_layers)
    out = Path(resolve_path(tr.output_dir, None))
    base = resolved.path.parent if resolved.path else None
    prompts = read_prompts(tr.data.prompts, tr.data.split, tr.data.field, tr.data.limit, base)
    budget = max(1, tr.data.max_length - opd.rollout_max_new_tokens)
    encoded = [fit_prompt(encode_prompt(target.tokenizer, p, cfg.generation.chat_template, cfg.generation.system_prompt),
                          budget)[0] for p in prompts]
    stop = [i for i in [getattr(target.tokenizer, "eos_token_id", None)] if i is not None]
    pad = getattr(target.tokenizer, "pad_token_id", None) or 0
    R = opd.prompts_per_round
    rounds = math.ceil(len(encoded) / R) * tr.epochs
    global_batch = tr.batch_size * tr.grad_accum
    steps_per_round = math.ceil(R * opd.epochs_per_round / global_batch)
    total = tr.max_steps or rounds * steps_per_round
    rounds_run = math.ceil(total / steps_per_round)  # training.max_steps may stop before the prompts run out
    verifier = resolved.verifier_cls(resolved.verifier_options)
    gen = SpeculativeGenerator(target, drafter, verifier, corrector, cfg.drafter.num_speculative_tokens)
    meta_base = {"target": target_identity(target, cfg.target), "drafter": cfg.drafter.checkpoint,
                 "rollout_max_new_tokens": opd.rollout_max_new_tokens, "R": R, "k": cfg.drafter.num_speculative_tokens}
    if opd.rollout_temperature > 0:  # (absent at T = 0: rollouts saved before the option existed stay valid)
        meta_base["rollout_temperature"] = opd.rollout_temperature
    cache: dict = {}

    def round_rows(r: int) -> list[dict]:
        if r in cache:
            return cache[r]
        chosen = [encoded[(r * R + j) % len(encoded)] for j in range(R)]
        meta = {**meta_base, "round": r, "prompts": [sum(ids) * 1_000_003 + len(ids) for ids in chosen]}
        path = out / "rollouts" / f"round-{r:05d}.safetensors"
        if path.is_file():
            rows = load_round(path, meta)
        else:
            was = module.training
            module.eval()
            rows = []
            bar = None
            if progress:
                from tqdm import tqdm

                bar = tqdm(total=R, desc=f"rollouts, round {r + 1}/{rounds_run}", unit="prompt", leave=False)
            for j, ids in enumerate(chosen):  # a sampled rollout's seed is fixed by (seed, round, prompt): resumable
                sampling = SamplingParams(temperature=opd.rollout_temperature, seed=tr.seed * 1_000_003 + r * R + j)
                rows.append(rollout(gen, ids, opd.rollout_max_new_tokens, stop, sampling))
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(tau=f"{sum(float(x['tau']) for x in rows) / len(rows):.3f}")
            if bar is not None:
                bar.close()
            module.train(was)
            save_round(path, rows, meta)
        cache.clear()
        cache[r] = rows
        return rows

    class RoundTrainer(Trainer):
        """Step ``s`` belongs to round ``s // steps_per_round``; its micro-batches are that round's
        rollouts, ``opd.epochs_per_round`` passes each in an order fixed by (seed, round): resuming
        replays the same steps."""

        def indices(self, step: int) -> list[list[int]]:
            r, within = divmod(step, steps_per_round)
            g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + r)
            order = torch.cat([torch.randperm(R, generator=g) for _ in range(opd.epochs_per_round)])  # [E * R]
            pos = within * self.global_batch + torch.arange(self.global_batch)
            chosen = (r * R + order[pos % len(order)]).view(self.cfg.grad_accum, self.world, self.cfg.batch_size)
            return [chosen[m, self.rank].tolist() for m in range(self.cfg.grad_accum)]

    def make_batch(idx: list[int]) -> dict:
        rows = round_rows(idx[0] // R)
        kd = opd.response_loss == "kd"
        batch = replay_batch([rows[i % R] for i in idx], target, pad, tr.kd_top_k if kd else 0, tr.kd_temperature)
        batch["gamma"] = tr.gamma
        return batch

    def loss_fn(batch: dict, generator) -> dict:
        return draft_opd_loss(drafter, corrector, batch, opd.rejected_weight, opd.rejected_decay, opd.response_loss,
                              tr.kd_temperature)

    save_model, load_model = checkpoint_io(drafter, corrector)
    trainer = RoundTrainer(
        TrainerConfig(output_dir=str(out), lr=tr.lr, weight_decay=tr.weight_decay, warmup_ratio=tr.warmup_ratio,
                      max_grad_norm=tr.max_grad_norm, epochs=1, max_steps=total, batch_size=tr.batch_size,
                      grad_accum=tr.grad_accum, save_every=tr.save_every, keep_last=tr.keep_last,
                      eval_every=tr.eval_every, seed=tr.seed, progress=progress,
                      schedule_extra={"training.strategy": "draft_opd", "training.opd": dict(opd)}),
        module, rounds * R, make_batch, loss_fn, save_model=save_model, load_model=load_model,
        evaluate=make_evaluator(resolved, target, drafter, corrector), device=target.device)
    metrics = trainer.train()
    export = Path(tr.export_dir) if tr.export_dir else out / "final"
    save_model(export, DTYPES[tr.export_dtype])
    metrics["export_dir"] = str(export)
    return metrics
