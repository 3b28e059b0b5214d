"""Hard-case comparison: scores, pairwise tests and the stated winner policy."""

from __future__ import annotations

import numpy as np
import pytest

from docsort.core.errors import DocsortError
from docsort.review.compare import score_candidates

K = 4
NAMES = ["letter", "memo", "form", "invoice"]


def _probs(preds, conf=0.7) -> np.ndarray:
    """Probabilities whose argmax is ``preds`` with the given confidence."""
    p = np.full((len(preds), K), (1 - conf) / (K - 1))
    p[np.arange(len(preds)), preds] = conf
    return p


def _ids(n):
    return [f"img{i:02d}.png" for i in range(n)]


def test_mcnemar_worked_example_and_side_by_side_table():
    # 20 hard cases: A alone right on 10, B alone right on 2, both right on 5, both wrong on 3
    y = np.array([0, 1] * 10)
    wrong = (y + 1) % K
    a = np.concatenate([y[:10], wrong[10:12], y[12:17], wrong[17:]])
    b = np.concatenate([wrong[:10], y[10:12], y[12:17], wrong[17:]])
    cmp = score_candidates(_ids(20), y, {"A": _probs(a), "B": _probs(b, 0.9)}, class_names=NAMES)
    pair = cmp.pairwise.iloc[0]
    assert (pair.a, pair.b, pair.a_wins, pair.b_wins, pair.both_right, pair.both_wrong) == (
        "A",
        "B",
        10,
        2,
        5,
        3,
    )
    assert pair.mcnemar_p == pytest.approx(0.0386, abs=5e-5)
    pc = cmp.per_candidate.set_index("candidate")
    assert pc.loc["A", "correct"] == 15 and pc.loc["B", "correct"] == 7
    assert pc.loc["A", "accuracy"] == pytest.approx(0.75)
    assert cmp.winner == "A" and "decided by hard-case accuracy" in cmp.policy
    row = cmp.per_image.iloc[0]
    assert (row["ID"], row["truth"], row["A:pred"], row["B:pred"]) == (
        "img00.png",
        "letter",
        "letter",
        "memo",
    )
    assert row["A:ok"] and not row["B:ok"]
    assert row["B:conf"] == pytest.approx(0.9)


def test_macro_f1_counts_only_classes_present_in_the_hard_cases():
    y = np.array([0, 0, 1, 1])  # classes 2 and 3 never hand-labelled
    cmp = score_candidates(_ids(4), y, {"A": _probs([0, 0, 1, 0])})
    # class 0: tp2 fp1 fn0 -> 0.8 ; class 1: tp1 fp0 fn1 -> 2/3
    assert cmp.per_candidate.loc[0, "macro_f1"] == pytest.approx((0.8 + 2 / 3) / 2)


def test_label_error_rows_are_listed_but_not_scored():
    y = np.array([0, 1, 2, 3])
    kinds = ["model_error", "model_error", "label_error", None]
    cmp = score_candidates(
        _ids(4),
        y,
        {"A": _probs([0, 1, 0, 3]), "B": _probs([0, 0, 2, 3])},
        kinds=kinds,
        notes=["", "x", "wrong label", float("nan")],
    )
    assert len(cmp.per_image) == 4
    assert cmp.per_image["scored"].tolist() == [True, True, False, True]
    pc = cmp.per_candidate.set_index("candidate")
    assert pc.loc["A", "scored"] == 3 and pc.loc["A", "correct"] == 3
    assert pc.loc["B", "correct"] == 2  # its "right" answer on the label error does not count
    assert cmp.per_image["note"].tolist() == ["", "x", "wrong label", ""]
    assert cmp.winner == "A"
    text = cmp.format_table()
    assert "label_error" in text and "wrong label" in text


@pytest.mark.parametrize("order", [("A", "B", "C"), ("C", "B", "A")])
def test_winner_policy_breaks_ties_as_stated(order):
    y = np.array([0, 1, 2, 3])
    same = _probs([0, 1, 2, 0])  # 3 of 4 right for everyone
    probs = {n: same for n in order}
    # accuracy tied -> higher OOF macro F1 wins
    cmp = score_candidates(
        _ids(4),
        y,
        probs,
        oof_macro_f1={"A": 0.80, "B": 0.82, "C": 0.81},
        members={"A": 1, "B": 5, "C": 2},
    )
    assert cmp.winner == "B"
    assert "decided by OOF macro F1" in cmp.policy
    assert cmp.per_candidate["candidate"].tolist() == ["B", "C", "A"]
    # accuracy and OOF tied -> fewer members wins
    cmp = score_candidates(
        _ids(4),
        y,
        probs,
        oof_macro_f1={"A": 0.8, "B": 0.8, "C": 0.8},
        members={"A": 3, "B": 5, "C": 2},
    )
    assert cmp.winner == "C" and "decided by member count" in cmp.policy
    # everything tied -> name, whatever the input order
    cmp = score_candidates(
        _ids(4),
        y,
        probs,
        oof_macro_f1={"A": 0.8, "B": 0.8, "C": 0.8},
        members={"A": 2, "B": 2, "C": 2},
    )
    assert cmp.winner == "A" and "decided by name" in cmp.policy
    # an unknown OOF score counts as worst
    cmp = score_candidates(_ids(4), y, probs, oof_macro_f1={"B": 0.1})
    assert cmp.winner == "B"


def test_accuracy_beats_oof_score():
    y = np.array([0, 1, 2, 3])
    cmp = score_candidates(
        _ids(4),
        y,
        {"1814": _probs([0, 1, 2, 3]), "1824": _probs([0, 1, 2, 0])},
        oof_macro_f1={"1814": 0.5, "1824": 0.9},
    )
    assert cmp.winner == "1814"
    assert "1814 4/4, 1824 3/4" in cmp.policy


def test_format_table_is_terminal_safe_and_complete():
    y = np.array([0, 1])
    ids = ["evil\x1b[31m.png", "b.png"]
    cmp = score_candidates(
        ids,
        y,
        {"A": _probs([0, 1]), "B": _probs([1, 1])},
        class_names=NAMES,
        notes=["ok", "line\nbreak"],
    )
    text = cmp.format_table()
    assert "\x1b" not in text and "line?break" in text
    for piece in (
        "evil?[31m.png",
        "letter 0.70 ok",
        "memo 0.70 X",
        "Winner: A",
        "A wins",
        "Candidates",
    ):
        assert piece in text


def test_bad_inputs():
    with pytest.raises(DocsortError, match="unique"):
        score_candidates(["a", "a"], [0, 1], {"A": _probs([0, 1])})
    with pytest.raises(DocsortError, match="aligned"):
        score_candidates(["a", "b"], [0, 1], {"A": _probs([0, 1]), "B": _probs([0])})
    with pytest.raises(DocsortError, match="0..3"):
        score_candidates(["a"], [7], {"A": _probs([0])})
    with pytest.raises(DocsortError, match="at least one"):
        score_candidates(["a"], [0], {})
