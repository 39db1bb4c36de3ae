from specforge_core import hookimpl

from .policy import ConfidencePolicy


@hookimpl
def specforge_register(registry):
    registry.add(ConfidencePolicy, name="confidence")
