"""One model-folder notion: predict, export, ensemble and tta-ablation take a model folder or a fold bundle."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from docsort.core.probs import read_probs
from docsort.data.prepared import Prepared
from docsort.ensemble.combiners import load_spec
from tests.conftest import TINY, TINY_TRAIN
from tests.scenario import one_line, run_cli
from tests.test_tta import make_member

FAST = [*TINY, "precision=fp32", "tta.views=[identity,rot90]", "tta.batch_size=8"]
NEITHER = "not a model folder or fold bundle (no model.safetensors, no fold*/model.safetensors)"


@pytest.fixture(scope="module")
def bundle(prepared_root, tmp_path_factory) -> Path:
    """A two-fold bundle laid out as ``train fold=all`` writes it (untrained weights: fast)."""
    root = tmp_path_factory.mktemp("bundle") / "b"
    for k in (0, 1):
        make_member(root / f"fold{k}", prepared_root, seed=10 + k)
    return root


def test_predict_of_a_bundle_is_the_mean_of_its_folds(bundle, prepared_root, tmp_path):
    rc, _, err = run_cli("predict", "--prepared", prepared_root, "--model", bundle,
                         "--out", tmp_path / "b", *FAST)  # fmt: skip
    assert rc == 0, err
    folds = []
    for k in (0, 1):
        rc, _, err = run_cli("predict", "--prepared", prepared_root, "--model", bundle / f"fold{k}",
                             "--out", tmp_path / f"f{k}", *FAST)  # fmt: skip
        assert rc == 0, err
        folds.append(read_probs(tmp_path / f"f{k}" / "probs.csv"))
    ids, probs, _ = read_probs(tmp_path / "b" / "probs.csv")
    assert ids == folds[0][0] == Prepared(prepared_root).test_ids
    assert np.abs(probs - (folds[0][1] + folds[1][1]) / 2).max() < 1e-5
    assert np.abs(folds[0][1] - folds[1][1]).max() > 1e-3  # two different models were averaged
    info = json.loads((tmp_path / "b" / "predict.json").read_text())
    assert info["model"] == str(bundle) and info["folds"] == ["fold0", "fold1"]
    assert info["views"] == ["identity", "rot90"] and info["merge"] == "mean"

    # the people's columns: predicted id and its name from the prepared meta
    raw = pd.read_csv(tmp_path / "b" / "probs.csv", dtype={"ID": str}, keep_default_na=False)
    assert list(raw.columns[:3]) == ["ID", "pred_target", "pred_name"]
    names = Prepared(prepared_root).class_names
    assert raw["pred_target"].tolist() == probs.argmax(1).tolist()
    assert raw["pred_name"].tolist() == [names[k] for k in probs.argmax(1)]

    # the same command again: complete, nothing redone
    before = (tmp_path / "b" / "probs.csv").stat().st_mtime_ns
    rc, _, err = run_cli("predict", "--prepared", prepared_root, "--model", bundle,
                         "--out", tmp_path / "b", *FAST)  # fmt: skip
    assert rc == 0 and "already complete" in err
    assert (tmp_path / "b" / "probs.csv").stat().st_mtime_ns == before


def test_a_bundle_prediction_is_an_ensemble_member(bundle, prepared_root, tmp_path):
    """``ensemble --model BUNDLE`` and ``ensemble PRED`` of ``predict --model BUNDLE`` agree."""
    rc, _, err = run_cli("predict", "--prepared", prepared_root, "--model", bundle,
                         "--out", tmp_path / "p", *FAST)  # fmt: skip
    assert rc == 0, err
    rc, _, err = run_cli("ensemble", tmp_path / "p", "--out", tmp_path / "c1")
    assert rc == 0, err
    rc, _, err = run_cli("ensemble", *FAST, "--model", bundle, "--prepared", prepared_root,
                         "--views", "identity,rot90", "--out", tmp_path / "c2")  # fmt: skip
    assert rc == 0, err
    a, b = read_probs(tmp_path / "c1" / "probs.csv"), read_probs(tmp_path / "c2" / "probs.csv")
    assert a[0] == b[0] and np.abs(a[1] - b[1]).max() < 1e-5
    assert load_spec(tmp_path / "c1" / "candidate.yaml").members[0].model == str(bundle.resolve())


@pytest.mark.slow  # `make test-slow`
def test_export_of_a_bundle_writes_each_fold_and_predict_uses_them(bundle, prepared_root, tmp_path):
    b = shutil.copytree(bundle, tmp_path / "b")
    rc, out, err = run_cli("export", b)
    assert rc == 0, err
    assert all((b / f"fold{k}" / "model.onnx").is_file() for k in (0, 1))
    assert out.count("exported ") == 2
    rc, _, err = run_cli("export", b, "--out", tmp_path / "x.onnx")
    assert rc == 2 and "one model.onnx per fold; drop --out" in one_line(err)
    assert not (tmp_path / "x.onnx").exists()

    rc, _, err = run_cli("predict", "--prepared", prepared_root, "--model", b, "--out",
                         tmp_path / "p", *FAST, "runtime=onnx")  # fmt: skip
    assert rc == 0, err
    for k in (0, 1):
        info = json.loads((tmp_path / "p" / f"fold{k}" / "predict.json").read_text())
        assert info["engine"]["model"] == str(b / f"fold{k}" / "model.onnx")
    rc, _, err = run_cli("predict", "--prepared", prepared_root, "--model", b, "--onnx",
                         b / "fold0" / "model.onnx", "--out", tmp_path / "q", *FAST, "runtime=onnx")  # fmt: skip
    assert rc == 2 and "--onnx names one file, a fold bundle has one model per fold" in one_line(
        err
    )


@pytest.mark.parametrize(
    "argv",
    [
        ("predict", "--prepared", "{prep}", "--model", "{bad}", "--out", "{tmp}/o", *TINY),
        ("export", "{bad}"),
        ("ensemble", *TINY, "--model", "{bad}", "--prepared", "{prep}", "--out", "{tmp}/o"),
        ("tta-ablation", "{bad}", "--out", "{tmp}/o"),
    ],
    ids=lambda a: a[0],
)
def test_a_folder_that_is_neither_is_refused_alike(argv, prepared_root, tmp_path):
    bad = tmp_path / "not-a-model"
    (bad / "fold0").mkdir(parents=True)
    (bad / "fold0" / "model.yaml").write_text("arch: resnet18\n")  # weights missing
    args = [a.format(prep=prepared_root, bad=bad, tmp=tmp_path) for a in argv]
    rc, _, err = run_cli(*args)
    assert rc == 2 and one_line(err) == f"{bad}: {NEITHER}"
    assert not (tmp_path / "o").exists()


def test_predict_shows_one_progress_display_and_nothing_else(bundle, prepared_root, tmp_path):
    rc, out, err = run_cli("predict", "--prepared", prepared_root, "--model", bundle / "fold0",
                           "--out", tmp_path / "p", *FAST)  # fmt: skip
    assert rc == 0
    assert all(ln.startswith("predict fold0: ") for ln in err.splitlines() if ln.strip()), err
    assert out.strip() == f"predictions written to {tmp_path / 'p'}"


@pytest.mark.slow  # `make test-slow`
def test_a_moved_candidate_tree_still_runs_and_submits(bundle, prepared_root, tmp_path):
    """Spec member paths are relative to the spec: move the whole tree, re-run and submit there."""
    tree = tmp_path / "tree"
    shutil.copytree(bundle, tree / "models" / "b")
    make_member(tree / "models" / "m1", prepared_root, seed=3)
    rc, _, err = run_cli("ensemble", *FAST, "--model", tree / "models" / "b", "--model",
                         tree / "models" / "m1", "--prepared", prepared_root, "--views", "identity",
                         "--out", tree / "cands" / "soft")  # fmt: skip
    assert rc == 0, err
    text = (tree / "cands" / "soft" / "candidate.yaml").read_text()
    assert str(tmp_path) not in text and "../../models/b" in text

    moved = tmp_path / "elsewhere" / "tree2"
    moved.parent.mkdir()
    tree.rename(moved)
    spec = moved / "cands" / "soft" / "candidate.yaml"
    assert [m.model for m in load_spec(spec).members] == [
        str((moved / "models" / p).resolve()) for p in ("b", "m1")
    ]
    rc, _, err = run_cli("candidate", "run", spec, "--prepared", prepared_root,
                         "--out", moved / "rerun", *FAST)  # fmt: skip
    assert rc == 0, err
    a, b = (
        read_probs(moved / "cands" / "soft" / "probs.csv"),
        read_probs(moved / "rerun" / "probs.csv"),
    )
    assert a[0] == b[0] and np.abs(a[1] - b[1]).max() < 1e-5
    rc, _, err = run_cli("submission", "--prepared", prepared_root, "--probs",
                         moved / "cands" / "soft" / "probs.csv", "--out", moved / "subs")  # fmt: skip
    assert rc == 0, err
    (lineage,) = (moved / "subs" / "submissions").glob("*.lineage.json")
    checkpoints = json.loads(lineage.read_text())["checkpoints"]
    assert sorted(checkpoints) == sorted(
        str((moved / "models" / p / "model.safetensors").resolve())
        for p in ("b/fold0", "b/fold1", "m1")
    )
    assert all(len(v) == 64 for v in checkpoints.values())


def test_a_spec_with_absolute_member_paths_still_loads(bundle, tmp_path):
    """Specs written before paths were relative name absolute paths; those are kept."""
    spec = tmp_path / "c" / "candidate.yaml"
    spec.parent.mkdir()
    spec.write_text(f"name: old\nmembers:\n- {{name: b, model: {bundle.resolve()}}}\n"
                    "- {name: s3, model: 's3://bucket/members/m1'}\n")  # fmt: skip
    assert [m.model for m in load_spec(spec).members] == [
        str(bundle.resolve()),
        "s3://bucket/members/m1",
    ]


@pytest.mark.slow
def test_a_trained_bundle_works_in_every_command(prepared_root, tmp_path):
    """``train fold=all`` then predict, export, tta-ablation and ensemble on the bundle via the CLI."""
    b = tmp_path / "bundle"
    rc, _, err = run_cli("train", "--prepared", prepared_root, "--out", b, *TINY_TRAIN, "fold=all")
    assert rc == 0, err
    for argv in (
        ("predict", "--prepared", prepared_root, "--model", b, "--out", tmp_path / "p", *FAST),
        ("export", b),
        ("tta-ablation", b, "--out", tmp_path / "abl"),
        ("ensemble", *FAST, "--model", b, "--model", b / "fold1", "--prepared", prepared_root,
         "--views", "identity", "--out", tmp_path / "c"),
    ):  # fmt: skip
        rc, _, err = run_cli(*argv)
        assert rc == 0, (argv[0], err)
    assert (tmp_path / "p" / "fold1" / "probs.csv").is_file()
    assert (b / "fold1" / "model.onnx").is_file()
    assert (tmp_path / "abl" / "recommended.json").is_file()
    assert len(load_spec(tmp_path / "c" / "candidate.yaml").members) == 2
