"""The decode loop reads the device once per cycle (the accepted count and the committed tokens,
together), plus once at prefill. On a GPU every device-to-host read is a sync that stalls the
launch queue; on a CPU it is free, so the test counts the reads themselves: every Tensor method
that hands a value to Python (``item``, ``tolist``, ``int()``, ``bool()``, ``float()``, ``cpu``,
``numpy``, ``__index__``), wherever in the cycle it is called (scheduler, drafter, corrector,
verifier, the target's forward)."""

import collections
import traceback

import pytest
import torch

from specforge_core.sampling import SamplingParams
from specforge_core.scheduler import SpeculativeGenerator
from specforge_verify.chain import ChainVerifier
from test_domino import block_drafter, domino
from tiny import tiny_target

READS = ["item", "tolist", "__int__", "__bool__", "__float__", "cpu", "numpy", "__index__"]


@pytest.fixture
def host_reads(monkeypatch):
    """Counts device-to-host reads by call site while the fixture is active."""
    counts = collections.Counter()

    def counting(name, method):
        def read(self, *args, **kwargs):
            if self.numel() > 0:
                site = traceback.extract_stack(limit=2)[0]
                counts[f"{name} at {site.filename.rsplit('/', 2)[-1]}:{site.lineno}"] += 1
            return method(self, *args, **kwargs)

        return read

    for name in READS:
        monkeypatch.setattr(torch.Tensor, name, counting(name, getattr(torch.Tensor, name)))
    return counts


@pytest.mark.parametrize("temperature", [0.0, 0.8])
@pytest.mark.parametrize("with_domino", [False, True], ids=["dflash", "dflash+domino"])
def test_one_host_read_per_cycle(host_reads, monkeypatch, temperature, with_domino):
    target = tiny_target(seed=0)
    drafter = block_drafter(block_size=6)
    drafter.bind(target)
    corrector = domino(target, drafter) if with_domino else None
    gen = SpeculativeGenerator(target, drafter, ChainVerifier(), corrector)
    host_reads.clear()
    out = gen.generate(torch.tensor([[1, 2, 3, 4, 5]]), 30, SamplingParams(temperature=temperature, seed=1))
    reads = dict(host_reads)
    monkeypatch.undo()
    assert len(out.cycles) > 5
    assert sum(reads.values()) == len(out.cycles) + 1, reads  # one per cycle + the prefill's first token
