"""Which block size a drafter runs at: the recipe's `drafter.block_size` when it sets one,
else the one its DFlash checkpoint records in config.json, else the default - said in one log
line, and what the built drafter (its `block_size`, its network's `arch.block_size`) uses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_dflash_checkpoint import write_published

from specforge_core.build import build_pipeline, load_prompts
from specforge_core.errors import ModelLoadError
from specforge_core.recipe import DEFAULT_BLOCK_SIZE, load_recipe

SMOKE = str(Path(__file__).resolve().parents[1] / "recipes" / "smoke.yaml")  # tiny target: vocab 320


def checkpoint(tmp_path, **config_fields):
    path = write_published(tmp_path / "ckpt", vocab=320)  # records block_size 4
    cfg = json.loads((path / "config.json").read_text())
    for key, value in config_fields.items():
        if value is None:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    (path / "config.json").write_text(json.dumps(cfg))
    return path


def build(capsys, *overrides):
    pipe = build_pipeline(load_recipe(SMOKE, ["generation.max_new_tokens=20", *overrides]))
    log = [line for line in capsys.readouterr().err.splitlines() if "block_size" in line]
    return pipe, log


def most_drafted(pipe) -> int:
    ids = pipe.encode(load_prompts(pipe.resolved)[0].text)
    return max(c.num_drafted for c in pipe.generator.generate(ids, 20, pipe.sampling()).cycles)


def test_checkpoint_block_size_when_the_recipe_sets_none(tmp_path, capsys):
    ckpt = checkpoint(tmp_path, block_size=6)
    pipe, log = build(capsys, "drafter.name=dflash", f"drafter.checkpoint={ckpt}", "drafter.block_size=null")
    d = pipe.generator.drafter
    assert (d.block_size, d.arch.block_size) == (6, 6)
    assert log == ["specforge: drafter block_size 6 from checkpoint"]
    assert most_drafted(pipe) == 5  # DFlash: bs - 1 drafts per block


def test_explicit_recipe_block_size_overrides_the_checkpoint(tmp_path, capsys):
    ckpt = checkpoint(tmp_path, block_size=6)
    pipe, log = build(capsys, "drafter.name=dflash", f"drafter.checkpoint={ckpt}", "drafter.block_size=3")
    d = pipe.generator.drafter
    assert (d.block_size, d.arch.block_size) == (3, 3)  # training blocks and a re-save follow it too
    assert log == ["specforge: drafter block_size 3 from recipe, checkpoint says 6"]
    assert most_drafted(pipe) == 2


def test_block_size_inside_dflash_config_and_the_default(tmp_path, capsys):
    ckpt = checkpoint(tmp_path, block_size=None)
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["dflash_config"]["block_size"] = 5  # where some Domino releases record it
    (ckpt / "config.json").write_text(json.dumps(cfg))
    pipe, log = build(capsys, "drafter.name=dflash", f"drafter.checkpoint={ckpt}", "drafter.block_size=null")
    assert pipe.generator.drafter.block_size == 5 and log == ["specforge: drafter block_size 5 from checkpoint"]

    pipe, log = build(capsys, "drafter.block_size=null")  # n-gram drafter: no checkpoint
    assert pipe.generator.drafter.block_size == DEFAULT_BLOCK_SIZE
    assert log == [f"specforge: drafter block_size {DEFAULT_BLOCK_SIZE} (default)"]


def test_bad_recorded_block_size_is_named(tmp_path, capsys):
    ckpt = checkpoint(tmp_path, block_size=0)
    with pytest.raises(ModelLoadError, match="block_size must be an integer >= 1"):
        build(capsys, "drafter.name=dflash", f"drafter.checkpoint={ckpt}", "drafter.block_size=null")
