"""Scores and paired tests shared by ensembles, TTA ablation, hard cases and reports.

Macro F1 is the competition score (classes are imbalanced, every class counts
the same). Comparing two candidates on the same images is a *paired* question,
so the test is McNemar's on the images where exactly one of them is right; with
the few dozen hard cases a person labels by hand, the exact binomial form is the
right one (the chi-square approximation needs many discordant pairs).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import binomtest
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

EPS = 1e-12


def predictions(probs: np.ndarray) -> np.ndarray:
    """Top-1 class per row (ties go to the lower class index, as ``argmax`` does)."""
    return np.asarray(probs).argmax(axis=1)


def macro_f1(
    targets: Sequence[int], preds: Sequence[int], labels: Sequence[int] | None = None
) -> float:
    """Unweighted mean of per-class F1.

    ``labels`` fixes the classes that count: pass ``range(K)`` for a whole
    validation set, or the classes present in the truth for a small hand-picked
    set (a class nobody labelled should not drag the score to zero).
    """
    targets = np.asarray(targets)
    if targets.size == 0:
        return float("nan")
    return float(
        f1_score(
            targets,
            np.asarray(preds),
            labels=None if labels is None else list(labels),
            average="macro",
            zero_division=0,
        )
    )


def accuracy(targets: Sequence[int], preds: Sequence[int]) -> float:
    """Share of exact matches (NaN for an empty set, so it is never mistaken for 0)."""
    targets = np.asarray(targets)
    if targets.size == 0:
        return float("nan")
    return float(np.mean(targets == np.asarray(preds)))


def log_loss(targets: Sequence[int], probs: np.ndarray) -> float:
    """Mean negative log-probability of the true class, clipped so one zero is not infinite.

    Not ``sklearn.metrics.log_loss``: that clips at machine epsilon (a hard vote's
    zero share would cost 36 instead of 28), warns on rows that do not sum to one
    (probabilities read back from CSV) and its input checks would dominate a
    weight search; where no probability is below ``EPS`` the two agree.
    """
    probs = np.asarray(probs, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.int64)
    picked = probs[np.arange(len(targets)), targets]
    return float(-np.mean(np.log(np.clip(picked, EPS, 1.0))))


def confusion(targets: Sequence[int], preds: Sequence[int], num_classes: int) -> np.ndarray:
    """K x K counts, rows = truth, columns = prediction (all classes, even unseen ones)."""
    return confusion_matrix(targets, preds, labels=list(range(num_classes)))


def per_class_table(
    targets: Sequence[int], preds: Sequence[int], class_names: Sequence[str]
) -> pd.DataFrame:
    """Precision, recall, F1 and support for every class, in class order."""
    labels = list(range(len(class_names)))
    p, r, f, s = precision_recall_fscore_support(targets, preds, labels=labels, zero_division=0)
    return pd.DataFrame(
        {
            "target": labels,
            "class_name": list(class_names),
            "precision": p,
            "recall": r,
            "f1": f,
            "support": s.astype(int),
        }
    )


def most_confused_pairs(cm: np.ndarray, class_names: Sequence[str], top: int = 10) -> pd.DataFrame:
    """Off-diagonal cells of a confusion matrix, largest count first.

    ``share`` is the count over the true class's support: 5 of 50 and 5 of 6
    are very different problems.
    """
    cm = np.asarray(cm)
    support = cm.sum(axis=1)
    rows = [
        (t, p, int(cm[t, p]), cm[t, p] / support[t])
        for t in range(cm.shape[0])
        for p in range(cm.shape[1])
        if t != p and cm[t, p] > 0
    ]
    rows.sort(key=lambda r: (-r[2], -r[3], r[0], r[1]))
    return pd.DataFrame(
        {
            "true": [class_names[r[0]] for r in rows[:top]],
            "predicted": [class_names[r[1]] for r in rows[:top]],
            "count": [r[2] for r in rows[:top]],
            "share_of_true": [float(r[3]) for r in rows[:top]],
        }
    )


def mcnemar_p(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value from the two discordant counts.

    Under "no difference" each discordant image is a fair coin, so ``b`` is
    Binomial(b + c, 1/2) and the p-value is the exact two-sided binomial test's
    (for p = 1/2 that is min(1, 2 * P(X <= min(b, c)))).
    No discordant pairs means no evidence either way: p = 1.
    """
    if b < 0 or c < 0:
        raise ValueError("discordant counts must be non-negative")
    if b + c == 0:
        return 1.0
    return float(binomtest(b, b + c, 0.5, alternative="two-sided").pvalue)


@dataclass(frozen=True)
class PairedResult:
    """How two candidates compare on the same images.

    ``wins``: images only A got right; ``losses``: images only B got right.
    """

    wins: int
    losses: int
    both_right: int
    both_wrong: int
    p_value: float


def paired_compare(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> PairedResult:
    """Wins, losses and the exact McNemar p-value of A against B."""
    a = np.asarray(correct_a, dtype=bool)
    b = np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"correctness vectors differ in length: {a.shape} vs {b.shape}")
    wins = int(np.sum(a & ~b))
    losses = int(np.sum(~a & b))
    return PairedResult(
        wins=wins,
        losses=losses,
        both_right=int(np.sum(a & b)),
        both_wrong=int(np.sum(~a & ~b)),
        p_value=mcnemar_p(wins, losses),
    )


def fast_macro_f1(targets: np.ndarray, preds: np.ndarray, num_classes: int) -> float:
    """Same value as ``macro_f1(targets, preds)`` (classes in truth or predictions) in pure numpy.

    Weight searches score thousands of candidate weightings; sklearn's input
    validation would dominate their run time.
    """
    k = num_classes
    cm = np.bincount(np.asarray(targets) * k + np.asarray(preds), minlength=k * k).reshape(k, k)
    tp = np.diag(cm).astype(np.float64)
    pred_n, true_n = cm.sum(axis=0), cm.sum(axis=1)
    present = (pred_n + true_n) > 0
    if not present.any():
        return float("nan")
    denom = pred_n + true_n
    f1 = np.divide(2 * tp, denom, out=np.zeros(k), where=denom > 0)
    return float(f1[present].mean())
