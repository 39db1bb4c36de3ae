"""The pluggy registry: built-ins, a third-party plugin installed as a real distribution
(dist-info + entry point on sys.path), name clashes and bad registrations."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from specforge_core import Drafter, hookimpl
from specforge_core.errors import RecipeError, RegistryError
from specforge_core.interfaces import Corrector, DraftBlock, Verifier
from specforge_core.recipe import load_recipe
from specforge_core.registry import Registry

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "recipes" / "smoke.yaml"

# A third-party drafter written against the public API only (specforge_core + interfaces):
# it proposes the anchor token repeated `options.count` times (0 = block_size), probs=None.
REPEAT_PLUGIN = '''
from dataclasses import dataclass

from specforge_core import DraftBlock, Drafter, hookimpl


@dataclass
class RepeatOptions:
    count: int = 0  # tokens per block; 0 = the recipe's drafter.block_size


class RepeatLastDrafter(Drafter):
    """Repeat the last committed token (third-party demo)."""

    Options = RepeatOptions

    def __init__(self, options, block_size, checkpoint=None):
        super().__init__(options, block_size)
        self.calls = 0

    def draft(self, ctx):
        self.calls += 1
        k = min(self.options.count or self.block_size, ctx.max_draft)
        return DraftBlock(tokens=ctx.anchor[:, None].repeat(1, k), probs=None, anchor=ctx.anchor)


@hookimpl
def specforge_register(registry):
    registry.add(RepeatLastDrafter, name="repeat-last")
'''


def make_dist(root: Path, dist: str, version: str, package: str, plugin_src: str, ep_name: str) -> None:
    """Write an installed distribution (as pip would leave it) into ``root``: the package
    ``package`` with ``plugin.py`` plus ``{package}-{version}.dist-info`` whose entry point in
    the ``specforge`` group points at ``package.plugin``."""
    pkg = root / package
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "plugin.py").write_text(textwrap.dedent(plugin_src))
    info = root / f"{package}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[specforge]\n{ep_name} = {package}.plugin\n")


def install(monkeypatch, root: Path) -> None:
    importlib.invalidate_caches()
    monkeypatch.syspath_prepend(str(root))


@pytest.fixture
def clean_modules():
    """Forget the test packages imported during a test (module names are per test anyway)."""
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.startswith("sf_"):
            del sys.modules[name]


def smoke_base(**drafter) -> dict:
    base = OmegaConf.to_container(OmegaConf.load(SMOKE))
    base["drafter"] = drafter
    base.pop("prompts", None)
    return base


# ---------------------------------------------------------------------------------------
def test_builtins_are_registered_through_entry_points():
    reg = Registry()
    assert "ngram" in reg.names("drafter")
    assert "chain" in reg.names("verifier")
    ngram = reg.get("drafter", "ngram")
    chain = reg.get("verifier", "chain")
    assert ngram.distribution.startswith("specforge-core")
    assert chain.distribution.startswith("specforge-core")
    assert issubclass(ngram.cls, Drafter) and issubclass(chain.cls, Verifier)
    assert ngram.description and chain.description  # from the class docstring
    kinds = [r.kind for r in reg.all()]
    assert kinds == sorted(kinds, key=["drafter", "corrector", "verifier", "length_policy"].index)


def test_no_entry_points_means_no_components():
    reg = Registry(load_entrypoints=False)
    assert reg.all() == []
    with pytest.raises(RecipeError, match="installed: \\(none\\)"):
        reg.get("drafter", "ngram")


def test_third_party_distribution_is_discovered_and_lossless(tmp_path, monkeypatch, clean_modules):
    make_dist(tmp_path, "sf-thirdparty-demo", "0.1", "sf_thirdparty_demo", REPEAT_PLUGIN, "repeat")
    install(monkeypatch, tmp_path)

    reg = Registry()
    assert "repeat-last" in reg.names("drafter")
    assert "ngram" in reg.names("drafter")  # built-ins are still there
    r = reg.get("drafter", "repeat-last")
    assert r.distribution == "sf-thirdparty-demo 0.1"
    assert r.cls.__module__ == "sf_thirdparty_demo.plugin"
    assert r.description == "Repeat the last committed token (third-party demo)."

    # from a recipe: plugin options are validated against the plugin's own Options
    base = smoke_base(name="repeat-last", block_size=4)
    with pytest.raises(RecipeError, match="allowed: count"):
        load_recipe(None, ["drafter.options.max_ngram=3"], registry=reg, base=base)
    resolved = load_recipe(None, ["drafter.options.count=3", "generation.max_new_tokens=24"],
                           registry=reg, base=base)
    assert resolved.drafter_cls is r.cls
    assert resolved.drafter_options.count == 3
    assert resolved.method == "repeat-last+chain"

    from specforge_core.build import build_pipeline

    pipe = build_pipeline(resolved, reg)
    assert isinstance(pipe.generator.drafter, r.cls)
    ids = pipe.encode("abc abc abc")
    stop = pipe.stop_token_ids()
    res = pipe.generator.generate(ids, 24, pipe.sampling(), stop)
    ref = pipe.target.greedy_reference(ids, 24, stop)[0].tolist()
    assert res.tokens == ref  # lossless with a third-party drafter
    assert pipe.generator.drafter.calls == len(res.cycles) > 0
    assert max(c.num_drafted for c in res.cycles) == 3  # options.count reached the drafter


def test_cli_lists_third_party_plugin(tmp_path):
    make_dist(tmp_path, "sf-thirdparty-cli", "0.1", "sf_thirdparty_cli", REPEAT_PLUGIN, "repeat")
    env = dict(os.environ, HF_HUB_OFFLINE="1",
               PYTHONPATH=os.pathsep.join(p for p in [str(tmp_path), os.environ.get("PYTHONPATH")] if p))
    out = subprocess.run([sys.executable, "-m", "specforge_core.cli", "plugins"], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    line = next(ln for ln in out.stdout.splitlines() if "repeat-last" in ln)
    assert line.split()[0] == "drafter"
    assert "sf-thirdparty-cli 0.1" in line
    assert any("ngram" in ln and "specforge-core" in ln for ln in out.stdout.splitlines())


DUP_PLUGIN = '''
from specforge_core import DraftBlock, Drafter, hookimpl


class DupDrafter(Drafter):
    def draft(self, ctx):
        return DraftBlock(tokens=ctx.tokens[:, :0], anchor=ctx.anchor)


@hookimpl
def specforge_register(registry):
    registry.add(DupDrafter, name="dup")
'''


def test_two_distributions_claiming_one_name_is_an_error(tmp_path, monkeypatch, clean_modules):
    make_dist(tmp_path, "sf-dup-alpha", "1.0", "sf_dup_alpha", DUP_PLUGIN, "dup_alpha")
    make_dist(tmp_path, "sf-dup-beta", "2.0", "sf_dup_beta", DUP_PLUGIN, "dup_beta")
    install(monkeypatch, tmp_path)
    with pytest.raises(RegistryError) as e:
        Registry()
    msg = str(e.value)
    assert "'dup'" in msg and "drafter" in msg
    assert "sf-dup-alpha 1.0" in msg and "sf-dup-beta 2.0" in msg
    assert "sf_dup_alpha.plugin.DupDrafter" in msg and "sf_dup_beta.plugin.DupDrafter" in msg


def test_entry_point_name_clash_does_not_silently_drop_a_plugin(tmp_path, monkeypatch, clean_modules):
    """A third-party distribution whose entry point happens to share its *entry-point* name
    with another one (here the built-in ``ngram``) must not vanish without a word: it is
    either listed or reported as a RegistryError."""
    make_dist(tmp_path, "sf-epclash", "0.3", "sf_epclash", REPEAT_PLUGIN, "ngram")
    install(monkeypatch, tmp_path)
    try:
        reg = Registry()
    except RegistryError as e:
        assert "sf-epclash" in str(e)
    else:
        assert "repeat-last" in reg.names("drafter"), (
            "the plugin of sf-epclash was silently ignored: pluggy skips an entry point whose "
            "name is already registered"
        )
        assert "ngram" in reg.names("drafter")


# ---------------------------------------------------------------------------------------
def _module_registering(*classes, name="sf_inproc"):
    mod = types.ModuleType(name)

    @hookimpl
    def specforge_register(registry):
        for cls, n in classes:
            registry.add(cls, name=n)

    mod.specforge_register = specforge_register
    return mod


class _NotAComponent:
    kind = "drafter"  # claims a kind but does not subclass Drafter


class _PlainClass:
    pass


def _a_function():
    pass


@pytest.mark.parametrize("obj", [_NotAComponent, _PlainClass, _a_function, object()])
def test_registering_a_non_component_is_an_error(obj):
    reg = Registry(load_entrypoints=False)
    with pytest.raises(RegistryError, match="not a Drafter, Corrector, Verifier or LengthPolicy") as e:
        reg.register_plugin(_module_registering((obj, "bad")), distribution="sf-bad 9")
    assert "sf-bad 9" in str(e.value)


class _Corr(Corrector):
    def init_state(self, block):
        return None

    def step(self, state, i, prev_token):
        raise NotImplementedError


def test_corrector_name_none_is_reserved():
    reg = Registry(load_entrypoints=False)
    with pytest.raises(RegistryError, match="'none' is reserved"):
        reg.register_plugin(_module_registering((_Corr, "none")))


def test_register_plugin_in_process():
    class InProcDrafter(Drafter):
        def draft(self, ctx):
            return DraftBlock(tokens=ctx.tokens[:, :0], anchor=ctx.anchor)

    reg = Registry()
    reg.register_plugin(_module_registering((InProcDrafter, "inproc"), (_Corr, "corr")), distribution="notebook 1")
    assert reg.get("drafter", "inproc").cls is InProcDrafter
    assert reg.get("drafter", "inproc").distribution == "notebook 1"
    assert reg.get("corrector", "corr").kind == "corrector"
    assert "ngram" in reg.names("drafter")  # entry-point plugins kept after re-collecting
    with pytest.raises(RegistryError, match="two plugins claim the drafter name 'inproc'"):
        reg.register_plugin(_module_registering((InProcDrafter, "inproc"), name="sf_inproc2"))


def test_drafter_using_the_base_constructor_can_be_built():
    """interfaces.Drafter documents ``__init__(options, block_size)``; a plugin drafter that
    keeps the base constructor must be buildable from a recipe."""

    class MinimalDrafter(Drafter):
        """Proposes nothing."""

        def draft(self, ctx):
            return DraftBlock(tokens=ctx.tokens[:, :0], anchor=ctx.anchor)

    reg = Registry()
    reg.register_plugin(_module_registering((MinimalDrafter, "minimal")))
    resolved = load_recipe(None, ["generation.max_new_tokens=4"], registry=reg,
                           base=smoke_base(name="minimal", block_size=4))
    from specforge_core.build import build_pipeline

    pipe = build_pipeline(resolved, reg)
    ids = pipe.encode("hello")
    res = pipe.generator.generate(ids, 4, pipe.sampling(), pipe.stop_token_ids())
    assert res.tokens == pipe.target.greedy_reference(ids, 4, pipe.stop_token_ids())[0].tolist()
