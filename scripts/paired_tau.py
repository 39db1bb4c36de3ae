"""Paired comparison of two held-out tau records in docs/results/diagnostics.json (written by
scripts/heldout_tau_smollm2.py: the same prompts, decoded in the same order): the difference in tau
and its standard error from a paired bootstrap over prompts. Two drafters decode the same
questions, so most of the prompt-to-prompt spread cancels in the difference; the paired standard
error is the one to compare a post-training with its start by. Nothing is decoded here.

    python scripts/paired_tau.py heldout_tau_opd_domino_t1_40_kfull heldout_tau_shipped_diverse_domino_40_kfull
"""

from __future__ import annotations

import argparse
import json
import random
import statistics

from diagnostics_common import RECORD


def tau(rows: list[list[int]], idx: list[int]) -> float:
    """tau = 1 + accepted / cycles over the decodes ``idx`` (``rows``: [accepted, cycles] each)."""
    return 1.0 + sum(rows[i][0] for i in idx) / max(1, sum(rows[i][1] for i in idx))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a", help="a key of docs/results/diagnostics.json (e.g. the post-trained drafter)")
    ap.add_argument("b", help="the key to compare it with (e.g. its start)")
    ap.add_argument("--resamples", type=int, default=4000)
    args = ap.parse_args()
    data = json.loads(RECORD.read_text())
    recs = []
    for key in (args.a, args.b):
        if key not in data:
            raise SystemExit(f"{key}: not in {RECORD}")
        if "per_prompt" not in data[key]:
            raise SystemExit(f"{key}: recorded without per-prompt counts; rerun its scripts/heldout_tau_smollm2.py command")
        recs.append(data[key])
    a, b = recs
    if (a["prompts"], a["source"], a["max_new_tokens"]) != (b["prompts"], b["source"], b["max_new_tokens"]):
        raise SystemExit("the two records decoded different prompts or lengths: no paired comparison")
    ra, rb = a["per_prompt"], b["per_prompt"]
    n = len(ra)
    every = list(range(n))
    diff = tau(ra, every) - tau(rb, every)
    rng = random.Random(0)
    boot_diff, boot_a = [], []
    for _ in range(args.resamples):  # resample prompts, the same ones for both records
        idx = [rng.randrange(n) for _ in range(n)]
        boot_a.append(tau(ra, idx))
        boot_diff.append(boot_a[-1] - tau(rb, idx))
    se, se_a = statistics.stdev(boot_diff), statistics.stdev(boot_a)
    per = [tau(ra, [i]) - tau(rb, [i]) for i in every]
    print(f"{args.a} - {args.b}: tau {tau(ra, every):.4f} - {tau(rb, every):.4f} = {diff:+.4f}; paired SE {se:.4f} "
          f"({diff / se:+.1f} SE; one record's own SE {se_a:.4f}); higher on {sum(d > 0 for d in per)}, "
          f"lower on {sum(d < 0 for d in per)} of {n} prompts")


if __name__ == "__main__":
    main()
