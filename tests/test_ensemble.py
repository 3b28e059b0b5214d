"""Voting, weight search, nested CV, stacking and the candidate spec."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from docsort.core.choices import MERGES
from docsort.core.errors import ConfigError, DocsortError
from docsort.core.stats import macro_f1
from docsort.ensemble import combiners as ens


def _member(y: np.ndarray, k: int, noise: float, sharp: float, rng) -> np.ndarray:
    z = rng.normal(0, noise, (len(y), k))
    z[np.arange(len(y)), y] += 2.0
    z *= sharp
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _members(n: int = 400, k: int = 5, seed: int = 0, noises=(1.0, 1.6, 2.6)):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    return y, [_member(y, k, s, 1.0 + i, rng) for i, s in enumerate(noises)]


P1 = np.array([[0.9, 0.1], [0.5, 0.5]])
P2 = np.array([[0.5, 0.5], [0.2, 0.8]])


def test_soft_and_geometric_merge_hand_examples():
    assert np.allclose(ens.merge_probs([P1, P2]), [[0.7, 0.3], [0.35, 0.65]])
    # geometric: sqrt(.45)=.6708, sqrt(.05)=.2236 -> renormalized .75/.25
    assert np.allclose(ens.merge_probs([P1, P2], merge="geomean")[0], [0.75, 0.25])
    # with probabilities only, mean of log-probs + softmax is the same as the geometric mean
    assert np.allclose(
        ens.merge_probs([P1, P2], merge="logits"), ens.merge_probs([P1, P2], merge="geomean")
    )
    assert np.allclose(ens.merge_probs([P1, P2], [3, 1]), 0.75 * P1 + 0.25 * P2)


@pytest.mark.parametrize("merge", MERGES)
def test_one_hot_weights_equal_that_member(merge):
    _, members = _members(n=60)
    for i in range(len(members)):
        w = np.eye(len(members))[i]
        out = ens.merge_probs(members, w, merge)
        if merge == "mean":
            assert np.array_equal(out, members[i])  # exact, not just close
        else:
            assert np.allclose(out, members[i], atol=1e-9)


def test_hard_vote_majority_and_tie_break_by_summed_probability():
    # row 0: two members vote class 0 weakly, one votes class 1 very strongly -> majority wins
    a = np.array([[0.55, 0.45], [0.6, 0.4]])
    b = np.array([[0.51, 0.49], [0.3, 0.7]])
    c = np.array([[0.0, 1.0], [0.45, 0.55]])
    votes = ens.hard_vote([a, b, c])
    assert votes.argmax(1).tolist() == [0, 1]
    assert np.allclose(votes.sum(1), 1.0)
    assert votes[0] == pytest.approx([2 / 3, 1 / 3], abs=1e-5)
    # two members, one vote each: the summed probability decides (0.6+0.3 < 0.4+0.7 -> class 1)
    assert ens.hard_vote([a[1:], b[1:]]).argmax(1).tolist() == [1]
    assert ens.hard_vote([np.array([[0.9, 0.1]]), np.array([[0.45, 0.55]])]).argmax(1).tolist() == [
        0
    ]
    # weighted votes: c alone outweighs a and b
    assert ens.hard_vote([a, b, c], [1, 1, 3]).argmax(1).tolist() == [1, 1]


@pytest.mark.parametrize("objective", ens.OBJECTIVES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_weight_search_never_worse_than_equal_weights(objective, seed):
    y, members = _members(seed=seed)
    res = ens.search_weights(members, y, objective=objective)
    assert res.weights.shape == (3,) and res.weights.sum() == pytest.approx(1.0)
    assert (res.weights >= 0).all()
    # recompute independently rather than trusting the reported scores
    fitted = ens.score(ens.merge_probs(members, res.weights), y, objective)
    equal = ens.score(ens.merge_probs(members), y, objective)
    if objective == "macro_f1":
        assert fitted >= equal
    else:
        assert fitted <= equal
    assert res.score == pytest.approx(fitted) and res.equal_score == pytest.approx(equal)


def test_weight_search_finds_the_strong_member():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 4, 300)
    perfect = np.eye(4)[y] * 0.7 + 0.075
    junk = [rng.dirichlet(np.ones(4) * 0.3, size=300) for _ in range(2)]
    res = ens.search_weights([junk[0], perfect, junk[1]], y)
    assert res.score == pytest.approx(1.0)
    assert res.equal_score < 1.0 and res.improved
    assert res.weights.argmax() == 1


def test_nested_cv_reports_out_of_sample_scores():
    y, members = _members(n=500, seed=4, noises=(0.8, 2.8, 3.0))
    folds = np.arange(len(y)) % 4
    cv = ens.nested_cv_weights(members, y, folds=folds)
    assert cv.table["fold"].tolist() == [0, 1, 2, 3]
    assert cv.table["n"].sum() == len(y)
    # one member is much better: weighting pays off on held-out rows
    assert cv.weighted_beats_equal
    assert cv.pooled_equal == pytest.approx(macro_f1(y, ens.merge_probs(members).argmax(1)))
    # identical members: weighting cannot help, and the report says so
    same = ens.nested_cv_weights([members[0]] * 3, y, n_splits=3)
    assert not same.weighted_beats_equal
    assert len(same.table) == 3


def test_stacking_learns_what_voting_cannot():
    rng = np.random.default_rng(7)
    k, n = 4, 600
    y = rng.integers(0, k, n)
    honest = _member(y, k, 2.5, 1.0, rng)
    # a member that is confidently right, but under a permuted label order
    shifted = np.roll(_member(y, k, 0.5, 2.0, rng), 1, axis=1)
    soft = macro_f1(y, ens.merge_probs([honest, shifted]).argmax(1))
    cv = ens.stacking_cv([honest, shifted], y, n_splits=5)
    assert cv.oof_probs.shape == (n, k) and np.allclose(cv.oof_probs.sum(1), 1.0)
    assert cv.macro_f1 > 0.9 > soft


def test_stacker_round_trips_through_plain_numbers():
    y, members = _members(n=200, k=3)
    st = ens.fit_stacker(members, y)
    again = ens.Stacker.from_dict(yaml.safe_load(yaml.safe_dump(st.to_dict())))
    assert np.allclose(again.predict_proba(members), st.predict_proba(members))
    # matches sklearn's own predict_proba
    from sklearn.linear_model import LogisticRegression

    ref = LogisticRegression(max_iter=2000).fit(ens.stack_features(members), y)
    assert np.allclose(
        st.predict_proba(members), ref.predict_proba(ens.stack_features(members)), atol=1e-8
    )
    binary = ens.fit_stacker([m[:, :2] / m[:, :2].sum(1, keepdims=True) for m in members], y % 2)
    assert binary.predict_proba([m[:, :2] for m in members]).shape == (200, 2)


def test_cross_fit_oof_matches_the_dedicated_estimates():
    y, members = _members(n=300, seed=6, noises=(0.8, 2.5, 3.0))
    folds = np.arange(len(y)) % 5
    soft = ens.cross_fit_oof(members, y, method="soft", folds=folds)
    assert np.allclose(soft, ens.merge_probs(members))  # nothing fitted, nothing changes
    weighted = ens.cross_fit_oof(members, y, method="weighted", folds=folds)
    cv = ens.nested_cv_weights(members, y, folds=folds)
    assert macro_f1(y, weighted.argmax(1)) == pytest.approx(cv.pooled_weighted)
    stacked = ens.cross_fit_oof(members, y, method="stacked", folds=folds)
    assert np.allclose(stacked, ens.stacking_cv(members, y, folds=folds).oof_probs)


def _spec(**kw) -> ens.CandidateSpec:
    base = dict(
        name="cand-1814",
        members=[
            ens.MemberSpec("resnet18-f0", "runs/a/model.safetensors"),
            ens.MemberSpec("effnet-f0", "s3://b/m.safetensors", views=["identity", "rot180"]),
        ],
    )
    base.update(kw)
    return ens.CandidateSpec(**base)


def test_spec_yaml_round_trip_and_combine(tmp_path):
    y, members = _members(n=120, noises=(1.0, 1.5))
    spec = ens.fit_candidate(
        "cand-1824",
        _spec().members,
        members,
        y,
        method="weighted",
        calibrate=True,
        tta_views=["identity", "rot90", "rot180", "rot270"],
    )
    path = ens.save_spec(spec, tmp_path / "cand.yaml")
    loaded = ens.load_spec(path)
    for m in spec.members:  # the file stores them relative to itself; loaded, they are usable paths
        m.model = ens.member_path(m.model, ".")
    assert loaded == spec
    assert loaded.views_of(0) == ["identity", "rot90", "rot180", "rot270"]
    assert loaded.views_of(1) == ["identity", "rot180"]
    assert np.allclose(ens.combine(loaded, members), ens.combine(spec, members))
    # the combine of a calibrated weighted spec is temperature scaling then the weighted mean
    from docsort.ensemble.calibration import apply_temperature

    scaled = [apply_temperature(p, t) for p, t in zip(members, spec.temperatures, strict=True)]
    assert np.allclose(ens.combine(spec, members), ens.merge_probs(scaled, spec.weights))
    assert not list(tmp_path.glob(".*tmp"))  # nothing half-written left behind


def test_stacked_spec_round_trip(tmp_path):
    y, members = _members(n=150, noises=(1.0, 1.5))
    spec = ens.fit_candidate("stacked", _spec().members, members, y, method="stacked")
    loaded = ens.load_spec(ens.save_spec(spec, tmp_path / "s.yaml"))
    assert np.allclose(
        ens.combine(loaded, members), ens.fit_stacker(members, y).predict_proba(members)
    )


def test_combine_methods_and_member_count():
    _, members = _members(n=30, noises=(1.0, 2.0))
    assert np.allclose(ens.combine(_spec(), members), ens.merge_probs(members))
    hard = ens.combine(_spec(method="hard"), members)
    assert np.array_equal(hard.argmax(1), ens.hard_vote(members).argmax(1))
    one_hot = ens.combine(_spec(method="weighted", weights=[0.0, 1.0]), members)
    assert np.array_equal(one_hot, members[1])
    with pytest.raises(DocsortError, match="2 members, got 1"):
        ens.combine(_spec(), members[:1])
    with pytest.raises(DocsortError, match="shape"):
        ens.combine(_spec(), [members[0], members[1][:5]])


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        (dict(method="median"), "valid: soft, weighted, hard, stacked"),
        (dict(merge="max"), "valid: mean, geomean, logits"),
        (dict(tta_views=["identity", "rot45"]), "valid: identity, rot90"),
        (dict(method="weighted"), "needs weights"),
        (dict(method="weighted", weights=[1.0]), "1 weights for 2 members"),
        (dict(method="weighted", weights=[-1.0, 2.0]), "non-negative"),
        (dict(weights=[0.5, 0.5]), "takes no weights"),
        (dict(temperatures=[1.0, 0.0]), "positive"),
        (dict(method="stacked"), "needs a fitted stacker"),
        (dict(name="../escape"), "candidate name"),
        (dict(members=[]), "no members"),
    ],
)
def test_spec_validation_names_the_problem(kw, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        _spec(**kw).validate()


def test_load_spec_rejects_bad_yaml(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmembers: [{name: a, model: c}]\nmethd: soft\n")
    with pytest.raises(
        ConfigError, match=r"bad.yaml: candidate spec has unknown keys \['methd'\]; valid: name"
    ):
        ens.load_spec(bad)
    bad.write_text("name: x\nmembers: [{name: a, model: c, view: [rot90]}]\n")
    with pytest.raises(ConfigError, match="member 0 has unknown keys"):
        ens.load_spec(bad)
    # safe_load: no Python object construction from a spec file
    bad.write_text("!!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        ens.load_spec(bad)
    with pytest.raises(ConfigError, match="not found"):
        ens.load_spec(tmp_path / "missing.yaml")


def test_a_spec_written_with_checkpoint_keys_still_loads_and_is_saved_with_model(tmp_path):
    old = tmp_path / "old.yaml"
    old.write_text("name: x\nmembers: [{name: a, checkpoint: runs/a, views: [rot90]}]\n")
    spec = ens.load_spec(old)
    runs_a = str((tmp_path / "runs" / "a").resolve())  # relative to the spec's folder
    assert spec.members == [ens.MemberSpec("a", runs_a, views=["rot90"])]
    saved = yaml.safe_load(ens.save_spec(spec, tmp_path / "new.yaml").read_text())
    assert saved["members"] == [{"name": "a", "model": "runs/a", "views": ["rot90"]}]
    old.write_text("name: x\nmembers: [{name: a}]\n")
    with pytest.raises(ConfigError, match="member 0 needs 'name' and 'model'"):
        ens.load_spec(old)


def test_outer_folds_are_stratified_within_the_oof_rows():
    """Honest scores mix every fold model's rows into each outer fold (not the training folds)."""
    y = np.repeat(np.arange(4), [10, 7, 5, 12])
    f = ens.cv_folds(y)
    assert np.array_equal(f, ens.cv_folds(y))  # reproducible
    assert sorted(np.unique(f)) == [0, 1, 2, 3, 4]  # min(5, smallest class)
    for k in range(5):
        assert set(y[f == k]) == {0, 1, 2, 3}  # every class in every outer fold
    assert len(np.unique(ens.cv_folds(np.array([0, 0, 1, 1, 1])))) == 2


def test_auto_combiner_takes_stacking_only_when_the_oof_rows_separate_it_from_soft():
    """method=auto: stacking must beat soft by the paired rule, else soft stays (and says so)."""
    rng = np.random.default_rng(7)
    k, n = 4, 600
    y = rng.integers(0, k, n)
    honest = _member(y, k, 2.5, 1.0, rng)
    shifted = np.roll(_member(y, k, 0.5, 2.0, rng), 1, axis=1)  # right under a permuted order
    c = ens.choose_combiner([honest, shifted], y)
    assert c.method == "stacked" and c.record["decided_by"] == "evidence"
    assert c.oof_scores["stacked"] > c.oof_scores["soft"] and c.record["evidence"]["p"] < 0.05
    # two alike, calibrated members: stacking has nothing to learn that soft lacks
    y2, (a, b) = _members(n=200, noises=(1.2, 1.3))
    c2 = ens.choose_combiner([a, b], y2)
    assert c2.method == "soft" and c2.record["decided_by"] == "prior"
    assert "keeping soft" in c2.text and "p=" in c2.text
