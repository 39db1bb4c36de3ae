"""`specforge train` on the tiny recipe: it raises tau, resumes exactly after kill -9,
runs data-parallel (DDP) and sharded (FSDP) under torchrun (gloo), and caches the
regenerated data."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from specforge_core.recipe import load_recipe
from specforge_core.training.run import train
from tiny import eval_tau

ROOT = Path(__file__).resolve().parents[1]
RECIPE = str(ROOT / "recipes" / "train_dflash_tiny.yaml")
ENV = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")


def tau_of(overrides: list[str]) -> float:
    return eval_tau(RECIPE, overrides)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("trained") / "run"
    metrics = train(load_recipe(RECIPE, [f"training.output_dir={out}"]), progress=False)
    return out, metrics


def test_training_raises_tau_and_caches_data(trained_run, tmp_path):
    out, metrics = trained_run
    trained = tau_of([f"drafter.checkpoint={out / 'final'}", "drafter.options.config=null"])
    untrained = tau_of([])
    assert untrained < 1.1  # random drafter: essentially nothing accepted
    assert trained > untrained + 0.25, (trained, untrained)
    assert abs(metrics["eval_tau"] - trained) < 1e-9  # the trainer's own eval says the same
    # exported in the published layout, at the requested dtype
    cfg = json.loads((out / "final" / "config.json").read_text())
    assert cfg["dflash_config"]["target_layer_ids"] == [0, 1] and cfg["block_size"] == 8
    # the regenerated data is cached: a second run (new output dir, same cache) skips regeneration
    cache = list((out / "data").glob("regen-*.safetensors"))
    assert len(cache) == 1
    stamp = cache[0].stat().st_mtime_ns
    r2 = load_recipe(RECIPE, [f"training.output_dir={tmp_path / 'run2'}", f"training.data.cache_dir={out / 'data'}",
                              "training.max_steps=2"])
    train(r2, progress=False)
    assert cache[0].stat().st_mtime_ns == stamp
    assert not (tmp_path / "run2" / "data").exists()


def test_offline_features_train_like_online(trained_run, tmp_path):
    """features=offline caches the target's context features once and trains on them:
    the same steps give the same weights as online capture (up to float noise)."""
    out, _ = trained_run
    common = [f"training.data.cache_dir={out / 'data'}", "training.max_steps=5"]
    train(load_recipe(RECIPE, [f"training.output_dir={tmp_path / 'on'}", *common]), progress=False)
    train(load_recipe(RECIPE, [f"training.output_dir={tmp_path / 'off'}", "training.features=offline", *common]),
          progress=False)
    cached = list((out / "data").glob("features-*"))
    n_prompts = len((ROOT / "recipes" / "data" / "tiny_train.jsonl").read_text().splitlines())
    assert len(cached) == 1 and len(list(cached[0].glob("*.safetensors"))) == n_prompts
    a = load_file(str(tmp_path / "on" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "off" / "final" / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    assert any(not torch.equal(a[k], load_file(str(out / "final" / "model.safetensors"))[k]) for k in a)


def test_residual_sampling_accepts_more_than_matching(trained_run):
    """At T>0 the trained drafter's drafts go through speculative sampling with its own q,
    which accepts more than the reference loop's "sample the target and match" rule."""
    from specforge_core.build import build_pipeline, load_prompts

    out, _ = trained_run
    taus = {}
    for rule in ("residual", "match"):
        r = load_recipe(RECIPE, [f"drafter.checkpoint={out / 'final'}", "drafter.options.config=null",
                                 "sampling.temperature=1.0", f"verifier.options.rule={rule}"])
        pipe = build_pipeline(r)
        cycles = accepted = 0
        for seed in range(3):
            for p in load_prompts(r):
                res = pipe.generator.generate(pipe.encode(p.text), 48, pipe.sampling(seed), pipe.stop_token_ids())
                cycles += len(res.cycles)
                accepted += sum(c.num_accepted for c in res.cycles)
        taus[rule] = 1 + accepted / cycles
    assert taus["residual"] > taus["match"] + 0.05, taus


def test_domino_head_raises_tau_over_the_same_dflash(trained_run, tmp_path):
    """recipes/train_domino_tiny.yaml: a Domino head trained on the frozen tiny DFlash drafter
    (teacher forcing + base-anchored curriculum) raises tau over that drafter alone."""
    out, metrics = trained_run
    dom = tmp_path / "domino"
    recipe = str(ROOT / "recipes" / "train_domino_tiny.yaml")
    r = load_recipe(recipe, [f"drafter.checkpoint={out / 'final'}", f"training.output_dir={dom}",
                             f"training.data.cache_dir={out / 'data'}"])
    dm = train(r, progress=False)
    assert dm["lambda_base"] < 0.01  # the curriculum decayed to (almost) 0 by the end
    # the frozen backbone is unchanged: the exported backbone keys equal the DFlash checkpoint's
    a, b = load_file(str(out / "final" / "model.safetensors")), load_file(str(dom / "final" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert {k for k in b if k not in a} == {"prefix_gru.weight_ih_l0", "prefix_gru.weight_hh_l0",
                                            "embed_proj.0.weight", "embed_proj.2.weight"}
    # the exported checkpoint alone gives DFlash + Domino (published Domino layout)
    from specforge_core.build import load_target
    from specforge_core.training.run import make_evaluator

    r2 = load_recipe(recipe, [f"drafter.checkpoint={dom / 'final'}", "corrector.options.config=null"])
    target = load_target(r2.cfg.target)
    d = r2.drafter_cls(r2.drafter_options, block_size=8, checkpoint=str(dom / "final"))
    c = r2.corrector_cls(r2.corrector_options)
    c.compatible_with(d)
    d.bind(target)
    c.bind(target)
    target.capture(d.context_layers)
    with_domino = make_evaluator(r2, target, d, c)()["tau"]
    assert abs(with_domino - dm["eval_tau"]) < 1e-9
    assert with_domino > metrics["eval_tau"] + 0.08, (with_domino, metrics["eval_tau"])


def _run_train(out: Path, *extra: str, **popen) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "specforge_core.cli", "train", RECIPE, f"training.output_dir={out}",
           "training.max_steps=240", "training.save_every=10", "training.keep_last=3", "--no-progress", *extra]
    return subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def test_kill_9_then_resume_is_exact(tmp_path):
    """An uninterrupted run and a run killed with SIGKILL then restarted end with bit-identical
    weights, optimizer state and step count: no step lost, none repeated."""
    full, broken = tmp_path / "full", tmp_path / "broken"
    # share the regenerated data so both runs see identical inputs (and skip regenerating twice)
    p = _run_train(full)
    assert p.wait(timeout=600) == 0, p.stderr.read()
    data = f"training.data.cache_dir={full / 'data'}"

    p = _run_train(broken, data)
    deadline = time.time() + 300
    while not list((broken / "checkpoints").glob("step-00000050")) and time.time() < deadline:
        time.sleep(0.01)
    p.send_signal(signal.SIGKILL)
    assert p.wait(timeout=60) == -signal.SIGKILL
    steps_done = max(int(d.name.split("-")[1]) for d in (broken / "checkpoints").glob("step-*")
                     if (d / "trainer_state.json").exists())
    assert 50 <= steps_done < 240  # killed mid-run, after at least one checkpoint
    assert not (broken / "final").exists()

    p = _run_train(broken, data)
    stdout, stderr = p.communicate(timeout=600)
    assert p.returncode == 0, stderr
    assert f"resuming from {broken / 'checkpoints'}" in stdout
    a = load_file(str(full / "final" / "model.safetensors"))
    b = load_file(str(broken / "final" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    oa = load_file(str(full / "checkpoints" / "step-00000240" / "optimizer.safetensors"))
    ob = load_file(str(broken / "checkpoints" / "step-00000240" / "optimizer.safetensors"))
    assert all(torch.equal(oa[k], ob[k]) for k in oa if k != "torch_rng")
    # every step is logged once: the rows the killed run wrote past its checkpoint were dropped
    steps = [json.loads(l)["step"] for l in (broken / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 241))


def _torchrun(out: Path, port: int, *overrides: str) -> subprocess.CompletedProcess:
    """The tiny recipe on 2 CPU processes (gloo), 6 steps, a checkpoint every 3."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
           "-m", "specforge_core.cli", "train", RECIPE, f"training.output_dir={out}", "training.max_steps=6",
           "training.save_every=3", "training.batch_size=2", "--no-progress", *overrides]
    p = subprocess.run(cmd, env=dict(ENV, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return p


def _state(out: Path, step: int) -> dict:
    return json.loads((out / "checkpoints" / f"step-{step:08d}" / "trainer_state.json").read_text())


@pytest.mark.skipif(sys.platform != "linux", reason="torchrun + gloo on localhost")
def test_torchrun_two_processes_stay_in_sync(tmp_path):
    out = tmp_path / "ddp"
    _torchrun(out, 29533)
    for step in (3, 6):
        state = _state(out, step)
        assert state["world_size"] == 2 and state["parallelism"] == "ddp"
        sums = state["rank_param_checksums"]
        assert len(sums) == 2 and sums[0] == sums[1]
        assert state["rank_param_numel"][0] == state["rank_param_numel"][1]  # every rank holds all weights
    assert (out / "final" / "model.safetensors").is_file()


@pytest.mark.skipif(sys.platform != "linux", reason="torchrun + gloo on localhost")
def test_fsdp_shards_the_weights_matches_ddp_and_resumes(tmp_path):
    import shutil

    ddp, fsdp = tmp_path / "ddp", tmp_path / "fsdp"
    _torchrun(ddp, 29534, "training.parallelism=ddp")
    _torchrun(fsdp, 29535, "training.parallelism=fsdp")
    full = _state(ddp, 6)["rank_param_numel"][0]
    for step in (3, 6):
        state = _state(fsdp, step)
        assert state["parallelism"] == "fsdp"
        assert state["rank_param_checksums"][0] == state["rank_param_checksums"][1]
        held = state["rank_param_numel"]  # each rank holds its shard, the shards make up the model
        assert max(held) < full and sum(held) == full
    # the same optimisation as DDP: same weights and Adam state up to float summation order
    for f in ("final/model.safetensors", "checkpoints/step-00000006/optimizer.safetensors"):
        a, b = load_file(str(ddp / f)), load_file(str(fsdp / f))
        assert a.keys() == b.keys()
        for k in a:
            if k != "torch_rng":
                torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6)
    # resume under FSDP: drop the last checkpoint and the export, rerun -> continues from step 3
    uninterrupted = load_file(str(fsdp / "final" / "model.safetensors"))
    shutil.rmtree(fsdp / "checkpoints" / "step-00000006")
    shutil.rmtree(fsdp / "final")
    p = _torchrun(fsdp, 29536, "training.parallelism=fsdp")
    assert f"resuming from {fsdp / 'checkpoints' / 'step-00000003'}" in p.stdout
    resumed = load_file(str(fsdp / "final" / "model.safetensors"))
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in uninterrupted)
