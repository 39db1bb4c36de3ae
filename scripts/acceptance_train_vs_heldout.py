"""How well the shipped SmolLM2 DFlash drafter generalises: tau and per-position acceptance on
its own training prompts vs the same number of held-out MT-Bench prompts, same settings.

The drafter is checkpoints/smollm2-dflash-domino without its Domino head
(``corrector.name=none``), verifying whole 8-token chain blocks
(``drafter.num_speculative_tokens=null``), T=0, chat template: the "DFlash + chain, full" row of
docs/results.md. The first 876 training prompts were seen 16 times (12 epochs of stage 1, 4 of
stage 2; docs/training.md). Nothing is timed: the counters are deterministic at T=0.

    python scripts/acceptance_train_vs_heldout.py            # 6 + 6 prompts, 96 tokens: ~5 min quiet
    python scripts/acceptance_train_vs_heldout.py --prompts 16 --max-new-tokens 64
"""

from __future__ import annotations

import argparse
import time

from diagnostics_common import ROOT, acceptance, record

from specforge_core.build import build_pipeline, load_prompts
from specforge_core.recipe import load_recipe
from specforge_core.training.data import read_prompts

RECIPE = ROOT / "recipes" / "quickstart.yaml"
TRAIN_PROMPTS = ROOT / "recipes" / "data" / "smollm2_train.jsonl"
STAGE1_PROMPTS = 876  # seen in all 16 epochs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=6, help="prompts per set (default 6, as docs/results.md)")
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("overrides", nargs="*", help="extra recipe overrides (key=value)")
    args = ap.parse_args()
    if not 1 <= args.prompts <= STAGE1_PROMPTS:
        raise SystemExit(f"--prompts must be 1..{STAGE1_PROMPTS} (the training prompts seen 16 times)")
    t0 = time.time()
    resolved = load_recipe(str(RECIPE), ["corrector.name=none", "drafter.num_speculative_tokens=null", "verifier.length=fixed", "verifier.length_options=null",
                                         f"prompts.limit={args.prompts}", *args.overrides])
    pipe = build_pipeline(resolved)
    sets = {"training_prompts": read_prompts(str(TRAIN_PROMPTS), limit=args.prompts),
            "held_out_mt_bench": [p.text for p in load_prompts(resolved)]}
    out = {}
    for name, texts in sets.items():
        out[name] = acceptance(pipe, texts, args.max_new_tokens)
        r = out[name]
        print(f"{name:18s} ({len(texts)} prompts, {r['cycles']} cycles): tau {r['tau']:.3f}, "
              f"accepted at position 1..3: {', '.join(f'{x:.3f}' for x in r['accept_per_position'][:3])}, "
              f"P(2|1) {r['p2_given_1']}", flush=True)
    runtime = round(time.time() - t0)
    print(f"runtime {runtime} s")
    record("acceptance_train_vs_heldout", {
        "what": "DFlash drafter of checkpoints/smollm2-dflash-domino (no Domino head), chain, full 8-token "
                "blocks, T=0: its first training prompts (seen 16 times) vs held-out MT-Bench",
        "prompts_per_set": args.prompts, "max_new_tokens": args.max_new_tokens, "overrides": args.overrides,
        **out, "runtime_s": runtime})


if __name__ == "__main__":
    main()
