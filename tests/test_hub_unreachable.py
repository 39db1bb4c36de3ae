"""A hub id that cannot load fails at once, in one `specforge: error:` line naming the id.

Run as a user's shell runs it: WITHOUT ``HF_HUB_OFFLINE`` (conftest sets it for every other
test). Without the reachability check (``specforge_core/hub.py``) huggingface_hub retries the
connection with backoff - ~23 s of sleeps, a warning line per try - before transformers gives
up. The Hub endpoint is a closed local port and the HF cache an empty folder, so the test is
the same with or without network and never downloads.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HANG_GUARD_S = 45  # seconds; on an idle 2-core machine the command ends in ~5 s (interpreter start + imports)


def unreachable_hub_env(tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_ENDPOINT="http://127.0.0.1:9",  # the discard port: connection refused, like no network
               HF_HOME=str(tmp_path / "hf"), TOKENIZERS_PARALLELISM="false")
    return env


@pytest.mark.parametrize("args, model_ids", [
    (["recipes/smoke.yaml", "target.config=null", "target.model=Qwen/Qwen3-0.6B", "target.tokenizer=null"],
     ["Qwen/Qwen3-0.6B"]),  # a target hub id (docs/quickstart.md, "Bringing your own target")
    (["recipes/domino_qwen3_8b.yaml"],  # the published setup: target and drafter checkpoint are hub ids
     ["Qwen/Qwen3-8B", "Huang2020/Qwen3-8B-Domino-b16"]),
])
def test_unreachable_hub_id_fails_at_once_in_one_line(tmp_path, args, model_ids):
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "specforge_core.cli", "run", *args], cwd=ROOT,
                          env=unreachable_hub_env(tmp_path), capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - start
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    errors = [ln for ln in lines if ln.startswith("specforge: error:")]
    assert len(errors) == 1 and any(f"'{i}'" in errors[0] for i in model_ids), proc.stderr
    # only the command's own lines: no retry warnings, no traceback
    assert all(ln.startswith("specforge: ") for ln in lines), proc.stderr
    assert elapsed < HANG_GUARD_S, f"took {elapsed:.0f} s"
