"""The plugin manager: pluggy project ``specforge``, entry-point group ``specforge``.

Nothing here knows a plugin by name: built-ins and third-party plugins are both discovered
through their distribution's entry points, and every component remembers the distribution
it came from (``specforge plugins`` shows it).
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional

import pluggy

from . import hookspecs
from .errors import RecipeError, RegistryError
from .interfaces import Component, Corrector, Drafter, LengthPolicy, Verifier

KINDS = {"drafter": Drafter, "corrector": Corrector, "verifier": Verifier, "length_policy": LengthPolicy}


@dataclass(frozen=True)
class Registration:
    kind: str
    name: str
    cls: type
    distribution: str  # "name version" of the distribution whose entry point registered it
    description: str


class _Registrar:
    """What a plugin's ``specforge_register`` receives: adds components on behalf of one
    distribution."""

    def __init__(self, registry: "Registry", distribution: str):
        self._registry = registry
        self._distribution = distribution

    def add(self, cls: type, name: Optional[str] = None, description: Optional[str] = None) -> None:
        self._registry._add(cls, name or getattr(cls, "name", None) or cls.__name__.lower(),
                            self._distribution, description)


class Registry:
    def __init__(self, load_entrypoints: bool = True):
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self._components: dict[tuple[str, str], Registration] = {}
        self._dist_of: dict[int, str] = {}  # id(plugin module) -> "name version"
        if load_entrypoints:
            self._load_entrypoints()
        self._collect()

    def _load_entrypoints(self) -> None:
        """Like pluggy's ``load_setuptools_entrypoints``, but a plugin is named
        ``distribution:entry-point`` - pluggy keys plugins by the bare entry-point name and
        silently skips a second distribution that reuses one (``ngram = ...``)."""
        seen = set()
        for dist in importlib.metadata.distributions():
            dist_name = dist.metadata["Name"]
            for ep in dist.entry_points:
                if ep.group != hookspecs.PROJECT or (dist_name, ep.name, ep.value) in seen:
                    continue  # the same distribution can be visible twice (egg-info + editable)
                seen.add((dist_name, ep.name, ep.value))
                try:
                    plugin = ep.load()
                except Exception as e:
                    raise RegistryError(
                        f"plugin '{ep.name} = {ep.value}' of distribution {dist_name} {dist.version} "
                        f"failed to import: {type(e).__name__}: {e}"
                    ) from None
                if self.pm.is_registered(plugin):
                    continue
                self.pm.register(plugin, name=f"{dist_name}:{ep.name}")
                self._dist_of[id(plugin)] = f"{dist_name} {dist.version}"

    def register_plugin(self, module, distribution: str = "(in-process)") -> None:
        """Register a plugin module directly (for embedding / notebooks)."""
        self.pm.register(module)
        self._dist_of[id(module)] = distribution
        self._components.clear()
        self._collect()

    def _collect(self) -> None:
        # call each plugin's hook with a registrar that knows its distribution
        for impl in self.pm.hook.specforge_register.get_hookimpls():
            dist = self._dist_of.get(id(impl.plugin), impl.plugin_name)
            impl.function(registry=_Registrar(self, dist))

    def _add(self, cls: type, name: str, distribution: str, description: Optional[str]) -> None:
        kind = getattr(cls, "kind", None)
        if kind not in KINDS or not (isinstance(cls, type) and issubclass(cls, KINDS[kind])):
            raise RegistryError(
                f"{distribution}: {cls!r} registered as '{name}' is not a Drafter, Corrector, "
                "Verifier or LengthPolicy subclass (specforge_core.interfaces)"
            )
        if kind == "corrector" and name == "none":
            raise RegistryError(f"{distribution}: 'none' is reserved (no corrector)")
        key = (kind, name)
        if key in self._components:
            other = self._components[key]
            raise RegistryError(
                f"two plugins claim the {kind} name '{name}': {other.cls.__module__}.{other.cls.__qualname__} "
                f"from {other.distribution} and {cls.__module__}.{cls.__qualname__} from {distribution}; "
                "uninstall one of them"
            )
        doc = description or getattr(cls, "description", "") or (cls.__doc__ or "").strip().split("\n")[0]
        self._components[key] = Registration(kind, name, cls, distribution, doc)

    # ---- lookup -------------------------------------------------------------------------
    def names(self, kind: str) -> list[str]:
        return sorted(n for k, n in self._components if k == kind)

    def get(self, kind: str, name: str, key: Optional[str] = None) -> Registration:
        """``key``: the recipe key that named it, for the error (default ``{kind}.name``)."""
        try:
            return self._components[(kind, name)]
        except KeyError:
            allowed = self.names(kind) + (["none"] if kind == "corrector" else [])
            raise RecipeError(
                f"unknown {kind} '{name}' ({key or kind + '.name'}); installed: {', '.join(allowed) or '(none)'}"
            ) from None

    def all(self) -> list[Registration]:
        order = list(KINDS)
        return sorted(self._components.values(), key=lambda r: (order.index(r.kind), r.name))

    def target_adapter(self, model):
        return self.pm.hook.specforge_target_adapter(model=model)

    def recipe_dirs(self) -> list[str]:
        return [str(d) for dirs in self.pm.hook.specforge_recipe_dirs() for d in (dirs or [])]


@lru_cache(maxsize=1)
def default_registry() -> Registry:
    return Registry()


__all__ = ["Registry", "Registration", "default_registry", "Component"]
