"""The out-of-fold report of the K-fold pipelines: merge members' oof.csv, score, refuse overlaps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from docsort.core.errors import DocsortError
from docsort.core.probs import read_probs, write_probs
from docsort.core.stats import macro_f1
from docsort.data.prepared import Prepared
from docsort.train.oof import oof_report


def fake_member(prepared: Path, folder: Path, fold: int, seed: int) -> Path:
    """A member's oof.csv for one fold: random probabilities, right 60% of the time."""
    index = Prepared(prepared).index
    rows = index[index["fold"] == fold]
    k = Prepared(prepared).num_classes
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(k), size=len(rows))
    right = rng.random(len(rows)) < 0.6
    probs[right, rows["target"].to_numpy()[right]] += 2
    probs /= probs.sum(1, keepdims=True)
    write_probs(
        folder / "oof.csv", rows["ID"], probs, {"target": rows["target"], "fold": rows["fold"]}
    )
    return folder


def test_report_merges_the_folds_in_index_order_and_scores_them(prepared_root, tmp_path):
    members = [fake_member(prepared_root, tmp_path / f"fold{f}", f, seed=f) for f in (1, 0)]
    report = oof_report(prepared_root, members, tmp_path / "report")

    ids, probs, df = read_probs(tmp_path / "report" / "oof.csv")
    index = Prepared(prepared_root).index
    assert ids == index["ID"].tolist()  # every training image once, in index order
    assert df["fold"].tolist() == index["fold"].tolist()
    expected = macro_f1(index["target"], probs.argmax(1), labels=range(probs.shape[1]))
    assert report["macro_f1"] == pytest.approx(expected)
    assert report["missing"] == 0 and report["images"] == len(index)
    assert set(report["folds"]) == {0, 1}
    saved = json.loads((tmp_path / "report" / "report.json").read_text())
    assert saved["macro_f1"] == pytest.approx(expected)
    per_class = pd.read_csv(tmp_path / "report" / "per_class.csv")
    assert len(per_class) == Prepared(prepared_root).num_classes
    assert f"{expected:.4f}" in (tmp_path / "report" / "report.md").read_text()


def test_a_missing_fold_is_counted_not_scored(prepared_root, tmp_path):
    report = oof_report(
        prepared_root, [fake_member(prepared_root, tmp_path / "m", 0, seed=1)], tmp_path / "r"
    )
    index = Prepared(prepared_root).index
    assert report["missing"] == int((index["fold"] == 1).sum()) > 0
    assert "not predicted" in (tmp_path / "r" / "report.md").read_text()


def test_two_members_on_the_same_fold_are_refused(prepared_root, tmp_path):
    a = fake_member(prepared_root, tmp_path / "a", 0, seed=1)
    b = fake_member(prepared_root, tmp_path / "b", 0, seed=2)
    with pytest.raises(DocsortError, match=r"out-of-fold for several members \['a', 'b'\]"):
        oof_report(prepared_root, [a, b], tmp_path / "r")
    assert not (tmp_path / "r").exists()  # nothing half-written


def test_a_member_without_fold_column_is_refused(prepared_root, tmp_path):
    m = fake_member(prepared_root, tmp_path / "m", 0, seed=1)
    df = pd.read_csv(m / "oof.csv").drop(columns=["fold"])
    df.to_csv(m / "oof.csv", index=False)
    with pytest.raises(DocsortError, match="no 'fold' column"):
        oof_report(prepared_root, [m], tmp_path / "r")


def test_a_member_listing_an_image_twice_is_refused(prepared_root, tmp_path):
    m = fake_member(prepared_root, tmp_path / "m", 0, seed=1)
    df = pd.read_csv(m / "oof.csv", dtype={"ID": str})
    pd.concat([df, df.iloc[:1]]).to_csv(m / "oof.csv", index=False)
    with pytest.raises(DocsortError, match="duplicate ID"):
        oof_report(prepared_root, [m], tmp_path / "r")
