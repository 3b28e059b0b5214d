"""Candidate specs end to end: `docsort ensemble` writes one, `docsort candidate run` reproduces it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from docsort.core.atomic import owner_tag
from docsort.core.probs import read_probs
from docsort.core.stats import macro_f1
from docsort.data.prepared import Prepared
from docsort.ensemble.combiners import load_spec
from docsort.ensemble.members import oof_probs
from tests.conftest import TINY
from tests.scenario import run_cli


@pytest.fixture(scope="module")
def two_members(trained_member, tmp_path_factory) -> list[Path]:
    """The trained member and a copy: two members sharing every OOF row (enough for fitted methods)."""
    copy = tmp_path_factory.mktemp("members") / "m1"
    shutil.copytree(trained_member, copy)
    return [trained_member, copy]


def test_soft_candidate_predicts_members_and_reruns_identically(
    trained_member, prepared_root, tmp_path
):
    cand = tmp_path / "soft"
    code, out, err = run_cli("ensemble", "--model", str(trained_member), "--prepared", str(prepared_root),
                         "--views", "identity,rot90", "--name", "c1814", "--out", str(cand), *TINY)  # fmt: skip
    assert code == 0, err
    spec = yaml.safe_load((cand / "candidate.yaml").read_text())
    assert spec["name"] == "c1814" and spec["method"] == "soft"
    rel = os.path.relpath(trained_member.resolve(), cand.resolve())  # movable with its models
    assert spec["members"] == [{"name": "resnet18-f0", "model": Path(rel).as_posix()}]
    assert load_spec(cand / "candidate.yaml").members[0].model == str(trained_member.resolve())
    assert spec["tta_views"] == ["identity", "rot90"] and spec["tta_merge"] == "mean"
    ids, probs, _ = read_probs(cand / "probs.csv")
    assert ids == Prepared(prepared_root).test_ids
    assert json.loads(
        (cand / "members" / f"00-{trained_member.name}" / "predict.json").read_text()
    )["views"] == ["identity", "rot90"]
    # The candidate's OOF is the member's OOF recomputed for the spec's views, and its score is recorded.
    o_ids, o_probs, o_df = read_probs(cand / "oof.csv")
    member = oof_probs(trained_member, ["identity", "rot90"])
    assert o_ids == member.ids
    np.testing.assert_allclose(o_probs, member.probs, atol=1e-6)
    info = json.loads((cand / "candidate.json").read_text())
    assert info["oof_macro_f1"] == pytest.approx(
        macro_f1(o_df["target"], o_probs.argmax(1)), abs=1e-6
    )

    code, out, err = run_cli(
        "candidate",
        "run",
        str(cand / "candidate.yaml"),
        "--prepared",
        str(prepared_root),
        "--out",
        str(tmp_path / "rerun"),
    )
    assert code == 0, err
    r_ids, r_probs, _ = read_probs(tmp_path / "rerun" / "probs.csv")
    assert r_ids == ids
    np.testing.assert_allclose(r_probs, probs, atol=1e-6)
    assert (
        json.loads((tmp_path / "rerun" / "candidate.json").read_text())["oof_macro_f1"]
        == info["oof_macro_f1"]
    )


def test_weighted_calibrated_candidate_spec_report_and_rerun(two_members, prepared_root, tmp_path):
    cand = tmp_path / "w"
    args = [
        "ensemble",
        "--prepared",
        str(prepared_root),
        "--views",
        "identity",
        "--method",
        "weighted",
        "--calibrate",
        "--out",
        str(cand),
    ]
    for m in two_members:
        args += ["--model", str(m)]
    code, out, err = run_cli(*args, *TINY)
    assert code == 0, err
    spec = load_spec(cand / "candidate.yaml")
    assert spec.method == "weighted" and [m.name for m in spec.members] == [
        "resnet18-f0",
        "resnet18-f0-2",
    ]
    assert [m.model for m in spec.members] == [str(p.resolve()) for p in two_members]
    assert len(spec.weights) == 2 and sum(spec.weights) == pytest.approx(1.0)
    assert len(spec.temperatures) == 2 and all(t > 0 for t in spec.temperatures)
    assert spec.tta_views == ["identity"] and 0 <= spec.oof_macro_f1 <= 1

    report = pd.read_csv(cand / "ensemble_report.csv")
    assert report["candidate"].tolist() == [
        "resnet18-f0",
        "resnet18-f0-2",
        "soft",
        "weighted",
        "stacked",
        "hard",
    ]
    assert {"macro_f1", "fit_macro_f1", "ece", "ece_cal", "log_loss_cal"} <= set(report.columns)
    cal = pd.read_csv(cand / "calibration.csv")
    assert (cal["nll_after"] <= cal["nll_before"] + 1e-9).all()  # fitted on these rows: never worse
    assert {"ece_before", "ece_after", "temperature"} <= set(cal.columns)
    # both members hold out fold 0 only, so the nested CV splits those rows itself
    assert len(set(pd.read_csv(cand / "nested_cv.csv")["fold"])) >= 2
    assert "Nested CV of the weight search" in out and "ece_cal" in out

    rerun = tmp_path / "rerun"
    code, _, err = run_cli(
        "candidate",
        "run",
        str(cand / "candidate.yaml"),
        "--prepared",
        str(prepared_root),
        "--out",
        str(rerun),
    )
    assert code == 0, err
    np.testing.assert_allclose(
        read_probs(rerun / "probs.csv")[1], read_probs(cand / "probs.csv")[1], atol=1e-6
    )
    np.testing.assert_allclose(
        read_probs(rerun / "oof.csv")[1], read_probs(cand / "oof.csv")[1], atol=1e-9
    )


def test_fitted_methods_refuse_members_without_shared_oof(trained_member, prepared_root, tmp_path):
    lonely = tmp_path / "m-no-oof"
    shutil.copytree(trained_member, lonely)
    (lonely / "oof.csv").unlink()
    (lonely / "oof_views.npz").unlink()
    out = tmp_path / "c"
    code, _, err = run_cli("ensemble", "--model", str(trained_member), "--model", str(lonely), "--prepared", str(prepared_root),
                       "--views", "identity", "--method", "stacked", "--out", str(out), *TINY)  # fmt: skip
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "fits on out-of-fold predictions" in err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_candidate_run_names_a_missing_member_model(trained_member, prepared_root, tmp_path):
    spec = tmp_path / "candidate.yaml"
    spec.write_text(
        yaml.safe_dump(
            {"name": "c1824", "members": [{"name": "gone", "model": str(tmp_path / "gone")}]}
        )
    )
    code, _, err = run_cli(
        "candidate",
        "run",
        str(spec),
        "--prepared",
        str(prepared_root),
        "--out",
        str(tmp_path / "out"),
    )
    assert code == 2 and "member model not found" in err and str(tmp_path / "gone") in err
    assert not (tmp_path / "out").exists()


def test_candidate_submit_writes_lineage(trained_member, prepared_root, tmp_path, capsys):
    from docsort.ensemble.ensemble import ensemble
    from docsort.review.submission import write_candidate_submission

    cand = ensemble(
        [],
        tmp_path / "c",
        models=[trained_member],
        prepared=prepared_root,
        views=["identity"],
        predict_overrides=TINY,
    )
    uri = write_candidate_submission(prepared_root, cand, str(tmp_path / "subs"))
    lineage = json.loads(Path(uri.replace(".csv", ".lineage.json")).read_text())
    assert lineage["candidate"] == "soft" and lineage["tta_views"] == ["identity"]
    assert lineage["spec"]["members"][0]["model"] == str(trained_member.resolve())
    ((ckpt, digest),) = lineage["checkpoints"].items()
    assert ckpt.endswith("model.safetensors") and len(digest) == 64
    assert lineage["data_fingerprint"] == Prepared(prepared_root).info["fingerprint"]
    assert (
        json.loads((tmp_path / "subs" / "submissions" / "latest.json").read_text())["submission"]
        == Path(uri).name
    )


def test_prepare_for_candidates_reads_the_members_image_settings(
    trained_member, sample_root, tmp_path
):
    from docsort.core.errors import ConfigError
    from docsort.ensemble.candidate import prepare_for_candidates

    spec = tmp_path / "candidate.yaml"
    spec.write_text(
        yaml.safe_dump({"name": "c", "members": [{"name": "m", "model": str(trained_member)}]})
    )
    # a killed run's scratch folder (its owner process is gone) is removed by the next run
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".p.{owner_tag().rsplit('-', 1)[0]}-{dead.pid}.x1.tmp"
    stale.mkdir()
    with pytest.raises(
        ConfigError, match="data.image_size=64 but the candidates' members were trained with 48"
    ):
        prepare_for_candidates(str(sample_root), [spec], tmp_path / "p", ["data.image_size=64"])
    assert not (tmp_path / "p").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["candidate.yaml"]  # no scratch left
    info = json.loads(
        (
            prepare_for_candidates(str(sample_root), [spec], tmp_path / "p") / "prepared.json"
        ).read_text()
    )
    assert (info["image_size"], info["channels"], info["resize"], info["num_folds"]) == (
        48,
        1,
        "pad",
        2,
    )


def test_method_auto_is_the_default_and_records_its_choice(two_members, prepared_root, tmp_path):
    """`docsort ensemble` without --method: soft or stacked by the members' shared OOF, evidence on disk."""
    cand = tmp_path / "auto"
    args = ["ensemble", "--prepared", str(prepared_root), "--views", "identity", "--out", str(cand)]
    for m in two_members:
        args += ["--model", str(m)]
    code, out, err = run_cli(*args, *TINY)
    assert code == 0, err
    info = json.loads((cand / "candidate.json").read_text())
    choice = info["method_choice"]
    assert choice["requested"] == "auto" and choice["chosen"] in ("soft", "stacked")
    assert info["method"] == choice["chosen"] == load_spec(cand / "candidate.yaml").method
    assert info["name"] == choice["chosen"]  # a default candidate is named after its method
    assert set(choice["oof"]) == {"soft", "stacked"} and choice["evidence"]["wins"] is not None
    assert f"method auto: {choice['evidence']['text']}" in out


def test_method_auto_with_one_member_is_soft_and_says_why(trained_member, prepared_root, tmp_path):
    cand = tmp_path / "one"
    code, out, err = run_cli("ensemble", "--model", str(trained_member), "--prepared", str(prepared_root),
                             "--views", "identity", "--out", str(cand), *TINY)  # fmt: skip
    assert code == 0, err
    choice = json.loads((cand / "candidate.json").read_text())["method_choice"]
    assert choice["chosen"] == "soft" and "one member" in choice["evidence"]["text"]
    code, _, err = run_cli("ensemble", "--model", str(trained_member), "--prepared", str(prepared_root),
                           "--method", "auto", "--out", str(tmp_path / "w"), *TINY)  # fmt: skip
    assert code == 0, err
