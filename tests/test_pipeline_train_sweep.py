"""The cluster pipelines run locally with kfp.local: K-fold training, caching, and the sweep step.

- pipelines/train.py end to end on tiny data, then again: the re-run is served
  from kfp.local's cache (the same artifacts), as a re-run after a failure would be;
- the cache key of ``prepare`` moves with the data behind the URI (the
  data-version step) and with the overrides, not otherwise;
- the sweep component hands the Katib backend the prepared artifact's S3 URI and
  the GPU pool (against the fake Katib API of tests/test_katib.py);
- pipelines/sweep.py end to end with the local Optuna twin (slow).
"""

from __future__ import annotations

import functools
import json
import shutil
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
from kfp.dsl import Dataset, Metrics

from docsort.components import k8s
from docsort.data.prepared import Prepared
from docsort.kfp.runner import run_local
from docsort.sweep import katib

from .test_katib import FakeCustomObjectsApi, quality

ROOT = Path(__file__).resolve().parents[1]
DATA = "data.image_size=32 data.num_folds=2"
TRAIN = "model=resnet10t train.epochs=1 train.batch_size=32 tracking.wandb=disabled tta.views=[identity]"


@pytest.mark.slow  # kfp.local end to end, twice
def test_train_pipeline_runs_locally_and_a_rerun_reuses_finished_steps(sample_root, tmp_path):
    params = {"data_root": str(sample_root), "data_overrides": DATA, "train_overrides": TRAIN}
    out = tmp_path / "runs"
    report = Path(
        run_local(ROOT / "src" / "docsort" / "pipelines" / "train.py", out, params, cache=True).path
    )

    result = json.loads((report / "report.json").read_text())
    assert set(result["folds"]) == {"0", "1"} and result["missing"] == 0
    assert 0.0 <= result["macro_f1"] <= 1.0
    oof = pd.read_csv(report / "oof.csv", dtype={"ID": str})
    train_ids = pd.read_csv(sample_root / "train.csv", dtype={"ID": str})["ID"]
    assert sorted(oof["ID"]) == sorted(train_ids)  # every training image predicted once
    assert "Out-of-fold macro F1" in (report / "report.md").read_text()
    members = sorted(report.parent.parent.glob("for-loop-*/train-op/model/metrics.json"))
    assert len(members) == 2

    t0 = time.monotonic()
    again = Path(
        run_local(ROOT / "src" / "docsort" / "pipelines" / "train.py", out, params, cache=True).path
    )
    assert again == report  # every step but the data-version check came from the cache
    assert time.monotonic() - t0 < 60
    assert len(list(out.glob("docsort-train-*"))) == 2


MINI = textwrap.dedent(
    """
    from kfp import dsl

    from docsort.components.k8s import apply
    from docsort.components.data import data_version_op, prepare_op


    @dsl.pipeline(name="docsort-prepare-only")
    def prepare_only(data_root: str, overrides: str = "data.image_size=32 data.num_folds=2") -> dsl.Dataset:
        version = apply(data_version_op(data_root=data_root))
        return apply(prepare_op(data_root=data_root, data_version=version.output, overrides=overrides)).outputs["prepared"]
    """
)


@pytest.mark.slow  # over 9 s on 2 cores: `make test-slow`
def test_prepare_cache_key_moves_with_the_data_and_the_overrides(sample_root, tmp_path):
    pipeline = tmp_path / "prepare_only.py"
    pipeline.write_text(MINI)
    data = tmp_path / "data"
    shutil.copytree(sample_root, data)
    run = functools.partial(run_local, pipeline, tmp_path / "runs", cache=True)

    first = Path(run({"data_root": str(data)}).path)
    assert Path(run({"data_root": str(data)}).path) == first  # same data, same overrides: cached

    labels = pd.read_csv(data / "train.csv", dtype={"ID": str})
    labels.iloc[1:].to_csv(data / "train.csv", index=False)  # the data changed behind the same URI
    changed = Path(run({"data_root": str(data)}).path)
    assert changed != first
    assert len(Prepared(changed).index) == len(labels) - 1

    other = Path(
        run({"data_root": str(data), "overrides": "data.image_size=40 data.num_folds=2"}).path
    )
    assert other not in (first, changed) and Prepared(other).info["image_size"] == 40


def test_sweep_step_gives_katib_the_artifacts_s3_uri_and_the_gpu_pool(tmp_path, monkeypatch):
    from docsort.components.sweep import sweep_op

    api = FakeCustomObjectsApi(outcome=quality)
    monkeypatch.setattr(katib, "connect", lambda kubeconfig=None: (api, None))
    monkeypatch.setattr(
        katib, "run_experiment", functools.partial(katib.run_experiment, sleep=lambda s: None)
    )
    pod = k8s.trial_pod(k8s.load_profile("default"))
    pod["node_selector"]["pool"] = "a100"
    monkeypatch.setenv(k8s.TRIAL_POD_ENV, json.dumps(pod))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")  # inside a pod: backend auto -> katib

    sweep_op.python_func(
        prepared=Dataset(uri="minio://docsort-artifacts/pipelines/run-1/prepare-op/prepared"),
        result=Dataset(uri=str(tmp_path / "result")), metrics=Metrics(uri=str(tmp_path / "metrics")),
        space="default", backend="auto", n_trials=3, overrides="data.image_size=64", extra_overrides="train.epochs=2",
        namespace="docsort", timeout_s=0,  # 0: wait for the Experiment's worst case
    )  # fmt: skip

    (exp,) = [o for (plural, _, _), o in api.objects.items() if plural == "experiments"]
    assert (
        exp["metadata"]["annotations"]["docsort.io/data"]
        == "s3://docsort-artifacts/pipelines/run-1/prepare-op/prepared"
    )
    assert exp["spec"]["maxTrialCount"] == 3
    spec = exp["spec"]["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"]
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true", "pool": "a100"}
    command = spec["containers"][0]["command"][-1]
    assert command.startswith(
        "docsort train --prepared s3://docsort-artifacts/pipelines/run-1/prepare-op/prepared --out"
    )
    assert "data.image_size=64 train.epochs=2" in command
    best = json.loads((tmp_path / "result" / "best.json").read_text())
    assert best["backend"] == "katib"
    # the K-fold training gets the best trial's whole override list, without its fold
    args = (tmp_path / "result" / "best_overrides.txt").read_text().split()
    assert (
        "data.image_size=64" in args
        and "train.epochs=2" in args
        and not any(a.startswith("fold=") for a in args)
    )
    assert {a.split("=")[0] for a in args} >= set(best["params"])
    assert json.loads((tmp_path / "metrics").read_text())["trials_succeeded"] == 3


@pytest.mark.slow
def test_sweep_pipeline_runs_locally_with_the_optuna_twin(sample_root, tmp_path):
    params = {
        "data_root": str(sample_root), "space": "cpu_small", "backend": "auto", "n_trials": 2,
        "data_overrides": DATA, "sweep_overrides": TRAIN, "train_overrides": "train.epochs=2",
    }  # fmt: skip
    report = Path(
        run_local(
            ROOT / "src" / "docsort" / "pipelines" / "sweep.py", tmp_path / "runs", params
        ).path
    )
    run_dir = report.parent.parent
    trials = pd.read_csv(next(run_dir.glob("sweep-op/result/trials.csv")))
    assert len(trials) == 2 and (trials["state"] == "succeeded").any()
    best = json.loads(next(run_dir.glob("sweep-op/result/best.json")).read_text())
    assert best["backend"] == "local"
    members = sorted(run_dir.glob("for-loop-*/train-op/model"))
    assert len(members) == 2
    model_yaml = (members[0] / "model.yaml").read_text()
    for key, value in best["params"].items():  # the members were trained with the winner
        assert f"{key.split('.')[-1]}: {value}" in model_yaml or str(value) in model_yaml
    assert json.loads((report / "report.json").read_text())["missing"] == 0
