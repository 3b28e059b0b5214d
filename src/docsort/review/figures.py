"""Figures shared by the evaluation and the error notebook, rendered to PNG bytes.

Bytes, not files: the notebook embeds them as data URIs and ``evaluate``
writes them atomically, so neither caller needs a matplotlib figure or a
display (the Agg canvas is used directly, never pyplot's global state).
"""

from __future__ import annotations

import io

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from docsort.ensemble.calibration import confidence_bins, ece

__all__ = ["confidence_bins", "reliability_png"]


def reliability_png(probs: np.ndarray, targets: np.ndarray, n_bins: int = 15) -> bytes:
    """Reliability diagram: accuracy per top-label confidence bin against the diagonal.

    A bar below the diagonal is a bin where the model is more sure than it is
    right (overconfident). Each bar carries its image count, because a bin of
    3 images says little; the title gives the ECE the bars add up to.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    targets = np.asarray(targets)
    count, acc, _ = confidence_bins(probs, targets, n_bins)
    score = ece(probs, targets, n_bins=n_bins)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    width = 1.0 / n_bins
    fig = Figure(figsize=(5.5, 5.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    filled = count > 0
    ax.bar(
        edges[:-1][filled],
        acc[filled],
        width=width,
        align="edge",
        color="#4c72b0",
        edgecolor="white",
        label="accuracy",
    )
    ax.plot([0, 1], [0, 1], linestyle="--", color="#888888", label="perfect calibration")
    size = 8 if n_bins <= 15 else 6
    for b in np.flatnonzero(filled):
        ax.text(
            edges[b] + width / 2,
            min(acc[b] + 0.02, 1.02),
            str(int(count[b])),
            ha="center",
            va="bottom",
            fontsize=size,
        )
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.08)
    ax.set_xlabel("confidence (top-class probability)")
    ax.set_ylabel("accuracy")
    title = "ECE: no images" if np.isnan(score) else f"ECE {score:.4f} ({len(targets)} images)"
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()
