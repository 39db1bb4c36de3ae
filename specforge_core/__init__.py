"""SpecForge: lossless speculative decoding with pluggable drafters, correctors and verifiers."""

from .hookspecs import hookimpl
from .interfaces import Accepted, Candidates, Corrector, DraftBlock, DraftContext, Drafter, SparseProbs, Verifier

__version__ = "0.1.0"
__all__ = ["hookimpl", "Drafter", "Corrector", "Verifier", "DraftBlock", "DraftContext", "Candidates", "Accepted", "SparseProbs"]
