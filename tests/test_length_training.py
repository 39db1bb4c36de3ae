"""``specforge train`` with ``training.component: length_policy`` (issue 15): the confidence head
learns from the engine's own T=0 decoding of the training prompts, resumably, and loads back."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny import tiny_qwen3_config

from specforge_confidence.head import load_head
from specforge_core.build import build_pipeline
from specforge_core.errors import RecipeError
from specforge_core.recipe import load_recipe
from specforge_core.training.length_policy import load_collection, save_collection
from specforge_core.training.run import train

DATA = Path(__file__).resolve().parents[1] / "recipes" / "data"


def recipe(tmp_path, *overrides):
    base = {"target": {"config": tiny_qwen3_config(vocab=260), "init_seed": 3, "tokenizer": "bytes", "device": "cpu",
                       "num_threads": 1},
            "drafter": {"name": "dflash", "block_size": 4,
                        "options": {"config": {"num_hidden_layers": 1, "initializer_range": 0.5}}},
            "verifier": {"length": "confidence"},
            "training": {"component": "length_policy", "output_dir": str(tmp_path / "run"),
                         "data": {"prompts": str(DATA / "tiny_train.jsonl"), "limit": 10, "regen_max_new_tokens": 24},
                         "eval_prompts": str(DATA / "tiny_eval.jsonl"), "eval_limit": 3, "eval_max_new_tokens": 16,
                         "epochs": 4, "batch_size": 8, "lr": 0.05, "save_every": 5, "warmup_ratio": 0.0}}
    return load_recipe(None, list(overrides), base=base)


def test_trains_the_confidence_head_from_engine_decoding(tmp_path):
    metrics = train(recipe(tmp_path), progress=False)
    assert metrics["examples"] > 20
    export = Path(metrics["export_dir"])
    head = load_head(export)  # the published keys, loadable by the policy
    # the head learned the base rate of the drafter's acceptances (a BCE-trained bias): its mean
    # prediction on the collected blocks is close to the observed positive rate
    cache = next((tmp_path / "run" / "data").glob("length-examples-*.safetensors"))
    examples = load_collection(cache)[1]
    hidden = torch.cat([e["hidden"][: min(e["accepted"] + 1, len(e["hidden"]))] for e in examples])
    labels = torch.cat([(torch.arange(min(e["accepted"] + 1, len(e["hidden"]))) < e["accepted"]).float()
                        for e in examples])
    with torch.no_grad():
        pred = torch.sigmoid(head(hidden)).mean()
    assert abs(float(pred) - float(labels.mean())) < 0.15, (float(pred), float(labels.mean()))
    assert "eval_heldout_loss" in metrics
    # the trained head drives inference
    pipe = build_pipeline(recipe(tmp_path, f"verifier.length_options.head={export}"))
    res = pipe.generator.generate(torch.tensor([[98, 108, 117, 101, 32, 99, 97, 116]]), 12)
    assert res.tokens == pipe.target.greedy_reference(torch.tensor([[98, 108, 117, 101, 32, 99, 97, 116]]), 12)[0].tolist()


def test_collection_resumes_and_is_reused(tmp_path):
    train(recipe(tmp_path, "training.epochs=1"), progress=False)
    cache = next((tmp_path / "run" / "data").glob("length-examples-*.safetensors"))
    stamp = cache.stat().st_mtime_ns
    done, examples = load_collection(cache)
    assert done == 10
    # a half-finished collection (as after a kill) continues where it stopped
    save_collection(cache, 5, examples[:1])
    train(recipe(tmp_path, "training.epochs=1", f"training.output_dir={tmp_path / 'run2'}",
                 f"training.data.cache_dir={tmp_path / 'run' / 'data'}"), progress=False)
    again, _ = load_collection(cache)
    assert again == 10 and cache.stat().st_mtime_ns != stamp


def test_a_policy_with_nothing_to_train_is_refused(tmp_path):
    with pytest.raises(RecipeError, match="cannot train verifier.length 'fixed'"):
        train(recipe(tmp_path, "verifier.length=fixed"), progress=False)


def test_a_checkpoint_on_other_data_is_not_resumed(tmp_path):
    # one batch per epoch either way, so only the collected data differs between the two runs
    same = ["training.batch_size=100000", "training.save_every=1", "training.max_steps=4"]
    train(recipe(tmp_path, *same, "training.max_steps=2"), progress=False)
    with pytest.raises(RecipeError, match="collected data"):
        train(recipe(tmp_path, *same, "training.data.limit=9"), progress=False)
