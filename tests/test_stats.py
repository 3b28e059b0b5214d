"""Scores and the exact McNemar test, checked against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from docsort.core.stats import (
    accuracy,
    confusion,
    fast_macro_f1,
    log_loss,
    macro_f1,
    mcnemar_p,
    most_confused_pairs,
    paired_compare,
    per_class_table,
)


def test_macro_f1_hand_example():
    # class 0: tp1 fp1 fn1 -> 0.5; class 1: tp2 fp1 fn0 -> 0.8; class 2: tp0 -> 0
    y, p = [0, 0, 1, 1, 2], [0, 1, 1, 1, 0]
    assert macro_f1(y, p) == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    assert fast_macro_f1(np.array(y), np.array(p), 3) == pytest.approx(1.3 / 3)
    # restricted to the classes in the truth of a hand-picked subset
    assert macro_f1([0, 0], [0, 1], labels=[0]) == pytest.approx(2 / 3)
    assert accuracy(y, p) == pytest.approx(3 / 5)


def test_fast_macro_f1_matches_sklearn_on_random_data():
    rng = np.random.default_rng(3)
    for _ in range(20):
        k = int(rng.integers(2, 9))
        y = rng.integers(0, k, 200)
        p = np.where(rng.random(200) < 0.6, y, rng.integers(0, k, 200))
        assert fast_macro_f1(y, p, k) == pytest.approx(macro_f1(y, p), abs=1e-12)


def test_mcnemar_worked_example():
    # b=10, c=2: 2 * P(X <= 2), X ~ Bin(12, 1/2) = 2 * (1 + 12 + 66) / 4096
    assert mcnemar_p(10, 2) == pytest.approx(2 * 79 / 4096)
    assert round(mcnemar_p(10, 2), 4) == 0.0386
    assert mcnemar_p(2, 10) == mcnemar_p(10, 2)
    assert mcnemar_p(3, 0) == pytest.approx(0.25)
    assert mcnemar_p(5, 5) == 1.0  # capped at 1
    assert mcnemar_p(0, 0) == 1.0  # no discordant pairs: no evidence


def test_paired_compare_counts_wins_and_losses():
    a = [True] * 10 + [False] * 2 + [True] * 5 + [False] * 3
    b = [False] * 10 + [True] * 2 + [True] * 5 + [False] * 3
    r = paired_compare(a, b)
    assert (r.wins, r.losses, r.both_right, r.both_wrong) == (10, 2, 5, 3)
    assert r.p_value == pytest.approx(0.038574, abs=1e-6)
    with pytest.raises(ValueError):
        paired_compare([True], [True, False])


def test_confusion_and_most_confused_pairs():
    y = [0, 0, 0, 1, 1, 2, 2, 2, 2]
    p = [0, 1, 1, 1, 0, 2, 1, 2, 2]
    cm = confusion(y, p, 4)  # class 3 never seen: still a row and a column
    assert cm.shape == (4, 4)
    assert cm[0, 1] == 2 and cm[1, 0] == 1 and cm[2, 1] == 1 and cm.sum() == 9
    pairs = most_confused_pairs(cm, ["a", "b", "c", "d"])
    assert list(zip(pairs["true"], pairs["predicted"], pairs["count"], strict=True)) == [
        ("a", "b", 2),
        ("b", "a", 1),  # 1 of 2 beats 1 of 4 on share
        ("c", "b", 1),
    ]
    assert pairs["share_of_true"].tolist() == pytest.approx([2 / 3, 1 / 2, 1 / 4])


def test_mcnemar_is_twice_the_smaller_binomial_tail():
    """scipy's exact binomial test equals the closed form it replaced, min(1, 2 P(X <= min))."""
    from scipy.stats import binom

    for b in range(0, 40):
        for c in range(0, 40):
            if b + c:
                want = min(1.0, 2.0 * binom.cdf(min(b, c), b + c, 0.5))
                assert mcnemar_p(b, c) == pytest.approx(want, rel=1e-12, abs=1e-15), (b, c)


def test_log_loss_agrees_with_sklearn_above_the_clip():
    from sklearn.metrics import log_loss as sk_log_loss

    rng = np.random.default_rng(0)
    for k in (2, 5, 17):
        logits = rng.normal(size=(300, k))
        probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        y = rng.integers(0, k, 300)
        assert log_loss(y, probs) == pytest.approx(
            sk_log_loss(y, probs, labels=list(range(k))), rel=1e-12
        )


def test_per_class_table_and_log_loss():
    t = per_class_table([0, 0, 1], [0, 1, 1], ["x", "y"])
    assert t["precision"].tolist() == pytest.approx([1.0, 0.5])
    assert t["recall"].tolist() == pytest.approx([0.5, 1.0])
    assert t["support"].tolist() == [2, 1]
    probs = np.array([[0.5, 0.5], [0.25, 0.75], [1.0, 0.0]])
    assert log_loss([0, 1, 0], probs) == pytest.approx(-(np.log(0.5) + np.log(0.75)) / 3)
    # a zero probability for the truth is clipped, not infinite
    assert np.isfinite(log_loss([1], np.array([[1.0, 0.0]])))
