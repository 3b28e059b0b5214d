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
    # A is the prior (given first) and beats B: the evidence agrees with the prior
    assert cmp.winner == "A" and cmp.decided_by == "evidence"
    assert "Winner: A, decided by evidence" in cmp.policy and "p=0.0386" in cmp.policy
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


def _paired(wins: int, losses: int, same: int = 8) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Targets and two prediction vectors: A alone right on ``wins``, B alone on ``losses``."""
    n = wins + losses + same
    y = np.arange(n) % K
    wrong = (y + 1) % K
    a = np.concatenate([y[:wins], wrong[wins : wins + losses], y[wins + losses :]])
    b = np.concatenate([wrong[:wins], y[wins : wins + losses], y[wins + losses :]])
    return y, a, b


@pytest.mark.parametrize("order", [("A", "B", "C"), ("C", "B", "A")])
def test_tied_candidates_go_to_the_stated_prior(order):
    y = np.array([0, 1, 2, 3])
    same = _probs([0, 1, 2, 0])  # 3 of 4 right for everyone: identical predictions
    probs = {n: same for n in order}
    # soft voting over hard voting, whatever the OOF scores say
    cmp = score_candidates(_ids(4), y, probs, oof_macro_f1={"A": 0.82, "B": 0.80, "C": 0.81},
                           members={"A": 1, "B": 5, "C": 2}, methods={"A": "hard", "B": "soft", "C": "hard"})  # fmt: skip
    assert (cmp.winner, cmp.prior, cmp.decided_by) == ("B", "B", "prior")
    assert "decided by the stated prior" in cmp.policy and "does not separate" in cmp.policy
    assert "decided by name" not in cmp.policy
    assert cmp.per_candidate["candidate"].tolist() == ["A", "C", "B"]  # the ranking is still shown
    assert "OOF macro F1: A 0.8200, C 0.8100, B 0.8000" in cmp.policy
    assert "best A (3/4 right) against the prior B (3/4 right): wins 0 / losses 0" in cmp.policy
    # same method -> fewer members
    cmp = score_candidates(_ids(4), y, probs, members={"A": 3, "B": 5, "C": 2},
                           methods={"A": "soft", "B": "soft", "C": "soft"})  # fmt: skip
    assert cmp.winner == "C" and cmp.decided_by == "prior"
    # everything the same -> the order given, not the name
    cmp = score_candidates(_ids(4), y, probs, members={"A": 2, "B": 2, "C": 2})
    assert cmp.winner == order[0]


def test_clearly_better_candidate_wins_by_evidence():
    y, a, b = _paired(30, 2)  # the hard candidate alone right on 30, the soft prior on 2
    cmp = score_candidates(_ids(len(y)), y, {"soft": _probs(b), "hard": _probs(a)},
                           methods={"soft": "soft", "hard": "hard"}, members={"soft": 2, "hard": 2})  # fmt: skip
    assert (cmp.prior, cmp.winner, cmp.decided_by) == ("soft", "hard", "evidence")
    assert cmp.choice.result.wins == 30 and cmp.choice.result.losses == 2
    assert "Winner: hard, decided by evidence" in cmp.policy
    assert "beats the prior soft" in cmp.policy


def test_a_noisy_lead_does_not_beat_the_prior():
    y, a, b = _paired(2, 1)  # one image ahead: p = 1
    cmp = score_candidates(_ids(len(y)), y, {"1814": _probs(a), "1824": _probs(b)},
                           oof_macro_f1={"1814": 0.9, "1824": 0.5},
                           methods={"1814": "hard", "1824": "soft"})  # fmt: skip
    assert cmp.per_candidate.loc[0, "candidate"] == "1814"  # ranked first on hard cases ...
    assert (cmp.winner, cmp.decided_by) == ("1824", "prior")  # ... but the prior stays
    assert "1814 10/11, 1824 9/11" in cmp.policy
    assert "the evidence does not separate the candidates" in cmp.policy
    assert "wins 2 / losses 1, exact McNemar p=1" in cmp.policy
    assert (
        "keeping 1824 by the stated prior (an ensemble over a single member, soft voting over"
        in cmp.policy
    )
    # a stricter alpha than the evidence is still the prior; a looser one lets the lead win
    y, a, b = _paired(10, 2)  # p = 0.0386
    args = (_ids(len(y)), y, {"hard": _probs(a), "soft": _probs(b)})
    kw = {"methods": {"hard": "hard", "soft": "soft"}}
    assert score_candidates(*args, **kw).winner == "hard"
    assert score_candidates(*args, **kw, alpha=0.01).winner == "soft"
    with pytest.raises(DocsortError, match="alpha"):
        score_candidates(*args, **kw, alpha=1.5)


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


def test_cli_winner_by_evidence_or_by_the_stated_prior(prepared_root, tmp_path):
    """`docsort hardcases compare` records and prints which of the two decided."""
    import json

    import pandas as pd

    from docsort.data.prepared import Prepared
    from tests.review_fakes import fake_candidate, one_hot
    from tests.scenario import run_cli

    prep = Prepared(prepared_root)
    labels = pd.read_csv(prep.root / "test_labels.csv", dtype={"ID": str})
    ids = prep.test_ids
    truth = dict(zip(labels["ID"], labels["target"], strict=True))
    y = np.array([truth[i] for i in ids])
    k = prep.num_classes
    hard_file = tmp_path / "hardcases.csv"
    pd.DataFrame({"ID": ids, "target": y, "note": "", "kind": "hard"}).to_csv(
        hard_file, index=False
    )
    n = len(ids)
    assert n >= 34
    wrong = (y + 1) % k
    # hard voting alone right on 30 images, soft voting (the prior) alone right on 2
    hard_pred = np.concatenate([y[:30], wrong[30:32], y[32:]])
    soft_pred = np.concatenate([wrong[:30], y[30:32], y[32:]])
    for name, pred in (("soft", soft_pred), ("hard", hard_pred)):
        c = fake_candidate(tmp_path / "cands" / name, name, ids, one_hot(pred, k), members=2)
        info = json.loads((c / "candidate.json").read_text())
        (c / "candidate.json").write_text(json.dumps({**info, "method": name}))

    def compare(out, *extra):
        code, printed, err = run_cli("hardcases", "compare", tmp_path / "cands", "--prepared",
                                     prepared_root, "--hardcases", hard_file, "--out", out, *extra)  # fmt: skip
        assert code == 0, err
        return printed, json.loads((out / "winner.json").read_text())

    printed, record = compare(tmp_path / "cmp")
    assert (record["winner"], record["prior"], record["decided_by"]) == ("hard", "soft", "evidence")
    ev = record["evidence"]
    assert (ev["challenger"], ev["wins"], ev["losses"], ev["alpha"]) == ("hard", 30, 2, 0.05)
    assert ev["p"] < 1e-6 and "Winner: hard, decided by evidence" in printed
    assert (
        json.loads((tmp_path / "cmp" / "winner" / "candidate.json").read_text())["name"] == "hard"
    )

    # the same hard cases at an alpha no evidence here can reach: the prior, said plainly
    printed, record = compare(tmp_path / "strict", "--alpha", "1e-12")
    assert (record["winner"], record["decided_by"]) == ("soft", "prior")
    assert "the evidence does not separate the candidates" in printed
    assert (
        "keeping soft by the stated prior (an ensemble over a single member, soft voting over"
        in printed
    )
    assert "decided by the stated prior" in (tmp_path / "strict" / "comparison.md").read_text()
