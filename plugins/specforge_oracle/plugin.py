from specforge_core import hookimpl

from .drafter import OracleDrafter


@hookimpl
def specforge_register(registry):
    registry.add(OracleDrafter, name="oracle")
