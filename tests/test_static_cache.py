"""The static KV cache path (issue 17): T=0 output identical to greedy decoding for chain and tree
verify (a tree keeps non-contiguous rows, with context features), with and without bucket padding
(the CUDA-graph layout, run eagerly on CPU); kept rows never reallocate the buffers; the cache grows
when a request outgrows it; the recipe switches; and, on CUDA only, the graphed verify."""

from __future__ import annotations

import logging

import pytest
import torch
from tiny import tiny_qwen3_config, tiny_target

from specforge_core import static_verify
from specforge_core.build import build_pipeline
from specforge_core.errors import IncompatibleError
from specforge_core.recipe import load_recipe
from specforge_core.sampling import SamplingParams
from specforge_core.scheduler import SpeculativeGenerator
from specforge_core.static_cache import StaticKVCache
from specforge_core.target import TargetModel
from specforge_dflash.drafter import DFlashDrafter, DFlashOptions
from specforge_oracle.drafter import OracleDrafter, OracleOptions
from specforge_verify.chain import ChainOptions, ChainVerifier
from specforge_verify.tree import TreeOptions, TreeVerifier

GREEDY = SamplingParams(temperature=0.0)


def record_keeps(target: TargetModel) -> list:
    """Wrap the instance's keep() to record the kept rows and the K/V buffer's address after it."""
    seen, keep = [], target.keep

    def recording(rows, *args, **kwargs):
        keep(rows, *args, **kwargs)
        seen.append((rows.tolist(), target.cache.kv.data_ptr()))

    target.keep = recording
    return seen


def oracle(target, prompt, greedy, block, **options):
    d = OracleDrafter(OracleOptions(check=False, **options), block)
    d.bind(target)
    d.follow(torch.cat([prompt, torch.tensor([greedy])], 1))
    return d


@pytest.mark.parametrize("padded", [False, True], ids=["exact", "buckets"])
def test_chain_matches_greedy(padded):
    """Full blocks of 5 and blocks cut after 1 draft (a rejection every cycle), one static target."""
    target = tiny_target(seed=0)
    target.use_static_cache(cuda_graphs=padded)
    keeps = record_keeps(target)
    prompt = torch.tensor([[5, 17, 3, 44, 9, 60, 2, 5, 17]])
    ref = target.greedy_reference(prompt, 30)[0].tolist()
    for accept_len in (None, 1):
        d = oracle(target, prompt, ref, 5, accept_len=accept_len)
        out = SpeculativeGenerator(target, d, ChainVerifier(ChainOptions())).generate(prompt, 30, GREEDY)
        assert out.tokens == ref
        assert {c.num_accepted for c in out.cycles[:-1]} == {accept_len or 5}
    assert len({ptr for _, ptr in keeps}) == 1  # one buffer for both requests: nothing reallocated


@pytest.mark.parametrize("padded", [False, True], ids=["exact", "buckets"])
def test_tree_matches_greedy_with_non_contiguous_rows(padded):
    """vocab 6 and a random DFlash drafter: the accepted path often leaves the first sibling, so the
    kept rows are not a prefix (the K/V move); the drafter reads context features every cycle."""
    target = tiny_target(seed=5, vocab=6, hidden=32, init_range=0.6)
    target.use_static_cache(cuda_graphs=padded)
    keeps = record_keeps(target)
    d = DFlashDrafter(DFlashOptions(config={"num_hidden_layers": 1, "target_layer_ids": [1], "mask_token_id": 5,
                                            "initializer_range": 0.5}, init_seed=2), block_size=4)
    d.bind(target)
    gen = SpeculativeGenerator(target, d, TreeVerifier(TreeOptions(budget=10, topk=3)))
    prompt = torch.tensor([[0, 1, 2, 3, 0, 1]])
    out = gen.generate(prompt, 30, GREEDY)
    assert out.tokens == target.greedy_reference(prompt, 30)[0].tolist()
    assert any(rows != list(range(len(rows))) for rows, _ in keeps)
    assert len({ptr for _, ptr in keeps}) == 1


def test_cache_grows_when_a_request_outgrows_it(monkeypatch):
    monkeypatch.setattr(static_verify, "MIN_CAPACITY", 8)
    monkeypatch.setattr(static_verify, "HEADROOM", 2)
    target = tiny_target(seed=1)
    target.use_static_cache(cuda_graphs=True)
    prompt = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
    ref = target.greedy_reference(prompt, 24)[0].tolist()
    d = oracle(target, prompt, ref, 4, accept_len=2)
    out = SpeculativeGenerator(target, d, ChainVerifier(ChainOptions())).generate(prompt, 24, GREEDY)
    assert out.tokens == ref
    assert target.cache.capacity >= 8 + 24 and target.cache.capacity > 8


def test_cuda_graphs_without_cuda_log_one_line(caplog):
    if torch.cuda.is_available():
        pytest.skip("checks the CPU fallback")
    target = tiny_target(seed=0)
    with caplog.at_level(logging.WARNING, logger="specforge.static_verify"):
        target.use_static_cache(cuda_graphs=True)
    assert [r.getMessage() for r in caplog.records] == [
        "target.cuda_graphs: no CUDA device (cpu); verify runs eagerly on the static cache"]
    assert not target.static.use_graphs and target.static.padded


def test_recipe_switches():
    base = {"target": {"config": tiny_qwen3_config(vocab=260), "tokenizer": "bytes", "device": "cpu"},
            "drafter": {"name": "ngram", "block_size": 4}}
    off = build_pipeline(load_recipe(None, [], base=base))  # null on a CPU: the dynamic cache
    assert off.target.static is None
    on = build_pipeline(load_recipe(None, ["target.cuda_graphs=true"], base=base))
    assert on.target.static is not None and on.target.static.padded  # cuda_graphs implies the static cache
    ids = torch.tensor([[1, 2, 3, 1, 2, 3, 1, 2]])
    assert on.generator.generate(ids, 12).tokens == off.generator.generate(ids, 12).tokens
    assert isinstance(on.target.cache, StaticKVCache)


def test_sliding_window_model_is_refused():
    target = tiny_target(seed=0)
    target.model.config.use_sliding_window = True
    with pytest.raises(IncompatibleError, match="full-attention"):
        target.use_static_cache()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_graph_verify_matches_eager(dtype):
    """GPU: the graphed verify commits the tokens of the eager static verify (same kernels, same
    shapes: bucket padding in both), captures once per bucket, and reuses the graphs next request."""
    outs = []
    for graphs in (False, True):
        target = TargetModel(tiny_target(seed=0).model.to("cuda", dtype))
        target.use_static_cache(cuda_graphs=True)
        target.static.use_graphs = graphs
        d = DFlashDrafter(DFlashOptions(config={"num_hidden_layers": 1, "target_layer_ids": [0, 1],
                                                "initializer_range": 0.2}, init_seed=0), block_size=4)
        d.bind(target)
        gen = SpeculativeGenerator(target, d, ChainVerifier(ChainOptions()))
        prompt = torch.tensor([[5, 17, 3, 44, 9, 60, 2, 5, 17]], device="cuda")
        outs.append(gen.generate(prompt, 24, GREEDY).tokens)
        if graphs:
            captured = target.static.num_captures
            assert captured >= 1
            assert gen.generate(prompt, 24, GREEDY).tokens == outs[-1]
            assert target.static.num_captures == captured  # the graphs were reused
    assert outs[0] == outs[1]


def test_move_rows_moves_every_layer_at_once():
    """One gather over the shared buffer == moving each layer's rows (what TargetModel.keep does)."""
    model = tiny_target(seed=0).model
    cache = StaticKVCache(model.config, 16)
    keys = torch.randn(1, 2, 10, 16)
    cache.write_rows = torch.arange(10)
    for i in range(len(cache.layers)):
        cache.update(keys + i, -keys - i, i)
    cache.length = 10
    rows = torch.tensor([0, 2, 5])  # a tree path: anchor, then nodes 2 and 5, fed at positions 4..9
    expect = [(layer.keys[:, :, 4 + rows].clone(), layer.values[:, :, 4 + rows].clone()) for layer in cache.layers]
    ptr = cache.kv.data_ptr()
    cache.move_rows(4, rows)
    cache.crop(-(10 - 4 - 3))
    for layer, (k, v) in zip(cache.layers, expect):
        assert torch.equal(layer.keys[:, :, 4:7], k) and torch.equal(layer.values[:, :, 4:7], v)
    assert cache.get_seq_length() == 7 and cache.kv.data_ptr() == ptr
