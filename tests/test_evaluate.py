"""``docsort evaluate``: scores checked against values worked out by hand."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from docsort.core.probs import write_probs
from docsort.review.evaluate import evaluate
from docsort.review.figures import confidence_bins, reliability_png
from tests.scenario import one_line, run_cli

# Six labelled images of three classes, plus one prediction ("g") nobody labelled.
# Confidences stay off the 1/15 bin edges so the ECE bins are unambiguous.
ROWS = {  # ID: (probabilities, true target)
    "a": ([0.70, 0.20, 0.10], 0),  # predicted 0, right; bin 10
    "b": ([0.65, 0.25, 0.10], 1),  # predicted 0, wrong; bin 9
    "c": ([0.15, 0.75, 0.10], 1),  # predicted 1, right; bin 11
    "d": ([0.20, 0.18, 0.62], 2),  # predicted 2, right; bin 9
    "e": ([0.10, 0.55, 0.35], 2),  # predicted 1, wrong; bin 8
    "f": ([0.90, 0.05, 0.05], 0),  # predicted 0, right; bin 13
}
UNLABELLED = {"g": [0.30, 0.30, 0.40]}

# By hand: class 0 is predicted for a, b, f (2 right) and is true for a, f -> P 2/3, R 1, F1 4/5;
# class 1 predicted for c, e (1 right), true for b, c -> P 1/2, R 1/2, F1 1/2;
# class 2 predicted for d (right), true for d, e -> P 1, R 1/2, F1 2/3.
MACRO_F1 = (4 / 5 + 1 / 2 + 2 / 3) / 3
ACCURACY = 4 / 6
# Bin 9 holds b (wrong, 0.65) and d (right, 0.62): |1/2 - 0.635| counted twice; the other bins
# hold one image each: |1 - 0.70|, |1 - 0.75|, |0 - 0.55|, |1 - 0.90|.
ECE = (2 * abs(0.5 - 0.635) + 0.30 + 0.25 + 0.55 + 0.10) / 6
LOG_LOSS = (
    -(
        math.log(0.70)
        + math.log(0.25)
        + math.log(0.75)
        + math.log(0.62)
        + math.log(0.35)
        + math.log(0.90)
    )
    / 6
)


def _write_inputs(root: Path) -> tuple[Path, Path]:
    """``probs.csv`` (labelled rows + one unlabelled) and ``labels.csv`` for :data:`ROWS`."""
    root.mkdir(parents=True, exist_ok=True)
    ids = [*ROWS, *UNLABELLED]
    probs = np.array([r[0] for r in ROWS.values()] + list(UNLABELLED.values()))
    write_probs(root / "probs.csv", ids, probs)
    labels = root / "labels.csv"
    pd.DataFrame({"ID": list(ROWS), "target": [r[1] for r in ROWS.values()]}).to_csv(
        labels, index=False
    )
    return root / "probs.csv", labels


def _png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def test_probabilities_are_scored_as_worked_out_by_hand(tmp_path):
    probs, labels = _write_inputs(tmp_path / "in")
    out = tmp_path / "eval"
    rc, stdout, stderr = run_cli("evaluate", probs, "--labels", labels, "--out", out)
    assert rc == 0, stderr

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["images"] == 6
    assert metrics["ignored_predictions"] == 1
    assert metrics["kind"] == "probabilities"
    assert metrics["macro_f1"] == pytest.approx(MACRO_F1)
    assert metrics["accuracy"] == pytest.approx(ACCURACY)
    assert metrics["ece"] == pytest.approx(ECE, abs=1e-6)
    assert metrics["log_loss"] == pytest.approx(LOG_LOSS, abs=1e-6)
    assert metrics["class_names"] == ["0", "1", "2"]
    pairs = {(p["true"], p["predicted"]): p["count"] for p in metrics["most_confused"]}
    assert pairs == {("1", "0"): 1, ("2", "1"): 1}

    per_class = pd.read_csv(out / "per_class.csv")
    assert per_class["precision"].tolist() == pytest.approx([2 / 3, 1 / 2, 1.0])
    assert per_class["recall"].tolist() == pytest.approx([1.0, 1 / 2, 1 / 2])
    assert per_class["f1"].tolist() == pytest.approx([4 / 5, 1 / 2, 2 / 3])
    assert per_class["support"].tolist() == [2, 2, 2]

    # the table on stdout: headline scores first, then the classes and the confused pairs
    assert f"macro F1  {MACRO_F1:.4f}" in stdout
    assert f"accuracy  {ACCURACY:.4f}" in stdout
    assert f"ECE       {ECE:.4f}" in stdout
    assert "1 predicted images have no label" in stdout
    assert stdout.index("macro F1") < stdout.index("per class") < stdout.index("most confused")

    w, h = _png_size(out / "confusion.png")
    assert w > 100 and h > 100
    assert _png_size(out / "reliability.png") == (550, 500)


def test_a_submission_csv_has_hard_labels_and_no_calibration(tmp_path):
    _, labels = _write_inputs(tmp_path / "in")
    sub = tmp_path / "in" / "submission.csv"
    argmax = {i: int(np.argmax(p)) for i, (p, _) in ROWS.items()}
    pd.DataFrame({"ID": list(argmax), "target": list(argmax.values())}).to_csv(sub, index=False)
    out = tmp_path / "eval"
    rc, stdout, stderr = run_cli("evaluate", sub, "--labels", labels, "--out", out)
    assert rc == 0, stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["kind"] == "hard labels"
    assert metrics["macro_f1"] == pytest.approx(MACRO_F1)
    assert metrics["accuracy"] == pytest.approx(ACCURACY)
    assert metrics["ece"] is None and metrics["log_loss"] is None
    assert "n/a (hard labels)" in stdout
    assert (out / "confusion.png").is_file()
    assert not (out / "reliability.png").exists()


def test_hard_cases_score_only_the_reviewed_images_on_their_verdicts(tmp_path):
    probs, _ = _write_inputs(tmp_path / "in")
    verdicts = tmp_path / "in" / "hardcases.csv"
    pd.DataFrame(
        {
            "ID": ["a", "e", "b", "z"],
            "target": [0, 1, 1, 2],  # e's verdict is 1: the model (which says 1) was right
            "note": ["", "", "", "a training image"],
            "kind": ["hard", "model_error", "ambiguous", "label_error"],
        }
    ).to_csv(verdicts, index=False)
    r = evaluate(probs, hardcases=verdicts)
    # a: 0 -> 0 right; e: 1 -> 1 right; b: 1 -> 0 wrong; z (label_error) is not a test image.
    # Classes in the verdicts only (0 and 1): class 0 P 1/2 R 1 F1 2/3; class 1 P 1 R 1/2 F1 2/3.
    assert r.images == 3
    assert r.accuracy == pytest.approx(2 / 3)
    assert r.macro_f1 == pytest.approx(2 / 3)
    assert r.f1_over == "truth"
    assert r.ignored == 7 - 3
    assert any("1 of 4 verdicts" in n for n in r.notes)
    assert r.out is None


def test_oof_of_a_trained_member_is_scored_on_its_held_out_fold(trained_member, prepared_root):
    r = evaluate(trained_member, prepared=prepared_root, split="oof")
    index = pd.read_csv(prepared_root / "index.csv", dtype={"ID": str})
    held_out = index[index["fold"] == 0]
    oof = pd.read_csv(trained_member / "oof.csv", dtype={"ID": str}).set_index("ID")
    cols = [f"p{c}" for c in range(len(r.class_names))]
    picked = oof.loc[held_out["ID"], cols].to_numpy()
    truth = held_out["target"].to_numpy()
    assert r.images == len(held_out)
    assert r.accuracy == pytest.approx(float(np.mean(picked.argmax(1) == truth)))
    assert r.log_loss == pytest.approx(
        float(-np.mean(np.log(np.clip(picked[np.arange(len(truth)), truth], 1e-12, 1)))), abs=1e-9
    )
    assert r.class_names == list(
        json.loads((prepared_root / "prepared.json").read_text())["class_names"]
    )
    assert int(r.per_class["support"].sum()) == len(held_out)


def test_labelled_ids_without_a_prediction_are_refused_in_one_line(tmp_path):
    probs, labels = _write_inputs(tmp_path / "in")
    more = pd.read_csv(labels)
    more = pd.concat([more, pd.DataFrame({"ID": ["zz_missing"], "target": [1]})])
    more.to_csv(labels, index=False)
    out = tmp_path / "eval"
    rc, stdout, stderr = run_cli("evaluate", probs, "--labels", labels, "--out", out)
    assert rc == 2
    line = one_line(stderr)
    assert "1 of 7 labelled IDs have no prediction" in line
    assert "'zz_missing'" in line
    assert not out.exists()
    assert stdout == ""


def test_a_label_outside_the_predicted_classes_is_refused(tmp_path):
    probs, labels = _write_inputs(tmp_path / "in")
    pd.DataFrame({"ID": ["a"], "target": [3]}).to_csv(labels, index=False)
    rc, _, stderr = run_cli("evaluate", probs, "--labels", labels)
    assert rc == 2
    assert "row 1: label 3 is not a class of the predictions (0..2)" in one_line(stderr)


def test_reliability_bins_are_the_ece_bins_and_the_png_is_valid():
    ids = list(ROWS)
    probs = np.array([ROWS[i][0] for i in ids])
    targets = np.array([ROWS[i][1] for i in ids])
    count, acc, conf = confidence_bins(probs, targets, n_bins=15)
    assert count.tolist() == [0] * 8 + [1, 2, 1, 1, 0, 1, 0]
    assert acc[9] == pytest.approx(0.5) and conf[9] == pytest.approx(0.635)
    assert np.isnan(acc[0])
    data = reliability_png(probs, targets, n_bins=10)
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "PNG" and im.size == (550, 500)
    with Image.open(io.BytesIO(reliability_png(np.zeros((0, 3)), np.zeros(0, int)))) as im:
        assert im.size == (550, 500)  # no images: an empty diagram, not a crash


def _near_one_hot(targets: np.ndarray, k: int, wrong: set[int]) -> np.ndarray:
    """0.9 on the true class (on the next class for rows in ``wrong``), the rest spread evenly."""
    probs = np.full((len(targets), k), 0.1 / (k - 1))
    for n, t in enumerate(targets):
        probs[n, (t + 1) % k if n in wrong else t] = 0.9
    return probs


def test_the_prepared_folder_gives_test_labels_and_class_names(prepared_root, tmp_path):
    labels = pd.read_csv(prepared_root / "test_labels.csv", dtype={"ID": str})
    names = json.loads((prepared_root / "prepared.json").read_text())["class_names"]
    probs = _near_one_hot(labels["target"].to_numpy(), len(names), wrong={0})
    write_probs(tmp_path / "probs.csv", labels["ID"].tolist(), probs)
    rc, stdout, stderr = run_cli("evaluate", tmp_path / "probs.csv", "--prepared", prepared_root)
    assert rc == 0, stderr
    n = len(labels)
    assert f"accuracy  {(n - 1) / n:.4f}" in stdout
    assert f"images    {n}" in stdout
    assert names[int(labels["target"][0])] in stdout  # class names, not target numbers
    # an output inside an input is refused before anything is written
    rc, _, stderr = run_cli(
        "evaluate",
        tmp_path / "probs.csv",
        "--prepared",
        prepared_root,
        "--out",
        prepared_root / "ev",
    )
    assert rc == 2 and "outside the inputs" in one_line(stderr)
    assert not (prepared_root / "ev").exists()


def test_a_fold_bundle_without_a_pooled_table_pools_its_folds(prepared_root, tmp_path):
    index = pd.read_csv(prepared_root / "index.csv", dtype={"ID": str})
    k = len(json.loads((prepared_root / "prepared.json").read_text())["class_names"])
    bundle = tmp_path / "bundle"
    wrong = 0
    for fold, rows in index.groupby("fold"):
        targets = rows["target"].to_numpy()
        miss = {0, 1} if fold == 0 else set()  # two errors, both in fold 0
        wrong += len(miss)
        extra = {"target": targets, "fold": rows["fold"].to_numpy()}
        (bundle / f"fold{fold}").mkdir(parents=True)
        write_probs(bundle / f"fold{fold}" / "oof.csv", rows["ID"].tolist(),
                    _near_one_hot(targets, k, miss), extra)  # fmt: skip
    r = evaluate(bundle, prepared=prepared_root, split="oof")
    assert r.images == len(index)
    assert r.accuracy == pytest.approx(1 - wrong / len(index))
    assert r.ece is not None and r.ece == pytest.approx(abs(0.9 - (1 - wrong / len(index))))
