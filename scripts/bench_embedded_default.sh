#!/usr/bin/env bash
# Regenerates docs/results.md's embedded-default tables and plots: SmolLM2-135M-Instruct on
# this machine, every method in ONE process per temperature (same prompts, same AR baseline).
# Run it on a quiet machine (nothing else using the CPU). About 15 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
DFLARE="drafter.name=dflare drafter.checkpoint=checkpoints/smollm2-dflare-domino"
TREE="verifier.name=tree verifier.options.budget=null"   # cost-aware tree (measured verify cost)

FULL="drafter.num_speculative_tokens=null"                 # verify the whole 8-token block
specforge bench recipes/quickstart.yaml prompts.limit=6 generation.max_new_tokens=96 \
  --variant "drafter.num_speculative_tokens=4" \
  --variant "$FULL" \
  --variant "$FULL $TREE" \
  --variant "corrector.name=none $FULL" \
  --variant "corrector.name=none" \
  --variant "corrector.name=none $FULL $TREE" \
  --variant "$DFLARE $FULL" \
  --variant "$DFLARE $FULL $TREE" \
  --variant "$DFLARE corrector.name=none $FULL" \
  --variant "$DFLARE corrector.name=none $FULL $TREE" \
  --variant "drafter.name=ngram drafter.checkpoint=null corrector.name=none $FULL" \
  --json docs/results/smollm2_t0.json --plots docs/results/smollm2_t0

specforge bench recipes/quickstart.yaml prompts.limit=3 generation.max_new_tokens=64 sampling.temperature=0.8 \
  bench.assistant_model=null drafter.num_speculative_tokens=null \
  --variant "corrector.name=none" \
  --variant "corrector.name=none verifier.options.rule=match" \
  --variant "$DFLARE" \
  --variant "verifier.name=tree verifier.options.budget=8" \
  --json docs/results/smollm2_t08.json
