"""bench/ablation.py: each row's paired evidence against the base row, read back from the work folder."""

from __future__ import annotations

import numpy as np
import pandas as pd

VIEWS = [
    "identity",
    "rot90",
    "rot180",
    "rot270",
    "flip",
    "flip_rot90",
    "flip_rot180",
    "flip_rot270",
]


def _member(work, name, ids, preds, k=3):
    logits = np.full((len(ids), k), -5.0)
    logits[np.arange(len(ids)), preds] = 5.0
    (work / f"{name}_pred").mkdir(parents=True)
    np.savez(work / f"{name}_pred" / "views.npz", ids=np.asarray(ids), **{v: logits for v in VIEWS})


def test_rows_get_wins_losses_and_an_exact_paired_test_against_the_base(tmp_path):
    from bench.ablation import add_evidence

    ids = [f"i{n}" for n in range(40)]
    truth = pd.Series(np.arange(40) % 3, index=ids)
    base = truth.to_numpy().copy()
    base[:12] = (base[:12] + 1) % 3  # base wrong on 12 images
    better = truth.to_numpy().copy()  # right everywhere: 12 wins, 0 losses
    same = base.copy()
    same[:6], same[12:18] = (
        truth.to_numpy()[:6],
        (truth.to_numpy()[12:18] + 1) % 3,
    )  # 6 wins, 6 losses
    for name, preds in (("base", base), ("better", better), ("same", same)):
        _member(tmp_path, name, ids, preds)
    rows = [
        {"row": n, "macro_f1": f, "image_size": 96, "epochs": 8}
        for n, f in (("base", 0.7), ("better", 1.0), ("same", 0.7))
    ]
    add_evidence(rows, tmp_path, truth)
    assert "vs_base" not in rows[0]
    b, s = rows[1]["vs_base"], rows[2]["vs_base"]
    assert (b["wins"], b["losses"], b["separated"]) == (12, 0, True) and b["p_value"] < 0.001
    assert (s["wins"], s["losses"], s["separated"]) == (6, 6, False) and s["p_value"] == 1.0
    assert b["macro_f1"] == 0.3


def test_the_anchor_row_is_read_from_its_saved_probabilities(tmp_path):
    from bench.ablation import add_evidence

    ids = ["a", "b", "c", "d"]
    truth = pd.Series([0, 1, 2, 0], index=ids)
    _member(tmp_path, "base", ids, np.array([0, 1, 2, 1]))
    np.savez(tmp_path / "anchor_96_8.npz", ids=np.asarray(ids), probs=np.eye(3)[[0, 1, 2, 0]])
    rows = [{"row": "base", "macro_f1": 0.6, "image_size": 96, "epochs": 8},
            {"row": "anchor", "macro_f1": 1.0, "image_size": 96, "epochs": 8}]  # fmt: skip
    add_evidence(rows, tmp_path, truth, ref="anchor")
    assert rows[0]["vs_anchor"]["losses"] == 1 and rows[0]["vs_anchor"]["wins"] == 0


def test_grid_members_are_soft_voted_and_judged_against_one_member_of_equal_epochs(tmp_path):
    """--grid: a members row is the mean of its members' TTA-8 probabilities, paired against 1 x E."""
    from bench.ablation import grid_evidence, members_row

    ids = [f"i{n}" for n in range(30)]
    truth = pd.Series(np.arange(30) % 3, index=ids)
    right = truth.to_numpy()
    wrong = (right + 1) % 3
    # two 8-epoch members, each wrong on a different third: their vote is wrong only where both are
    a = np.where(np.arange(30) < 10, wrong, right)
    b = np.where((np.arange(30) >= 10) & (np.arange(30) < 20), wrong, right)
    single = np.where(np.arange(30) < 15, wrong, right)  # the 16-epoch member: wrong on half
    for name, preds in (("s96_e8_fnone", a), ("s96_e8_fnone_seed43", b), ("s96_e16_fnone", single)):
        _member(tmp_path, name, ids, preds)
    cells = [{"row": n, "name": n, "image_size": 96, "epochs": e, "fold": "none", "members": 1, "overrides": [],
              "train_images": 30, "train_s": 1.0, "predict_s": 0.5, "macro_f1": f}
             for n, e, f in (("s96_e8_fnone", 8, 0.6), ("s96_e8_fnone_seed43", 8, 0.6), ("s96_e16_fnone", 16, 0.5))]  # fmt: skip
    voted = members_row(tmp_path, "s96_m2x8", cells[:2], truth)
    assert voted["members"] == 2 and voted["train_s"] == 2.0
    probs = np.load(tmp_path / "s96_m2x8.probs.npz")["probs"]
    assert probs.shape == (30, 3) and np.allclose(probs.sum(1), 1.0, atol=1e-5)
    rows = [*cells, voted]
    grid_evidence(rows, tmp_path, truth)
    assert rows[2]["vs_half_epochs"]["ref"] == "s96_e8_fnone"  # 16 epochs against 8
    assert "vs_half_epochs" not in rows[1]  # a second seed is not a point of the epochs curve
    assert voted["vs_one_member"]["ref"] == "s96_e16_fnone"
    vs = rows[2]["vs_half_epochs"]
    assert (vs["wins"], vs["losses"]) == (0, 5)  # wrong on 0-14 against wrong on 0-9
