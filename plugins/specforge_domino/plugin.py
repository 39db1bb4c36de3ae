from specforge_core import hookimpl

from .corrector import DominoCorrector


@hookimpl
def specforge_register(registry):
    registry.add(DominoCorrector, name="domino")
