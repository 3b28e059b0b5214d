"""Label errors: the OOF ranking finds injected wrong labels; mine -> accept -> prepare drops them."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from docsort.review.hardcases import rank_label_errors
from tests.conftest import TINY
from tests.review_fakes import fake_member, one_hot
from tests.scenario import one_line, run_cli


def _members(
    y_true: np.ndarray, k: int, members: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """OOF probabilities of ``members`` imperfect models of the true classes.

    Each model is right with a random confidence on most images and confidently
    wrong on its own 8 % of them (a hard image for that model only).
    """
    out = []
    for _ in range(members):
        n = len(y_true)
        pred = y_true.copy()
        slip = rng.random(n) < 0.08
        pred[slip] = (y_true[slip] + rng.integers(1, k, slip.sum())) % k
        conf = rng.uniform(0.4, 0.95, n)
        p = rng.dirichlet(np.ones(k), n) * (1 - conf)[:, None]
        p[np.arange(n), pred] += conf
        out.append(p / p.sum(1, keepdims=True))
    return out


def _noisy_labels(
    y_true: np.ndarray, k: int, n: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    flipped = rng.choice(len(y_true), n, replace=False)
    y = y_true.copy()
    y[flipped] = (y[flipped] + rng.integers(1, k, n)) % k
    return y, flipped


def _rank(members: int, seed: int = 7):
    rng = np.random.default_rng(seed)
    k, n_images, n_wrong = 10, 500, 25
    y_true = rng.integers(0, k, n_images)
    y, flipped = _noisy_labels(y_true, k, n_wrong, rng)
    ids = [f"img{i:04d}.jpg" for i in range(n_images)]
    tables = [(ids, p) for p in _members(y_true, k, members, rng)]
    ranked = rank_label_errors(tables, dict(zip(ids, y.tolist(), strict=True)))
    true_class = {ids[i]: int(y_true[i]) for i in flipped}
    return ranked, true_class


def test_injected_label_errors_rank_near_the_top():
    ranked, true_class = _rank(members=3)
    n = len(true_class)
    assert len(ranked) == 500 and ranked["score"].is_monotonic_decreasing
    hit = ranked["ID"].isin(set(true_class)).to_numpy()
    assert hit[: 2 * n].sum() == n  # every injected error within the top 2N
    assert hit[:n].mean() >= 0.9
    flagged = ranked[ranked["label_error"]]
    assert len(flagged) >= n // 2 and flagged["ID"].isin(set(true_class)).all()
    # the suggested target is the true class
    assert all(
        int(o) == true_class[i] for i, o in zip(flagged["ID"], flagged["other"], strict=True)
    )
    # one model's own confident slips look just like label errors: several models separate them
    alone, _ = _rank(members=1)
    assert alone["ID"].isin(set(true_class)).to_numpy()[:n].mean() < hit[:n].mean() - 0.3


def test_agreement_across_members_raises_the_score():
    k = 5
    ids = ["agree", "alone", "split", "fine"]
    labels = {"agree": 0, "alone": 0, "split": 0, "fine": 0}
    right, wrong2, wrong3 = (
        one_hot([0], k, 0.8)[0],
        one_hot([2], k, 0.8)[0],
        one_hot([3], k, 0.8)[0],
    )
    a = np.stack([wrong2, wrong2, wrong2, right])
    b = np.stack([wrong2, right, wrong3, right])
    c = np.stack([wrong2, right, wrong2, right])
    ranked = rank_label_errors([(ids, a), (ids, b), (ids, c)], labels).set_index("ID")
    s = ranked["score"]
    # three of three on class 2 > two on 2 and one on 3 (split) > one of three (alone) > none
    assert s["agree"] > s["split"] > s["alone"] > s["fine"]
    assert ranked.loc["agree", "agree"] == 3 and ranked.loc["agree", "other"] == 2
    assert ranked.loc["split", "wrong"] == 3 and ranked.loc["split", "agree"] == 2
    assert ranked.loc["agree", "label_error"] and not ranked.loc["alone", "label_error"]
    # an image one source lacks is scored over the sources that hold it
    part = rank_label_errors([(ids, a), (ids[:2], b[:2])], labels).set_index("ID")
    assert part.loc["agree", "sources"] == 2 and part.loc["split", "sources"] == 1


def test_an_image_already_reviewed_is_left_out():
    k = 4
    ids = ["a", "b", "c", "d"]
    p = one_hot([1, 1, 2, 3], k, 0.9)
    labels = {"a": 0, "b": 1, "c": 2, "d": 3}
    ranked = rank_label_errors([(ids, p)], labels, skip={"a"})
    assert "a" not in set(ranked["ID"]) and len(ranked) == 3
    assert rank_label_errors([(ids, p)], labels)["ID"].iloc[0] == "a"


@pytest.mark.slow
def test_mine_accept_prepare_drops_the_accepted_label_errors(sample_root, prepared_root, tmp_path):
    """The CLI sequence a person types: mine, read, accept the top label errors, prepare again."""
    data = shutil.copytree(sample_root, tmp_path / "data")
    hc = data / "hardcases.csv"
    reviewed = len(pd.read_csv(hc))
    idx = pd.read_csv(prepared_root / "index.csv", dtype={"ID": str})
    ids, y = idx["ID"].tolist(), idx["target"].to_numpy()
    k = 17
    sure, less, seen = 0, 1, 2
    oof = one_hot(y, k, 0.85)
    oof[sure] = one_hot([(y[sure] + 4) % k], k, 0.95)[0]  # the model is sure the label is wrong
    oof[less] = one_hot([(y[less] + 1) % k], k, 0.9)[0]
    oof[seen] = one_hot([(y[seen] + 1) % k], k, 0.95)[0]  # a person has looked at it already
    model = fake_member(tmp_path / "m", ids, y, {"identity": oof})
    code, _, err = run_cli("hardcases", "add", ids[seen], "--target", str(y[seen]), "--file", hc)
    assert code == 0, err

    proposals, ranking = tmp_path / "proposals.csv", tmp_path / "ranking.csv"
    code, out, err = run_cli("hardcases", "mine", "--model", model, "--prepared", prepared_root,
                             "--file", hc, "--out", proposals, "--ranking", ranking)  # fmt: skip
    assert code == 0, err
    df = pd.read_csv(proposals, dtype={"ID": str}, keep_default_na=False)
    assert df["ID"].tolist() == [ids[sure], ids[less]]  # best first; the reviewed image left out
    assert (df["suggested_kind"] == "label_error").all() and df["score"].is_monotonic_decreasing
    assert df["suggested_target"].tolist() == [(y[sure] + 4) % k, (y[less] + 1) % k]
    assert "hardcases accept" in out
    full = pd.read_csv(ranking, dtype={"ID": str})
    assert len(full) == len(ids) - 1 and full["ID"].iloc[0] == ids[sure]

    code, out, err = run_cli("hardcases", "accept", proposals, "--top", "1", "--file", hc)
    assert code == 0, err
    rows = pd.read_csv(hc, dtype={"ID": str}, keep_default_na=False)
    assert rows.iloc[-1][["ID", "target", "kind"]].tolist() == [
        ids[sure],
        (y[sure] + 4) % k,
        "label_error",
    ]
    assert len(rows) == reviewed + 2 and "accepted from proposals.csv" in rows.iloc[-1]["note"]
    code, out, err = run_cli("hardcases", "accept", proposals, "--file", hc)  # the rest
    assert code == 0, err
    assert f"left 1 already in {hc} as they are: {ids[sure]}" in out
    assert "1 proposal of kind label_error added" in out
    history = [
        json.loads(line) for line in (data / "hardcases.history.jsonl").read_text().splitlines()
    ]
    assert [(h["action"], h["ID"]) for h in history] == [
        ("add", ids[seen]),
        ("accept", ids[sure]),
        ("accept", ids[less]),
    ]

    code, _, err = run_cli("prepare", data, "--out", tmp_path / "prep2", *TINY,
                           "data.exclude_label_errors=true")  # fmt: skip
    assert code == 0, err
    kept = set(pd.read_csv(tmp_path / "prep2" / "index.csv", dtype={"ID": str})["ID"])
    assert kept == set(ids) - {ids[sure], ids[less]}


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--top", "0"], "--top 0 must be an integer >= 1"),
        (["--kind", "hard"], "0 proposals of kind hard added"),
    ],
)
def test_accept_options(sample_root, tmp_path, argv, message):
    data = shutil.copytree(sample_root, tmp_path / "data")
    train = pd.read_csv(data / "train.csv", dtype={"ID": str})
    proposals = tmp_path / "p.csv"
    pd.DataFrame({"ID": [train["ID"].iloc[0]], "suggested_target": [(train["target"].iloc[0] + 1) % 17],
                  "suggested_kind": ["label_error"], "score": [0.9]}).to_csv(proposals, index=False)  # fmt: skip
    before = (data / "hardcases.csv").read_bytes()
    code, out, err = run_cli(
        "hardcases", "accept", proposals, "--file", data / "hardcases.csv", *argv
    )
    if code:
        assert one_line(err) == message
    else:
        assert message in out
    assert (data / "hardcases.csv").read_bytes() == before
