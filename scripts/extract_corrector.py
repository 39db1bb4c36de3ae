"""Copy a corrector out of a checkpoint `specforge train` wrote (drafter keys + the corrector's) into a
directory of its own, as `corrector.checkpoint` reads it: model.safetensors with the tensors under
``--prefix`` alone (bf16), and config.json with vocab_size / hidden_size and the corrector's own
fields, wherever the source keeps them (top level, or ``dflash_config`` for the selector, as z-lab).

    python scripts/extract_corrector.py runs/smollm2_markov/final checkpoints/smollm2-markov --prefix markov_head.
    python scripts/extract_corrector.py runs/smollm2_selector/final checkpoints/smollm2-selector --prefix candidate_selector.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from specforge_core.checkpoint import save_checkpoint

# the config fields each corrector reads (its plugin's loader), by tensor prefix
FIELDS = {"markov_head.": ("markov_rank", "markov_head_type"), "candidate_selector.": ("selector_rank", "selector_top_k")}
ARCHITECTURE = {"markov_head.": "MarkovHead", "candidate_selector.": "CandidateSelector"}


def main(src: str, dst: str, prefix: str) -> None:
    if prefix not in FIELDS:
        sys.exit(f"--prefix must be one of {', '.join(FIELDS)} (got {prefix!r})")
    cfg = json.loads((Path(src) / "config.json").read_text())
    tensors = {}
    for f in sorted(Path(src).glob("*.safetensors")):
        tensors.update({k: v.to(torch.bfloat16).contiguous() for k, v in load_file(str(f)).items() if k.startswith(prefix)})
    if not tensors:
        sys.exit(f"{src}: no {prefix}* tensors")
    config = {k: cfg[k] for k in ("vocab_size", "hidden_size")}
    nested = cfg.get("dflash_config") or {}
    for name in FIELDS[prefix]:
        if name in nested:
            config.setdefault("dflash_config", {})[name] = nested[name]
        else:
            config[name] = cfg[name]
    config.update(architectures=[ARCHITECTURE[prefix]], dtype="bfloat16", source=f"{prefix}* of {src} (drafter keys left out)")
    save_checkpoint(Path(dst), config, tensors)
    print(f"{dst}: {', '.join(sorted(tensors))}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src", help="a checkpoint directory written by specforge train (drafter + corrector)")
    ap.add_argument("dst", help="the corrector-only directory to write")
    ap.add_argument("--prefix", required=True, help=f"the corrector's tensor prefix: {', '.join(FIELDS)}")
    a = ap.parse_args()
    main(a.src, a.dst, a.prefix)
