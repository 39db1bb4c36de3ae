from specforge_core import hookimpl

from .drafter import DFlash2Drafter


@hookimpl
def specforge_register(registry):
    registry.add(DFlash2Drafter, name="dflash2")
