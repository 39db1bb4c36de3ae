"""The installed transformers is one pyproject.toml allows (CI installs the newest allowed, so
this runs against the upper end of the range), and the range has an upper bound."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def declared(name: str) -> Requirement:
    deps = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    found = [Requirement(d) for d in deps if Requirement(d).name == name]
    assert len(found) == 1, f"pyproject.toml lists {name} {len(found)} times"
    return found[0]


def test_installed_transformers_is_in_the_declared_range():
    req = declared("transformers")
    assert any(s.operator in ("<", "<=", "==", "~=") for s in req.specifier), \
        f"pyproject.toml: {req} has no upper bound"
    installed = version("transformers")
    assert req.specifier.contains(installed, prereleases=True), \
        f"installed transformers {installed} is outside pyproject.toml's {req.specifier}"
