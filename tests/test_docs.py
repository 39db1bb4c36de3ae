"""docs/recipes.md documents every recipe key and every built-in plugin option, with the
default the code has.

The schema is read at test time (``specforge_core.recipe.Recipe``, nested sections such as
``training.data`` included; each registered built-in plugin's ``Options``), so a key added to
the code without a line in the reference fails here, naming the key.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path

import pytest
import yaml

from specforge_core.recipe import Recipe
from specforge_core.registry import default_registry

RECIPES_MD = Path(__file__).resolve().parents[1] / "docs" / "recipes.md"
BUILT_IN = "specforge-core"  # the distribution that registers the built-in plugins (pyproject.toml)
MISSING = object()


def field_default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return MISSING


def schema_keys(cls: type, prefix: str = "") -> dict[str, object]:
    """Dotted key -> default for every leaf of a schema dataclass (nested sections walked)."""
    hints = typing.get_type_hints(cls)
    out: dict[str, object] = {}
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out.update(schema_keys(hints[f.name], f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = field_default(f)
    return out


def table_rows(markdown: str) -> dict[str, tuple[str, str]]:
    """Rows ``| `key` | default | meaning |`` -> {key: (default cell, meaning cell)}."""
    rows = {}
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.lstrip().startswith("|") and len(cells) >= 3 and re.fullmatch(r"`[^`]+`", cells[0]):
            rows[cells[0].strip("`")] = (cells[1], cells[2])
    return rows


def documented_value(cell: str):
    """A default cell as YAML (`null`, `true`, `[]`, `""`, `6e-4`, `auto`) -> a Python value."""
    value = yaml.safe_load(cell.replace("`", "")) if cell.strip() else None
    if isinstance(value, str):
        try:
            return float(value)  # YAML 1.1 reads 6e-4 as a string
        except ValueError:
            pass
    return value


def check_rows(keys: dict[str, object], rows: dict[str, tuple[str, str]], where: str) -> list[str]:
    problems = []
    for key, default in keys.items():
        if key not in rows:
            problems.append(f"{where}: `{key}` is not documented (default {default!r})")
            continue
        cell, meaning = rows[key]
        if not meaning:
            problems.append(f"{where}: `{key}` has no meaning")
        if default is not MISSING and documented_value(cell) != default:
            problems.append(f"{where}: `{key}` documents default {cell!r}, the code has {default!r}")
    return problems


def plugin_sections(markdown: str) -> dict[str, str]:
    """``### ...`` heading -> the text under it, in the plugin options part of the page."""
    part = markdown.split("## Built-in plugin options", 1)[1]
    sections, heading = {}, None
    for line in part.splitlines():
        if line.startswith("### "):
            heading = line[4:]
            sections[heading] = ""
        elif line.startswith("## "):
            break
        elif heading is not None:
            sections[heading] += line + "\n"
    return sections


def test_every_recipe_key_is_documented_with_its_default():
    keys = schema_keys(Recipe)
    assert "training.data.regen_batch_size" in keys  # the walk reaches nested sections
    problems = check_rows(keys, table_rows(RECIPES_MD.read_text()), "docs/recipes.md")
    assert not problems, "\n".join(problems)


def test_every_built_in_plugin_option_is_documented_under_its_plugin():
    sections = plugin_sections(RECIPES_MD.read_text())
    built_in = [r for r in default_registry().all() if r.distribution.split()[0] == BUILT_IN]
    assert built_in, "no built-in plugins registered: is specforge-core installed (pip install -e .)?"
    problems = []
    for reg in built_in:
        heading = next((h for h in sections if reg.kind in h and f"`{reg.name}`" in h), None)
        if heading is None:
            problems.append(f"docs/recipes.md: no '### {reg.kind} `{reg.name}`' heading under 'Built-in plugin options'")
            continue
        options = {f.name: field_default(f) for f in dataclasses.fields(reg.cls.Options)}
        problems += check_rows(options, table_rows(sections[heading]), f"{reg.kind} {reg.name}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("cell, value", [("null", None), ("`\"\"`", ""), ("6e-4", 6e-4), ("true", True),
                                         ("{}", {}), ("[]", []), ("auto", "auto"), ("3072", 3072)])
def test_default_cells_read_as_yaml(cell, value):
    assert documented_value(cell) == value
