"""Recipes: loading, overrides, schema / value / plugin validation and `defaults`
composition - every error raised by ``load_recipe`` before any model is loaded."""

from __future__ import annotations

import types
from pathlib import Path

import pytest
import transformers

from specforge_core import Drafter, hookimpl
from specforge_core.errors import RecipeError
from specforge_core.interfaces import Corrector, DraftBlock
from specforge_core.recipe import load_recipe
from specforge_core.registry import Registry

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "recipes" / "smoke.yaml"
SMOKE_TEXT = SMOKE.read_text()


def _no_model(*args, **kwargs):
    raise AssertionError("a model was loaded while only validating a recipe")


@pytest.fixture(autouse=True)
def no_model_loading(monkeypatch):
    """Loading a model (random or pretrained) or a hub tokenizer fails the test."""
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_config", _no_model)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", _no_model)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", _no_model)


def load(*overrides, **kw):
    return load_recipe(str(SMOKE), list(overrides), **kw)


def test_guard_catches_model_loading():
    """The autouse guard is effective: building the pipeline would load the target."""
    from specforge_core.build import build_pipeline

    with pytest.raises(AssertionError, match="a model was loaded"):
        build_pipeline(load())


# ---- loading and overrides ----------------------------------------------------------
def test_smoke_recipe_loads():
    r = load()
    cfg = r.cfg
    assert r.path == SMOKE
    assert cfg.name == "smoke"
    assert cfg.target.config.model_type == "qwen3"
    assert cfg.target.model is None and cfg.target.tokenizer == "bytes"
    assert cfg.drafter.name == "ngram" and cfg.drafter.block_size == 8
    assert cfg.corrector.name == "none" and r.corrector_cls is None and r.corrector_options is None
    assert r.drafter_cls.__name__ == "NgramDrafter"
    assert (r.drafter_options.max_ngram, r.drafter_options.min_ngram) == (3, 1)
    assert r.verifier_cls.__name__ == "ChainVerifier"
    assert r.method == "ngram+chain"
    # schema defaults fill what the YAML leaves out
    assert cfg.sampling.top_k == 0 and cfg.sampling.top_p == 1.0
    assert cfg.bench.warmup == 1 and cfg.bench.check_lossless is True


def test_overrides_apply_with_schema_types():
    r = load("sampling.temperature=0.7", "drafter.name=ngram", "corrector.name=none", "verifier.name=chain",
             "sampling.seed=3", "generation.max_new_tokens=5", "target.init_seed=2")
    cfg = r.cfg
    assert cfg.sampling.temperature == 0.7 and type(cfg.sampling.temperature) is float
    assert cfg.sampling.seed == 3 and type(cfg.sampling.seed) is int
    assert cfg.generation.max_new_tokens == 5 and type(cfg.generation.max_new_tokens) is int
    assert cfg.target.init_seed == 2 and type(cfg.target.init_seed) is int
    assert cfg.drafter.name == "ngram" and cfg.corrector.name == "none" and cfg.verifier.name == "chain"
    assert r.corrector_cls is None
    assert r.method == "ngram+chain"
    # an integer literal for a float field is converted; nested plugin options too
    r = load("sampling.temperature=1", "drafter.options.max_ngram=5", "drafter.block_size=3")
    assert type(r.cfg.sampling.temperature) is float and r.cfg.sampling.temperature == 1.0
    assert r.drafter_options.max_ngram == 5 and r.drafter_options.min_ngram == 1
    assert r.cfg.drafter.block_size == 3


def test_base_dict_instead_of_a_file():
    r = load_recipe(None, ["sampling.seed=9"], base={"target": {"model": "some/model"}})
    assert r.path is None
    assert r.cfg.target.model == "some/model" and r.cfg.sampling.seed == 9
    assert r.method == "ngram+chain"  # schema defaults


# ---- schema errors ------------------------------------------------------------------
TARGET_KEYS = ["model", "config", "init_seed", "tokenizer", "revision", "dtype", "device", "attn_implementation"]
TOP_KEYS = ["target", "drafter", "corrector", "verifier", "sampling", "generation", "prompts", "bench"]


def test_unknown_override_key_names_key_and_allowed_keys():
    with pytest.raises(RecipeError) as e:
        load("target.foo=1")
    msg = str(e.value)
    assert "target.foo" in msg
    for k in TARGET_KEYS:
        assert k in msg


def test_unknown_top_level_key_in_yaml(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text(SMOKE_TEXT + "\nsampler:\n  temperature: 0.5\n")
    with pytest.raises(RecipeError) as e:
        load_recipe(str(p))
    msg = str(e.value)
    assert "'sampler'" in msg
    assert str(p) in msg  # says which file
    for k in TOP_KEYS:
        assert k in msg


@pytest.mark.parametrize("override,key", [
    ("sampling.temperature=abc", "sampling.temperature"),
    ("generation.max_new_tokens=1.5", "generation.max_new_tokens"),
    ("drafter.block_size=big", "drafter.block_size"),
    ("bench.check_lossless=maybe", "bench.check_lossless"),
])
def test_wrong_type_names_the_key(override, key):
    with pytest.raises(RecipeError, match=key.replace(".", r"\.")):
        load(override)


@pytest.mark.parametrize("bad", ["sampling", "sampling.temperature", "=1", "temperature:0.7"])
def test_malformed_override(bad):
    with pytest.raises(RecipeError):
        load(bad)


def test_malformed_override_message():
    with pytest.raises(RecipeError, match="key=value"):
        load("sampling.temperature")


# ---- plugin errors --------------------------------------------------------------------
def test_unknown_drafter_lists_installed():
    with pytest.raises(RecipeError) as e:
        load("drafter.name=nope")
    msg = str(e.value)
    assert "'nope'" in msg and "drafter.name" in msg and "ngram" in msg


def test_unknown_verifier_lists_installed():
    with pytest.raises(RecipeError) as e:
        load("verifier.name=nope")
    msg = str(e.value)
    assert "'nope'" in msg and "verifier.name" in msg and "chain" in msg


def test_unknown_corrector_lists_installed():
    with pytest.raises(RecipeError) as e:
        load("corrector.name=nope")
    msg = str(e.value)
    assert "'nope'" in msg and "corrector.name" in msg and "none" in msg.split("installed:")[1]


def test_unknown_plugin_option_lists_allowed_options():
    with pytest.raises(RecipeError) as e:
        load("drafter.options.bogus=1")
    msg = str(e.value)
    assert "drafter.options.bogus" in msg and "'ngram'" in msg
    assert "max_ngram" in msg and "min_ngram" in msg


def test_plugin_option_wrong_type():
    with pytest.raises(RecipeError, match=r"drafter\.options\.max_ngram"):
        load("drafter.options.max_ngram=abc")


def test_unknown_verifier_option_lists_allowed():
    with pytest.raises(RecipeError, match=r"verifier\.options\.x.*allowed: rule"):
        load("verifier.options.x=1")
    with pytest.raises(RecipeError, match=r"rule must be 'residual' or 'match'"):
        load("verifier.options.rule=maybe")


class _TinyCorrector(Corrector):
    """Test corrector."""

    def init_state(self, block):
        return None

    def step(self, state, i, prev_token):
        raise NotImplementedError


class _ParallelDrafter(Drafter):
    """Test parallel drafter."""

    parallel = True

    def draft(self, ctx):
        return DraftBlock(anchor=ctx.anchor)


@pytest.fixture
def registry_with_corrector():
    mod = types.ModuleType("sf_recipe_test_plugin")

    @hookimpl
    def specforge_register(registry):
        registry.add(_TinyCorrector, name="tiny")
        registry.add(_ParallelDrafter, name="par")

    mod.specforge_register = specforge_register
    reg = Registry()
    reg.register_plugin(mod, distribution="tests 0")
    return reg


def test_corrector_on_non_parallel_drafter_is_rejected(registry_with_corrector):
    with pytest.raises(RecipeError) as e:
        load("corrector.name=tiny", registry=registry_with_corrector)
    msg = str(e.value)
    assert "tiny" in msg and "ngram" in msg and "parallel" in msg


def test_corrector_on_parallel_drafter_is_accepted(registry_with_corrector):
    base = {"target": {"model": "some/model"}, "drafter": {"name": "par"}, "corrector": {"name": "tiny"}}
    r = load_recipe(None, [], registry=registry_with_corrector, base=base)
    assert r.corrector_cls is _TinyCorrector and r.drafter_cls is _ParallelDrafter
    assert r.method == "par+tiny+chain"
    with pytest.raises(RecipeError, match=r"corrector\.options\.bogus"):
        load_recipe(None, ["corrector.options.bogus=1"], registry=registry_with_corrector, base=base)


# ---- value checks ---------------------------------------------------------------------
@pytest.mark.parametrize("override,key", [
    ("sampling.temperature=-1", "sampling.temperature"),
    ("sampling.top_p=0", "sampling.top_p"),
    ("sampling.top_p=1.5", "sampling.top_p"),
    ("sampling.top_k=-1", "sampling.top_k"),
    ("generation.max_new_tokens=0", "generation.max_new_tokens"),
    ("drafter.block_size=0", "drafter.block_size"),
    ("prompts.limit=0", "prompts.limit"),
    ("target.dtype=int8", "target.dtype"),
])
def test_out_of_range_values(override, key):
    with pytest.raises(RecipeError, match=key.replace(".", r"\.")):
        load(override)


def test_boundary_values_are_accepted():
    r = load("sampling.temperature=0", "sampling.top_p=1", "generation.max_new_tokens=1", "drafter.block_size=1")
    assert r.cfg.sampling.top_p == 1.0 and r.cfg.drafter.block_size == 1


def test_target_needs_exactly_one_of_model_and_config():
    with pytest.raises(RecipeError, match="exactly one"):
        load("target.model=some/model")  # both
    with pytest.raises(RecipeError, match="exactly one"):
        load("target.config=null")  # neither
    with pytest.raises(RecipeError, match="exactly one"):
        load_recipe(None, [], base={})  # neither (schema defaults)
    with pytest.raises(RecipeError, match="model_type"):
        load_recipe(None, [], base={"target": {"config": {"hidden_size": 8}}})


# ---- defaults composition ---------------------------------------------------------------
def test_defaults_merge_order(tmp_path):
    (tmp_path / "base.yaml").write_text(SMOKE_TEXT)
    (tmp_path / "extra.yaml").write_text("sampling:\n  temperature: 0.3\n  seed: 11\ndrafter:\n  block_size: 5\n")
    (tmp_path / "child.yaml").write_text(
        "defaults: [base, extra.yaml]\nname: child\nsampling:\n  temperature: 0.9\n"
    )
    r = load_recipe(str(tmp_path / "child.yaml"))
    cfg = r.cfg
    assert cfg.name == "child"  # child over base
    assert cfg.sampling.temperature == 0.9  # child over both defaults
    assert cfg.sampling.seed == 11  # later default over earlier
    assert cfg.drafter.block_size == 5
    assert cfg.target.config.hidden_size == 64  # untouched base values survive
    assert r.drafter_options.max_ngram == 3  # plugin defaults fill the options
    assert "defaults" not in cfg
    # overrides win over the whole chain
    r = load_recipe(str(tmp_path / "child.yaml"), ["sampling.temperature=0.1"])
    assert r.cfg.sampling.temperature == 0.1


def test_nested_defaults_relative_to_each_file(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "base.yaml").write_text(SMOKE_TEXT)
    (tmp_path / "sub" / "mid.yaml").write_text("defaults: [../base]\ngeneration:\n  max_new_tokens: 7\n")
    (tmp_path / "top.yaml").write_text("defaults: [sub/mid]\nsampling:\n  seed: 4\n")
    cfg = load_recipe(str(tmp_path / "top.yaml")).cfg
    assert (cfg.generation.max_new_tokens, cfg.sampling.seed, cfg.name) == (7, 4, "smoke")


def test_missing_default_is_an_error(tmp_path):
    (tmp_path / "child.yaml").write_text("defaults: [does_not_exist]\n")
    with pytest.raises(RecipeError, match="does_not_exist"):
        load_recipe(str(tmp_path / "child.yaml"))


def test_defaults_cycle_is_an_error(tmp_path):
    (tmp_path / "a.yaml").write_text("defaults: [b]\n")
    (tmp_path / "b.yaml").write_text("defaults: [a]\n")
    with pytest.raises(RecipeError, match="cycle"):
        load_recipe(str(tmp_path / "a.yaml"))
    (tmp_path / "self.yaml").write_text("defaults: [self]\n")
    with pytest.raises(RecipeError, match="cycle"):
        load_recipe(str(tmp_path / "self.yaml"))


def test_defaults_must_be_a_list(tmp_path):
    (tmp_path / "base.yaml").write_text(SMOKE_TEXT)
    (tmp_path / "child.yaml").write_text("defaults: base\n")
    with pytest.raises(RecipeError, match="list"):
        load_recipe(str(tmp_path / "child.yaml"))


def test_unknown_key_in_a_default_is_reported(tmp_path):
    (tmp_path / "base.yaml").write_text(SMOKE_TEXT + "\ntarget_extra: 1\n")
    (tmp_path / "child.yaml").write_text("defaults: [base]\n")
    with pytest.raises(RecipeError, match="target_extra"):
        load_recipe(str(tmp_path / "child.yaml"))


def test_invalid_yaml_and_non_mapping(tmp_path):
    (tmp_path / "broken.yaml").write_text("target: [unclosed\n")
    with pytest.raises(RecipeError, match="YAML"):
        load_recipe(str(tmp_path / "broken.yaml"))
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(RecipeError, match="mapping"):
        load_recipe(str(tmp_path / "list.yaml"))


def test_missing_recipe_file(tmp_path):
    with pytest.raises(RecipeError, match="not found"):
        load_recipe(str(tmp_path / "nope.yaml"))
