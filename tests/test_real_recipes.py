"""The Qwen3 recipes: schema-valid and resolvable offline without loading weights."""

from __future__ import annotations

from pathlib import Path

import pytest

from specforge_core.cli import main
from specforge_core.errors import ModelLoadError
from specforge_core.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("size", ["4b", "8b"])
def test_domino_recipe_schema(size, monkeypatch):
    import transformers

    def no_load(*a, **k):
        raise AssertionError("validation must not load a model")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_load)
    r = load_recipe(str(ROOT / "recipes" / f"domino_qwen3_{size}.yaml"))
    up = size.upper()
    assert r.cfg.target.model == f"Qwen/Qwen3-{up}"
    assert r.cfg.drafter.checkpoint == f"Huang2020/Qwen3-{up}-Domino-b16" and r.cfg.corrector.checkpoint is None
    assert r.corrector_cls.__name__ == "DominoCorrector"
    assert (r.cfg.drafter.name, r.cfg.corrector.name, r.cfg.drafter.block_size) == ("dflash", "domino", 16)
    assert r.method == "dflash+domino+chain"


def test_dry_run_prints_plan_offline(capsys):
    code = main(["run", str(ROOT / "recipes" / "domino_qwen3_8b.yaml"), "--dry-run"])
    out = capsys.readouterr()
    assert "method: dflash+domino+chain" in out.out
    assert "target: Qwen/Qwen3-8B" in out.out
    assert code == 0 and "corrector: domino (specforge_domino.corrector.DominoCorrector" in out.out


def test_hub_target_without_network_names_the_id(tmp_path):
    from specforge_core.build import load_target

    r = load_recipe(str(ROOT / "recipes" / "smoke.yaml"),
                    ["target.config=null", "target.model=Qwen/Qwen3-8B", "target.tokenizer=null"])
    with pytest.raises(ModelLoadError, match="Qwen/Qwen3-8B"):
        load_target(r.cfg.target)


@pytest.mark.parametrize("name,drafter,layers", [("train_dflash_qwen3_8b", "dflash", 5), ("train_dflare_qwen3_4b", "dflare", 7)])
def test_training_recipes_carry_the_published_setup(name, drafter, layers):
    r = load_recipe(str(ROOT / "recipes" / f"{name}.yaml"))
    tr = r.cfg.training
    assert r.cfg.drafter.name == drafter and r.cfg.drafter.block_size == 16
    assert r.drafter_options.config["num_hidden_layers"] == layers
    assert (tr.lr, tr.warmup_ratio, tr.max_grad_norm, tr.gamma, tr.num_anchors, tr.data.max_length) == \
        (6e-4, 0.04, 1.0, 7.0, 512, 3072)
    assert 3 <= tr.epochs <= 6


def test_domino_paper_training_setup():
    r = load_recipe(str(ROOT / "recipes" / "train_domino_qwen3_8b.yaml"))
    c, tr = r.corrector_options.config, r.cfg.training
    assert (c["gru_hidden_dim"], c["emb_dim"], c["pure_draft_prefix_len"]) == (1024, 256, 1)
    assert r.drafter_options.config["shift_label"] is True and tr.component == "both"
    assert (tr.lambda_base_start, tr.lambda_base_decay_ratio, tr.num_anchors, tr.epochs) == (1.0, 1.0, 256, 3)
    assert (tr.lr, tr.warmup_ratio, tr.max_grad_norm, tr.gamma, tr.data.max_length, tr.batch_size) == \
        (6e-4, 0.04, 1.0, 7.0, 3072, 2)


@pytest.mark.parametrize("name", ["domino_dflare_qwen3_4b", "train_domino_dflare_qwen3_4b"])
def test_domino_on_dflare_recipes(name):
    r = load_recipe(str(ROOT / "recipes" / f"{name}.yaml"))
    assert r.method == "dflare+domino+chain"
