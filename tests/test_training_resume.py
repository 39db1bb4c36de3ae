"""Resuming the Trainer: metrics.jsonl holds each step once (the steps a killed run logged
after its last checkpoint are dropped), and a resume under another schedule (max_steps,
lr, the corrector curriculum, ...) is refused with one line naming the old and new values.

The trainer runs a real (small) regression model: a linear layer fitting a fixed linear map."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from specforge_core.errors import RecipeError
from specforge_core.training.trainer import Trainer, TrainerConfig

N = 16  # examples
X = torch.randn(N, 8, generator=torch.Generator().manual_seed(0))
Y = X @ torch.randn(8, 4, generator=torch.Generator().manual_seed(1))


class Killed(Exception):
    """Stands in for SIGKILL: the run stops in the middle of a step, without cleaning up."""


def make_trainer(out: Path, kill_at_step: int = -1, **cfg) -> Trainer:
    model = torch.nn.Linear(8, 4)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.zero_()
    state = {"trainer": None}

    def make_batch(idx: list[int]) -> dict:
        if state["trainer"].step == kill_at_step:
            raise Killed
        return {"x": X[idx], "y": Y[idx]}

    def loss_fn(batch: dict, generator: torch.Generator) -> dict:
        return {"loss": torch.nn.functional.mse_loss(model(batch["x"]), batch["y"])}

    def save_model(d: Path, dtype=torch.float32) -> None:
        d.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(d / "model.safetensors"))

    def load_model(d: Path) -> None:
        model.load_state_dict(load_file(str(d / "model.safetensors")))

    config = dict(output_dir=str(out), lr=0.05, warmup_ratio=0.25, max_steps=12, batch_size=2, save_every=4,
                  keep_last=3, progress=False)
    config.update(cfg)
    trainer = Trainer(TrainerConfig(**config), model, N, make_batch, loss_fn, save_model, load_model)
    state["trainer"] = trainer
    return trainer


def logged_steps(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_resumed_run_logs_every_step_once_and_matches_an_uninterrupted_one(tmp_path, capsys):
    full = make_trainer(tmp_path / "full")
    full.train()
    broken = tmp_path / "broken"
    with pytest.raises(Killed):
        make_trainer(broken, kill_at_step=6).train()  # checkpoint at step 4, steps 5 and 6 logged
    with open(broken / "metrics.jsonl", "a") as f:
        f.write('{"step": 7, "lo')  # a row torn by the kill
    resumed = make_trainer(broken)
    resumed.train()
    out = capsys.readouterr().out
    assert "resuming from" in out and "dropped 3 rows logged after step 4" in out
    assert logged_steps(broken) == list(range(1, 13))
    assert logged_steps(tmp_path / "full") == list(range(1, 13))
    rows_full = (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()
    rows_resumed = (broken / "metrics.jsonl").read_text().splitlines()
    for a, b in zip(rows_full, rows_resumed):  # the same losses and learning rates, step by step
        ra, rb = json.loads(a), json.loads(b)
        assert (ra["step"], ra["loss"], ra["lr"]) == (rb["step"], rb["loss"], rb["lr"])
    a, b = full.module.state_dict(), resumed.module.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not list(broken.glob("metrics.jsonl.tmp-*"))  # rewritten atomically, nothing left over


@pytest.mark.parametrize("change, message", [
    ({"max_steps": 20}, "total steps (training.max_steps / epochs) 12 -> 20"),
    ({"lr": 0.1}, "training.lr 0.05 -> 0.1"),
    ({"warmup_ratio": 0.5}, "warmup steps (training.warmup_ratio) 3 -> 6"),
    ({"schedule_extra": {"training.lambda_base_start": 0.5}}, "training.lambda_base_start 1.0 -> 0.5"),
])
def test_resume_under_another_schedule_is_refused(tmp_path, change, message):
    out = tmp_path / "run"
    extra = {"schedule_extra": {"training.lambda_base_start": 1.0}}
    with pytest.raises(Killed):
        make_trainer(out, kill_at_step=5, **extra).train()
    with pytest.raises(RecipeError) as err:
        make_trainer(out, **{**extra, **change}).train()
    text = str(err.value)
    assert message in text and "\n" not in text and "step-00000004" in text
    assert logged_steps(out) == [1, 2, 3, 4, 5]  # refused before anything was touched
    make_trainer(out, **extra).train()  # the old values resume
    assert logged_steps(out) == list(range(1, 13))
