"""Temperature scaling and expected calibration error (ECE).

Networks trained with cross-entropy are usually overconfident, and members of
an ensemble are overconfident by different amounts: averaging their
probabilities then lets the loudest member dominate. One temperature per member,
fitted on its out-of-fold predictions, fixes the scale without changing any
member's ranking of classes (argmax is unchanged), so macro F1 of a single
member stays the same while log loss and ECE improve.

Only probabilities are stored between stages, so the "logits" here are
log-probabilities; softmax is shift-invariant per row, so ``softmax(log p / T)``
is exactly what scaling the original logits by ``1/T`` would give.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar

from docsort.core.stats import EPS, log_loss

T_BOUNDS = (0.05, 20.0)


def _log_probs(probs: np.ndarray) -> np.ndarray:
    return np.log(np.clip(np.asarray(probs, dtype=np.float64), EPS, 1.0))


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Rescale probabilities as if the logits were divided by ``temperature``.

    T > 1 softens (less confident), T < 1 sharpens, T = 1 returns the input
    renormalized.
    """
    if not np.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    return _softmax(_log_probs(probs) / temperature)


def fit_temperature(
    probs: np.ndarray, targets: Sequence[int], bounds: tuple[float, float] = T_BOUNDS
) -> float:
    """The temperature that minimizes NLL on ``(probs, targets)``.

    Searched on log T (bounded, scalar), because NLL is far better behaved in
    log T and the bounds stay symmetric around T = 1. Never returns a T that is
    worse than leaving the probabilities alone.
    """
    targets = np.asarray(targets, dtype=np.int64)
    logp = _log_probs(probs)

    def nll(log_t: float) -> float:
        return log_loss(targets, _softmax(logp / np.exp(log_t)))

    res = minimize_scalar(
        nll,
        bounds=(np.log(bounds[0]), np.log(bounds[1])),
        method="bounded",
        options={"xatol": 1e-4},
    )
    best = float(np.exp(res.x))
    return best if nll(float(res.x)) < nll(0.0) else 1.0


def confidence_bins(
    probs: np.ndarray, targets: np.ndarray, n_bins: int = 15
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width confidence bin: ``(count, accuracy, mean confidence)``.

    Bins are (lo, hi], the first also holds 0 (a confidence of exactly
    ``b / n_bins`` falls in bin ``b - 1``); :func:`ece` sums these terms and
    the reliability diagram draws them. Empty bins have NaN accuracy.
    """
    probs = np.asarray(probs, dtype=np.float64)
    targets = np.asarray(targets)
    conf = probs.max(axis=1) if len(probs) else np.zeros(0)
    correct = (probs.argmax(axis=1) == targets) if len(probs) else np.zeros(0, dtype=bool)
    bins = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    hits = np.bincount(bins, weights=correct.astype(np.float64), minlength=n_bins)
    conf_sum = np.bincount(bins, weights=conf, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.where(count > 0, hits / np.maximum(count, 1), np.nan)
        mean_conf = np.where(count > 0, conf_sum / np.maximum(count, 1), np.nan)
    return count, acc, mean_conf


def ece(probs: np.ndarray, targets: Sequence[int], n_bins: int = 15) -> float:
    """Top-label expected calibration error with ``n_bins`` equal-width bins
    (:func:`confidence_bins`): the support-weighted mean gap between each bin's
    accuracy and its mean confidence."""
    if len(np.asarray(targets)) == 0:
        return float("nan")
    count, acc, conf = confidence_bins(probs, np.asarray(targets), n_bins)
    used = count > 0
    return float(np.sum(count[used] * np.abs(acc[used] - conf[used])) / count.sum())


@dataclass(frozen=True)
class Calibration:
    """One member's fitted temperature and what it did on OOF data."""

    name: str
    temperature: float
    ece_before: float
    ece_after: float
    nll_before: float
    nll_after: float


def calibrate_members(
    names: Sequence[str], member_probs: Sequence[np.ndarray], targets: Sequence[int]
) -> list[Calibration]:
    """Fit a temperature per member on its OOF probabilities and report ECE/NLL before/after."""
    out = []
    for name, probs in zip(names, member_probs, strict=True):
        t = fit_temperature(probs, targets)
        scaled = apply_temperature(probs, t)
        out.append(
            Calibration(
                name=name,
                temperature=t,
                ece_before=ece(probs, targets),
                ece_after=ece(scaled, targets),
                nll_before=log_loss(targets, probs),
                nll_after=log_loss(targets, scaled),
            )
        )
    return out
