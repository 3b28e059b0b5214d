"""TTA ablation on hand-made per-view probabilities."""

from __future__ import annotations

import numpy as np
import pytest

from docsort.core.choices import VIEW_NAMES
from docsort.core.errors import ConfigError, DocsortError
from docsort.ensemble.tta_ablation import format_ablation, named_families, tta_ablation

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
    # the best subset (identity) against the prior (every view given): 2 fixed, 1 broken
    assert ab.table.iloc[0]["views"] == "identity"
    assert (both.fixed_vs_prior, both.broken_vs_prior, both.p_vs_prior) == (0, 0, 1.0)
    assert (base.fixed_vs_prior, base.broken_vs_prior) == (2, 1)
    assert ab.prior == ("identity", "rot90") and ab.recommended == ab.prior
    assert tta_ablation(
        {"identity": IDENTITY, "rot90": ROT90}, Y, prior=["identity"]
    ).recommended == ("identity",)


def test_ties_go_to_fewer_views_and_a_tie_keeps_the_prior():
    # rot90 that agrees with identity everywhere: identity+rot90 scores the same
    ab = tta_ablation({"identity": IDENTITY, "rot90": IDENTITY.copy()}, Y)
    assert ab.table["macro_f1"].nunique() == 1
    assert ab.table.iloc[0]["views"] == "identity" and ab.table.iloc[0]["rank"] == 1
    assert ab.recommended == ("identity", "rot90")  # identical predictions: no evidence
    assert ab.choice.decided_by == "prior" and ab.choice.result.p_value == 1.0
    assert "fixed 0 / broken 0" in ab.choice.evidence_text


def test_a_noisy_best_subset_does_not_replace_the_prior():
    # rot180 is right where identity is wrong and only mildly wrong elsewhere
    rot180 = np.array([[0.6, 0.4], [0.95, 0.05], [0.45, 0.55], [0.4, 0.6]])
    flip = np.array([[0.1, 0.9], [0.1, 0.9], [0.9, 0.1], [0.9, 0.1]])  # mirrored text: all wrong
    ab = tta_ablation({"identity": IDENTITY, "rot180": rot180, "flip": flip}, Y, prior=["identity"])
    assert len(ab.table) == 7  # every non-empty subset of 3 views
    assert ab.table.iloc[0]["views"] == "rot180"  # alone it is perfect, and 1 view beats 2
    best_with_identity = _row(ab, "identity+rot180")
    assert (best_with_identity.fixed, best_with_identity.broken) == (1, 0)
    assert _row(ab, "flip").broken == 3
    # ... but one fixed image on four is a coin flip: the prior stays, and the text says so
    assert ab.recommended == ("identity",) and ab.choice.decided_by == "prior"
    text = format_ablation(ab, 4)
    assert "Recommended: identity (decided by prior; prior: identity)" in text
    assert "the evidence does not separate the subsets: best rot180" in text
    assert "fixed 1 / broken 0, exact McNemar p=1" in text and "keeping identity" in text


def _views_fixing(fixed: int, broken: int, right: int = 40, wrong: int = 40):
    """identity and rot90 probabilities where rot90 fixes ``fixed`` and breaks ``broken`` rows."""
    n = right + wrong
    y = np.arange(n) % 3
    ok_id = np.arange(n) < right
    ok_rot = ok_id.copy()
    ok_rot[right : right + fixed] = True
    ok_rot[:broken] = False

    def probs(ok):
        p = np.full((n, 3), 0.1)
        p[np.arange(n), np.where(ok, y, (y + 1) % 3)] = 0.8
        return p

    return {"identity": probs(ok_id), "rot90": probs(ok_rot)}, y


def test_a_clearly_better_subset_is_chosen_by_evidence():
    views, y = _views_fixing(30, 2)
    ab = tta_ablation(views, y, prior=["identity"])
    assert ab.recommended == ("rot90",) and ab.choice.decided_by == "evidence"
    assert (ab.choice.result.wins, ab.choice.result.losses) == (30, 2)
    assert (
        "rot90" in ab.choice.evidence_text
        and "choosing rot90 by evidence" in ab.choice.evidence_text
    )
    # the same data with noise-sized differences keeps the prior
    views, y = _views_fixing(2, 1)
    ab = tta_ablation(views, y, prior=["identity"])
    assert ab.table.iloc[0]["views"] == "rot90" and ab.recommended == ("identity",)
    # alpha is the threshold: 10 fixed / 2 broken is p = 0.0386
    views, y = _views_fixing(10, 2)
    assert tta_ablation(views, y, prior=["identity"]).recommended == ("rot90",)
    assert tta_ablation(views, y, prior=["identity"], alpha=0.01).recommended == ("identity",)


def test_the_prior_is_scored_even_when_the_subsets_mode_skips_it():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 30)
    views = {v: rng.dirichlet(np.ones(3), size=30) for v in VIEW_NAMES}
    prior = ["rot90", "identity", "rot180"]  # any order: named canonically
    ab = tta_ablation(views, y, subsets="families", prior=prior)
    assert ab.prior == ("identity", "rot90", "rot180")
    assert len(ab.table) == 8 + 7 + 3 + 1 and "identity+rot90+rot180" in set(ab.summary()["views"])
    with pytest.raises(DocsortError, match="lack"):
        tta_ablation({"identity": IDENTITY}, Y, prior=["rot90"])
    with pytest.raises(DocsortError, match="alpha"):
        tta_ablation({"identity": IDENTITY}, Y, alpha=2)


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


def test_cli_recommends_by_evidence_or_keeps_the_prior(tmp_path):
    import json

    from tests.review_fakes import fake_member
    from tests.scenario import run_cli

    views, y = _views_fixing(30, 2)
    ids = [f"d{i:03d}.jpg" for i in range(len(y))]
    clear = fake_member(tmp_path / "clear", ids, y, views)
    code, out, err = run_cli("tta-ablation", clear, "--prior", "identity", "--out", tmp_path / "a")
    assert code == 0, err
    info = json.loads((tmp_path / "a" / "recommended.json").read_text())
    assert (info["views"], info["prior"], info["decided_by"]) == (
        ["rot90"],
        ["identity"],
        "evidence",
    )
    assert (info["evidence"]["wins"], info["evidence"]["losses"]) == (30, 2)
    assert "Recommended: rot90 (decided by evidence; prior: identity)" in out

    views, y = _views_fixing(2, 1)
    noise = fake_member(tmp_path / "noise", ids, y, views)
    # default prior: the configured tta.views (all 8), less the views this member lacks
    code, out, err = run_cli("tta-ablation", noise, "--out", tmp_path / "b")
    assert code == 0, err
    info = json.loads((tmp_path / "b" / "recommended.json").read_text())
    assert info["views"] == info["prior"] == ["identity", "rot90"] and info["decided_by"] == "prior"
    assert info["override"] == "tta.views=[identity,rot90]" and info["best"] == ["rot90"]
    assert "without the views the OOF predictions lack" in info["prior_note"]
    assert "the evidence does not separate the subsets" in out and "keeping identity+rot90" in out

    # a looser alpha is the user's call, and the record says which one was used
    code, out, err = run_cli("tta-ablation", noise, "--prior", "identity", "--alpha", "0.99",
                             "--out", tmp_path / "c")  # fmt: skip
    assert code == 0, err
    info = json.loads((tmp_path / "c" / "recommended.json").read_text())
    assert info["evidence"]["alpha"] == 0.99 and info["views"] == [
        "identity"
    ]  # p = 1 is not < 0.99
    code, out, err = run_cli("tta-ablation", noise, "--alpha", "0", "--out", tmp_path / "d")
    assert code == 2 and "alpha 0.0 must be a number between 0 and 1" in err
    assert not (tmp_path / "d").exists()


def test_cli_prior_follows_the_configured_views(tmp_path):
    """``tta.views=[...]`` (anywhere after the command) is the prior, as ``predict`` would use it."""
    import json

    from tests.review_fakes import fake_member
    from tests.scenario import one_line, run_cli

    views, y = _views_fixing(2, 1)
    m = fake_member(tmp_path / "m", [f"d{i:03d}.jpg" for i in range(len(y))], y, views)
    before = (m, "tta.views=[identity]", "--out", tmp_path / "o0")
    after = (m, "--out", tmp_path / "o1", "tta.views=[identity]")
    for i, argv in enumerate([before, after]):
        code, printed, err = run_cli("tta-ablation", *argv)
        assert code == 0, err
        info = json.loads((tmp_path / f"o{i}" / "recommended.json").read_text())
        assert info["prior"] == info["views"] == ["identity"] and info["prior_note"] == ""
    code, _, err = run_cli("tta-ablation", m, "tta.views=[rot45]", "--out", tmp_path / "bad")
    assert code == 2 and "rot45" in one_line(err) and not (tmp_path / "bad").exists()
