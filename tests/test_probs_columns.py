"""Probability tables carry the predicted class for people; readers ignore it, old tables still load."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from docsort.core.errors import DocsortError
from docsort.core.probs import PRED_NAME, PRED_TARGET, read_probs, write_probs

NAMES = ["invoice", "letter, typed", "memo"]  # a comma: the CSV must quote it


def _probs(n: int = 5, k: int = 3, seed: int = 0) -> np.ndarray:
    p = np.random.default_rng(seed).uniform(0.01, 1, (n, k))
    return p / p.sum(1, keepdims=True)


def test_prediction_columns_follow_id_and_name_the_argmax(tmp_path):
    ids, p = [f"doc{i}.jpg" for i in range(5)], _probs()
    write_probs(tmp_path / "oof.csv", ids, p, {"target": [0, 1, 2, 0, 1], "fold": [0] * 5},
                class_names=NAMES)  # fmt: skip
    raw = pd.read_csv(tmp_path / "oof.csv", dtype={"ID": str})
    assert list(raw.columns) == ["ID", PRED_TARGET, PRED_NAME, "target", "fold", "p0", "p1", "p2"]
    assert raw[PRED_TARGET].tolist() == p.argmax(1).tolist()
    assert raw[PRED_NAME].tolist() == [NAMES[k] for k in p.argmax(1)]
    got_ids, got, df = read_probs(tmp_path / "oof.csv", num_classes=3)
    assert got_ids == ids and np.abs(got - p).max() < 1e-5
    assert df["target"].tolist() == [0, 1, 2, 0, 1]


def test_a_writer_without_names_writes_the_id_only(tmp_path):
    write_probs(tmp_path / "probs.csv", ["a", "b"], _probs(2))
    assert list(pd.read_csv(tmp_path / "probs.csv").columns) == [
        "ID",
        PRED_TARGET,
        "p0",
        "p1",
        "p2",
    ]


def test_tables_without_prediction_columns_read_the_same(tmp_path):
    ids, p = ["a", "b", "c"], _probs(3)
    write_probs(tmp_path / "new.csv", ids, p, class_names=NAMES)
    old = pd.read_csv(tmp_path / "new.csv", dtype={"ID": str}).drop(
        columns=[PRED_TARGET, PRED_NAME]
    )
    old.to_csv(tmp_path / "old.csv", index=False)
    a, b = read_probs(tmp_path / "new.csv"), read_probs(tmp_path / "old.csv")
    assert a[0] == b[0] and np.array_equal(a[1], b[1])


def test_prediction_columns_are_not_checked_but_probabilities_still_are(tmp_path):
    """Hand-edited prediction columns do not matter; a bad probability still stops the reader."""
    ids, p = ["a", "b"], _probs(2)
    write_probs(tmp_path / "probs.csv", ids, p, class_names=NAMES)
    df = pd.read_csv(tmp_path / "probs.csv", dtype={"ID": str})
    df[PRED_TARGET] = ["seven", ""]
    df[PRED_NAME] = ["?", "NA"]
    df.to_csv(tmp_path / "edited.csv", index=False)
    assert np.abs(read_probs(tmp_path / "edited.csv")[1] - p).max() < 1e-5
    df.loc[1, "p2"] = -0.5
    df.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(DocsortError, match="row 2: p2=-0.5 is not a probability"):
        read_probs(tmp_path / "bad.csv")
