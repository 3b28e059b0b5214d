"""Each stage on tiny real data: outputs, invariants and one-line failures on bad input."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from docsort.core.probs import read_probs
from docsort.data.prepared import Prepared
from tests.conftest import TINY
from tests.scenario import run_cli


def copy_data(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# --- prepare ---------------------------------------------------------------------------------


def test_prepare_writes_stratified_reproducible_folds(prepared_root, sample_root):
    prep = Prepared(prepared_root)
    idx = prep.index
    train = pd.read_csv(sample_root / "train.csv")
    assert sorted(idx["ID"]) == sorted(train["ID"])
    assert set(idx["fold"]) == {0, 1}
    # stratified: each class is split as evenly as possible between the 2 folds
    per = idx.groupby(["target", "fold"]).size().unstack(fill_value=0)
    assert ((per[0] - per[1]).abs() <= 1).all()
    assert prep.images("train").shape == (len(idx), 48, 48)
    assert prep.images("test").shape[0] == len(pd.read_csv(sample_root / "sample_submission.csv"))
    assert (prepared_root / "eda.png").stat().st_size > 1000


@pytest.mark.slow  # 6-10 s on 2 cores: `make test-slow`
def test_prepare_again_reuses_cache_and_keeps_folds(prepared_root, sample_root, tmp_path):
    from docsort.data.prepare import prepare

    out = tmp_path / "p"
    prepare(str(sample_root), out, TINY)
    first = {p.name: p.stat().st_ino for p in (out / "cache").iterdir()}
    folds1 = pd.read_csv(out / "index.csv")
    prepare(str(sample_root), out, TINY)
    second = {p.name: p.stat().st_ino for p in (out / "cache").iterdir()}
    assert first == second  # the same files, linked, not rebuilt
    pd.testing.assert_frame_equal(folds1, pd.read_csv(out / "index.csv"))
    prepare(str(sample_root), out, ["data.image_size=32", "data.num_folds=2"])
    third = {p.name for p in (out / "cache").iterdir()}
    assert third.isdisjoint(first)  # a new resize spec means a new cache


def test_prepare_rebuilds_cache_when_an_image_changes(sample_root, tmp_path):
    from docsort.data.prepare import prepare

    data = copy_data(sample_root, tmp_path / "data")
    prepare(str(data), tmp_path / "p", TINY)
    before = {p.name for p in (tmp_path / "p" / "cache").iterdir()}
    victim = sorted((data / "train").iterdir())[0]
    shutil.copyfile(sorted((data / "train").iterdir())[1], victim)
    prepare(str(data), tmp_path / "p", TINY)
    after = {p.name for p in (tmp_path / "p" / "cache").iterdir()}
    assert len(before & after) == 1  # test cache kept, train cache rebuilt


def _break(data: Path, how: str) -> str:
    train = pd.read_csv(data / "train.csv", dtype=str)
    first = train["ID"].iloc[0]
    if how == "missing image":
        (data / "train" / first).unlink()
        return rf"train.csv row 1: image '{re.escape(first)}' not found"
    if how == "corrupt image":
        (data / "train" / first).write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
        return rf"train.csv row 1: image train/{re.escape(first)}: (unreadable|not an image)"
    if how == "unknown label":
        train.loc[2, "target"] = "42"
        train.to_csv(data / "train.csv", index=False)
        return r"train.csv row 3: label 42 is not in meta.csv"
    if how == "duplicate ID":
        train.loc[4, "ID"] = train.loc[1, "ID"]
        train.to_csv(data / "train.csv", index=False)
        return r"train.csv row 5: duplicate ID .* \(first at row 2\)"
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["missing image", "corrupt image", "unknown label", "duplicate ID"])
def test_prepare_refuses_bad_input_in_one_line(how, sample_root, tmp_path):
    data = copy_data(sample_root, tmp_path / "data")
    pattern = _break(data, how)
    out = tmp_path / "prepared"
    code, _, err = run_cli("prepare", str(data), "--out", str(out), *TINY)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("docsort: error: "), err
    assert re.search(pattern, lines[0]), lines[0]
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["data"]  # no temporary leftovers


@pytest.mark.parametrize(
    "override,message",
    [
        (
            "model.name=resnet_nonexistent",
            "model.name='resnet_nonexistent' is not valid; choose from",
        ),
        ("train.epochs=-1", "train.epochs=-1 must be >= 1"),
        (
            "tta.views=[identity,rot45]",
            "tta.views='rot45' is not valid; choose from: identity, rot90",
        ),
    ],
)
def test_invalid_config_fails_before_any_work(override, message, prepared_root, tmp_path):
    out = tmp_path / "m"
    code, _, err = run_cli(
        "train", "--prepared", str(prepared_root), "--out", str(out), *TINY, override
    )
    assert code == 2 and message in err
    assert not out.exists()


# --- train -----------------------------------------------------------------------------------


def test_train_prints_katib_metric_lines_and_writes_member(trained_member, prepared_root):
    log = (trained_member / "stdout.log").read_text().splitlines()
    # whole-line name=value pairs, the lines a StdOut metrics collector reads
    metric_lines = [line for line in log if re.fullmatch(r"[a-z_0-9]+=[-+0-9.eE]+", line)]
    assert [m.split("=")[0] for m in metric_lines] == ["epoch", "val_macro_f1", "val_loss"] * 2, log
    assert [int(m.split("=")[1]) for m in metric_lines[::3]] == [1, 2]
    for name in (
        "model.safetensors",
        "model.yaml",
        "oof.csv",
        "oof_views.npz",
        "metrics.json",
        "checkpoints/last.ckpt",
        "config.yaml",
    ):
        assert (trained_member / name).is_file(), name
    ids, probs, df = read_probs(trained_member / "oof.csv")
    idx = Prepared(prepared_root).index
    assert sorted(ids) == sorted(idx.loc[idx["fold"] == 0, "ID"])  # every held-out image, once
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-4)


def test_safetensors_member_reloads_to_identical_predictions(trained_member, prepared_root):
    from docsort.data.datasets import ImageArrayDataset
    from docsort.models.factory import load_member
    from docsort.train.train import predict_views

    prep = Prepared(prepared_root)
    ds = ImageArrayDataset(prep.images("test"), np.arange(6), None)
    a = load_member(trained_member)
    b = load_member(trained_member)
    pa = predict_views(a.model, ds, ["identity", "rot90"], torch.device("cpu"), "fp32", 4)
    pb = predict_views(b.model, ds, ["identity", "rot90"], torch.device("cpu"), "fp32", 4)
    for v in pa:
        np.testing.assert_array_equal(pa[v], pb[v])


# --- predict / ensemble / hardcases / submission ---------------------------------------------


def test_predict_ensemble_hardcases_submission(trained_member, prepared_root, tmp_path):
    code, out, err = run_cli(
        "predict",
        "--prepared",
        str(prepared_root),
        "--model",
        str(trained_member),
        "--out",
        str(tmp_path / "pred"),
        *TINY,
    )
    assert code == 0, err
    ids, probs, _ = read_probs(tmp_path / "pred" / "probs.csv")
    assert ids == Prepared(prepared_root).test_ids
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-4)
    assert set(np.load(tmp_path / "pred" / "views.npz").files) >= {"identity", "flip_rot270"}

    shutil.copytree(tmp_path / "pred", tmp_path / "pred2")
    code, _, err = run_cli(
        "ensemble",
        str(tmp_path / "pred"),
        str(tmp_path / "pred2"),
        "--out",
        str(tmp_path / "soft"),
    )
    assert code == 0, err
    _, soft, _ = read_probs(tmp_path / "soft" / "probs.csv")
    np.testing.assert_allclose(
        soft, probs, atol=1e-6
    )  # soft vote of two equal members is that member
    code, _, err = run_cli(
        "ensemble",
        str(tmp_path / "pred"),
        "--method",
        "hard",
        "--out",
        str(tmp_path / "hard"),
    )
    assert code == 0, err

    code, out, err = run_cli(
        "hardcases",
        "compare",
        str(tmp_path / "soft"),
        str(tmp_path / "hard"),
        "--prepared",
        str(prepared_root),
        "--out",
        str(tmp_path / "cmp"),
    )
    assert code == 0, err
    assert "soft" in out and "hard" in out
    per_cand = pd.read_csv(tmp_path / "cmp" / "per_candidate.csv")
    assert len(per_cand) == 2

    code, out, err = run_cli(
        "submission",
        "--prepared",
        str(prepared_root),
        "--probs",
        str(tmp_path / "soft" / "probs.csv"),
        "--out",
        str(tmp_path / "subs"),
        "--candidate",
        "soft",
    )
    assert code == 0, err
    sub_path = Path(out.strip().split()[-1])
    sub = pd.read_csv(sub_path, dtype={"ID": str})
    sample = pd.read_csv(prepared_root / "sample_submission.csv", dtype={"ID": str})
    assert sub["ID"].tolist() == sample["ID"].tolist()
    assert sub["target"].isin(range(17)).all()
    assert (sub_path.parent / "latest.json").is_file()


def test_submission_refuses_probabilities_missing_an_id(prepared_root, tmp_path):
    from docsort.core.probs import write_probs

    ids = Prepared(prepared_root).test_ids[1:]
    write_probs(tmp_path / "p.csv", ids, np.full((len(ids), 17), 1 / 17))
    code, _, err = run_cli(
        "submission",
        "--prepared",
        str(prepared_root),
        "--probs",
        str(tmp_path / "p.csv"),
        "--out",
        str(tmp_path / "subs"),
    )
    assert code == 2 and "1 IDs missing" in err
    assert not (tmp_path / "subs").exists()
