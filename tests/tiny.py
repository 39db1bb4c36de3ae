"""Tiny random-weight Qwen3 models built in code (never downloaded)."""

from __future__ import annotations

import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from specforge_core.target import TargetModel


def tiny_qwen3_config(vocab: int = 96, hidden: int = 64, layers: int = 2, init_range: float = 0.2,
                      max_positions: int = 512) -> dict:
    """A config dict usable both as a recipe's `target.config` and by `tiny_target`.

    A larger ``initializer_range`` than transformers' 0.02 gives peaked, varied next-token
    distributions, so greedy outputs do not collapse into one repeated token."""
    return dict(model_type="qwen3", vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
                num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2, head_dim=hidden // 4,
                max_position_embeddings=max_positions, initializer_range=init_range, tie_word_embeddings=False)


def tiny_model(seed: int = 0, **kw) -> Qwen3ForCausalLM:
    cfg = tiny_qwen3_config(**kw)
    cfg.pop("model_type")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Qwen3ForCausalLM(Qwen3Config(**cfg)).eval()


def tiny_target(seed: int = 0, **kw) -> TargetModel:
    return TargetModel(tiny_model(seed, **kw))


def eval_tau(recipe: str, overrides: list[str]) -> float:
    """The trainer's evaluation (tau on ``training.eval_limit`` held-out prompts) of the recipe's
    drafter, as ``specforge train`` reports it (``eval_tau``)."""
    from specforge_core.build import load_target
    from specforge_core.recipe import load_recipe
    from specforge_core.training.run import make_evaluator

    r = load_recipe(recipe, overrides)
    target = load_target(r.cfg.target)
    d = r.drafter_cls(r.drafter_options, block_size=r.cfg.drafter.block_size, checkpoint=r.cfg.drafter.checkpoint)
    d.bind(target)
    target.capture(d.context_layers)
    return make_evaluator(r, target, d)()["tau"]
