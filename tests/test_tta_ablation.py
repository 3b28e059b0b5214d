"""TTA ablation on hand-made per-view probabilities."""

from __future__ import annotations

import numpy as np
import pytest

from docsort.core.choices import VIEW_NAMES
from docsort.core.errors import ConfigError, DocsortError
from docsort.ensemble.tta_ablation import named_families, tta_ablation

Y = [0, 0, 1, 1]
# identity predicts 0,1,1,1 (row 1 wrong); rot90 predicts 0,0,0,0 (rows 2,3 wrong)
IDENTITY = np.array([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.45, 0.55]])
ROT90 = np.array([[0.8, 0.2], [0.9, 0.1], [0.9, 0.1], [0.6, 0.4]])


def _row(ab, views: str):
    t = ab.table
    return t[t["views"] == views].iloc[0]


def test_fixed_and_broken_counts_by_hand():
    ab = tta_ablation({"identity": IDENTITY, "rot90": ROT90}, Y)
    assert sorted(ab.table["views"]) == ["identity", "identity+rot90", "rot90"]
    # mean: [.85,.15] [.65,.35] [.6,.4] [.525,.475] -> predicts 0,0,0,0
    both = _row(ab, "identity+rot90")
    assert (both.fixed, both.broken) == (1, 2)  # row 1 fixed; rows 2 and 3 broken
    assert both.accuracy == pytest.approx(0.5)
    alone = _row(ab, "rot90")
    assert (alone.fixed, alone.broken, alone.net) == (1, 2, -1)
    base = _row(ab, "identity")
    assert (base.fixed, base.broken) == (0, 0)
    # identity: class 0 F1 2/3, class 1 F1 4/5
    assert base.macro_f1 == pytest.approx((2 / 3 + 4 / 5) / 2)
    assert ab.recommended == ("identity",)


def test_ties_go_to_fewer_views():
    # rot90 that agrees with identity everywhere: identity+rot90 scores the same
    ab = tta_ablation({"identity": IDENTITY, "rot90": IDENTITY.copy()}, Y)
    assert ab.table["macro_f1"].nunique() == 1
    assert ab.recommended == ("identity",)
    assert ab.table.iloc[0]["rank"] == 1


def test_recommends_a_subset_that_fixes_errors():
    # rot180 is right where identity is wrong and only mildly wrong elsewhere
    rot180 = np.array([[0.6, 0.4], [0.95, 0.05], [0.45, 0.55], [0.4, 0.6]])
    flip = np.array([[0.1, 0.9], [0.1, 0.9], [0.9, 0.1], [0.9, 0.1]])  # mirrored text: all wrong
    ab = tta_ablation({"identity": IDENTITY, "rot180": rot180, "flip": flip}, Y)
    assert len(ab.table) == 7  # every non-empty subset of 3 views
    assert ab.recommended == ("rot180",)  # alone it is perfect, and 1 view beats 2
    best_with_identity = _row(ab, "identity+rot180")
    assert (best_with_identity.fixed, best_with_identity.broken) == (1, 0)
    assert _row(ab, "flip").broken == 3


@pytest.mark.parametrize("merge", ["mean", "geomean", "logits"])
def test_all_eight_views_give_255_subsets_and_named_families(merge):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 40)
    views = {v: rng.dirichlet(np.ones(3), size=40) for v in VIEW_NAMES}
    ab = tta_ablation(views, y, merge=merge)
    assert len(ab.table) == 255 and ab.merge == merge
    fams = dict(zip(ab.table["family"], ab.table["views"], strict=True))
    assert fams["rotations"] == "identity+rot90+rot180+rot270"
    assert fams["flips only"] == "flip+flip_rot90+flip_rot180+flip_rot270"
    assert fams["all 8"] == "+".join(VIEW_NAMES)
    assert "identity + flip_rot270" in fams
    # summary keeps the best, every single view and every family
    summary = ab.summary(top=5)
    assert set(summary["rank"]) >= {1, 2, 3, 4, 5}
    assert (summary["n_views"] == 1).sum() == 8
    few = tta_ablation(views, y, merge=merge, subsets="families")
    assert len(few.table) == 8 + 7 + 3  # single views, identity + each other view, 3 families


def test_bad_inputs():
    with pytest.raises(DocsortError, match="identity"):
        tta_ablation({"rot90": ROT90}, Y)
    with pytest.raises(ConfigError, match="valid: identity, rot90"):
        tta_ablation({"identity": IDENTITY, "rot45": ROT90}, Y)
    with pytest.raises(DocsortError, match="3 targets for 4 rows"):
        tta_ablation({"identity": IDENTITY}, Y[:3])
    assert named_families(["identity"]) == {("identity",): "identity"}
