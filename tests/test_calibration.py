"""Temperature scaling and ECE on synthetic probabilities with a known miscalibration."""

from __future__ import annotations

import numpy as np
import pytest

from docsort.core.stats import log_loss
from docsort.ensemble.calibration import apply_temperature, calibrate_members, ece, fit_temperature


def _calibrated(
    n: int = 3000, k: int = 5, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Logits, and targets drawn from softmax(logits): calibrated by construction."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.5, (n, k))
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    targets = np.array([rng.choice(k, p=row) for row in p])
    return logits, p, targets


def _softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_ece_hand_examples():
    # every prediction 0.9 confident, half right: gap 0.4 in one bin
    p = np.array([[0.9, 0.1]] * 4)
    assert ece(p, [0, 0, 1, 1]) == pytest.approx(0.4)
    # two bins: conf 0.95 both right (gap 0.05), conf 0.55 one of two right (gap 0.05)
    p = np.array([[0.95, 0.05], [0.05, 0.95], [0.55, 0.45], [0.55, 0.45]])
    assert ece(p, [0, 1, 0, 1]) == pytest.approx(0.05)
    # a perfectly confident, always right model is perfectly calibrated
    assert ece(np.eye(3), [0, 1, 2]) == pytest.approx(0.0)


def test_temperature_scaling_fixes_overconfidence():
    logits, _, y = _calibrated()
    over = _softmax(logits * 3.0)  # logits / T with T = 1/3: overconfident
    t = fit_temperature(over, y)
    assert t == pytest.approx(3.0, rel=0.2)
    scaled = apply_temperature(over, t)
    assert ece(scaled, y) < ece(over, y) / 2
    assert log_loss(y, scaled) < log_loss(y, over)
    assert np.array_equal(scaled.argmax(1), over.argmax(1))  # ranking unchanged


def test_temperature_below_one_for_underconfident_probs():
    logits, _, y = _calibrated(seed=1)
    under = _softmax(logits / 2.5)
    t = fit_temperature(under, y)
    assert t == pytest.approx(1 / 2.5, rel=0.2)


def test_apply_temperature_one_is_identity_and_rejects_bad_values():
    _, p, _ = _calibrated(n=50)
    assert np.allclose(apply_temperature(p, 1.0), p)
    with pytest.raises(ValueError):
        apply_temperature(p, 0.0)


def test_calibrate_members_reports_before_and_after():
    logits, p, y = _calibrated(seed=2)
    report = calibrate_members(["sharp", "fine"], [_softmax(logits * 4), p], y)
    sharp, fine = report
    assert sharp.temperature > 2 and sharp.ece_after < sharp.ece_before
    assert sharp.nll_after < sharp.nll_before
    assert fine.temperature == pytest.approx(1.0, rel=0.15)
    assert fine.nll_after <= fine.nll_before + 1e-12  # never made worse
