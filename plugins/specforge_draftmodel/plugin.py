from specforge_core import hookimpl

from .drafter import DraftModelDrafter


@hookimpl
def specforge_register(registry):
    registry.add(DraftModelDrafter, name="draft_model")
