"""The confidence head: DSpark's ``AcceptRatePredictor`` (deepseek-ai/DeepSpec,
``deepspec/modeling/dspark/common.py``): ONE linear layer on the drafter's hidden state at each
block position -> a logit; ``sigmoid`` of it is c_j, the probability that draft j is accepted given
that drafts 1..j-1 were; ``cumprod`` over j is the predicted prefix acceptance (the reference's
``ConfidenceHeadRecorder.observe``: ``sigmoid(confidence_logits).cumprod``).

The reference can also feed the Markov head's previous-token embedding (``confidence_head_with_markov``);
that input depends on the sampled previous draft, which the verify-length choice must not see at
T > 0 (interfaces.LengthPolicy), so only the hidden-state head is built here.

On disk (a directory): ``model.safetensors`` with the reference's key names
``confidence_head.proj.weight [1, d]``, ``confidence_head.proj.bias [1]``, and ``config.json``
``{"hidden_size": d, "enable_confidence_head": true}``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from specforge_core.checkpoint import save_file_atomic
from specforge_core.errors import IncompatibleError, RecipeError

PREFIX = "confidence_head."
FILE = "model.safetensors"


class ConfidenceHead(nn.Module):
    """``hidden [.., d] -> logit [..]`` (DeepSpec ``AcceptRatePredictor.forward``: ``proj(x).squeeze(-1)``)."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.hidden_size = int(hidden_size)
        self.proj = nn.Linear(self.hidden_size, 1)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.proj(hidden).squeeze(-1)


def save_head(head: ConfidenceHead, directory) -> None:
    """Write atomically: each file goes to a temporary name first, then is renamed."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tensors = {PREFIX + k: v.detach().float().cpu().contiguous() for k, v in head.state_dict().items()}
    save_file_atomic(tensors, d / FILE)
    cfg = d / "config.json.tmp"
    cfg.write_text(json.dumps({"hidden_size": head.hidden_size, "enable_confidence_head": True}, indent=1))
    os.replace(cfg, d / "config.json")


def load_head(directory) -> ConfidenceHead:
    d = Path(directory)
    where = "verifier.length_options.head"
    if not (d / FILE).is_file() or not (d / "config.json").is_file():
        raise RecipeError(f"{where}: {d} is not a confidence-head directory (needs {FILE} and config.json)")
    try:
        cfg = json.loads((d / "config.json").read_text())
        tensors = load_file(str(d / FILE))
    except Exception as e:  # truncated / not safetensors / not JSON
        raise RecipeError(f"{where}: cannot read {d}: {type(e).__name__}: {str(e).splitlines()[0]}") from None
    hidden = int(cfg.get("hidden_size", -1))
    head = ConfidenceHead(max(hidden, 1))
    want = {PREFIX + k: tuple(v.shape) for k, v in head.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in tensors.items()}
    missing = sorted(set(want) - set(got))
    if missing:
        raise RecipeError(f"{where}: {d} lacks {', '.join(missing)}")
    bad = [f"{k} {got[k]} (config hidden_size {hidden} needs {want[k]})" for k in want if got[k] != want[k]]
    if bad:
        raise IncompatibleError(f"{where}: {d}: {'; '.join(bad)}")
    head.load_state_dict({k[len(PREFIX):]: tensors[k] for k in want})
    return head
