"""A small, resumable trainer for drafters and correctors.

* AdamW, cosine schedule with linear warmup (transformers' ``get_cosine_schedule_with_warmup``),
  gradient clipping, gradient accumulation, bf16 autocast on GPU / fp32 on CPU.
* Data order is a pure function of ``(seed, epoch)`` and anchor sampling of
  ``(seed, step, rank, micro-batch)``, so a run resumed from a checkpoint replays exactly the
  steps an uninterrupted run would: no step is lost or repeated.
* Checkpoints ``output_dir/checkpoints/step-XXXXXXXX/`` are written atomically (a temporary
  directory renamed into place): the model in its published layout, the optimizer state
  (safetensors), and ``trainer_state.json`` (step, scheduler, RNG, data position). The latest
  complete one is picked up automatically on the next run. Resuming truncates ``metrics.jsonl``
  to the checkpoint's step (the killed run logged steps the resumed one does again), and is
  refused when the schedule changed (``schedule()``: total steps, warmup, lr, ...).
* ``torchrun --nproc_per_node=N``: each rank takes its share of every global batch.
  ``parallelism="ddp"``: every rank holds all weights and gradients are averaged with
  ``all_reduce`` before each optimizer step (hand-written: DDP's bucketing buys nothing at
  drafter sizes). ``parallelism="fsdp"``: PyTorch's FSDP2 (``fully_shard``) shards weights,
  gradients and optimizer state over the ranks and gathers the weights for each step. The
  plugin's loss runs as the forward of one wrapper module (``_LossModule``) because FSDP
  gathers a unit's weights in its forward hooks. Checkpoints are the same files either way
  (full weights, full optimizer state), so a run can resume under the other mode.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.distributed as dist
from torch import nn

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
    parallelism: str = "ddp"  # ddp | fsdp (only matters with more than one process)
    # recipe values a schedule over the steps depends on beyond the trainer's own (e.g. the
    # corrector curriculum), by recipe key: saved in each checkpoint, checked on resume
    schedule_extra: dict = field(default_factory=dict)


def world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed(device: torch.device) -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


class _LossModule(nn.Module):
    """The trainable modules and the plugin's loss as one ``nn.Module`` whose forward is the
    loss, so that FSDP's forward/backward hooks see every training step."""

    def __init__(self, trainable: nn.Module, loss_fn: Callable[[dict, torch.Generator], dict]):
        super().__init__()
        self.trainable = trainable
        self.loss_fn = loss_fn

    def forward(self, batch: dict, generator: torch.Generator) -> dict:
        return self.loss_fn(batch, generator)


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
        self.warmup_steps = int(cfg.warmup_ratio * self.total_steps)
        self.loss_module = _LossModule(module, loss_fn)
        self.fsdp = cfg.parallelism == "fsdp" and self.world > 1
        # optimizer-state files number the parameters in this order, whatever the parallelism
        self.param_names = [n for n, p in self.loss_module.named_parameters() if p.requires_grad]
        self.params: list = []  # set by _setup_optimizer (FSDP replaces them with sharded DTensors)
        self.optimizer = self.scheduler = None
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
    def _setup_optimizer(self) -> None:
        from transformers import get_cosine_schedule_with_warmup

        self.params = [p for p in self.loss_module.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        self.scheduler = get_cosine_schedule_with_warmup(
            self.optimizer, self.warmup_steps, self.total_steps)

    def _shard(self) -> None:
        """FSDP2 with the whole trainable module as one unit: weights, gradients and AdamW state
        live sharded over the ranks (16 -> about 8 + 12/N bytes per fp32 parameter at the peak)
        and the weights are gathered for the step. One unit, not one per layer, because
        evaluation and export run the plugin's own modules outside the training forward,
        where a per-layer unit's hooks would start collectives on rank 0 alone."""
        from torch.distributed.fsdp import fully_shard

        fully_shard(self.loss_module)

    @contextlib.contextmanager
    def full_params(self):
        """Inside this block the plugin's modules hold the full trainable weights as plain
        tensors - for saving, checksums and evaluation, which read them directly (state_dict,
        ``module.weight``) rather than through a forward. A no-op without FSDP.

        Under FSDP every rank gathers the full state dict (``get_model_state_dict``, a
        collective) and the sharded parameters are swapped for plain ones until the block
        ends. (Not ``FSDPModule.unshard()``: FSDP's state-dict hook re-shards before
        ``state_dict()``, so a plugin's ``save_pretrained`` would see shards.) Outside a
        forward/backward FSDP keeps every unit sharded, so its hooks leave the swap alone."""
        if not self.fsdp:
            yield
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(self.loss_module, options=StateDictOptions(full_state_dict=True))
        swapped = []
        for prefix, module in self.loss_module.named_modules():
            for name, param in list(module._parameters.items()):
                key = f"{prefix}.{name}" if prefix else name
                if param is not None and key in full:
                    swapped.append((module, name, param))
                    module._parameters[name] = nn.Parameter(full[key], requires_grad=param.requires_grad)
        try:
            yield
        finally:
            for module, name, param in swapped:
                module._parameters[name] = param

    def train(self) -> dict:
        ckpt = self.latest_checkpoint()
        state = self._resume_model(ckpt) if ckpt is not None else None
        if self.world > 1:  # identical start on every rank
            for p in self.module.parameters():
                dist.broadcast(p.data, 0)
        if self.fsdp:
            self._shard()
        self._setup_optimizer()
        if ckpt is not None:
            self._resume_optimizer(ckpt, state)
        if self.rank == 0:
            self._truncate_metrics()
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
            micro_batches = self.indices(self.step)
            for micro, idx in enumerate(micro_batches):
                batch = self.make_batch(idx)
                if self.fsdp:  # reduce-scatter gradients once, after the last micro-batch
                    self.loss_module.set_requires_gradient_sync(micro == len(micro_batches) - 1)
                with autocast:
                    out = self.loss_module(batch, self.generator(self.step, micro))
                (out["loss"] / self.cfg.grad_accum).backward()
                for k, v in out.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach() if torch.is_tensor(v) else v) / self.cfg.grad_accum
            if self.world > 1 and not self.fsdp:
                for p in self.params:
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
                    dist.all_reduce(p.grad)
                    p.grad /= self.world
            grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.max_grad_norm)
            if hasattr(grad_norm, "full_tensor"):  # FSDP: a DTensor
                grad_norm = grad_norm.full_tensor()
            self.optimizer.step()
            self.scheduler.step()
            self.step += 1
            last = {"step": self.step, **sums, "grad_norm": float(grad_norm), "lr": self.scheduler.get_last_lr()[0],
                    "step_s": time.perf_counter() - t0}
            if bar is not None:
                live = {"tau": f"{sums['rollout_tau']:.3f}"} if "rollout_tau" in sums else {  # on-policy: live tau
                    "accept": f"{sums.get('accept_len', 0):.2f}"}
                bar.set_postfix(loss=f"{sums.get('loss', 0):.3f}", acc=f"{sums.get('accuracy', 0):.3f}", **live)
                bar.update(1)
            done = self.step >= self.total_steps
            if (self.cfg.eval_every and self.step % self.cfg.eval_every == 0) or done:
                with self.full_params():  # collective under FSDP: every rank enters, rank 0 evaluates
                    if self.evaluate is not None:
                        self.module.eval()
                        last.update({f"eval_{k}": v for k, v in self.evaluate().items()})
                        self.module.train()
                if bar is not None and self.evaluate is not None:
                    bar.write(f"step {self.step}: " + ", ".join(f"{k} {v:.3f}" for k, v in last.items() if k.startswith("eval_")))
            self.log(last)
            if (self.cfg.save_every and self.step % self.cfg.save_every == 0) or done:
                self.save()
        if bar is not None:
            bar.close()
        self.module.eval()
        return last

    def release(self) -> None:
        """Drop the optimizer (its FSDP state is DTensors bound to the process group) before the
        group is destroyed: left to interpreter teardown, gloo sometimes aborts the process
        ("terminate called without an active exception") after a successful run."""
        self.optimizer = self.scheduler = None
        self.params = []
        import gc

        gc.collect()

    def _truncate_metrics(self) -> None:
        """Keep the ``metrics.jsonl`` rows up to ``self.step`` (the checkpoint resumed from, 0 on
        a fresh start): a killed run logged the steps after its last checkpoint, which this run
        does again. Rewritten atomically (a temporary file renamed into place); a line torn by
        the kill is dropped too."""
        path = self.out / "metrics.jsonl"
        if not path.is_file():
            return
        lines = path.read_text().splitlines()
        keep = []
        for line in lines:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and int(row.get("step", 0)) <= self.step:
                keep.append(line)
        if len(keep) == len(lines):
            return
        tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
        tmp.write_text("".join(line + "\n" for line in keep))
        os.replace(tmp, path)
        print(f"{path}: dropped {len(lines) - len(keep)} rows logged after step {self.step} "
              "(the interrupted run's steps past its last checkpoint)", flush=True)

    def log(self, row: dict) -> None:
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            with open(self.out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")

    # ---- checkpoints ---------------------------------------------------------------------------
    def _all_ranks(self, value: float) -> list[float]:
        local = torch.tensor([value], dtype=torch.float64, device=self.device)
        if self.world == 1:
            return [float(local)]
        gathered = [torch.zeros_like(local) for _ in range(self.world)]
        dist.all_gather(gathered, local)
        return [float(g) for g in gathered]

    def param_checksums(self) -> list[float]:
        """One checksum of all (full) trainable parameters per rank: they must agree."""
        full = [p for p in self.loss_module.parameters() if p.requires_grad]  # plain inside full_params()
        return self._all_ranks(float(torch.stack([p.detach().double().sum() for p in full]).sum()))

    def save(self) -> None:
        opt_tensors, param_groups = self._optimizer_state()  # collective under FSDP, outside full_params
        with self.full_params():
            self.checksums = self.param_checksums()
            if len(set(self.checksums)) > 1:
                raise RuntimeError(f"ranks out of sync at step {self.step}: parameter checksums {self.checksums}")
            # what each rank holds of the trainable weights: all of them (DDP) or a shard (FSDP)
            self.held = self._all_ranks(sum(_local(p).numel() for p in self.params))
            if self.world > 1:
                dist.barrier()
            if self.rank == 0:
                atomic_write_dir(self.ckpt_root / f"step-{self.step:08d}",
                                 lambda d: self._write_state(d, opt_tensors, param_groups))
                for old in sorted(self.ckpt_root.glob("step-*"))[: -self.cfg.keep_last]:
                    shutil.rmtree(old, ignore_errors=True)
            if self.world > 1:
                dist.barrier()

    def _optimizer_state(self) -> "tuple[dict, list]":
        """The full optimizer state as safetensors entries ``state.<i>.<name>`` (parameter ``i``
        of ``param_names``) and the param groups - the same file under 1 process, DDP or FSDP.
        Under FSDP only rank 0 receives it."""
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

            full = get_optimizer_state_dict(self.loss_module, self.optimizer,
                                            options=StateDictOptions(full_state_dict=True, cpu_offload=True))
            index = {name: i for i, name in enumerate(self.param_names)}
            state = {index[name]: st for name, st in full.get("state", {}).items()}
            groups = [{**g, "params": [index[n] for n in g["params"]]} for g in full.get("param_groups", [])]
        else:
            opt = self.optimizer.state_dict()
            state, groups = opt["state"], opt["param_groups"]
        tensors = {f"state.{i}.{k}": v.detach().cpu().contiguous()
                   for i, st in state.items() for k, v in st.items() if torch.is_tensor(v)}
        return tensors, groups

    def _write_state(self, d: Path, opt_tensors: dict, param_groups: list) -> None:
        from safetensors.torch import save_file

        self.save_model(d / "model")
        save_file({**opt_tensors, "torch_rng": torch.get_rng_state()}, str(d / "optimizer.safetensors"))
        state = {
            "step": self.step, "total_steps": self.total_steps, "steps_per_epoch": self.steps_per_epoch,
            "param_groups": param_groups, "scheduler": self.scheduler.state_dict(),
            "python_rng": _jsonable(random.getstate()), "world_size": self.world,
            "parallelism": "fsdp" if self.fsdp else "ddp",
            "rank_param_checksums": self.checksums, "rank_param_numel": self.held,
            "schedule": self.schedule(),
        }
        (d / "trainer_state.json").write_text(json.dumps(state, default=_json_default))

    def schedule(self) -> dict:
        """What the learning-rate schedule (and a curriculum over the steps) depends on, by recipe
        key. The scheduler's state in a checkpoint holds only its position and the optimizer's
        param groups their lr, so resuming under other values would silently change (or ignore)
        them for the rest of the run: ``_resume_model`` refuses it."""
        return {"total steps (training.max_steps / epochs)": self.total_steps,
                "warmup steps (training.warmup_ratio)": self.warmup_steps,
                "training.lr": self.cfg.lr, "training.weight_decay": self.cfg.weight_decay,
                **self.cfg.schedule_extra}

    def latest_checkpoint(self) -> Optional[Path]:
        done = [p for p in self.ckpt_root.glob("step-*") if (p / "trainer_state.json").is_file()]
        return max(done, key=lambda p: p.name) if done else None

    def _resume_model(self, ckpt: Path) -> dict:
        """Load the weights (before any sharding) and return the checkpoint's trainer state."""
        from ..errors import InputError, RecipeError

        state = json.loads((ckpt / "trainer_state.json").read_text())
        if state["steps_per_epoch"] != self.steps_per_epoch:
            raise InputError(f"{ckpt}: written with {state['steps_per_epoch']} steps per epoch, this run has "
                             f"{self.steps_per_epoch} (data, batch size or world size changed); use a new output_dir")
        saved = state.get("schedule") or {"total steps (training.max_steps / epochs)": state["total_steps"]}
        changed = [f"{k} {saved[k]} -> {v}" for k, v in self.schedule().items() if k in saved and saved[k] != v]
        if changed:
            raise RecipeError(f"{ckpt}: cannot resume, the schedule changed since this checkpoint ({'; '.join(changed)}); "
                              "rerun with the checkpoint's values, or start a new output_dir from its weights "
                              f"(drafter.checkpoint={ckpt / 'model'})")
        self.load_model(ckpt / "model")
        return state

    def _resume_optimizer(self, ckpt: Path, state: dict) -> None:
        from safetensors.torch import load_file

        tensors = load_file(str(ckpt / "optimizer.safetensors"))
        opt_state: dict = {}
        for k, v in tensors.items():
            if k.startswith("state."):
                _, i, name = k.split(".", 2)
                opt_state.setdefault(int(i), {})[name] = v.to(self.device) if name != "step" else v
        if self.fsdp:  # a full state keyed by parameter name; FSDP keeps each rank's shard
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            names = self.param_names
            full = {"state": {names[i]: st for i, st in opt_state.items()},
                    "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]]}
            # strict=False: a parameter that never received a gradient has no Adam state yet
            set_optimizer_state_dict(self.loss_module, self.optimizer, optim_state_dict=full,
                                     options=StateDictOptions(full_state_dict=True, strict=False))
        else:
            self.optimizer.load_state_dict({"state": opt_state, "param_groups": state["param_groups"]})
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(tensors["torch_rng"])
        random.setstate(_from_jsonable(state["python_rng"]))
        self.step = int(state["step"])
        if self.rank == 0:
            print(f"resuming from {ckpt} (step {self.step}/{self.total_steps})", flush=True)


def _local(p: Tensor) -> Tensor:
    return p.to_local() if hasattr(p, "to_local") else p  # an FSDP shard is a DTensor


def _json_default(o):
    if torch.is_tensor(o):
        return o.tolist()
    return str(o)


def _jsonable(x):
    return [x[0], list(x[1]), x[2]]


def _from_jsonable(x):
    return (x[0], tuple(x[1]), x[2])
