"""Residual sampling vs "sample the target and match" at T > 0, on the tiny trained DFlash
drafter (docs/results.md, "Residual sampling vs ..."; tests/test_training.py asserts residual >
match at T=1).

Both chain-verifier rules are lossless. ``rule=residual`` (SpecForge's default) accepts draft x
with probability min(1, p(x) / q(x)) and resamples a rejection from norm(max(0, p - q)), so a
position is accepted with probability sum_x min(p, q); ``rule=match`` (the DFlash / Domino
reference loops) samples y ~ p and accepts when y == x, i.e. with probability sum_x p q, which
is never larger and is small when p is flat.

Trains recipes/train_dflash_tiny.yaml into runs/dflash_tiny first if runs/dflash_tiny/final is
missing (~1-2 min on 2 cores), then decodes its 8 eval prompts x 5 seeds, 48 new tokens, at each
temperature with each rule and prints tau.

    python scripts/residual_vs_match.py
"""

from __future__ import annotations

import argparse
import time

from diagnostics_common import ROOT, acceptance, record

from specforge_core.build import build_pipeline, load_prompts
from specforge_core.recipe import load_recipe
from specforge_core.training.run import train

RECIPE = str(ROOT / "recipes" / "train_dflash_tiny.yaml")
RULES = ("residual", "match")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--temperatures", default="0,0.8,1.0")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--run", default="runs/dflash_tiny", help="training output dir (trained here if final/ is missing)")
    args = ap.parse_args()
    t0 = time.time()
    run = ROOT / args.run
    if not (run / "final").is_dir():
        print(f"training the tiny DFlash drafter into {args.run} (recipes/train_dflash_tiny.yaml)", flush=True)
        train(load_recipe(RECIPE, [f"training.output_dir={run}"]), progress=False)
    trained_s = round(time.time() - t0)

    rows = []
    for temp in [float(t) for t in args.temperatures.split(",")]:
        row = {"temperature": temp}
        for rule in RULES:
            r = load_recipe(RECIPE, [f"drafter.checkpoint={run / 'final'}", "drafter.options.config=null",
                                     f"sampling.temperature={temp}", f"verifier.options.rule={rule}"])
            pipe = build_pipeline(r)
            texts = [p.text for p in load_prompts(r)]
            res = acceptance(pipe, texts, int(r.cfg.generation.max_new_tokens), seeds=range(args.seeds))
            row[f"tau_{rule}"] = res["tau"]
            row["prompts"], row["max_new_tokens"] = len(texts), int(r.cfg.generation.max_new_tokens)
        rows.append(row)
        print(f"T={temp:g}: tau residual {row['tau_residual']:.3f}, match {row['tau_match']:.3f}", flush=True)
    runtime = round(time.time() - t0)
    print("\n| temperature | tau, residual (default) | tau, match (reference rule) |\n|---|---|---|")
    for row in rows:
        print(f"| {row['temperature']:.1f} | {row['tau_residual']:.3f} | {row['tau_match']:.3f} |")
    print(f"\nruntime {runtime} s (training {trained_s} s)")
    record("residual_vs_match", {
        "what": "tiny trained DFlash (recipes/train_dflash_tiny.yaml), chain verifier, residual vs match rule",
        "seeds": args.seeds, "rows": rows, "training_s": trained_s, "runtime_s": runtime})


if __name__ == "__main__":
    main()
