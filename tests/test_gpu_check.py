"""scripts/gpu_check.py end to end at tiny shapes (what it runs on a GPU at Qwen3-8B shapes): every
section fills its part of the one JSON, the oracle reaches the planned tau, nothing errors; and the
merge step adds a pytest summary."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_run_writes_every_section(tmp_path):
    gpu_check = load_script()
    threads = torch.get_num_threads()
    try:
        rc = gpu_check.main(["--out", str(tmp_path), "--tiny", "--max-new", "16", "--reps", "1"])
    finally:
        torch.set_num_threads(threads)
    data = json.loads((tmp_path / "gpu_check.json").read_text())
    assert rc == 0 and data["errors"] == {}
    for section in ("environment", "ar_hf", "ar_ours", "verify", "spec", "domino"):
        assert section in data, section
    for row in data["spec"].values():
        assert row["planned_acceptance"] and row["agrees_with_hf_tokens"] == row["tokens"]
        assert row["ideal_speedup"] > 0 and "non_model_share_of_verify" in row
    assert data["ar_ours"]["static_graphs"]["agrees_with_hf_tokens"] == data["ar_hf"]["tokens"]
    assert set(data["verify"]) == {"dynamic", "static", "static_graphs"}

    junit = tmp_path / "t.xml"
    junit.write_text('<testsuites><testsuite><testcase classname="a" name="ok"/>'
                     '<testcase classname="a" name="gpu"><skipped message="needs CUDA"/></testcase>'
                     '</testsuite></testsuites>')
    assert gpu_check.main(["--out", str(tmp_path), "--merge-pytest", str(junit)]) == 0
    merged = json.loads((tmp_path / "gpu_check.json").read_text())
    assert merged["pytest"]["counts"] == {"passed": 1, "failed": 0, "skipped": 1}
    assert merged["spec"] == data["spec"]
