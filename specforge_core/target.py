"""TargetModel: a thin wrapper over any Hugging Face causal LM.

It owns one request's KV cache (transformers' ``DynamicCache``, never a copy of the model)
and does the three things the scheduler needs:

* ``prefill(prompt)``      - fill the cache, return the last logits + context features;
* ``verify(anchor, cands)``- one forward over ``[anchor, candidates...]`` (a chain, or a tree
                             through a 4D ancestor mask and explicit positions);
* ``keep(rows)``           - keep only the accepted rows of that forward in the cache
                             (crop for a chain prefix, compaction for a tree path).

Context features (the hidden states a drafter asks for) are ``hidden_states[l + 1]`` of
transformers' ``output_hidden_states``, as the reference DFlash / Domino code takes them: the
output of decoder layer ``l``, except for the very last layer, where transformers reports the
state *after the final norm* (so a published checkpoint that lists the last layer drafts as it
was trained). They are captured with forward hooks on exactly the requested decoder layers
(the final norm for the last one), in the same forward that verifies - not via
``output_hidden_states=True``, which would materialise every layer.

The KV cache is passed by the keyword the model's ``forward`` takes (``cache_argument_name``).
"""

from __future__ import annotations

import inspect
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
from torch import nn
from transformers import DynamicCache

from .errors import IncompatibleError, InputError
from .interfaces import Candidates
from .projection import few_row_linears

Tensor = torch.Tensor


@dataclass
class TargetAdapter:
    """Where a target architecture keeps its parts. Qwen3 / Llama-style models need nothing
    special (``default_adapter``); a plugin supplies one through the
    ``specforge_target_adapter`` hook for anything else."""

    embed_tokens: nn.Module  # ids [b, t] -> [b, t, d]
    layers: Sequence[nn.Module]  # decoder layers; layer l's output is hidden_states[l + 1]
    lm_head: nn.Module  # [.., d] -> [.., V]
    hidden_size: int
    vocab_size: int
    context_length: int  # max positions the target supports
    # applied to the last layer's output: transformers' hidden_states[-1] is its output
    final_norm: Optional[nn.Module] = None


def default_adapter(model: nn.Module) -> TargetAdapter:
    """Adapter for models laid out as ``model.model.layers`` (Qwen2/3, Llama, Mistral, ...)."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise IncompatibleError(
            f"{type(model).__name__} does not keep its decoder layers at `model.model.layers`; "
            "install a plugin that implements the `specforge_target_adapter` hook for it"
        )
    cfg = model.config
    text_cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    return TargetAdapter(
        embed_tokens=model.get_input_embeddings(),
        layers=layers,
        lm_head=model.get_output_embeddings(),
        hidden_size=int(text_cfg.hidden_size),
        vocab_size=int(text_cfg.vocab_size),
        context_length=int(getattr(text_cfg, "max_position_embeddings", 1 << 30)),
        final_norm=getattr(inner, "norm", None),
    )


def cache_argument_name(model: nn.Module) -> str:
    """The keyword ``model.forward`` takes its KV cache by. transformers 5.24 renamed
    ``past_key_values`` to ``cache`` (the old name is deprecated and removed in 5.40); older
    releases and remote-code models know only ``past_key_values``. Giving those ``cache=``
    would not fail: it would vanish into ``**kwargs`` and the model would run without a cache."""
    params = inspect.signature(model.forward).parameters
    for name in ("cache", "past_key_values"):
        if name in params:
            return name
    raise IncompatibleError(f"{type(model).__name__}.forward takes neither `cache` nor `past_key_values`: "
                            "SpecForge needs a model that runs with a KV cache")


class TargetModel:
    def __init__(self, model: nn.Module, tokenizer: Any = None, adapter: Optional[TargetAdapter] = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.adapter = adapter or default_adapter(model)
        self.cache_argument = cache_argument_name(model)
        self.cache: Optional[DynamicCache] = None
        self._capture_layers: tuple[int, ...] = ()
        self._captured: dict[int, Tensor] = {}
        self._hooks: list = []
        # verify forwards over few rows use the faster matmul layout on a CPU (projection.py)
        self.fast_few_rows = True
        self.static = None  # a StaticVerify (static_verify.py) once use_static_cache() is called

    # ---- properties -------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def hidden_size(self) -> int:
        return self.adapter.hidden_size

    @property
    def vocab_size(self) -> int:
        return self.adapter.vocab_size

    @property
    def num_layers(self) -> int:
        return len(self.adapter.layers)

    @property
    def context_length(self) -> int:
        return self.adapter.context_length

    @property
    def cache_len(self) -> int:
        return 0 if self.cache is None else int(self.cache.get_seq_length())

    # ---- context-feature capture ------------------------------------------------------
    def capture(self, layers: Sequence[int]) -> None:
        """Capture the outputs of these decoder layers in every later forward."""
        layers = tuple(int(l) for l in layers)
        bad = [l for l in layers if not 0 <= l < self.num_layers]
        if bad:
            raise IncompatibleError(
                f"context layers {bad} do not exist: the target has {self.num_layers} layers (0..{self.num_layers - 1})"
            )
        for h in self._hooks:
            h.remove()
        self._hooks = []
        self._capture_layers = layers
        for l in sorted(set(layers)):
            self._hooks.append(self._feature_module(l).register_forward_hook(self._make_hook(l)))

    def _feature_module(self, layer: int) -> nn.Module:
        """The module whose output is ``hidden_states[layer + 1]``: the decoder layer, or for
        the last layer the final norm (reference DFlash ``extract_context_feature`` indexes
        transformers' ``hidden_states``, whose last entry is post-norm)."""
        if layer < self.num_layers - 1:
            return self.adapter.layers[layer]
        if self.adapter.final_norm is None:
            raise IncompatibleError(
                f"context layer {layer} is the target's last: its feature is the state after the final norm "
                "(transformers' hidden_states[-1]), and the target adapter names no `final_norm`"
            )
        return self.adapter.final_norm

    def _make_hook(self, layer: int):
        def hook(module, inputs, output):
            self._captured[layer] = output[0] if isinstance(output, tuple) else output

        return hook

    def _features(self) -> Optional[Tensor]:
        if not self._capture_layers:
            return None
        feats = torch.cat([self._captured[l] for l in self._capture_layers], dim=-1)  # [b, rows, T*d]
        self._captured.clear()
        return feats

    # ---- forward passes ---------------------------------------------------------------
    def cache_kwargs(self) -> dict:
        """``{keyword: self.cache}`` for a cached forward of ``self.model`` (``cache_argument_name``)."""
        return {self.cache_argument: self.cache}

    def use_static_cache(self, cuda_graphs: bool = False) -> None:
        """Fixed KV buffers (``target.static_cache``) and, on CUDA, the verify forward replayed
        from CUDA graphs per bucketed row count (``target.cuda_graphs``); see static_verify.py."""
        from .static_verify import StaticVerify

        self.static = StaticVerify(self, cuda_graphs)

    def reset(self) -> None:
        self.cache = DynamicCache(config=self.model.config) if self.static is None else self.static.reset()
        self._captured.clear()

    def check_prompt(self, prompt_len: int, max_new_tokens: int) -> None:
        if prompt_len == 0:
            raise InputError("the prompt is empty: give at least one token")
        if max_new_tokens <= 0:
            raise InputError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if prompt_len + max_new_tokens > self.context_length:
            raise InputError(
                f"prompt of {prompt_len} tokens + max_new_tokens {max_new_tokens} = "
                f"{prompt_len + max_new_tokens} exceeds the target's context window of "
                f"{self.context_length} tokens"
            )

    @torch.inference_mode()
    def prefill(self, input_ids: Tensor) -> "tuple[Tensor, Optional[Tensor]]":
        """``input_ids [b, t]`` -> (logits of the last position ``[b, V]``, features ``[b, t, F]``)."""
        self.reset()
        if self.static is not None:
            return self.static.prefill(input_ids)
        out = self.model(input_ids=input_ids, use_cache=True, logits_to_keep=1, **self.cache_kwargs())
        return out.logits[:, -1].float(), self._features()

    @torch.inference_mode()
    def verify(self, anchor: Tensor, candidates: Candidates) -> "tuple[Tensor, Optional[Tensor]]":
        """Forward ``[anchor, candidates]`` -> (logits ``[b, n+1, V]``, features ``[b, n+1, F]``)."""
        if self.static is not None:
            return self.static.verify(anchor, candidates)
        past = self.cache_len
        ids = torch.cat([anchor[:, None], candidates.tokens], dim=1)  # [b, n+1]
        depths = torch.cat([candidates.depths.new_zeros(1), candidates.depths])  # [n+1]
        positions = (past + depths).to(ids.device)[None].expand(ids.shape[0], -1)
        kwargs = {}
        if candidates.attention_mask is not None:
            # ancestor-only tree mask over the new rows; every committed row stays visible
            n1 = ids.shape[1]
            mask = torch.ones(n1, past + n1, dtype=torch.bool, device=ids.device)
            mask[:, past:] = candidates.attention_mask.to(ids.device)
            kwargs["attention_mask"] = mask[None, None].expand(ids.shape[0], 1, -1, -1)
        with self.verify_kernels():
            out = self.model(
                input_ids=ids, position_ids=positions, use_cache=True, **self.cache_kwargs(), **kwargs
            )
        self._last_fed = ids.shape[1]
        return out.logits.float(), self._features()

    def verify_kernels(self):
        """The context verify forwards run in (a cost model timing verify must use it too)."""
        return few_row_linears(self.model) if self.fast_few_rows and self.device.type == "cpu" else nullcontext()

    @torch.inference_mode()
    def keep(self, rows: Tensor, contiguous: Optional[bool] = None) -> None:
        """Keep the fed rows ``rows [m]`` (indices into the last verify input, ascending,
        starting with 0 = the anchor) and drop the rest from the KV cache. ``contiguous=True``
        (a chain: rows are 0..m-1) skips reading ``rows`` on the host."""
        past = self.cache_len - self._last_fed
        m = int(rows.numel())  # a shape, not a device read
        if contiguous is None:
            contiguous = bool((rows.cpu() == torch.arange(m)).all())
        if not contiguous and self.static is not None:  # one gather over every layer's buffer
            self.cache.move_rows(past, rows)
        elif not contiguous:  # tree path: move the accepted rows' K/V next to the committed ones
            idx = (past + rows).to(self.device)
            for layer in self.cache.layers:
                layer.keys[:, :, past : past + m] = layer.keys.index_select(2, idx)
                layer.values[:, :, past : past + m] = layer.values.index_select(2, idx)
        drop = self.cache.get_seq_length() - (past + m)
        if drop > 0:
            self.cache.crop(-drop)  # transformers 5: crop(-n) removes the last n positions

    @torch.no_grad()
    def hidden_features(self, input_ids: Tensor, attention_mask: Optional[Tensor] = None) -> Tensor:
        """Context features ``[b, S, F]`` of whole sequences (training; no KV cache)."""
        self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, logits_to_keep=1)
        return self._features()

    @torch.no_grad()
    def features_and_logits(self, input_ids: Tensor, attention_mask: Optional[Tensor] = None) -> "tuple[Optional[Tensor], Tensor]":
        """Context features ``[b, S, F]`` and the logits ``[b, S, V]`` (float32; row ``t`` predicts
        token ``t + 1``) of whole sequences in one forward: distillation targets (training)."""
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return self._features(), out.logits.float()

    @torch.inference_mode()
    def greedy_reference(self, input_ids: Tensor, max_new_tokens: int, stop_token_ids: Sequence[int] = ()) -> Tensor:
        """Plain autoregressive greedy decoding with transformers' ``generate`` - the ground
        truth the lossless checks compare against. Returns the new tokens ``[b, <=max_new]``."""
        return self.reference_generate(input_ids, max_new_tokens, stop_token_ids, temperature=0.0)

    @torch.inference_mode()
    def reference_generate(
        self, input_ids: Tensor, max_new_tokens: int, stop_token_ids: Sequence[int] = (),
        temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
    ) -> Tensor:
        from transformers import GenerationConfig

        sample = temperature > 0
        stop = list(stop_token_ids)
        gen_cfg = GenerationConfig(
            max_new_tokens=max_new_tokens,
            min_new_tokens=0,
            do_sample=sample,
            temperature=temperature if sample else None,
            top_k=(top_k or None) if sample else None,
            top_p=top_p if sample else None,
            eos_token_id=stop or None,
            pad_token_id=stop[0] if stop else 0,
        )
        out = self.model.generate(
            input_ids=input_ids, attention_mask=torch.ones_like(input_ids), generation_config=gen_cfg
        )
        return out[:, input_ids.shape[1]:]
