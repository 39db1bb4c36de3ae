"""The plugin-author guide's example (examples/specforge-bigram) installed as its own
distribution, found through its entry point and run losslessly through `specforge bench`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    site = tmp_path_factory.mktemp("site")
    for example in ("specforge-bigram", "specforge-norepeat", "specforge-seen"):
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
             "--target", str(site), str(ROOT / "examples" / example)],
            check=True, capture_output=True, text=True,
        )
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(site))
    return site, env


def test_listed_with_its_distribution(installed):
    site, env = installed
    assert (site / "specforge_bigram-0.1.0.dist-info" / "entry_points.txt").is_file()
    out = subprocess.run([sys.executable, "-m", "specforge_core.cli", "plugins", "--json"],
                         env=env, capture_output=True, text=True, check=True).stdout
    rows = {(r["kind"], r["name"]): r for r in json.loads(out)}
    assert rows[("drafter", "bigram")]["distribution"] == "specforge-bigram 0.1.0"
    assert ("drafter", "ngram") in rows  # built-ins still there


def test_bench_is_lossless(installed, tmp_path):
    _, env = installed
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "specforge_core.cli", "bench", str(ROOT / "recipes" / "smoke.yaml"),
         "drafter.name=bigram", "drafter.options.min_count=2", "generation.max_new_tokens=48",
         "--json", str(out), "--no-progress"],
        env=env, capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["method"] == "bigram+chain"
    assert result["lossless"] is True
    assert result["num_accepted_tokens"] > 0  # the drafter really proposed accepted tokens


def test_example_corrector_on_dflash_is_lossless(installed, tmp_path):
    _, env = installed
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "specforge_core.cli", "bench", str(ROOT / "recipes" / "smoke.yaml"),
         "drafter.name=dflash", "corrector.name=norepeat", "corrector.options.penalty=3.0",
         "generation.max_new_tokens=32", "--json", str(out), "--no-progress"],
        env=env, capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["method"] == "dflash+norepeat+chain" and result["lossless"] is True
    plugins = json.loads(subprocess.run([sys.executable, "-m", "specforge_core.cli", "plugins", "--json"], env=env,
                                        capture_output=True, text=True, check=True).stdout)
    assert {"kind": "corrector", "name": "norepeat"}.items() <= next(
        p for p in plugins if p["name"] == "norepeat").items()


@pytest.mark.parametrize("verifier", ["chain", "tree"])
def test_context_corrector_on_dflash_is_lossless(installed, tmp_path, verifier):
    """examples/specforge-seen (a corrector reading the request's committed tokens through
    block.context, reset per request), installed as its own distribution, through specforge bench."""
    _, env = installed
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "specforge_core.cli", "bench", str(ROOT / "recipes" / "smoke.yaml"),
         "drafter.name=dflash", "corrector.name=seen", "corrector.options.boost=2.0", f"verifier.name={verifier}",
         "generation.max_new_tokens=32", "--json", str(out), "--no-progress"],
        env=env, capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["method"] == f"dflash+seen+{verifier}" and result["lossless"] is True
    plugins = json.loads(subprocess.run([sys.executable, "-m", "specforge_core.cli", "plugins", "--json"], env=env,
                                        capture_output=True, text=True, check=True).stdout)
    assert next(p for p in plugins if p["name"] == "seen")["distribution"] == "specforge-seen 0.1.0"


@pytest.mark.parametrize("example,package", [("specforge-bigram", "specforge_bigram"),
                                             ("specforge-norepeat", "specforge_norepeat"),
                                             ("specforge-seen", "specforge_seen")])
def test_docs_show_the_examples_verbatim(example, package):
    """docs/plugins.md shows the examples' code; keep the two from drifting apart."""
    import re

    docs = (ROOT / "docs" / "plugins.md").read_text()
    shown = re.search(rf"`{package}/__init__.py`:\n\n```python\n(.*?)```", docs, re.S).group(1)
    source = (ROOT / "examples" / example / package / "__init__.py").read_text()
    code = source.split('"""', 2)[2].lstrip("\n")  # drop the module docstring
    assert shown == code
