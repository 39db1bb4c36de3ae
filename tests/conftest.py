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
