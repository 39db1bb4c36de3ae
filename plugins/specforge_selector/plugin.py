from specforge_core import hookimpl

from .corrector import SelectorCorrector


@hookimpl
def specforge_register(registry):
    registry.add(SelectorCorrector, name="selector")
