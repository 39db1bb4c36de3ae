"""transformers' own speculative decoding on the same target and prompts, for comparison rows:
``generate(prompt_lookup_num_tokens=N)`` and ``generate(assistant_model=...)``.

The assistant can be any causal LM sharing the tokenizer, or ``early-exit:N``: the target's
own first N decoder layers + its final norm and lm_head, built as a standalone transformers
model (a training-free self-speculative assistant; SmolLM2 has no smaller sibling offline).
"""

from __future__ import annotations

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

    try:
        return AutoModelForCausalLM.from_pretrained(spec, dtype=target.dtype).to(target.device).eval()
    except Exception as e:
        raise ModelLoadError(f"could not load bench.assistant_model '{spec}': {str(e).splitlines()[0][:200]}") from None


def hf_generate(target, ids: torch.Tensor, max_new: int, stop: list[int], temperature: float, **spec_kwargs):
    """One ``generate`` call with transformers' speculative options; returns (new tokens, seconds)."""
    from transformers import GenerationConfig

    sample = temperature > 0
    cfg = GenerationConfig(max_new_tokens=max_new, do_sample=sample, temperature=temperature if sample else None,
                           top_k=None, top_p=None, eos_token_id=stop or None, pad_token_id=stop[0] if stop else 0)
    ids = ids.to(target.device)
    if target.device.type == "cuda":
        torch.cuda.synchronize(target.device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = target.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=cfg,
                                    **spec_kwargs)
    if target.device.type == "cuda":
        torch.cuda.synchronize(target.device)
    return out[0, ids.shape[1]:].tolist(), time.perf_counter() - t0


def baseline_methods(pipe) -> list[tuple[str, dict]]:
    """(label, generate kwargs) for the rows the recipe's `bench` section asks for."""
    b = pipe.cfg.bench
    out = []
    if b.prompt_lookup_num_tokens > 0:
        out.append((f"hf-prompt-lookup({b.prompt_lookup_num_tokens})",
                    {"prompt_lookup_num_tokens": int(b.prompt_lookup_num_tokens)}))
    if b.assistant_model:
        assistant = load_assistant(b.assistant_model, pipe.target)
        out.append((f"hf-assisted({b.assistant_model})", {"assistant_model": assistant}))
    return out
