"""Errors users see. The CLI prints ``str(err)`` for these - no traceback wall."""


class SpecForgeError(Exception):
    """Base class: a clear message for a user mistake or an unusable input."""


class RecipeError(SpecForgeError):
    """Unknown key, wrong type, unknown plugin or incompatible mix in a recipe."""


class RegistryError(SpecForgeError):
    """Plugin registration problem (e.g. two plugins claim the same name)."""


class IncompatibleError(SpecForgeError):
    """Drafter / corrector / target shapes that cannot work together."""


class InputError(SpecForgeError):
    """Bad request: empty prompt, prompt longer than the context, max_new_tokens <= 0."""


class ModelLoadError(SpecForgeError):
    """A model or checkpoint could not be loaded (no network, missing or corrupt files)."""
