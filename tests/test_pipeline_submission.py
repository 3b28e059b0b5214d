"""pipelines/submission.py end to end with kfp.local: candidate specs -> predict + ensemble ->
hard-case comparison -> report -> submission of the winner."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from docsort.ensemble.ensemble import ensemble
from docsort.kfp.runner import compile_pipeline, run_local

PIPELINE = Path(__file__).resolve().parents[1] / "src" / "docsort" / "pipelines" / "submission.py"


@pytest.mark.slow  # kfp.local end to end
def test_submission_pipeline_runs_locally(trained_member, prepared_root, sample_root, tmp_path):
    # Two candidates from one member: without TTA, and with the rot90 view (the "1814 vs 1824" choice).
    specs = []
    for name, views in (("c1814", ["identity"]), ("c1824", ["identity", "rot90"])):
        cand = ensemble(
            [],
            tmp_path / "cands" / name,
            models=[trained_member],
            name=name,
            prepared=prepared_root,
            views=views,
        )
        specs.append(str(cand / "candidate.yaml"))
    params = {
        "data_root": str(sample_root),
        "candidates": specs,
    }
    output = run_local(PIPELINE, tmp_path / "runs", params)

    run_dir = Path(output.path).parent.parent
    sub_csv = next(Path(output.path).glob("submissions/*.csv"))
    sample = pd.read_csv(sample_root / "sample_submission.csv", dtype={"ID": str})
    sub = pd.read_csv(sub_csv, dtype={"ID": str})
    assert sub["ID"].tolist() == sample["ID"].tolist() and sub["target"].between(0, 16).all()
    winner = json.loads(next(run_dir.glob("*/comparison/winner.json")).read_text())
    assert set(winner["candidates"]) == {"c1814", "c1824"}
    lineage = json.loads(next(Path(output.path).glob("submissions/*.lineage.json")).read_text())
    assert lineage["candidate"] == winner["winner"] and lineage["spec"]["members"][0][
        "model"
    ] == str(trained_member.resolve())
    prepared = json.loads(next(run_dir.glob("*/prepared/prepared.json")).read_text())
    assert (prepared["image_size"], prepared["num_folds"]) == (
        48,
        2,
    )  # read from the members, not given
    # Each re-run candidate reproduces the probabilities of the spec it came from.
    for spec in specs:
        name = Path(spec).parent.name
        rerun = Path(winner["candidates"][name])
        a, b = pd.read_csv(Path(spec).parent / "probs.csv"), pd.read_csv(rerun / "probs.csv")
        assert (a["ID"] == b["ID"]).all() and (
            a.filter(regex=r"^p\d+$") - b.filter(regex=r"^p\d+$")
        ).abs().to_numpy().max() < 1e-6
    html = next(run_dir.glob("*/html")).read_text()
    assert "docsort error report: " + winner["winner"] in html
    metrics = json.loads(next(run_dir.glob("report-op/metrics")).read_text())
    assert 0 <= metrics["macro_f1"] <= 1 and metrics["evaluated_on"] == "oof"


def test_submission_pipeline_compiles_with_review_components(tmp_path):
    import yaml

    spec = next(yaml.safe_load_all(compile_pipeline(PIPELINE, tmp_path / "s.yaml").read_text()))
    tasks = spec["root"]["dag"]["tasks"]
    assert {"prepare-candidates-op", "compare-candidates-op", "report-op", "submission-op"} <= set(
        tasks
    )
    report_outputs = spec["components"]["comp-report-op"]["outputDefinitions"]["artifacts"]
    assert {k: v["artifactType"]["schemaTitle"] for k, v in report_outputs.items()} == {
        "html": "system.HTML", "summary": "system.Markdown", "metrics": "system.Metrics",
        "confusion": "system.ClassificationMetrics",
    }  # fmt: skip
    assert tasks["submission-op"]["dependentTasks"] == sorted(
        ["compare-candidates-op", "prepare-candidates-op", "report-op"]
    )
    assert set(spec["root"]["inputDefinitions"]["parameters"]) == {
        "data_root", "candidates", "output_root", "prepare_overrides", "predict_overrides", "report_on",
    }  # fmt: skip
