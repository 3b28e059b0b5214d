"""Hard cases: add/mark verdicts (validated, atomic, logged), mining proposals, label errors, compare."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from docsort.core.outputs import MARKER
from docsort.data.prepared import Prepared
from tests.conftest import TINY
from tests.review_fakes import fake_candidate, one_hot
from tests.scenario import run_cli


@pytest.fixture
def data(sample_root, tmp_path):
    return shutil.copytree(sample_root, tmp_path / "data")


def _train(data) -> pd.DataFrame:
    return pd.read_csv(data / "train.csv", dtype={"ID": str})


def test_add_and_mark_record_verdicts(data):
    hc = data / "hardcases.csv"
    before = pd.read_csv(hc, dtype={"ID": str})
    test_id = pd.read_csv(data / "sample_submission.csv", dtype={"ID": str})["ID"].iloc[0]
    meta = pd.read_csv(data / "meta.csv")
    name3 = meta.loc[meta["target"] == 3, "class_name"].item()
    code, out, err = run_cli(
        "hardcases",
        "add",
        test_id,
        "--target",
        name3,
        "--note",
        "stamp hides the title",
        "--file",
        str(hc),
    )
    assert code == 0, err
    after = pd.read_csv(hc, dtype={"ID": str}, keep_default_na=False)
    assert len(after) == len(before) + 1
    assert after.iloc[-1].tolist() == [
        test_id,
        3,
        "stamp hides the title",
        "hard",
    ]  # class name -> target
    pd.testing.assert_frame_equal(
        after.iloc[:-1].reset_index(drop=True), before.fillna(""), check_dtype=False
    )

    code, _, err = run_cli("hardcases", "mark", test_id, "--kind", "ambiguous", "--file", str(hc))
    assert code == 0, err
    row = pd.read_csv(hc, dtype={"ID": str}, keep_default_na=False).set_index("ID").loc[test_id]
    assert (row["target"], row["kind"], row["note"]) == (3, "ambiguous", "stamp hides the title")
    history = [
        json.loads(line) for line in (data / "hardcases.history.jsonl").read_text().splitlines()
    ]
    assert [h["action"] for h in history] == ["add", "mark"]
    assert history[1]["before"]["kind"] == "hard" and history[1]["after"]["kind"] == "ambiguous"
    assert not [
        p for p in data.iterdir() if p.name.startswith(".") and p.name != MARKER
    ]  # atomic rewrite: no temp files left


@pytest.mark.parametrize(
    "argv,message",
    [
        (["add", "nope.jpg", "--target", "1"], "'nope.jpg' is neither a test image"),
        (
            ["add", "{test}", "--target", "99"],
            "target '99' is neither a target 0..16 nor a class name",
        ),
        (["add", "{test}", "--target", "1", "--kind", "label_error"], "is not a training image"),
        (["add", "{train}", "--target", "{label}", "--kind", "label_error"], "already labelled"),
        (["add", "{hard}", "--target", "1"], "already a hard case; use `docsort hardcases mark`"),
        (
            ["mark", "{test}", "--kind", "hard"],
            "is not in hardcases.csv; use `docsort hardcases add`",
        ),
        (["add", "{test}", "--target", "1", "--note", "two\nlines"], "note must be one line"),
    ],
)
def test_verdicts_are_validated(data, argv, message):
    hc = data / "hardcases.csv"
    original = hc.read_bytes()
    train = _train(data)
    hard = pd.read_csv(hc, dtype={"ID": str})["ID"].iloc[0]
    test_ids = set(pd.read_csv(data / "sample_submission.csv", dtype={"ID": str})["ID"]) - {hard}
    fill = {"test": sorted(test_ids - set(pd.read_csv(hc, dtype={"ID": str})["ID"]))[0], "train": train["ID"].iloc[0],
            "label": str(train["target"].iloc[0]), "hard": hard}  # fmt: skip
    code, _, err = run_cli("hardcases", *[a.format(**fill) for a in argv], "--file", str(hc))
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and message in err, err
    assert hc.read_bytes() == original


@pytest.mark.slow  # `make test-slow`
def test_label_error_changes_training_labels_only_when_the_option_is_on(data, tmp_path):
    from docsort.data.prepare import prepare

    train = _train(data)
    victim, label = train["ID"].iloc[0], int(train["target"].iloc[0])
    right = (label + 1) % 17
    hc = data / "hardcases.csv"
    assert (
        run_cli(
            "hardcases",
            "add",
            victim,
            "--target",
            str(right),
            "--kind",
            "hard",
            "--file",
            str(hc),
        )[0]
        == 0
    )
    assert run_cli("hardcases", "mark", victim, "--kind", "label_error", "--file", str(hc))[0] == 0

    def labels(*options: str) -> dict[str, int]:
        out = prepare(str(data), tmp_path / "p", [*TINY, *options])
        idx = pd.read_csv(out / "index.csv", dtype={"ID": str})
        return dict(zip(idx["ID"], idx["target"], strict=True))

    assert labels()[victim] == label  # default: the verdict is recorded, training is untouched
    corrected = labels("data.correct_label_errors=true")
    assert corrected[victim] == right and len(corrected) == len(train)
    excluded = labels("data.exclude_label_errors=true")
    assert victim not in excluded and len(excluded) == len(train) - 1


def _candidates(prepared_root, tmp_path):
    """Two candidates that agree except on two test images; OOF tables with planted errors."""
    prep = Prepared(prepared_root)
    test_ids, k = prep.test_ids, prep.num_classes
    base = np.arange(len(test_ids)) % k
    a = one_hot(base, k, 0.9)
    a[2] = one_hot([base[2]], k, 1 / k + 0.01)[0]  # the least confident image of all
    b = a.copy()
    b[[0, 1]] = one_hot((base[[0, 1]] + 1) % k, k, 0.6)  # b disagrees on the first two test images
    idx = prep.index
    ids, y = idx["ID"].tolist(), idx["target"].to_numpy()
    oof = one_hot(y, k, 0.9)
    oof[0] = one_hot([(y[0] + 5) % k], k, 0.95)[0]  # a confident, consistent error: a label error?
    oof_b = oof.copy()
    oof[1] = one_hot([(y[1] + 2) % k], k, 0.5)[0]  # an unsure error of one candidate only: hard
    ca = fake_candidate(tmp_path / "cands" / "A", "A", test_ids, a, oof=(ids, y, oof))
    cb = fake_candidate(tmp_path / "cands" / "B", "B", test_ids, b, oof=(ids, y, oof_b))
    return ca, cb, test_ids, ids, y


def test_mine_proposes_oof_errors_disagreements_and_low_confidence(prepared_root, tmp_path):
    ca, cb, test_ids, ids, y = _candidates(prepared_root, tmp_path)
    out = tmp_path / "proposals.csv"
    code, printed, err = run_cli(
        "hardcases",
        "mine",
        str(tmp_path / "cands"),
        "--prepared",
        str(prepared_root),
        "--top",
        "3",
        "--out",
        str(out),
    )
    assert code == 0, err
    df = pd.read_csv(out, dtype={"ID": str}, keep_default_na=False)
    oof = df[df["source"] == "oof_error"]
    assert oof["ID"].tolist() == [ids[0], ids[1]]  # most confident first
    assert (
        oof.iloc[0]["suggested_kind"] == "label_error"
        and oof.iloc[0]["suggested_target"] == (y[0] + 5) % 17
    )
    assert oof.iloc[1]["suggested_kind"] == "hard" and oof.iloc[1]["suggested_target"] == y[1]
    hard = set(pd.read_csv(prepared_root / "hardcases.csv", dtype={"ID": str})["ID"])
    dis = df[df["source"] == "disagreement"]
    assert set(dis["ID"]) == {test_ids[0], test_ids[1]} - hard
    assert all("A:" in r and "B:" in r for r in dis["reason"])
    low = df[df["source"] == "low_confidence"]
    assert len(low) == 3 and (test_ids[2] in hard or low["ID"].iloc[0] == test_ids[2])
    assert not set(df["ID"]) & hard  # already reviewed images are not proposed again
    assert "proposals written" in printed


def test_compare_side_by_side_with_candidate_folders(prepared_root, tmp_path):
    prep = Prepared(prepared_root)
    hard = pd.read_csv(prepared_root / "hardcases.csv", dtype={"ID": str})
    hard = hard[hard["ID"].isin(prep.test_ids)]
    k = prep.num_classes
    truth = dict(zip(hard["ID"], hard["target"], strict=True))
    target = np.array([truth.get(i, 0) for i in prep.test_ids])
    good = one_hot(target, k, 0.8)
    worse = good.copy()
    miss = prep.test_ids.index(hard["ID"].iloc[0])
    worse[miss] = one_hot([(target[miss] + 1) % k], k, 0.7)[0]
    fake_candidate(
        tmp_path / "all" / "c1814", "c1814", prep.test_ids, worse, members=2, oof_macro_f1=0.90
    )
    fake_candidate(tmp_path / "c1824", "c1824", prep.test_ids, good, members=3, oof_macro_f1=0.85)
    out = tmp_path / "cmp"
    code, printed, err = run_cli(
        "hardcases",
        "compare",
        str(tmp_path / "all"),
        str(tmp_path / "c1824"),
        "--prepared",
        str(prepared_root),
        "--out",
        str(out),
    )
    assert code == 0, err
    per_image = pd.read_csv(out / "per_image.csv", dtype={"ID": str})
    assert per_image["ID"].tolist() == hard["ID"].tolist()
    assert {"truth", "c1814:pred", "c1814:conf", "c1824:pred", "c1824:conf"} <= set(
        per_image.columns
    )
    pc = pd.read_csv(out / "per_candidate.csv").set_index("candidate")
    n = len(hard)
    assert pc.loc["c1824", "correct"] == n and pc.loc["c1814", "correct"] == n - 1
    pair = pd.read_csv(out / "pairwise.csv").iloc[0]
    assert (pair["a_wins"], pair["b_wins"]) == (0, 1) and pair[
        "mcnemar_p"
    ] == 1.0  # one discordant image
    winner = json.loads((out / "winner.json").read_text())
    # one image of difference (p = 1) does not beat the prior: both soft, c1814 has fewer members
    assert (winner["winner"], winner["prior"], winner["decided_by"]) == ("c1814", "c1814", "prior")
    assert (winner["evidence"]["challenger"], winner["evidence"]["wins"]) == ("c1824", 1)
    assert winner["evidence"]["p"] == 1.0
    assert "decided by the stated prior" in printed and "McNemar" in printed
    assert len(winner["hardcases_sha256"]) == 64
    assert json.loads((out / "winner" / "candidate.json").read_text())["name"] == "c1814"


def test_compare_without_hard_cases_falls_back_to_the_prior(prepared_root, tmp_path, capsys):
    from docsort.review.compare import compare_candidates

    prep = Prepared(prepared_root)
    none = tmp_path / "hardcases.csv"
    none.write_text("ID,target,note,kind\n")  # the user's file, with no verdict yet
    p = np.full((len(prep.test_ids), 17), 1 / 17)
    fake_candidate(tmp_path / "c" / "x", "x", prep.test_ids, p, oof_macro_f1=0.7)
    fake_candidate(tmp_path / "c" / "y", "y", prep.test_ids, p, oof_macro_f1=0.8)
    out = compare_candidates(prepared_root, [tmp_path / "c"], tmp_path / "cmp", hardcases=none)
    record = json.loads((out / "winner.json").read_text())
    # nothing to test them on: the prior (same method and members, the order given), not OOF
    assert (record["winner"], record["decided_by"]) == ("x", "prior")
    text = (out / "comparison.txt").read_text().splitlines()
    assert text[0] == f"hard cases: {none} (0 verdicts, 0 used)"
    assert text[2].startswith("No hard case is a test image")
