from specforge_core import hookimpl

from .corrector import MarkovCorrector


@hookimpl
def specforge_register(registry):
    registry.add(MarkovCorrector, name="markov")
