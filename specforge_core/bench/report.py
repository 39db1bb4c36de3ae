"""Benchmark outputs people look at: Spec-Bench answer JSONL and matplotlib PNG plots."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path


def write_answers(results, directory: str, pipe_tokenizer=None) -> list[Path]:
    """One ``<method>.jsonl`` per method in Spec-Bench's answer format:
    ``{question_id, category, answer_id, model_id, choices: [{index, turns, new_tokens, wall_time,
    accept_lengths}], tstamp}`` (first turn only)."""
    out_dir = Path(directory)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for r in results:
        f = out_dir / f"{r.method.replace('+', '-')}.jsonl"
        with open(f.with_suffix(".tmp"), "w") as fh:
            for p in r.prompts:
                text = pipe_tokenizer.decode(p["output_ids"], skip_special_tokens=True) if pipe_tokenizer else ""
                fh.write(json.dumps({
                    "question_id": p["question_id"], "category": p["category"], "answer_id": uuid.uuid4().hex,
                    "model_id": r.method, "tstamp": time.time(),
                    "choices": [{"index": 0, "turns": [text], "new_tokens": [p["new_tokens"]],
                                 "wall_time": [p["wall_time"]], "accept_lengths": p["accept_lengths"]}],
                }) + "\n")
        f.with_suffix(".tmp").replace(f)
        files.append(f)
    return files


def write_plots(results, directory: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    spec = [r for r in results if r.tau is not None]  # SpecForge methods (baselines expose no counters)

    fig, ax = plt.subplots(figsize=(7, 4))
    for r in spec:  # only the verified positions (num_speculative_tokens cuts the block): none is drawn as 0
        ax.plot(range(1, len(r.accept_per_position) + 1), r.accept_per_position, marker="o",
                label=f"{r.method} ({len(r.accept_per_position)} verified)")
    ax.set(xlabel="draft position", ylabel="acceptance rate (per cycle)", title="Acceptance per verified position",
           ylim=(0, 1))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    files.append(_save(fig, out / "acceptance_per_position.png"))

    fig, ax = plt.subplots(figsize=(7, 4))
    longest = max((max(p["accept_lengths"], default=1) for r in spec for p in r.prompts), default=1)
    bins = [x - 0.5 for x in range(1, longest + 2)]
    for r in spec:
        lengths = [a for p in r.prompts for a in p["accept_lengths"]]
        ax.hist(lengths, bins=bins, alpha=0.5, label=f"{r.method} (tau {r.tau:.2f})", density=True)
    ax.set(xlabel="tokens committed per target forward", ylabel="fraction of cycles",
           title="Accepted-length histogram")
    ax.legend(fontsize=8)
    files.append(_save(fig, out / "accept_length_histogram.png"))

    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(results)), 4))
    x = list(range(len(results)))
    ax.bar(x, [r.speedup for r in results], color=["C0" if r.speedup >= 1 else "C3" for r in results])
    # the median of per-prompt ratios may sit just outside the per-repeat range: no negative bars
    lo = [max(0.0, r.speedup - r.speedup_range[0]) for r in results]
    hi = [max(0.0, r.speedup_range[1] - r.speedup) for r in results]
    ax.errorbar(x, [r.speedup for r in results], yerr=[lo, hi], fmt="none", ecolor="k", capsize=3, lw=0.8)
    ax.axhline(1.0, color="k", lw=0.8, ls="--")
    ax.set_xticks(x, [r.method for r in results], rotation=30, ha="right", fontsize=8)
    ax.set(ylabel="speedup vs autoregressive (median, range over repeats)", title=f"Speedup per method ({results[0].device})")
    files.append(_save(fig, out / "speedup.png"))

    from .calibration import plot_reliability

    fig = plot_reliability(results)  # only when some method's length policy predicted acceptance
    if fig is not None:
        files.append(_save(fig, out / "reliability_diagram.png"))
    return files


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(path)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
