"""A small, resumable trainer for drafters and correctors.

* AdamW, cosine schedule with linear warmup (transformers' ``get_cosine_schedule_with_warmup``),
  gradient clipping, gradient accumulation, bf16 autocast on GPU / fp32 on CPU.
* Data order is a pure function of ``(seed, epoch)`` and anchor sampling of
  ``(seed, step, rank, micro-batch)``, so a run resumed from a checkpoint replays exactly the
  steps an uninterrupted run would: no step is lost or repeated.
* Checkpoints ``output_dir/checkpoints/step-XXXXXXXX/`` are written atomically (a temporary
  directory renamed into place): the model in its published layout, the optimizer state
  (safetensors), and ``trainer_state.json`` (step, scheduler, RNG, data position). The latest
  complete one is picked up automatically on the next run.
* ``torchrun --nproc_per_node=N``: each rank takes its share of every global batch; gradients
  are averaged with ``all_reduce`` before each optimizer step. (Hand-written rather than
  ``DistributedDataParallel`` because the loss is computed inside the plugin, which calls its
  own module - DDP needs the forward to go through its wrapper.)
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.distributed as dist

from ..checkpoint import atomic_write_dir

Tensor = torch.Tensor


@dataclass
class TrainerConfig:
    output_dir: str
    lr: float = 6e-4
    weight_decay: float = 0.0
    warmup_ratio: float = 0.04
    max_grad_norm: float = 1.0
    epochs: int = 1
    max_steps: Optional[int] = None
    batch_size: int = 1  # sequences per micro-batch per rank
    grad_accum: int = 1
    save_every: int = 100  # optimizer steps; 0 = only at the end
    keep_last: int = 2
    eval_every: int = 0  # optimizer steps; 0 = only at the end
    seed: int = 0
    progress: bool = True


def world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed(device: torch.device) -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


class Trainer:
    """Trains ``module`` (the trainable parameters) with ``loss_fn(batch, generator) -> dict``
    where ``dict["loss"]`` is the scalar to minimise and the rest are metrics for the log."""

    def __init__(self, cfg: TrainerConfig, module: torch.nn.Module, num_examples: int,
                 make_batch: Callable[[list[int]], dict], loss_fn: Callable[[dict, torch.Generator], dict],
                 save_model: Callable[[Path], None], load_model: Callable[[Path], None],
                 evaluate: Optional[Callable[[], dict]] = None, device: torch.device = torch.device("cpu")):
        if cfg.keep_last < 1:
            from ..errors import RecipeError

            raise RecipeError(f"training.keep_last must be >= 1 (got {cfg.keep_last})")
        self.cfg, self.module, self.device = cfg, module, device
        self.load_model = load_model
        self.make_batch, self.loss_fn, self.save_model, self.evaluate = make_batch, loss_fn, save_model, evaluate
        self.rank, self.world = world()
        self.num_examples = num_examples
        self.global_batch = cfg.batch_size * cfg.grad_accum * self.world
        self.steps_per_epoch = max(1, math.ceil(num_examples / self.global_batch))
        self.total_steps = cfg.max_steps or cfg.epochs * self.steps_per_epoch
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        from transformers import get_cosine_schedule_with_warmup

        self.scheduler = get_cosine_schedule_with_warmup(
            self.optimizer, int(cfg.warmup_ratio * self.total_steps), self.total_steps)
        self.step = 0
        self.out = Path(cfg.output_dir)
        self.ckpt_root = self.out / "checkpoints"

    # ---- data order ---------------------------------------------------------------------------
    def indices(self, step: int) -> list[list[int]]:
        """This rank's micro-batches (example indices) for optimizer step ``step``."""
        epoch, within = divmod(step, self.steps_per_epoch)
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + epoch)
        perm = torch.randperm(self.num_examples, generator=g)
        pos = within * self.global_batch + torch.arange(self.global_batch)
        chosen = perm[pos % self.num_examples].view(self.cfg.grad_accum, self.world, self.cfg.batch_size)
        return [chosen[m, self.rank].tolist() for m in range(self.cfg.grad_accum)]

    def generator(self, step: int, micro: int) -> torch.Generator:
        return torch.Generator().manual_seed(((self.cfg.seed * 7919 + step) * 131 + self.rank) * 31 + micro)

    # ---- loop -------------------------------------------------------------------------------
    def train(self) -> dict:
        self.resume()
        if self.world > 1:  # identical start on every rank
            for p in self.module.parameters():
                dist.broadcast(p.data, 0)
        bar = None
        if self.cfg.progress and self.rank == 0:
            from tqdm import tqdm

            bar = tqdm(total=self.total_steps, initial=self.step, desc="train", unit="step")
        last: dict = {}
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda" else contextlib.nullcontext()
        self.module.train()
        while self.step < self.total_steps:
            t0 = time.perf_counter()
            self.optimizer.zero_grad(set_to_none=True)
            sums: dict[str, float] = {}
            for micro, idx in enumerate(self.indices(self.step)):
                batch = self.make_batch(idx)
                with autocast:
                    out = self.loss_fn(batch, self.generator(self.step, micro))
                (out["loss"] / self.cfg.grad_accum).backward()
                for k, v in out.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach() if torch.is_tensor(v) else v) / self.cfg.grad_accum
            if self.world > 1:
                for p in self.params:
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
                    dist.all_reduce(p.grad)
                    p.grad /= self.world
            grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.max_grad_norm)
            self.optimizer.step()
            self.scheduler.step()
            self.step += 1
            last = {"step": self.step, **sums, "grad_norm": float(grad_norm), "lr": self.scheduler.get_last_lr()[0],
                    "step_s": time.perf_counter() - t0}
            if bar is not None:
                bar.set_postfix(loss=f"{sums.get('loss', 0):.3f}", acc=f"{sums.get('accuracy', 0):.3f}",
                                accept=f"{sums.get('accept_len', 0):.2f}")
                bar.update(1)
            done = self.step >= self.total_steps
            if self.evaluate is not None and ((self.cfg.eval_every and self.step % self.cfg.eval_every == 0) or done):
                self.module.eval()
                last.update({f"eval_{k}": v for k, v in self.evaluate().items()})
                self.module.train()
                if bar is not None:
                    bar.write(f"step {self.step}: " + ", ".join(f"{k} {v:.3f}" for k, v in last.items() if k.startswith("eval_")))
            self.log(last)
            if (self.cfg.save_every and self.step % self.cfg.save_every == 0) or done:
                self.save()
        if bar is not None:
            bar.close()
        self.module.eval()
        return last

    def log(self, row: dict) -> None:
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            with open(self.out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")

    # ---- checkpoints ---------------------------------------------------------------------------
    def param_checksums(self) -> list[float]:
        """One checksum of all trainable parameters per rank (they must agree)."""
        local = torch.stack([p.detach().double().sum() for p in self.params]).sum().reshape(1).to(self.device)
        if self.world == 1:
            return [float(local)]
        gathered = [torch.zeros_like(local) for _ in range(self.world)]
        dist.all_gather(gathered, local)
        return [float(g) for g in gathered]

    def save(self) -> None:
        self.checksums = self.param_checksums()
        if len(set(self.checksums)) > 1:
            raise RuntimeError(f"ranks out of sync at step {self.step}: parameter checksums {self.checksums}")
        if self.world > 1:
            dist.barrier()
        if self.rank == 0:
            atomic_write_dir(self.ckpt_root / f"step-{self.step:08d}", self._write_state)
            for old in sorted(self.ckpt_root.glob("step-*"))[: -self.cfg.keep_last]:
                shutil.rmtree(old, ignore_errors=True)
        if self.world > 1:
            dist.barrier()

    def _write_state(self, d: Path) -> None:
        from safetensors.torch import save_file

        self.save_model(d / "model")
        opt = self.optimizer.state_dict()
        tensors = {f"state.{i}.{k}": v.detach().cpu().contiguous()
                   for i, st in opt["state"].items() for k, v in st.items() if torch.is_tensor(v)}
        tensors["torch_rng"] = torch.get_rng_state()
        save_file(tensors, str(d / "optimizer.safetensors"))
        state = {
            "step": self.step, "total_steps": self.total_steps, "steps_per_epoch": self.steps_per_epoch,
            "param_groups": opt["param_groups"], "scheduler": self.scheduler.state_dict(),
            "python_rng": _jsonable(random.getstate()), "world_size": self.world,
            "rank_param_checksums": self.checksums,
        }
        (d / "trainer_state.json").write_text(json.dumps(state, default=_json_default))

    def latest_checkpoint(self) -> Optional[Path]:
        done = [p for p in self.ckpt_root.glob("step-*") if (p / "trainer_state.json").is_file()]
        return max(done, key=lambda p: p.name) if done else None

    def resume(self) -> None:
        ckpt = self.latest_checkpoint()
        if ckpt is None:
            return
        from safetensors.torch import load_file

        state = json.loads((ckpt / "trainer_state.json").read_text())
        if state["steps_per_epoch"] != self.steps_per_epoch:
            from ..errors import InputError

            raise InputError(f"{ckpt}: written with {state['steps_per_epoch']} steps per epoch, this run has "
                             f"{self.steps_per_epoch} (data, batch size or world size changed); use a new output_dir")
        self.load_model(ckpt / "model")
        tensors = load_file(str(ckpt / "optimizer.safetensors"))
        opt_state: dict = {}
        for k, v in tensors.items():
            if k.startswith("state."):
                _, i, name = k.split(".", 2)
                opt_state.setdefault(int(i), {})[name] = v.to(self.device) if name != "step" else v
        self.optimizer.load_state_dict({"state": opt_state, "param_groups": state["param_groups"]})
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(tensors["torch_rng"])
        random.setstate(_from_jsonable(state["python_rng"]))
        self.step = int(state["step"])
        if self.rank == 0:
            print(f"resuming from {ckpt} (step {self.step}/{self.total_steps})", flush=True)


def _json_default(o):
    if torch.is_tensor(o):
        return o.tolist()
    return str(o)


def _jsonable(x):
    return [x[0], list(x[1]), x[2]]


def _from_jsonable(x):
    return (x[0], tuple(x[1]), x[2])
