"""transformers' own speculative decoding on the same target and prompts, for comparison rows:
``generate(prompt_lookup_num_tokens=N)`` and ``generate(assistant_model=...)``.

The assistant can be any causal LM sharing the tokenizer, or ``early-exit:N``: the target's
own first N decoder layers + its final norm and lm_head, built as a standalone transformers
model (a training-free self-speculative assistant; SmolLM2 has no smaller sibling offline).
"""

from __future__ import annotations

import contextlib
import copy
import time
import torch

from ..errors import ModelLoadError, RecipeError


def early_exit_assistant(target, layers: int):
    """A copy of the target's architecture with its first ``layers`` layers, sharing weights."""
    model = target.model
    n = len(target.adapter.layers)
    if not 1 <= layers < n:
        raise RecipeError(f"bench.assistant_model early-exit:{layers} needs 1 <= N < {n} (the target's layers)")
    cfg = copy.deepcopy(model.config)
    cfg.num_hidden_layers = layers
    if getattr(cfg, "layer_types", None):
        cfg.layer_types = cfg.layer_types[:layers]
    small = type(model)(cfg).to(device=target.device, dtype=target.dtype)
    state = {k: v for k, v in model.state_dict().items()
             if not k.startswith("model.layers.") or int(k.split(".")[2]) < layers}
    missing, unexpected = small.load_state_dict(state, strict=False)
    if [k for k in missing if "rotary" not in k] or unexpected:
        raise RecipeError(f"early-exit assistant: the target's weights do not map onto {layers} layers "
                          f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return small.eval()


def load_assistant(spec: str, target):
    if spec.startswith("early-exit:"):
        return early_exit_assistant(target, int(spec.split(":", 1)[1]))
    from transformers import AutoModelForCausalLM

    from ..hub import require_hub_or_cache

    require_hub_or_cache(spec, None, "bench.assistant_model")  # offline: one line now, not after retries
    try:
        return AutoModelForCausalLM.from_pretrained(spec, dtype=target.dtype).to(target.device).eval()
    except Exception as e:
        raise ModelLoadError(f"could not load bench.assistant_model '{spec}': {str(e).splitlines()[0][:200]}") from None


def hf_generate(target, ids: torch.Tensor, max_new: int, stop: list[int], temperature: float, **spec_kwargs):
    """One ``generate`` call with transformers' speculative options; returns (new tokens, seconds)."""
    from transformers import GenerationConfig

    sample = temperature > 0
    # every generation option goes into the config (options passed next to a config are deprecated);
    # only the assistant model itself is a keyword
    options = {k: v for k, v in spec_kwargs.items() if k != "assistant_model"}
    cfg = GenerationConfig(max_new_tokens=max_new, do_sample=sample, temperature=temperature if sample else None,
                           top_k=None, top_p=None, eos_token_id=stop or None, pad_token_id=stop[0] if stop else 0,
                           **options)
    models = {k: v for k, v in spec_kwargs.items() if k == "assistant_model"}
    ids = ids.to(target.device)
    if target.device.type == "cuda":
        torch.cuda.synchronize(target.device)
    t0 = time.perf_counter()
    with torch.inference_mode(), _quiet_assistant_generate():
        out = target.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=cfg,
                                    **models)
    if target.device.type == "cuda":
        torch.cuda.synchronize(target.device)
    return out[0, ids.shape[1]:].tolist(), time.perf_counter() - t0


@contextlib.contextmanager
def _quiet_assistant_generate():
    """transformers' assisted generation calls the assistant's ``generate`` with a config plus
    keyword options itself (candidate_generator.py) and then warns that this is deprecated, once
    per call; nothing on our side can avoid it. Drop exactly that record, only during our call."""
    import logging

    class _Drop(logging.Filter):
        def filter(self, record):
            return not record.getMessage().startswith("Passing `generation_config` together with")

    log, f = logging.getLogger("transformers.generation.utils"), _Drop()
    log.addFilter(f)
    try:
        yield
    finally:
        log.removeFilter(f)


def baseline_methods(pipe) -> list[tuple[str, dict]]:
    """(label, generate kwargs) for the rows the recipe's `bench` section asks for."""
    b = pipe.cfg.bench
    out = []
    if b.prompt_lookup_num_tokens > 0:
        out.append((f"hf-prompt-lookup({b.prompt_lookup_num_tokens})",
                    {"prompt_lookup_num_tokens": int(b.prompt_lookup_num_tokens)}))
    if b.assistant_model:
        assistant = load_assistant(b.assistant_model, pipe.target)
        # an early-exit assistant is the target's first layers with no training for drafting: say so
        what = (f"untrained early-exit assistant, the target's first {b.assistant_model.split(':', 1)[1]} layers"
                if b.assistant_model.startswith("early-exit:") else b.assistant_model)
        out.append((f"hf-assisted({what})", {"assistant_model": assistant}))
    return out
