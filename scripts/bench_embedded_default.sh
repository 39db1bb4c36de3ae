#!/usr/bin/env bash
# Regenerates docs/results.md's embedded-default tables and plots: SmolLM2-135M-Instruct on
# this machine. Each `specforge bench` runs AR and every method in ONE process, interleaved per
# prompt, 3 repeats after a warm-up; the speedup is the median over prompts of AR time / method
# time, with its range over the repeats. Run it on a quiet machine (nothing else using the CPU):
# every bench says in its output when the load average was above the threads it used.
#   bash scripts/bench_embedded_default.sh [all|quickstart|methods|baselines|t08|confidence|correctors|smoke]   (default: all)
# About 45 minutes for `all` on 2 CPU cores. Tables: docs/results/tables.md (python scripts/results_table.py FILE.json)
set -euo pipefail
cd "$(dirname "$0")/.."
what="${1:-all}"
OUT=docs/results
DFLARE="drafter.name=dflare drafter.checkpoint=checkpoints/smollm2-dflare-domino"
TREE="verifier.name=tree verifier.options.budget=null"   # cost-aware tree (measured verify cost)
FULL="drafter.num_speculative_tokens=null"                 # verify the whole 8-token block
# the runs documented with a fixed verify length (k=2, the quickstart's until it moved to the confidence policy)
FIXED="verifier.length=fixed verifier.length_options=null drafter.num_speculative_tokens=2"
run() { echo "+ $*" >&2; "$@"; }


if [[ $what == all || $what == methods ]]; then
  # every drafter x corrector x verifier x verify length of the embedded default, one process
  run specforge bench recipes/quickstart.yaml $FIXED prompts.limit=6 generation.max_new_tokens=96 --no-progress \
    --variant "drafter.num_speculative_tokens=1" \
    --variant "drafter.num_speculative_tokens=3" \
    --variant "drafter.num_speculative_tokens=4" \
    --variant "$FULL" \
    --variant "$FULL $TREE" \
    --variant "corrector.name=none drafter.num_speculative_tokens=2" \
    --variant "corrector.name=none drafter.num_speculative_tokens=3" \
    --variant "corrector.name=none $FULL" \
    --variant "corrector.name=none $FULL $TREE" \
    --variant "$DFLARE drafter.num_speculative_tokens=3" \
    --variant "$DFLARE $FULL $TREE" \
    --variant "drafter.name=ngram drafter.checkpoint=null corrector.name=none" \
    --json $OUT/smollm2_t0.json --plots $OUT/smollm2_t0
fi

if [[ $what == all || $what == confidence ]]; then
  # issue 15: fixed verify lengths vs the confidence-scheduled one, same drafter (DFlash + Domino), one process.
  # The head: specforge train recipes/train_confidence_smollm2.yaml (checkpoints/smollm2-confidence-head).
  # `schedule=false` verifies whole blocks but records the head's predictions: the calibration of every position.
  HEAD="verifier.length=confidence verifier.length_options.head=checkpoints/smollm2-confidence-head"
  # Also the correctors on the same drafter at k=2: none / Domino (the base row) / DSpark's Markov head.
  run specforge bench recipes/quickstart.yaml $FIXED bench.prompt_lookup_num_tokens=0 --no-progress \
    --variant "drafter.num_speculative_tokens=1" \
    --variant "drafter.num_speculative_tokens=3" \
    --variant "$FULL verifier.length=confidence verifier.length_options.estimator=draft_probs" \
    --variant "$FULL $HEAD" \
    --variant "$FULL $HEAD verifier.length_options.schedule=false" \
    --variant "corrector.name=none" \
    --variant "corrector.name=markov corrector.checkpoint=checkpoints/smollm2-markov" \
    --json $OUT/smollm2_confidence.json --plots $OUT/smollm2_confidence
fi

if [[ $what == all || $what == correctors ]]; then
  # issue 14: the correctors on the shipped DFlash drafter, whole blocks (7 drafts), chain and tree, one
  # process: none / Domino (the base row) / DFlash2's selector / Domino then the selector.
  # The selector: specforge train recipes/train_selector_smollm2.yaml (checkpoints/smollm2-selector).
  SEL="checkpoints/smollm2-selector"
  WHOLE="verifier.length=fixed verifier.length_options=null $FULL"
  TREE12="verifier.name=tree verifier.options.budget=12"   # 12 nodes: the chain verifies 7
  run specforge bench recipes/quickstart.yaml $WHOLE bench.prompt_lookup_num_tokens=0 --no-progress \
    --variant "corrector.name=none" \
    --variant "corrector.name=selector corrector.checkpoint=$SEL" \
    --variant "corrector.name=[domino,selector] corrector.checkpoint.selector=$SEL" \
    --variant "$TREE12 corrector.name=none" \
    --variant "$TREE12" \
    --variant "$TREE12 corrector.name=selector corrector.checkpoint=$SEL" \
    --variant "$TREE12 corrector.name=[domino,selector] corrector.checkpoint.selector=$SEL" \
    --json $OUT/smollm2_correctors.json --plots $OUT/smollm2_correctors
fi

if [[ $what == all || $what == quickstart ]]; then
  # the README's main job, twice back to back, then `specforge run` (its one-line result must agree)
  run specforge bench recipes/quickstart.yaml --no-progress --json $OUT/quickstart_a.json
  run specforge bench recipes/quickstart.yaml --no-progress --json $OUT/quickstart_b.json
  run specforge run recipes/quickstart.yaml --json $OUT/quickstart_run.json > /dev/null
fi

if [[ $what == all || $what == baselines ]]; then
  # transformers' assisted generation (an untrained early-exit assistant: nothing smaller shares
  # SmolLM2's tokenizer offline) is slow, so it gets its own short run
  run specforge bench recipes/quickstart.yaml $FIXED prompts.limit=3 generation.max_new_tokens=64 --no-progress \
    bench.assistant_model=early-exit:8 --json $OUT/smollm2_baselines.json
fi

if [[ $what == all || $what == t08 ]]; then
  run specforge bench recipes/quickstart.yaml $FIXED prompts.limit=3 generation.max_new_tokens=64 sampling.temperature=0.8 \
    bench.prompt_lookup_num_tokens=0 --no-progress \
    --variant "corrector.name=none" \
    --variant "corrector.name=none verifier.options.rule=match" \
    --variant "$FULL" \
    --variant "$DFLARE" \
    --variant "verifier.name=tree verifier.options.budget=8" \
    --json $OUT/smollm2_t08.json
fi
if [[ $what == all || $what == smoke ]]; then  # the tiny random-weight smoke recipe (seconds)
  run specforge bench recipes/smoke.yaml --no-progress --json $OUT/smoke_t0.json
  run specforge bench recipes/smoke.yaml sampling.temperature=0.8 --no-progress --json $OUT/smoke_t08.json
fi
tables=()
for f in quickstart_a quickstart_b smollm2_t0 smollm2_baselines smollm2_t08 smoke_t0 smoke_t08; do
  [[ -f $OUT/$f.json ]] && tables+=("$OUT/$f.json")
done
python scripts/results_table.py "${tables[@]}" > $OUT/tables.md
echo "tables: $OUT/tables.md" >&2
