"""The `specforge` command line: run, bench, plugins, --help, --dry-run and its error
contract (one `specforge: error:` line, exit status 2, no traceback)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import transformers

from specforge_core.cli import main

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "recipes" / "smoke.yaml")


def _env():
    return dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")


def test_run_prints_text_and_stats_and_writes_json(tmp_path, capsys):
    out_json = tmp_path / "sub" / "run.json"
    rc = main(["run", SMOKE, "--prompt", "hello", "generation.max_new_tokens=8", "--json", str(out_json)])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    data = json.loads(out_json.read_text())
    assert data["method"] == "ngram+chain"
    assert 1 <= data["new_tokens"] <= 8
    assert len(data["output_ids"]) == data["new_tokens"]
    assert data["tau"] >= 1
    assert data["prompt_tokens"] == len("hello")  # byte tokenizer, no chat template
    lengths = data["accept_lengths"]
    assert lengths and all(1 <= n <= 9 for n in lengths)
    assert data["tau"] == pytest.approx(sum(lengths) / len(lengths))
    # the text goes to stdout, the stats line to stderr
    assert cap.out.rstrip("\n") == data["text"]
    stats = [ln for ln in cap.err.splitlines() if ln.startswith("[ngram+chain]")]
    assert len(stats) == 1 and "tau" in stats[0] and f"{data['new_tokens']} tokens" in stats[0]
    assert not (tmp_path / "sub" / "run.json.tmp").exists()


def test_run_overrides_after_options(tmp_path, capsys):
    out_json = tmp_path / "r.json"
    rc = main(["run", SMOKE, "--prompt", "hi", "--json", str(out_json), "generation.max_new_tokens=3"])
    assert rc == 0, capsys.readouterr().err
    assert json.loads(out_json.read_text())["new_tokens"] <= 3


def test_bench_json(tmp_path, capsys):
    out_json = tmp_path / "bench.json"
    rc = main(["bench", SMOKE, "--json", str(out_json), "--no-progress", "prompts.limit=2",
               "generation.max_new_tokens=16", "--repeats", "2"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "| ngram+chain |" in cap.out  # markdown table
    r = json.loads(out_json.read_text())
    for key in ["method", "tau", "speedup", "tokens_per_s", "ar_tokens_per_s", "accept_per_position", "lossless",
                "n_prompts", "device", "num_drafts", "num_draft_tokens", "num_accepted_tokens",
                "num_accepted_tokens_per_pos"]:
        assert key in r, key
    assert r["method"] == "ngram+chain"
    assert r["lossless"] is True
    assert r["n_prompts"] == 2 and len(r["prompts"]) == 2
    assert all(p["identical_to_ar"] is True for p in r["prompts"])
    assert all(p["new_tokens"] <= 16 for p in r["prompts"])
    assert r["device"].startswith("cpu")
    assert r["num_drafts"] > 0
    assert r["tau"] == pytest.approx(1 + r["num_accepted_tokens"] / r["num_drafts"])
    assert r["tau"] >= 1
    assert 0 <= r["num_accepted_tokens"] <= r["num_draft_tokens"] <= 8 * r["num_drafts"]
    assert len(r["accept_per_position"]) == r["verified_positions"] <= 8 == r["block_size"]
    assert len(r["num_accepted_tokens_per_pos"]) == r["verified_positions"] >= 1
    assert sum(r["num_accepted_tokens_per_pos"]) == r["num_accepted_tokens"]
    assert r["accept_per_position"] == pytest.approx([c / r["num_drafts"] for c in r["num_accepted_tokens_per_pos"]])
    per_pos = r["num_accepted_tokens_per_pos"]
    assert all(a >= b for a, b in zip(per_pos, per_pos[1:]))  # accepting position i needs i-1
    assert r["speedup"] > 0 and r["tokens_per_s"] > 0 and r["ar_tokens_per_s"] > 0
    # interleaved repeats: the speedup is the median of per-prompt ratios, with its range over repeats
    assert r["repeats"] == 2 and r["speedup_range"][0] <= r["speedup_range"][1]
    ratios = sorted(p["speedup"] for p in r["prompts"])
    assert r["speedup"] == pytest.approx(sum(ratios) / 2)  # median of two prompts
    assert r["timing"]["threads"] >= 1 and "hardware" in r["timing"]["machine"]
    assert set(r["time_split_ms"]) == {"draft", "propose", "verify", "accept"}  # a CPU times every stage
    assert "interleaved repeat" in cap.err


def test_bench_reports_only_verified_positions(tmp_path, capsys):
    out_json = tmp_path / "bench.json"
    rc = main(["bench", SMOKE, "--json", str(out_json), "--no-progress", "prompts.limit=1",
               "generation.max_new_tokens=12", "drafter.num_speculative_tokens=3", "--repeats", "1"])
    assert rc == 0, capsys.readouterr().err
    r = json.loads(out_json.read_text())
    assert r["verified_positions"] == 3 == len(r["accept_per_position"]) and r["block_size"] == 8
    # a DFlash block of 8 drafts 7 tokens (row 0 is the anchor): position 8 is never verified, so not listed
    rc = main(["bench", SMOKE, "--json", str(out_json), "--no-progress", "prompts.limit=1",
               "generation.max_new_tokens=12", "drafter.name=dflash", "--repeats", "1"])
    assert rc == 0, capsys.readouterr().err
    r = json.loads(out_json.read_text())
    assert r["verified_positions"] == 7 == len(r["accept_per_position"]) and r["block_size"] == 8


def test_plugins_table(capsys):
    assert main(["plugins"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["KIND", "NAME", "DISTRIBUTION", "DESCRIPTION"]
    ngram = next(ln for ln in lines if ln.split()[:2] == ["drafter", "ngram"])
    chain = next(ln for ln in lines if ln.split()[:2] == ["verifier", "chain"])
    assert "specforge-core" in ngram and "specforge-core" in chain


def test_plugins_json(capsys):
    assert main(["plugins", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    by_name = {(r["kind"], r["name"]): r for r in rows}
    assert by_name[("drafter", "ngram")]["distribution"].startswith("specforge-core")
    assert by_name[("drafter", "ngram")]["class"] == "specforge_ngram.drafter.NgramDrafter"
    assert by_name[("verifier", "chain")]["distribution"].startswith("specforge-core")
    assert all(set(r) == {"kind", "name", "distribution", "class", "description"} for r in rows)


# ---- errors -----------------------------------------------------------------------------
def test_unknown_key_subprocess_clean_error():
    out = subprocess.run([sys.executable, "-m", "specforge_core.cli", "run", SMOKE, "target.foo=1"],
                         env=_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.startswith("specforge: error:")
    assert "target.foo" in out.stderr and "allowed" in out.stderr
    assert "Traceback" not in out.stderr
    assert out.stdout == ""


def _error(capsys, argv) -> str:
    rc = main(argv)
    cap = capsys.readouterr()
    assert rc == 2, (cap.out, cap.err)
    assert "Traceback" not in cap.err
    errors = [ln for ln in cap.err.splitlines() if ln.startswith("specforge: error:")]
    assert len(errors) == 1, cap.err
    return errors[0]


def test_unknown_key_exit_2(capsys):
    line = _error(capsys, ["bench", SMOKE, "sampling.tempreature=0.5"])
    assert "tempreature" in line


def test_empty_prompt_exit_2(capsys):
    line = _error(capsys, ["run", SMOKE, "--prompt", "", "generation.max_new_tokens=4"])
    assert "empty" in line


def test_max_new_tokens_zero_exit_2(capsys):
    line = _error(capsys, ["run", SMOKE, "--prompt", "hello", "generation.max_new_tokens=0"])
    assert "max_new_tokens" in line


def test_prompt_longer_than_context_exit_2(capsys):
    line = _error(capsys, ["run", SMOKE, "--prompt", "x" * 100, "target.config.max_position_embeddings=32",
                           "generation.max_new_tokens=4"])
    assert "context" in line


def test_bad_override_form_exit_2(capsys):
    line = _error(capsys, ["run", SMOKE, "generation.max_new_tokens", "--dry-run"])
    # a positional without "=" is taken as an override and rejected by load_recipe
    assert "key=value" in line


def test_missing_recipe_exit_2(tmp_path, capsys):
    line = _error(capsys, ["run", str(tmp_path / "nope.yaml"), "--dry-run"])
    assert "not found" in line


def test_unknown_option_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["run", SMOKE, "--bogus-flag"])
    assert e.value.code == 2
    assert "--bogus-flag" in capsys.readouterr().err


# ---- help and dry-run --------------------------------------------------------------------
@pytest.mark.parametrize("cmd,purpose", [
    ("run", "Generate with a recipe"),
    ("bench", "autoregressive"),
    ("plugins", "List every registered component"),
])
def test_subcommand_help(cmd, purpose, capsys):
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert purpose in out
    if cmd != "plugins":
        assert "overrides" in out and "sampling.temperature=0.7" in out


def test_top_level_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "run" in out and "bench" in out and "plugins" in out


def test_dry_run_loads_no_model(monkeypatch, capsys):
    def boom(*a, **k):
        raise AssertionError("--dry-run loaded a model")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_config", boom)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", boom)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", boom)
    assert main(["run", SMOKE, "--dry-run", "sampling.temperature=0.5", "drafter.block_size=4"]) == 0
    out = capsys.readouterr().out
    assert "method: ngram+chain" in out
    assert "random-weight qwen3" in out
    assert "block_size 4" in out
    assert "temperature 0.5" in out
    assert "corrector: none" in out
