"""The target's identity for the training caches (regenerated responses, offline features).

A name alone is not enough: a model directory re-converted, fine-tuned or loaded at another
dtype under the same name answers differently, and a cache keyed by the name would silently
hand the drafter another model's answers. So the identity holds the weights *as loaded*
(sha256 of every state-dict tensor's name, dtype, shape and bytes: exact, device- and
layout-independent, about 1 s per GB), the GGUF file, and the tokenizer (its full definition
and chat template, which shape the prompt tokens).
"""

from __future__ import annotations

import hashlib
import json

import torch


def weights_fingerprint(model: torch.nn.Module) -> str:
    """sha256 over the state dict in key order: name, dtype, shape, then the raw bytes."""
    h = hashlib.sha256()
    with torch.no_grad():
        for name, t in model.state_dict().items():
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
            flat = t.detach().reshape(-1).contiguous().cpu()  # logical values, whatever the layout
            h.update(flat.view(torch.uint8).numpy())  # the buffer itself, no copy on CPU
    return h.hexdigest()[:20]


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of the tokenizer's definition (a fast tokenizer's JSON, else its vocabulary) and
    its chat template."""
    if tokenizer is None:
        return "none"
    backend = getattr(tokenizer, "backend_tokenizer", None)
    definition = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    template = getattr(tokenizer, "chat_template", None)
    return hashlib.sha256(json.dumps([type(tokenizer).__name__, definition, template], default=str).encode()).hexdigest()[:20]


def target_identity(target, target_cfg) -> str:
    """``target.model`` (or its config), ``gguf_file``, the weights and the tokenizer: the
    ``target_id`` the regeneration and feature caches are keyed by."""
    name = target_cfg.model or f"config:{dict(target_cfg.config or {})}:seed{target_cfg.init_seed}"
    return json.dumps({"model": name, "gguf_file": target_cfg.gguf_file, "revision": target_cfg.revision,
                       "weights": weights_fingerprint(target.model),
                       "tokenizer": tokenizer_fingerprint(target.tokenizer)}, sort_keys=True)
