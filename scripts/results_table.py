"""Print docs/results.md's tables from `specforge bench --json` files, so every figure in them
comes from a measured file and a command.

    python scripts/results_table.py docs/results/smollm2_t0.json [more.json ...]

One row per method (the recipe's, then each --variant, then transformers' baselines): tau, speedup
(median over prompts of AR time / method time) with its range over the interleaved repeats,
tokens/s, per-cycle time split (``propose`` is the corrector's per-block time, with sampling and
building the chain / tree), per-position acceptance (verified positions only), lossless, and the
corrector's parameters when the JSON records them.
The last line says how the run was timed, on which machine, and whether it looked busy.
"""

from __future__ import annotations

import argparse
import json


def rows(result: dict) -> list[dict]:
    return [result, *result.get("variants", []), *result.get("baselines", [])]


def label(r: dict) -> str:
    extra = r.get("overrides")
    return f"{r['method']} `{extra}`" if extra else r["method"]


def params(r: dict) -> str:
    n = r.get("corrector_params")
    return "-" if not n else f"{n / 1e6:.2f} M"


def table(result: dict) -> str:
    with_params = any(r.get("corrector_params") for r in rows(result))  # bench JSON written since issue 14
    out = ["| method | tau | " + ("corrector params | " if with_params else "") + "speedup [range over repeats] | tok/s | "
           "ms per cycle: draft / propose / verify / accept | acceptance at verified positions 1, 2, 3, ... | lossless |",
           "|---|---|" + ("---|" if with_params else "") + "---|---|---|---|---|"]
    ar = result["ar_tokens_per_s"]
    out.append(f"| autoregressive (transformers `generate`) | 1 | " + ("| " if with_params else "") + f"1.00x | {ar:.1f} | | | - |")
    for r in rows(result):
        split = r.get("time_split_ms")
        keys = ("draft", "propose", "verify", "accept")
        split = " / ".join(f"{split[k]:.0f}" for k in keys) if split and all(k in split for k in keys) else ""
        acc = ", ".join(f"{a:.2f}" for a in r.get("accept_per_position", []))
        tau = "-" if r.get("tau") is None else f"{r['tau']:.2f}"
        lo, hi = r["speedup_range"]
        lossless = {True: "yes", False: "**NO**", None: "n/a"}[r["lossless"]]
        out.append(f"| {label(r)} | {tau} | " + (f"{params(r)} | " if with_params else "")
                   + f"{r['speedup']:.2f}x [{lo:.2f}-{hi:.2f}] | {r['tokens_per_s']:.1f} | "
                   f"{split} | {acc} | {lossless} |")
    t = result["timing"]
    out.append("")
    out.append(f"{result['n_prompts']} prompts x {result['repeats']} interleaved repeats after {t['warmup']} warm-up, "
               f"{result['max_new_tokens']} new tokens, T={result['temperature']:g}; {t['machine']['hardware']}, "
               f"torch {t['machine']['torch']}; load average {t['load_average']:.2f}"
               + (" (THE MACHINE LOOKED BUSY)" if t.get("busy") else " (quiet)"))
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("json", nargs="+", help="bench JSON files")
    args = p.parse_args()
    for f in args.json:
        print(f"<!-- python scripts/results_table.py {f} -->")
        print(table(json.load(open(f))))
        print()


if __name__ == "__main__":
    main()
