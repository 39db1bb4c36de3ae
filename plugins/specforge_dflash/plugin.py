from specforge_core import hookimpl

from .drafter import DFlashDrafter


@hookimpl
def specforge_register(registry):
    registry.add(DFlashDrafter, name="dflash")
