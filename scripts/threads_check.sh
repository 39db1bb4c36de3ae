#!/usr/bin/env bash
# What thread count the CPU decode loop should use (docs/results.md, "Threads"): the quickstart's
# AR and speculative tokens/s with 1 thread, 2 threads and auto, on a quiet machine and with one
# other CPU-bound process (a Python busy loop) sharing the cores. About 6 minutes on 2 cores.
#   bash scripts/threads_check.sh            -> docs/results/threads/*.json
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=docs/results/threads
mkdir -p $OUT
BENCH="specforge bench recipes/quickstart.yaml verifier.length=fixed verifier.length_options=null drafter.num_speculative_tokens=2 prompts.limit=2 generation.max_new_tokens=48 --repeats 2 --no-progress"
for n in 1 2; do $BENCH target.num_threads=$n --json $OUT/quiet_$n.json > /dev/null; done
python -c "while True: pass" &
busy=$!
trap 'kill $busy 2>/dev/null || true' EXIT
sleep 2
for n in 1 2 null; do $BENCH target.num_threads=$n --json $OUT/busy_$n.json > /dev/null; done
kill $busy
python - <<'EOF'
import json
print("| machine state | threads | AR tok/s | quickstart tok/s | speedup |")
print("|---|---|---|---|---|")
for state in ("quiet", "busy"):
    for n in ("1", "2", "null"):
        try:
            r = json.load(open(f"docs/results/threads/{state}_{n}.json"))
        except FileNotFoundError:
            continue
        label = n if n != "null" else f"auto ({r['timing']['threads']})"
        other = "one busy process" if state == "busy" else "quiet"
        print(f"| {other} | {label} | {r['ar_tokens_per_s']:.1f} | {r['tokens_per_s']:.1f} | {r['speedup']:.2f}x |")
EOF
