from specforge_core import hookimpl

from .chain import ChainVerifier


@hookimpl
def specforge_register(registry):
    registry.add(ChainVerifier, name="chain")
