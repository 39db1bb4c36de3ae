"""Copy the Markov head out of a checkpoint `specforge train` wrote (drafter keys + markov_head.*)
into a directory of its own, as `corrector.checkpoint` reads it (and as DSpark names it):
config.json with markov_rank / markov_head_type / vocab_size / hidden_size, and model.safetensors
with the markov_head.* tensors alone, in bf16.

    python scripts/extract_markov_head.py runs/smollm2_markov/final checkpoints/smollm2-markov
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from specforge_core.checkpoint import save_checkpoint


def main(src: str, dst: str) -> None:
    cfg = json.loads((Path(src) / "config.json").read_text())
    tensors = {}
    for f in sorted(Path(src).glob("*.safetensors")):
        tensors.update({k: v.to(torch.bfloat16).contiguous() for k, v in load_file(str(f)).items()
                        if k.startswith("markov_head.")})
    if not tensors:
        sys.exit(f"{src}: no markov_head.* tensors")
    config = {k: cfg[k] for k in ("markov_rank", "markov_head_type", "vocab_size", "hidden_size")}
    config.update(architectures=["MarkovHead"], dtype="bfloat16",
                  source=f"markov_head.* of {src} (drafter keys left out)")
    save_checkpoint(Path(dst), config, tensors)
    print(f"{dst}: {', '.join(sorted(tensors))}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
