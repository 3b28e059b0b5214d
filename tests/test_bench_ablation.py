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
