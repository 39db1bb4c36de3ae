from specforge_core import hookimpl

from .chain import ChainVerifier
from .length import FixedLength
from .tree import TreeVerifier


@hookimpl
def specforge_register(registry):
    registry.add(ChainVerifier, name="chain")
    registry.add(TreeVerifier, name="tree")
    registry.add(FixedLength, name="fixed")
