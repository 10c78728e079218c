"""The report's figures: matplotlib on the headless Agg backend, each returned as PNG bytes.

Every function takes plain arrays and lists (read by ``report.build``) and
draws one figure; nothing here reads files or computes a metric.
"""
from __future__ import annotations

import io
from typing import Dict, List, Optional, Sequence

import numpy as np

BUCKETS = (2000, 20)  # the WDR paper's frequency buckets: over 2,000 and under 20 training images
DPI = 100


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    # text.parse_math off: label names and ids are user text, never mathtext ("$\\frac{$" is a name, not a formula)
    plt.rcParams.update({"font.size": 10, "axes.titlesize": 11, "figure.dpi": DPI, "text.parse_math": False})
    return plt


def _plain_numbers(minor: bool = False):
    """Log-axis tick labels as plain numbers (1, 10, 1,000), minor ones only at 2 and 5 of a decade."""
    from matplotlib.ticker import FuncFormatter

    def fmt(v, _pos):
        if v <= 0:
            return ""
        lead = v / 10 ** np.floor(np.log10(v) + 1e-9)
        if minor and round(lead) not in (2, 5):
            return ""
        return f"{v:,.0f}" if v >= 1 else f"{v:g}"

    return FuncFormatter(fmt)


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()


def frequency_vs_quality(counts: np.ndarray, precision: np.ndarray, recall: np.ndarray,
                         names: Sequence[str]) -> bytes:
    """Training frequency (bars, log scale) against validation precision and recall (lines), labels
    sorted by frequency, the paper's buckets shaded."""
    plt = _plt()
    order = np.argsort(-counts, kind="stable")
    c, p, r = counts[order], precision[order], recall[order]
    x = np.arange(len(c))
    fig, ax = plt.subplots(figsize=(11, 4.2))
    ax.bar(x, np.maximum(c, 0.8), color="#c9d6e8", width=1.0, label="training images")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(_plain_numbers())
    ax.yaxis.set_minor_formatter(_plain_numbers(minor=True))
    ax.set_ylabel("training images (log)")
    ax.set_xlim(-0.5, len(c) - 0.5)
    high, low = int((c > BUCKETS[0]).sum()), int((c < BUCKETS[1]).sum())
    if high:
        ax.axvspan(-0.5, high - 0.5, color="#8fd19e", alpha=0.25, label=f"> {BUCKETS[0]:,} ({high} labels)")
    if low:
        ax.axvspan(len(c) - low - 0.5, len(c) - 0.5, color="#f5a3a3", alpha=0.3, label=f"< {BUCKETS[1]} ({low} labels)")
    ax2 = ax.twinx()
    ax2.plot(x, p, color="#1f77b4", lw=1.2, marker="." if len(c) <= 60 else None, label="precision")
    ax2.plot(x, r, color="#d62728", lw=1.2, marker="." if len(c) <= 60 else None, label="recall")
    ax2.set_ylim(0, 1.02)
    ax2.set_ylabel("validation precision / recall (tuned)")
    if len(c) <= 40:
        ax.set_xticks(x)
        ax.set_xticklabels([names[i] for i in order], rotation=70, ha="right", fontsize=8)
    else:
        ax.set_xlabel("labels, most frequent first")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax2.legend(h1 + h2, l1 + l2, loc="upper center", bbox_to_anchor=(0.5, 1.12), ncol=len(l1 + l2), fontsize=8,
               frameon=False)
    ax.set_title("Label frequency in training against validation precision and recall", pad=28)
    return _png(fig)


def cooccurrence(matrix: np.ndarray, names: Sequence[str], groups: Optional[Sequence[str]]) -> bytes:
    """log10(1 + count) of the label co-occurrence matrix, labels grouped by task when there are tasks."""
    plt = _plt()
    n = matrix.shape[0]
    fig, ax = plt.subplots(figsize=(8.5, 7.5))
    im = ax.imshow(np.log10(1 + matrix), cmap="magma_r", interpolation="nearest")
    fig.colorbar(im, ax=ax, shrink=0.8, label="log10(1 + images with both labels)")
    if groups is not None:
        bounds = [0] + [i for i in range(1, n) if groups[i] != groups[i - 1]] + [n]
        for b in bounds[1:-1]:
            ax.axhline(b - 0.5, color="#2a6fdb", lw=0.8)
            ax.axvline(b - 0.5, color="#2a6fdb", lw=0.8)
        mids = [(a + b - 1) / 2 for a, b in zip(bounds[:-1], bounds[1:])]
        ax.set_xticks(mids)
        ax.set_xticklabels([groups[a] for a in bounds[:-1]], rotation=45, ha="right")
        ax.set_yticks(mids)
        ax.set_yticklabels([groups[a] for a in bounds[:-1]])
    elif n <= 40:
        ax.set_xticks(range(n))
        ax.set_xticklabels(names, rotation=90, fontsize=7)
        ax.set_yticks(range(n))
        ax.set_yticklabels(names, fontsize=7)
    ax.set_title("Label co-occurrence in training" + (" (grouped by task)" if groups is not None else ""))
    return _png(fig)


def training_curves(rows: List[Dict]) -> bytes:
    """Loss, learning rate and validation micro-F1 against the step, from ``metrics.jsonl``."""
    plt = _plt()
    step = [r["step"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    axes[0].plot(step, [r["loss"] for r in rows], marker="o", ms=3, label="training loss")
    if all("val_loss" in r for r in rows):
        axes[0].plot(step, [r["val_loss"] for r in rows], marker="o", ms=3, label="validation loss")
    axes[0].set_title("loss")
    axes[0].legend(fontsize=8)
    axes[1].plot(step, [r["lr"] for r in rows], marker="o", ms=3, color="#555")
    axes[1].set_title("learning rate")
    axes[1].ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    axes[2].plot(step, [r.get("val_f1", np.nan) for r in rows], marker="o", ms=3, color="#2ca02c")
    axes[2].set_title("validation micro-F1 at 0.5")
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def thresholds_vs_frequency(counts: np.ndarray, thresholds: np.ndarray, fallback: np.ndarray,
                            global_threshold: Optional[float]) -> bytes:
    """Each label's tuned threshold against its training frequency."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 3.8))
    c = np.maximum(counts, 0.8)
    ax.scatter(c[~fallback], thresholds[~fallback], s=14, color="#1f77b4", label="tuned per label")
    if fallback.any():
        ax.scatter(c[fallback], thresholds[fallback], s=18, marker="x", color="#d62728",
                   label="global threshold (too few positives)")
    ax.axhline(0.5, color="#999", lw=0.8, ls="--", label="0.5")
    if global_threshold is not None:
        ax.axhline(global_threshold, color="#d62728", lw=0.8, ls=":", label=f"global {global_threshold:.3f}")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(_plain_numbers())
    ax.xaxis.set_minor_formatter(_plain_numbers(minor=True))
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("training images with the label (log)")
    ax.set_ylabel("threshold")
    ax.legend(fontsize=8)
    ax.set_title("Tuned threshold per label against its frequency")
    return _png(fig)


def saliency_grid(images: np.ndarray, overlays: np.ndarray, titles: List[str], captions: List[List[str]]) -> bytes:
    """Rows of images: the image (its true labels) then one Grad-CAM overlay per top predicted label."""
    plt = _plt()
    n, k = overlays.shape[:2]
    fig, axes = plt.subplots(n, k + 1, figsize=(2.6 * (k + 1), 2.75 * n), squeeze=False)
    for i in range(n):
        axes[i, 0].imshow(images[i])
        axes[i, 0].set_title(titles[i], fontsize=8, loc="left")
        for j in range(k):
            axes[i, j + 1].imshow(overlays[i, j])
            axes[i, j + 1].set_title(captions[i][j], fontsize=8.5,
                                     color="#1a7f37" if captions[i][j].endswith("(true)") else "#b42318")
        for ax in axes[i]:
            ax.axis("off")
    fig.tight_layout()
    return _png(fig)


def failures(by_split: Dict[str, Dict[str, int]]) -> Optional[bytes]:
    """Failed downloads by reason, per split (None when nothing failed)."""
    rows = [(f"{split}: {status}", n) for split, d in by_split.items() for status, n in d.items() if n]
    if not rows:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1))
    ax.barh([r[0] for r in rows][::-1], [r[1] for r in rows][::-1], color="#e07b39")
    for y, (_, v) in enumerate(rows[::-1]):
        ax.text(v, y, f" {v:,}", va="center", fontsize=9)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("images")
    ax.set_title("Fetch failures by reason")
    return _png(fig)


__all__ = ["BUCKETS", "cooccurrence", "failures", "frequency_vs_quality", "saliency_grid", "thresholds_vs_frequency",
           "training_curves"]
