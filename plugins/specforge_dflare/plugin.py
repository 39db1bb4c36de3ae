from specforge_core import hookimpl
from specforge_dflash.drafter import DFlashDrafter


class DFlareDrafter(DFlashDrafter):
    """DFlare: DFlash with a softmax mix of target layers per draft layer + own context K/V."""

    fusion = True


@hookimpl
def specforge_register(registry):
    registry.add(DFlareDrafter, name="dflare")
