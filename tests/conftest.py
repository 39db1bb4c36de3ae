import os

import torch  # imports no triton; asking for CUDA initialises no device

# before anything imports triton / huggingface_hub. Without CUDA, Triton runs only in its interpreter;
# with CUDA, TRITON_INTERPRET is left as the user set it (unset: compiled kernels, so the GPU tests run).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ["HF_HUB_OFFLINE"] = "1"  # a hub id fails at once instead of retrying for ~50 s
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # tests/tiny.py

import pytest


@pytest.fixture(autouse=True)
def _autograd_left_on():
    """A test (or a script it calls) that turns autograd off globally breaks every training test
    after it, far from the cause (seen once: torch.set_grad_enabled(False) in a parity script)."""
    yield
    if not torch.is_grad_enabled():
        torch.set_grad_enabled(True)
        pytest.fail("this test left autograd disabled (torch.set_grad_enabled(False) without restoring it)")
