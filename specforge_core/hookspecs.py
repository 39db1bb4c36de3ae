"""The hooks a SpecForge plugin implements - the documented plugin API.

A plugin is a module with ``@hookimpl`` functions, exposed through an entry point in the
``specforge`` group of its distribution's ``pyproject.toml``::

    [project.entry-points.specforge]
    my_corrector = "my_package.plugin"

and, in ``my_package/plugin.py``::

    from specforge_core import hookimpl

    @hookimpl
    def specforge_register(registry):
        registry.add(MyCorrector, name="my-corrector")

Built-in plugins (``plugins/specforge_*``) are registered exactly this way.
"""

from __future__ import annotations

import pluggy

PROJECT = "specforge"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def specforge_register(registry):
    """Add components: ``registry.add(cls, name=...)`` for each Drafter, Corrector or Verifier
    subclass the plugin provides (the kind comes from the class)."""


@hookspec(firstresult=True)
def specforge_target_adapter(model):
    """Return a ``specforge_core.target.TargetAdapter`` for ``model`` if this plugin knows its
    architecture, else None. Qwen3 / Llama-style models need no adapter."""


@hookspec
def specforge_recipe_dirs():
    """Return a list of directories holding recipes that ``specforge run NAME`` can find."""
