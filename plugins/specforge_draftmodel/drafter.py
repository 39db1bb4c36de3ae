"""A small autoregressive LM as the drafter (transformers' ``assistant_model`` idea).

The draft model keeps its own KV cache across cycles. Each cycle it re-syncs with the
committed tokens (crops its cache to the longest prefix it shares with them), then samples
``k`` tokens one at a time with the request's sampler, so ``q`` is its warped distribution -
the verifier's speculative sampling stays exact at T>0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional

import torch
from transformers import DynamicCache

from specforge_core.errors import IncompatibleError, ModelLoadError, RecipeError
from specforge_core.interfaces import DraftBlock, DraftContext, Drafter
from specforge_core.target import cache_argument_name


@dataclass
class DraftModelOptions:
    config: Optional[Dict[str, Any]] = None  # random-weight draft model (tests); else drafter.checkpoint
    init_seed: int = 0


class DraftModelDrafter(Drafter):
    """A small causal LM drafts token by token (sampled with the request's sampler)."""

    Options = DraftModelOptions
    parallel = False

    def __init__(self, options: DraftModelOptions, block_size: int, checkpoint: Optional[str] = None):
        super().__init__(options, block_size, checkpoint)
        if (checkpoint is None) == (options.config is None):
            raise RecipeError("drafter draft_model needs exactly one of drafter.checkpoint (a model dir / hub id) "
                              "or drafter.options.config (random weights)")
        self.model = None
        self.reset()

    def bind(self, target) -> None:
        from transformers import AutoConfig, AutoModelForCausalLM

        if self.checkpoint is not None:
            try:
                model = AutoModelForCausalLM.from_pretrained(self.checkpoint, dtype=target.dtype)
            except Exception as e:
                raise ModelLoadError(f"could not load draft model '{self.checkpoint}': "
                                     f"{str(e).splitlines()[0][:300]}") from None
        else:
            fields = dict(self.options.config)
            config = AutoConfig.for_model(fields.pop("model_type", "qwen3"), **fields)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(self.options.init_seed))
                model = AutoModelForCausalLM.from_config(config, dtype=target.dtype)
        self.model = model.to(target.device).eval()
        self.cache_argument = cache_argument_name(self.model)  # `cache` (transformers >= 5.24) or `past_key_values`
        self.vocab_size = int(self.model.get_output_embeddings().weight.shape[0])
        self.target_vocab = target.vocab_size
        if self.vocab_size > self.target_vocab:
            raise IncompatibleError(
                f"draft model vocab {self.vocab_size} is larger than the target's {self.target_vocab}: "
                "they must share a tokenizer"
            )

    def reset(self) -> None:
        self.cache: Optional[DynamicCache] = None
        self.cached_ids: list[int] = []

    @torch.inference_mode()
    def draft(self, ctx: DraftContext) -> DraftBlock:
        k = min(self.block_size, ctx.max_draft)
        if k <= 0:
            return DraftBlock(tokens=ctx.tokens.new_zeros(1, 0), anchor=ctx.anchor)
        ids = ctx.tokens[0].tolist()
        common = 0
        for a, b in zip(self.cached_ids, ids):
            if a != b:
                break
            common += 1
        common = min(common, len(ids) - 1)  # feed at least the anchor to get next-token logits
        if self.cache is None:
            self.cache = DynamicCache(config=self.model.config)
        drop = self.cache.get_seq_length() - common
        if drop > 0:
            self.cache.crop(-drop)
        feed = ctx.tokens[:, common:]
        sampler = ctx.sampler
        tokens, probs = [], []
        for i in range(k):
            logits = self.model(input_ids=feed, use_cache=True, logits_to_keep=1,
                                **{self.cache_argument: self.cache}).logits[:, -1]
            if self.vocab_size < self.target_vocab:  # q must live on the target's vocabulary
                pad = logits.new_full((1, self.target_vocab - self.vocab_size), float("-inf"))
                logits = torch.cat([logits, pad], -1)
            q = sampler.probs(logits)  # [1, V]
            x = sampler.sample_from_probs(q)  # [1]
            tokens.append(x)
            probs.append(q)
            feed = x[:, None]
        self.cached_ids = ids + [int(t) for t in tokens[:-1]]  # everything fed so far
        block_tokens = torch.stack(tokens, 1)  # [1, k]
        return DraftBlock(tokens=block_tokens, probs=None if sampler.greedy else torch.stack(probs, 1),
                          anchor=ctx.anchor)
