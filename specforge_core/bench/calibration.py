"""How well a verify-length policy's confidence predicts acceptance (``specforge bench``).

A policy such as ``verifier.length: confidence`` predicts, each cycle, P(the first j drafts are
all accepted) for the verified positions j = 1 .. n (``CycleStats.prefix_confidence``); the
cycle's outcome for position j is ``num_accepted >= j`` (a tree verifier: the accepted path
length, same rule). Per position this module reports

  count        predictions made at that position;
  pred_mean    mean predicted probability;  target_mean  fraction of those prefixes accepted;
  ece          expected calibration error: 10 equal-width bins over [0, 1], sum over bins of
               (bin count / count) * |mean prediction - mean outcome| in the bin;
  auc          AUROC, rank-based from a 1000-bin histogram of the predictions (a positive and a
               negative in the same fine bin count half); None when only one outcome occurred;
  brier        mean (prediction - outcome)^2;
  reliability  the non-empty coarse bins: range, avg_pred, avg_target, count (the diagram's data);

and a summary over positions weighted by count (``ece_mean``, ``auc_mean`` over the positions
that have an AUROC, ``brier_mean``, ``pred_mean``, ``target_mean``).

The definitions are those of DeepSeek's DeepSpec evaluation (deepspec/eval/dspark/
confidence_head.py); each piece below names the reference function it follows. Predictions are
clamped to [1e-8, 1 - 1e-8] before everything, as there.
"""

from __future__ import annotations

import math
from typing import Iterable, Optional, Sequence

EPS_PROB = 1e-8
NUM_BINS = 10  # coarse bins: ECE and the reliability diagram
NUM_FINE_BINS = 1000  # fine bins: the AUROC histogram
MAX_PLOT_POSITIONS = 8


def _bin(p: float, n: int) -> int:
    # as PerPositionConfidenceMetrics.update: idx = floor(p * n), clamped to [0, n - 1]
    return min(max(int(p * n), 0), n - 1)


class _Position:
    """The sums one position needs (PerPositionConfidenceMetrics' per-position rows)."""

    def __init__(self, num_bins: int, num_fine_bins: int):
        self.count = [0] * num_bins
        self.pred = [0.0] * num_bins
        self.target = [0.0] * num_bins
        self.fine_pos = [0] * num_fine_bins
        self.fine_neg = [0] * num_fine_bins
        self.brier = 0.0


class CalibrationMetrics:
    """Per-position ECE / AUROC / Brier over many cycles; follows DeepSpec's
    ``PerPositionConfidenceMetrics`` (update: clamp, coarse and fine histograms, squared error;
    compute: the per-position row), with positions numbered from 1 and grown on demand."""

    def __init__(self, num_bins: int = NUM_BINS, num_fine_bins: int = NUM_FINE_BINS):
        self.num_bins, self.num_fine_bins = int(num_bins), int(num_fine_bins)
        self.positions: list[_Position] = []
        self.num_cycles = 0

    def update(self, probs: Sequence[float], targets: Sequence[float]) -> None:
        """One cycle: ``probs[j]`` predicted for position j + 1, ``targets[j]`` its 0/1 outcome
        (PerPositionConfidenceMetrics.update)."""
        if len(probs) != len(targets):
            raise ValueError(f"{len(probs)} predictions but {len(targets)} outcomes")
        if not probs:
            return
        self.num_cycles += 1
        while len(self.positions) < len(probs):
            self.positions.append(_Position(self.num_bins, self.num_fine_bins))
        for pos, p, t in zip(self.positions, probs, targets):
            p = min(max(float(p), EPS_PROB), 1.0 - EPS_PROB)
            t = float(t)
            b = _bin(p, self.num_bins)
            pos.count[b] += 1
            pos.pred[b] += p
            pos.target[b] += t
            f = _bin(p, self.num_fine_bins)
            if t > 0.5:
                pos.fine_pos[f] += 1
            else:
                pos.fine_neg[f] += 1
            pos.brier += (p - t) ** 2

    def add_cycle(self, prefix_confidence: Sequence[float], num_accepted: int) -> None:
        """A cycle's predictions against its outcome: position j's prefix was accepted iff
        ``num_accepted >= j``."""
        self.update(prefix_confidence, [1.0 if num_accepted >= j else 0.0
                                        for j in range(1, len(prefix_confidence) + 1)])

    def per_position(self) -> list[dict]:
        """One row per position (PerPositionConfidenceMetrics.compute); NaN is written None."""
        return [self._row(j + 1, pos) for j, pos in enumerate(self.positions)]

    def _row(self, position: int, pos: _Position) -> dict:
        total = sum(pos.count)
        if total == 0:
            return {"position": position, "count": 0, "pred_mean": None, "target_mean": None, "ece": None,
                    "auc": None, "brier": None, "reliability": []}
        ece, reliability = 0.0, []
        for b, n in enumerate(pos.count):
            if n == 0:
                continue
            avg_pred, avg_target = pos.pred[b] / n, pos.target[b] / n
            ece += n * abs(avg_pred - avg_target)
            reliability.append({"bin": b, "range": [b / self.num_bins, (b + 1) / self.num_bins],
                                "avg_pred": avg_pred, "avg_target": avg_target, "count": n})
        return {"position": position, "count": total, "pred_mean": sum(pos.pred) / total,
                "target_mean": sum(pos.target) / total, "ece": ece / total,
                "auc": _none_if_nan(auroc_from_histograms(pos.fine_pos, pos.fine_neg)),
                "brier": pos.brier / total, "reliability": reliability}


def auroc_from_histograms(pos_hist: Sequence[float], neg_hist: Sequence[float]) -> float:
    """P(a positive scores above a negative), ties (same bin) counting half; NaN when a class is
    absent (PerPositionConfidenceMetrics._auroc_from_hist)."""
    total_pos, total_neg = float(sum(pos_hist)), float(sum(neg_hist))
    if total_pos <= 0 or total_neg <= 0:
        return float("nan")
    pairs, neg_below = 0.0, 0.0
    for p, n in zip(pos_hist, neg_hist):
        pairs += p * neg_below + 0.5 * p * n
        neg_below += n
    return pairs / (total_pos * total_neg)


def summarize(per_position: Iterable[dict]) -> dict:
    """Means over positions weighted by their counts; ``auc_mean`` over the positions with an
    AUROC (summarize_confidence_row). None where nothing was predicted."""
    total = auc_w = 0
    ece = brier = pred = target = auc = 0.0
    for row in per_position:
        w = row["count"]
        if w <= 0:
            continue
        total += w
        ece += row["ece"] * w
        brier += row["brier"] * w
        pred += row["pred_mean"] * w
        target += row["target_mean"] * w
        if row["auc"] is not None:
            auc_w += w
            auc += row["auc"] * w
    if total == 0:
        return {"ece_mean": None, "auc_mean": None, "brier_mean": None, "pred_mean": None, "target_mean": None,
                "count": 0}
    return {"ece_mean": ece / total, "auc_mean": auc / auc_w if auc_w else None, "brier_mean": brier / total,
            "pred_mean": pred / total, "target_mean": target / total, "count": total}


def calibration_from_cycles(cycles) -> Optional[dict]:
    """The bench JSON's ``calibration`` object for one method's ``CycleStats``, or None when no
    cycle carries a prediction."""
    m = CalibrationMetrics()
    for c in cycles:
        conf = getattr(c, "prefix_confidence", None)
        if conf:
            if c.num_positions:
                conf = conf[: c.num_positions]
            m.add_cycle(conf, c.num_accepted)
    if m.num_cycles == 0:
        return None
    rows = m.per_position()
    return {"per_position": rows, "summary": dict(summarize(rows), num_cycles=m.num_cycles)}


# one position's metrics from flat lists (tests, notebooks)
def position_metrics(probs: Sequence[float], targets: Sequence[float], num_bins: int = NUM_BINS,
                     num_fine_bins: int = NUM_FINE_BINS) -> dict:
    m = CalibrationMetrics(num_bins, num_fine_bins)
    for p, t in zip(probs, targets):
        m.update([p], [t])
    rows = m.per_position()
    return rows[0] if rows else m._row(1, _Position(num_bins, num_fine_bins))


def ece(probs, targets, num_bins: int = NUM_BINS) -> float:
    return position_metrics(probs, targets, num_bins=num_bins)["ece"]


def auroc(probs, targets, num_fine_bins: int = NUM_FINE_BINS) -> Optional[float]:
    return position_metrics(probs, targets, num_fine_bins=num_fine_bins)["auc"]


def brier(probs, targets) -> float:
    return position_metrics(probs, targets)["brier"]


def _none_if_nan(x: float) -> Optional[float]:
    return None if math.isnan(x) else x


def _fmt(x: Optional[float], digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def summary_cell(calibration: Optional[dict]) -> str:
    """``ECE / AUROC / Brier`` for the bench table; ``-`` for a method without predictions."""
    if not calibration:
        return "-"
    s = calibration["summary"]
    return f"{_fmt(s['ece_mean'])} / {_fmt(s['auc_mean'])} / {_fmt(s['brier_mean'])}"


def plot_reliability(results) -> Optional[object]:
    """One panel per position (the first ``MAX_PLOT_POSITIONS``): mean observed acceptance
    against mean prediction per coarse bin, the diagonal, and the bins' counts as bars on a twin
    axis; every method with predictions drawn in its own colour. Follows DeepSpec's
    plot_reliability_diagram. None when no method has predictions."""
    calibrated = [r for r in results if getattr(r, "calibration", None)]
    if not calibrated:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r.method for r in calibrated]
    if len(set(labels)) < len(labels):  # variants of one method share its label
        labels = [f"{lab} #{i + 1}" for i, lab in enumerate(labels)]
    n_pos = min(MAX_PLOT_POSITIONS, max(len(r.calibration["per_position"]) for r in calibrated))
    ncols = min(4, n_pos)
    nrows = (n_pos + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.8 * nrows), squeeze=False)
    width = 1.0 / NUM_BINS / len(calibrated)
    for j in range(n_pos):
        ax = axes[j // ncols][j % ncols]
        ax.plot([0, 1], [0, 1], "--", color="0.7", lw=1.0)
        ax2 = ax.twinx()
        top, single = 0, len(calibrated) == 1
        title = f"pos={j + 1}"
        for k, (r, label) in enumerate(zip(calibrated, labels)):
            rows = r.calibration["per_position"]
            if j >= len(rows) or not rows[j]["count"]:
                continue
            row, bins = rows[j], rows[j]["reliability"]
            scores = f"ECE={_fmt(row['ece'])}  AUC={_fmt(row['auc'])}"
            if single:
                title += "  " + scores
            ax.plot([b["avg_pred"] for b in bins], [b["avg_target"] for b in bins], "o-", color=f"C{k}", ms=4,
                    lw=1.5, label=None if single else f"{label}: {scores}")
            ax2.bar([b["range"][0] + (k + 0.5) * width for b in bins], [b["count"] for b in bins], width=width,
                    color=f"C{k}", alpha=0.2)
            top = max([top] + [b["count"] for b in bins])
        ax2.set_ylim(0, top or 1)
        ax2.set_yticks([])
        ax.set_zorder(ax2.get_zorder() + 1)  # the curves above the count bars
        ax.patch.set_visible(False)
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="predicted P(prefix accepted)", ylabel="observed acceptance")
        ax.grid(alpha=0.25, lw=0.6)
        ax.set_title(title, fontsize=9)
        if not single and ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="upper left")
    for j in range(n_pos, nrows * ncols):
        axes[j // ncols][j % ncols].axis("off")
    fig.suptitle("Reliability of the prefix-acceptance confidence (bars: predictions per bin)", fontsize=11)
    return fig
