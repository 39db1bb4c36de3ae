"""One verify forward of the target over n rows (anchor + n-1 chain drafts) after a 128-token prompt:
transformers' dynamic cache (eager), our static cache (eager), our static cache replayed from a CUDA
graph (the bucket's graph; ``target.cuda_graphs``).

    python -m pytest benchmarks/bench_verify.py --benchmark-enable

On CUDA: Qwen3-8B layer shapes (H 4096, V 151936, 32 / 8 heads) with 4 decoder layers in bf16, so
a launch-bound forward shows (36 layers: scripts/gpu_check.py). On a CPU: a tiny Qwen3 in fp32, and
the graph case skips. Each case records the rows and the model in ``extra_info``.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from specforge_core.target import TargetModel
from specforge_verify.chain import ChainOptions, ChainVerifier

CUDA = torch.cuda.is_available()
DEV = torch.device("cuda" if CUDA else "cpu")
if CUDA:
    MODEL = dict(vocab_size=151936, hidden_size=4096, intermediate_size=12288, num_hidden_layers=4,
                 num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960)
    DTYPE, ROWS = torch.bfloat16, (1, 8, 16)
else:
    MODEL = dict(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, max_position_embeddings=4096, initializer_range=0.2)
    DTYPE, ROWS = torch.float32, (1, 8)
PROMPT = 128


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    with torch.device(DEV):
        return AutoModelForCausalLM.from_config(AutoConfig.for_model("qwen3", **MODEL), dtype=DTYPE).eval()


def _sync():
    if CUDA:
        torch.cuda.synchronize()


@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("mode", ["dynamic", "static", "static_graphs"])
def test_verify(benchmark, model, mode, rows):
    if mode == "static_graphs" and not CUDA:
        pytest.skip("CUDA graphs need CUDA")
    target = TargetModel(model)
    if mode != "dynamic":
        target.use_static_cache(cuda_graphs=mode == "static_graphs")
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, MODEL["vocab_size"], (1, PROMPT), generator=g).to(DEV)
    target.prefill(prompt)
    cands = ChainVerifier(ChainOptions()).propose(torch.randint(0, MODEL["vocab_size"], (1, rows - 1),
                                                                generator=g).to(DEV), None)
    drop = torch.zeros(0, dtype=torch.long, device=DEV)

    def run():
        target.verify(prompt[:, -1], cands)
        target.keep(drop)  # every round sees the same context
        _sync()

    benchmark.extra_info.update({"mode": mode, "rows": rows, "device": str(DEV), "dtype": str(DTYPE),
                                 "layers": MODEL["num_hidden_layers"], "hidden": MODEL["hidden_size"]})
    benchmark.pedantic(run, rounds=30 if CUDA else 5, iterations=1, warmup_rounds=3 if CUDA else 1)
