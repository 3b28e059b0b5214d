"""`docsort sweep`, `docsort submit` and `docsort schedule` through the real CLI.

submit/schedule go to the local HTTP stand-in for the KFP API of
tests/test_kfp_client.py, which records every request; the local sweep runs real
trial subprocesses with the small metric-printing trainer of tests/test_sweep.py
in place of `docsort train` (the `command` hook: docsort.sweep.local.default_command).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from kubeflow_katib_api.models import V1beta1Experiment

from docsort.cli.main import main
from docsort.sweep import local as sweep_local

from . import test_kfp_client
from .test_sweep import FAKE_TRAINER

_posts = test_kfp_client._posts
kfp_api = test_kfp_client.kfp_api  # the KFP API stand-in fixture

ROOT = Path(__file__).resolve().parents[1]


def _platform(body: dict) -> dict:
    """The platform spec kfp.Client sent (next to the pipeline spec)."""
    spec = body["pipeline_spec"]
    return spec["platform_spec"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


# --------------------------------------------------------------------------- submit / schedule


def test_submit_compiles_and_sends_the_pipeline_with_params_and_service_account(kfp_api, capsys):
    host, api = kfp_api
    rc = main([
        "submit", str(ROOT / "src" / "docsort" / "pipelines" / "train.py"), "--host", host, "--experiment", "docsort",
        "--param", "data_root=s3://docsort-data/datasets/tiny", "--param", "train_overrides=train.epochs=3",
        "--run-name", "nightly-train",
    ])  # fmt: skip
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert f"run run-1 (nightly-train) submitted: {host}/#/runs/details/run-1" in out.out
    (run,) = _posts(api, "/apis/v2beta1/runs")
    body = run["body"]
    assert body["service_account"] == "docsort-pipeline"
    assert body["runtime_config"]["parameters"] == {
        "data_root": "s3://docsort-data/datasets/tiny",
        "train_overrides": "train.epochs=3",
    }
    spec = body["pipeline_spec"]["pipeline_spec"]
    assert spec["pipelineInfo"]["name"] == "docsort-train"
    executors = _platform(body)
    assert (
        executors["exec-train-op"]["tolerations"][0]["key"] == "nvidia.com/gpu"
    )  # the default profile's GPU pool
    assert _posts(api, "/apis/v2beta1/experiments")[0]["body"]["display_name"] == "docsort"


def test_submit_with_the_cpu_profile_and_without_cache(kfp_api, capsys):
    host, api = kfp_api
    rc = main(["submit", str(ROOT / "src" / "docsort" / "pipelines" / "train.py"), "--host", host, "--param", "data_root=/data",
               "--k8s-profile", "cpu", "--no-cache", "--service-account", ""])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    body = _posts(api, "/apis/v2beta1/runs")[0]["body"]
    assert not body.get("service_account")  # '' leaves it to KFP
    assert "tolerations" not in _platform(body)["exec-train-op"]
    dags = [body["pipeline_spec"]["pipeline_spec"]["root"]["dag"]] + [
        c["dag"]
        for c in body["pipeline_spec"]["pipeline_spec"]["components"].values()
        if "dag" in c
    ]
    assert all(
        not t.get("cachingOptions", {}).get("enableCache")
        for d in dags
        for t in d["tasks"].values()
    )


def test_schedule_creates_a_nightly_recurring_run(kfp_api, capsys):
    host, api = kfp_api
    rc = main(["schedule", str(ROOT / "src" / "docsort" / "pipelines" / "train.py"), "--host", host, "--cron", "0 0 2 * * *",
               "--name", "docsort-nightly", "--experiment", "nightly", "--param", "data_root=s3://d/x"])  # fmt: skip
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "recurring run rr-1 (docsort-nightly, cron '0 0 2 * * *')" in out.out
    (job,) = _posts(api, "/apis/v2beta1/recurringruns")
    body = job["body"]
    assert body["trigger"]["cron_schedule"]["cron"] == "0 0 2 * * *"
    assert int(body["max_concurrency"]) == 1 and body["no_catchup"] is True
    assert body["service_account"] == "docsort-pipeline"
    assert body["runtime_config"]["parameters"] == {"data_root": "s3://d/x"}
    assert body["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == "docsort-train"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["submit", "pipelines/train.py", "--param", "data_root=x"], "--host is required"),
        (
            [
                "schedule",
                "pipelines/train.py",
                "--host",
                "HOST",
                "--cron",
                "0 2 * * *",
                "--param",
                "data_root=x",
            ],
            "has 5 fields; KFP needs 6",
        ),
        (
            ["submit", "pipelines/train.py", "--host", "HOST", "--param", "epochs=3"],
            r"unknown pipeline parameter\(s\) \['epochs'\]",
        ),
        (
            ["submit", "pipelines/train.py", "--host", "HOST"],
            r"missing required pipeline parameter\(s\) \['data_root'\]",
        ),
        (
            [
                "submit",
                "pipelines/train.py",
                "--host",
                "HOST",
                "--param",
                "data_root=x",
                "--k8s-profile",
                "huge",
            ],
            "unknown k8s profile 'huge'",
        ),
    ],
)
def test_bad_submissions_fail_with_one_line_before_anything_is_sent(
    kfp_api, capsys, monkeypatch, argv, message
):
    host, api = kfp_api
    monkeypatch.delenv("KF_PIPELINES_ENDPOINT", raising=False)
    monkeypatch.chdir(ROOT)
    rc = main([host if a == "HOST" else a for a in argv])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("docsort: error: ") and len(err.strip().splitlines()) == 1
    assert re.search(message, err), err
    assert api.requests == []


# --------------------------------------------------------------------------- sweep


def test_sweep_dry_run_prints_a_valid_katib_experiment(capsys):
    rc = main(["sweep", "--prepared", "s3://docsort-data/prepared/tiny", "--space", "default", "--dry-run", "--trials", "6",
               "--namespace", "team-a", "train.epochs=3"])  # fmt: skip
    out = capsys.readouterr()
    assert rc == 0, out.err
    exp = yaml.safe_load(out.out)
    V1beta1Experiment.from_dict(exp)  # Katib's schema
    assert exp["kind"] == "Experiment" and exp["metadata"]["namespace"] == "team-a"
    assert exp["spec"]["maxTrialCount"] == 6 and exp["spec"]["parallelTrialCount"] == 4
    job = exp["spec"]["trialTemplate"]["trialSpec"]
    pod = job["spec"]["template"]["spec"]
    command = pod["containers"][0]["command"][-1]
    assert command.startswith(
        "docsort train --prepared s3://docsort-data/prepared/tiny --out /tmp/trial fold=0"
    )
    assert "train.epochs=3" in command
    # GPU trials land in the k8s profile's GPU pool
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["containers"][0]["imagePullPolicy"] == "IfNotPresent"


def test_sweep_on_katib_needs_an_s3_uri(capsys, tmp_path):
    rc = main(["sweep", "--prepared", str(tmp_path), "--backend", "katib", "--dry-run"])
    err = capsys.readouterr().err
    assert rc == 2 and "give an s3:// URI" in err


@pytest.fixture
def fake_trainer(tmp_path: Path, monkeypatch):
    """`docsort train` replaced by a script printing the same metric lines (fast trials)."""
    script = tmp_path / "fake_train.py"
    script.write_text(FAKE_TRAINER)
    monkeypatch.setattr(
        sweep_local,
        "default_command",
        lambda prepared, trial_dir, overrides: [
            sys.executable,
            str(script),
            prepared,
            "--out",
            str(trial_dir),
            *overrides,
        ],
    )


def test_local_sweep_through_the_cli(fake_trainer, tmp_path, capsys):
    space = {
        "objective": {"metric": "val_macro_f1", "type": "maximize"},
        "algorithm": {"name": "random", "settings": {"random_state": 1}},
        "early_stopping": {"name": "medianstop", "settings": {"min_trials_required": 2, "start_step": 2}},
        "max_trial_count": 20, "parallel_trial_count": 1, "max_failed_trial_count": 1,
        "overrides": ["train.epochs=4"],
        "parameters": [{"name": "train.lr", "type": "double", "min": 1e-4, "max": 1e-1, "log": True}],
    }  # fmt: skip
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    (tmp_path / "prep").mkdir()
    out_dir = tmp_path / "sweep"
    rc = main(["sweep", "--prepared", str(tmp_path / "prep"), "--space", str(tmp_path / "space.yaml"), "--trials", "5",
               "--out", str(out_dir), "seed=5"])  # fmt: skip
    out = capsys.readouterr()
    assert rc == 0, out.err
    table = pd.read_csv(out_dir / "trials.csv")
    assert len(table) == 5
    best = json.loads((out_dir / "best.json").read_text())
    assert best["backend"] == "local" and best["value"] == pytest.approx(table["value"].max())
    assert f"best val_macro_f1={best['value']:.4f}" in out.out
    assert (
        "train it: docsort train" in out.out and "train.epochs=4" in out.out and "seed=5" in out.out
    )
    # each trial got the fixed overrides
    argv = json.loads((out_dir / "trials" / "trial-000" / "argv.json").read_text())["args"]
    assert "seed=5" in argv and "train.epochs=4" in argv and "fold=0" in argv


def test_a_space_that_does_not_compose_fails_before_any_trial(fake_trainer, tmp_path, capsys):
    (tmp_path / "prep").mkdir()
    space = {
        "objective": {"metric": "val_macro_f1"},
        "max_trial_count": 4, "max_failed_trial_count": 1,
        "parameters": [{"name": "model", "type": "categorical", "list": ["resnet18", "resnet81"]},
                       {"name": "train.lr", "type": "double", "min": 1e-3, "max": 1e-2}],
    }  # fmt: skip
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(space))
    rc = main(
        [
            "sweep",
            "--prepared",
            str(tmp_path / "prep"),
            "--space",
            str(tmp_path / "s.yaml"),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert (
        "does not compose with the training config" in err
        and "model=resnet81" in err
        and "resnet18" in err
    )
    assert not (tmp_path / "o" / "trials").exists() or not any(
        (tmp_path / "o" / "trials").iterdir()
    )
