"""Put a post-trained drafter's weights into a shipped checkpoint that also holds a corrector:
every tensor of SOURCE (a training export, e.g. runs/smollm2_diverse/final) replaces the tensor of the
same name in TARGET_DIR (same shape required; cast to TARGET's dtype); TARGET's other tensors (its
Domino head) and its config.json are kept. Written atomically.

    python scripts/replace_drafter_weights.py runs/smollm2_diverse/final checkpoints/smollm2-dflash-domino
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from safetensors.torch import load_file

from specforge_core.checkpoint import save_file_atomic


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("source", help="a drafter export directory (model.safetensors + config.json)")
    ap.add_argument("target_dir", help="the checkpoint to update in place")
    args = ap.parse_args()
    src, dst = Path(args.source), Path(args.target_dir)
    for key in ("block_size", "dflash_config", "hidden_size", "num_hidden_layers"):  # the same drafter shape
        a, b = (json.loads((d / "config.json").read_text()).get(key) for d in (src, dst))
        if a != b:
            raise SystemExit(f"{src} and {dst} differ in config {key}: {a} vs {b}")
    new, old = load_file(str(src / "model.safetensors")), load_file(str(dst / "model.safetensors"))
    for name, t in new.items():
        if name not in old or old[name].shape != t.shape:
            raise SystemExit(f"{dst} has no tensor {name} of shape {tuple(t.shape)}")
    merged = {name: (new[name].to(t.dtype) if name in new else t) for name, t in old.items()}
    save_file_atomic(merged, dst / "model.safetensors", metadata={"format": "pt"})
    print(f"{dst}: {len(new)} drafter tensors from {src}, {len(old) - len(new)} kept")


if __name__ == "__main__":
    main()
