#!/usr/bin/env bash
# The two training ablations of docs/results.md on the embedded default (SmolLM2-135M-Instruct),
# each against a control that differs in that one setting only:
#   gamma:      one more epoch of the shipped drafter on all 1735 prompts, gamma=2
#               (recipes/ablation_gamma2.yaml) vs gamma=7 (recipes/ablation_extra_epoch.yaml);
#   last layer: a fresh drafter, 2 epochs on the first 876 prompts, target layers 2,15,29
#               (recipes/ablation_last_layer.yaml) vs 2,15,27 (recipes/ablation_layers_2ep.yaml).
# Then held-out tau of every drafter (and the shipped one) on the first 6 MT-Bench questions, 96
# tokens, T=0, at k=3 and with full blocks (scripts/heldout_tau_smollm2.py; deterministic, so a
# busy machine is fine), recorded in docs/results/diagnostics.json; the trainer's own held-out
# tau (recipes/data/smollm2_eval.jsonl, 8 prompts, 64 tokens, full blocks) is printed from
# metrics.jsonl.
#
# Resumable: a finished run (final/model.safetensors) is skipped, an interrupted one resumes from
# its last checkpoint, and the regenerated responses and target features are cached under
# runs/smollm2_dflash_v2/data (shared with the shipped recipes, keyed by content).
# Runtime on a quiet 2-core CPU (docs/training.md's rates: ~1 s per prompt to regenerate,
# ~1.05 s per training step): with empty caches about 90 minutes (regenerating 1735 responses
# ~29 min, target features ~12 min, 4 x ~440 training steps ~31 min, 10 held-out evaluations
# ~15 min); with stage 1/2's caches in place about 50 minutes. Train one thing at a time: two
# processes on 2 cores slow each other down many times over.
#   bash scripts/ablations_smollm2.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"

for name in ablation_layers_2ep ablation_last_layer ablation_extra_epoch ablation_gamma2; do
  if [ -f "runs/$name/final/model.safetensors" ]; then
    echo "== $name: done (runs/$name/final)"
  else
    echo "== $name: specforge train recipes/$name.yaml"
    specforge train "recipes/$name.yaml"
  fi
  python - "runs/$name/metrics.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
last = [r for r in rows if "eval_tau" in r][-1]
print(f"   trainer's held-out tau at step {last['step']}: {last['eval_tau']:.4f}")
PY
done

python scripts/heldout_tau_smollm2.py --k 3 --label shipped
python scripts/heldout_tau_smollm2.py --k full --label shipped
for name in ablation_extra_epoch ablation_gamma2 ablation_layers_2ep ablation_last_layer; do
  python scripts/heldout_tau_smollm2.py --checkpoint "runs/$name/final" --k 3 --label "$name"
  python scripts/heldout_tau_smollm2.py --checkpoint "runs/$name/final" --k full --label "$name"
done
