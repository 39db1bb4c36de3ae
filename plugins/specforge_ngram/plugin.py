from specforge_core import hookimpl

from .drafter import NgramDrafter


@hookimpl
def specforge_register(registry):
    registry.add(NgramDrafter, name="ngram")
