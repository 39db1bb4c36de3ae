"""Shared by the diagnostics scripts (scripts/acceptance_train_vs_heldout.py,
scripts/draft_agreement_smollm2.py, scripts/residual_vs_match.py): acceptance counters of a
pipeline over prompts without timing anything, and a record of each figure (numbers, command,
machine, runtime) in docs/results/diagnostics.json.

The counters are the bench's (vLLM's spec-decode names; specforge_core.bench.runner):
``tau = 1 + accepted / cycles`` (every verify forward is a cycle) and
``accept_per_position[i]`` = cycles that accepted block position i / cycles. They are
deterministic at T=0 (and at T>0 for a fixed seed), so they can be measured on a busy machine.
"""

from __future__ import annotations

import json
import platform
import shlex
import sys
from datetime import date
from pathlib import Path
from typing import Iterable, Optional

import torch

ROOT = Path(__file__).resolve().parents[1]
RECORD = ROOT / "docs" / "results" / "diagnostics.json"


def acceptance(pipe, texts: list[str], max_new_tokens: int, seeds: Iterable[Optional[int]] = (None,)) -> dict:
    """Decode every prompt text once per seed with ``pipe`` (a ``build_pipeline`` result) and
    count what was accepted. ``seeds``: None = the recipe's ``sampling.seed``."""
    gen = pipe.generator
    width = int(getattr(gen.drafter, "block_size", pipe.cfg.drafter.block_size))
    verified = width if gen.num_speculative_tokens is None else min(width, int(gen.num_speculative_tokens))
    stop = pipe.stop_token_ids()
    cycles, per_prompt = [], []
    for seed in seeds:
        for text in texts:
            res = gen.generate(pipe.encode(text), max_new_tokens, pipe.sampling(seed), stop)
            accepted = [c.num_accepted for c in res.cycles]  # drafted tokens accepted per verify forward
            cycles += accepted
            per_prompt.append([sum(accepted), len(accepted)])
    n = max(len(cycles), 1)
    per_pos = [sum(1 for a in cycles if a > i) for i in range(verified)]  # cycles that accepted position i
    return {"tau": round(1.0 + sum(cycles) / n, 4), "cycles": len(cycles), "accepted": sum(cycles),
            "accepted_per_position": per_pos, "accept_per_position": [round(c / n, 4) for c in per_pos],
            "p2_given_1": round(per_pos[1] / per_pos[0], 4) if verified > 1 and per_pos[0] else None,
            "per_prompt": per_prompt}  # [accepted, cycles] per decode: for paired comparisons (scripts/paired_tau.py)


def machine() -> str:
    """CPU model, cores and torch threads (the counters do not depend on them; runtimes do)."""
    from specforge_core.machine import cpu_model, usable_cores

    return (f"{cpu_model()} x{usable_cores()} ({platform.machine()}), torch {torch.__version__}, "
            f"{torch.get_num_threads()} thread(s)")


def record(key: str, entry: dict) -> None:
    """Write ``entry`` (plus the command that produced it, the machine and the date) under
    ``key`` in docs/results/diagnostics.json, keeping the other figures."""
    data = json.loads(RECORD.read_text()) if RECORD.is_file() else {}
    data[key] = {**entry, "command": " ".join(shlex.quote(a) for a in ["python", *sys.argv]),
                 "machine": machine(), "date": date.today().isoformat()}
    RECORD.parent.mkdir(parents=True, exist_ok=True)
    RECORD.write_text(json.dumps(data, indent=2) + "\n")
    print(f"recorded under '{key}' in {RECORD.relative_to(ROOT)}")
