"""Training forward vs decode-time drafts of the shipped SmolLM2 DFlash drafter, on sequences of
its own training data (specforge_core.training.draft_agreement; tests/test_draft_train_matches_inference.py
checks the same on tiny models).

The sequences are built as training builds them: the first N prompts of
recipes/data/smollm2_train.jsonl with the response SmolLM2 regenerates greedily (the settings of
recipes/train_dflash_smollm2.yaml, cached under runs/diagnostics/data). For every anchor that
decoding visits (each cycle commits 1, 2, 3, 4, 1, ... tokens), the drafter's 7 drafts from the
training forward and from the draft-KV-cache decode path are compared (greedy token of each).
Prints how many drafted positions differ and the largest hidden-state difference.

    python scripts/draft_agreement_smollm2.py                 # 4 sequences: ~2 min quiet
    python scripts/draft_agreement_smollm2.py --sequences 8 --steps 1
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from diagnostics_common import ROOT, record

from specforge_core.build import drafter_block_size, load_target
from specforge_core.recipe import load_recipe, resolve_path
from specforge_core.training.data import RegenConfig, read_prompts, regenerate
from specforge_core.training.draft_agreement import differing_drafts, training_and_decode_drafts
from specforge_core.training.fingerprint import target_identity

RECIPE = ROOT / "recipes" / "train_dflash_smollm2.yaml"
CHECKPOINT = ROOT / "checkpoints" / "smollm2-dflash-domino"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sequences", type=int, default=4, help="training sequences (default 4)")
    ap.add_argument("--steps", default="1,2,3,4", help="tokens committed per cycle, cycled (default 1,2,3,4; 1 = every anchor)")
    args = ap.parse_args()
    steps = [int(s) for s in args.steps.split(",")]
    if args.sequences < 1 or not steps or min(steps) < 1:
        raise SystemExit("--sequences and every --steps value must be >= 1")
    t0 = time.time()
    r = load_recipe(str(RECIPE), [f"drafter.checkpoint={CHECKPOINT}", "drafter.options.config=null"])
    cfg, tr = r.cfg, r.cfg.training
    target = load_target(cfg.target)
    block_size, _ = drafter_block_size(cfg.drafter.block_size, r.drafter_cls, str(CHECKPOINT))
    drafter = r.drafter_cls(r.drafter_options, block_size=block_size, checkpoint=str(CHECKPOINT))
    drafter.bind(target)
    target.capture(drafter.context_layers)
    drafter.model.eval()

    prompts = read_prompts(resolve_path(tr.data.prompts, r.path), limit=args.sequences)
    regen = RegenConfig(max_new_tokens=tr.data.regen_max_new_tokens, temperature=tr.data.regen_temperature,
                        max_length=tr.data.max_length, chat_template=cfg.generation.chat_template,
                        system_prompt=cfg.generation.system_prompt, seed=tr.seed,
                        batch_size=min(tr.data.regen_batch_size, args.sequences))
    sequences = regenerate(target, prompts, regen, ROOT / "runs" / "diagnostics" / "data",
                           target_identity(target, cfg.target), progress=False)

    differ = compared = anchors = 0
    max_diff = 0.0
    for seq in sequences:
        ids = seq.input_ids[None].to(target.device)  # [1, S]
        prompt_len = int((seq.loss_mask == 0).sum())  # the response follows the prompt
        with torch.inference_mode():
            feats = target.hidden_features(ids)  # [1, S, T*H]
        pairs = training_and_decode_drafts(drafter, ids, feats, prompt_len, steps)
        d, n = differing_drafts(pairs, drafter.project_logits)
        differ, compared, anchors = differ + d, compared + n, anchors + len(pairs)
        max_diff = max([max_diff] + [float((p.training - p.decode).abs().max()) for p in pairs])
        print(f"sequence of {ids.shape[1]} tokens ({ids.shape[1] - prompt_len} response): {len(pairs)} anchors, "
              f"{d} of {n} drafts differ", flush=True)
    runtime = round(time.time() - t0)
    print(f"total: {anchors} anchors x {drafter.drafts_per_block} positions: {differ} of {compared} drafts differ; "
          f"max |training - decode| hidden {max_diff:.2e}; runtime {runtime} s")
    key = "draft_agreement_smollm2" + ("" if args.steps == "1,2,3,4" else "_steps" + "-".join(map(str, steps)))
    record(key, {
        "what": "shipped SmolLM2 DFlash drafter: training forward vs decode-time drafts (greedy token per "
                "drafted position) at every anchor decoding visits, on training sequences",
        "sequences": len(sequences), "steps": steps, "anchors": anchors, "positions_per_anchor": drafter.drafts_per_block,
        "drafts_compared": compared, "drafts_differing": differ, "max_abs_hidden_diff": max_diff,
        "target_dtype": str(target.dtype).replace("torch.", ""), "runtime_s": runtime})


if __name__ == "__main__":
    main()
