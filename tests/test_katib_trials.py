"""Katib sweeps on a cluster's terms: the namespace, deadlines that fit, trials keeping their work.

- the Experiment goes to the namespace given, else to the one the pod runs in
  (its service account's namespace file); nothing is hard-wired;
- the sweep step's wait and pod deadline must cover the Experiment's worst case:
  checked by ``docsort compile``/``docsort submit`` and by the step itself;
- each trial keeps its member and metrics under ``<sweep output>/trials/<trial>/``
  (a real S3 server: moto), the result names the best one, and the K-fold step
  reuses it only when overrides, fold and data version match;
- one trial as its pod runs it (slow): the substituted command, stdout and stderr
  merged on a TTY (progress bars redrawn with ``\\r``, warnings, a ``nan`` loss),
  read with Katib's collector under RE2 rules, its member kept on S3.
"""

from __future__ import annotations

import fcntl
import functools
import json
import math
import os
import pty
import shlex
import struct
import subprocess
import sys
import termios
import tty
from pathlib import Path

import pytest
import yaml
from kfp.dsl import Dataset, Metrics

from docsort.core import storage
from docsort.core.errors import ConfigError
from docsort.kfp.runner import check_pipeline_params
from docsort.sweep import katib, sweep
from docsort.sweep import results as sweep_results
from docsort.sweep.results import (
    TRIAL_RECORD,
    keep_member,
    prepared_version,
    reusable_model,
    reuse_member,
    trial_record,
)

from . import test_kfp_client
from .conftest import TINY, TINY_TRAIN
from .scenario import one_line, run_cli
from .test_katib import FakeCustomObjectsApi, katib_collect_text, quality, substitute

ROOT = Path(__file__).resolve().parents[1]
kfp_api = test_kfp_client.kfp_api  # the KFP API stand-in fixture


@pytest.fixture
def pod_namespace(tmp_path, monkeypatch):
    """Be a pod in the Kubeflow profile namespace ``kubeflow-user-example-com``."""
    path = tmp_path / "sa-namespace"
    path.write_text("kubeflow-user-example-com\n")
    monkeypatch.setattr(katib, "POD_NAMESPACE_FILE", path)
    return "kubeflow-user-example-com"


@pytest.fixture
def no_pod(tmp_path, monkeypatch):
    """Outside any pod: no service account namespace file."""
    monkeypatch.setattr(katib, "POD_NAMESPACE_FILE", tmp_path / "absent")


# --------------------------------------------------------------------------- namespace


def test_the_experiment_goes_to_the_namespace_given_else_the_pods_own(pod_namespace):
    exp = katib.build_experiment("cpu_small", prepared="s3://b/p")
    assert exp["metadata"]["namespace"] == pod_namespace
    exp = katib.build_experiment("cpu_small", namespace="team-a", prepared="s3://b/p")
    assert exp["metadata"]["namespace"] == "team-a"
    with pytest.raises(ConfigError, match="namespace 'Team_A' must be lower-case"):
        katib.resolve_namespace("Team_A")


def test_without_a_namespace_outside_a_pod_the_sweep_is_refused_in_one_line(no_pod, capsys):
    rc, out, err = run_cli(
        "sweep", "--prepared", "s3://b/prepared", "--space", "cpu_small", "--dry-run"
    )
    assert rc == 2 and out == ""
    assert "no Katib namespace given and none to discover" in one_line(err)
    assert "--namespace NS" in err


def test_the_sweep_step_creates_the_experiment_in_the_pods_namespace(
    pod_namespace, tmp_path, monkeypatch
):
    from docsort.components.sweep import sweep_op

    api = FakeCustomObjectsApi(outcome=quality)
    monkeypatch.setattr(katib, "connect", lambda kubeconfig=None: (api, None))
    monkeypatch.setattr(
        katib, "run_experiment", functools.partial(katib.run_experiment, sleep=lambda s: None)
    )
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    sweep_op.python_func(
        prepared=Dataset(uri="s3://art/run-1/prepare-op/prepared"),
        result=Dataset(uri=str(tmp_path / "result")), metrics=Metrics(uri=str(tmp_path / "m")),
        space="cpu_small", n_trials=2,
    )  # fmt: skip
    ((plural, ns, _),) = [k for k in api.objects if k[0] == "experiments"]
    assert ns == pod_namespace
    assert json.loads((tmp_path / "result" / "best.json").read_text())["experiment"].startswith(
        f"{pod_namespace}/"
    )


# --------------------------------------------------------------------------- deadlines


def test_the_worst_case_is_rounds_of_the_trial_jobs_deadline_plus_margin():
    exp = katib.build_experiment("default", namespace="ns", prepared="s3://b/p")
    assert exp["spec"]["trialTemplate"]["trialSpec"]["spec"]["activeDeadlineSeconds"] == 7200
    assert katib.worst_case_s(exp) == math.ceil(32 / 4) * 7200 + katib.EXPERIMENT_MARGIN_S
    # a PyTorchJob trial carries its deadline in runPolicy
    space = yaml.safe_load((ROOT / "src/docsort/conf/hpo/default.yaml").read_text())
    space["trial"].update(gpu=4, nodes=2)
    space.update(max_trial_count=9, parallel_trial_count=2)
    ddp = katib.build_experiment(space, namespace="ns", prepared="s3://b/p")
    assert ddp["spec"]["trialTemplate"]["trialSpec"]["kind"] == "PyTorchJob"
    assert katib.worst_case_s(ddp) == 5 * 7200 + katib.EXPERIMENT_MARGIN_S
    # without a trial deadline there is no worst case, and no wait is accepted
    del space["trial"]["timeout_s"]
    with pytest.raises(ConfigError, match="has no trial deadline"):
        sweep.sweep_wait_s(space, None, 10**9)


def test_a_wait_shorter_than_the_worst_case_is_refused_naming_the_numbers():
    assert sweep.sweep_wait_s("default", None, 0) == 8 * 7200 + katib.EXPERIMENT_MARGIN_S
    assert sweep.sweep_wait_s("default", 8, 0) == 2 * 7200 + katib.EXPERIMENT_MARGIN_S
    assert sweep.sweep_wait_s("default", 8, 20000) == 20000
    with pytest.raises(ConfigError) as err:
        sweep.sweep_wait_s("default", None, 21600)
    assert str(err.value) == (
        "the sweep step (sweep_timeout_s) waits 21600s but the Experiment can run 59400s "
        "(ceil(32 trials / 4 parallel) x 7200s trial deadline + 1800s): raise the wait to "
        ">= 59400s or use fewer trials"
    )


@pytest.mark.parametrize("profile", ["default", "cpu"])
@pytest.mark.parametrize("space", sweep.list_spaces())
def test_the_shipped_defaults_fit(profile, space):
    from docsort.components import k8s

    deadline = k8s.task_settings("sweep", k8s.load_profile(profile))["timeout_s"]
    wait = sweep.sweep_wait_s(space, None, 0)
    assert wait <= deadline
    check_pipeline_params({"space": space, "n_trials": 0, "sweep_timeout_s": 0}, deadline)


@pytest.mark.slow  # 6-10 s on 2 cores: `make test-slow`
def test_compile_refuses_a_sweep_whose_wait_cannot_cover_it_and_writes_nothing(tmp_path):
    out = tmp_path / "sweep.yaml"
    rc, _, err = run_cli("compile", ROOT / "src/docsort/pipelines/sweep.py", "--out", out,
                         "--param", "sweep_timeout_s=21600")  # fmt: skip
    assert rc == 2 and not out.exists()
    line = one_line(err)
    assert "waits 21600s but the Experiment can run 59400s" in line
    # fewer trials fit in the same wait; the defaults fit as shipped
    rc, _, err = run_cli("compile", ROOT / "src/docsort/pipelines/sweep.py", "--out", out,
                         "--param", "n_trials=8", "--param", "sweep_timeout_s=21600")  # fmt: skip
    assert rc == 0, err
    assert out.exists()


def test_compile_refuses_a_pod_deadline_shorter_than_the_wait(tmp_path, monkeypatch):
    profile = tmp_path / "short.yaml"
    profile.write_text("extends: default\ncomponents:\n  sweep: {timeout_s: 3600}\n")
    monkeypatch.setenv("DOCSORT_K8S_PROFILE", str(profile))
    rc, _, err = run_cli("compile", ROOT / "src/docsort/pipelines/sweep.py", "--out", tmp_path / "x.yaml",
                         "--param", "space=cpu_small")  # fmt: skip
    assert rc == 2
    assert one_line(err) == (
        "the sweep step's pod deadline (3600s, k8s profile components.sweep.timeout_s) is "
        "shorter than its wait for the Experiment (16200s, space=cpu_small): raise it to "
        ">= 16200s or use fewer trials"
    )


def test_submit_refuses_it_before_anything_is_sent(kfp_api):
    host, api = kfp_api
    rc, _, err = run_cli("submit", ROOT / "src/docsort/pipelines/sweep.py", "--host", host, "--param",
                         "data_root=s3://b/data", "--param", "sweep_timeout_s=3600")  # fmt: skip
    assert rc == 2 and "waits 3600s but the Experiment can run 59400s" in one_line(err)
    assert api.requests == []


def test_the_sweep_step_refuses_a_short_wait_before_creating_the_experiment(tmp_path, monkeypatch):
    from docsort.components.sweep import sweep_op

    api = FakeCustomObjectsApi(outcome=quality)
    monkeypatch.setattr(katib, "connect", lambda kubeconfig=None: (api, None))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    with pytest.raises(ConfigError, match=r"waits 600s but the Experiment can run 9000s"):
        sweep_op.python_func(
            prepared=Dataset(uri="s3://art/run-1/prepare-op/prepared"),
            result=Dataset(uri=str(tmp_path / "result")), metrics=Metrics(uri=str(tmp_path / "m")),
            space="default", n_trials=3, namespace="team-a", timeout_s=600,
        )  # fmt: skip
    assert api.objects == {}


# --------------------------------------------------------------------------- trials keep their work


def test_each_trial_writes_to_its_own_prefix_under_the_sweep_output():
    exp = katib.build_experiment(
        "cpu_small", namespace="ns", prepared="s3://b/p", trials_uri="s3://b/sweeps/s1/trials/"
    )
    container = exp["spec"]["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"]["containers"][
        0
    ]
    argv = shlex.split(container["command"][2])
    assert argv[4:6] == ["--out", "s3://b/sweeps/s1/trials/${trialParameters.trialName}"]
    job = substitute(exp, {"train.lr": "0.001", "train.weight_decay": "0.01",
                           "train.label_smoothing": "0.1"}, trial="exp-abc12345")  # fmt: skip
    command = job["spec"]["template"]["spec"]["containers"][0]["command"][2]
    assert " --out s3://b/sweeps/s1/trials/exp-abc12345 " in command
    with pytest.raises(ConfigError, match="trials_uri must be an s3:// prefix"):
        katib.build_experiment(
            "cpu_small", namespace="ns", prepared="s3://b/p", trials_uri="/tmp/t"
        )


def _keys(uri: str) -> set[str]:
    prefix = uri.rstrip("/") + "/"
    return {u[len(prefix) :] for u in storage.list_files(uri)}


def test_a_kept_member_lands_under_the_prefix_and_is_reused_only_when_it_matches(
    s3_server, trained_member, prepared_root, tmp_path
):
    uri = f"s3://{s3_server.bucket}/sweeps/s1/trials/exp-00000001"
    args = [*TINY, "fold=0", "train.epochs=2", "train.batch_size=16", "tracking.wandb=disabled"]
    record = trial_record(args, prepared_root)
    keep_member(trained_member, uri, record)

    local = {
        p.relative_to(trained_member).as_posix() for p in trained_member.rglob("*") if p.is_file()
    }
    kept = _keys(uri)
    assert kept == {k for k in local if not k.startswith("checkpoints/")} | {TRIAL_RECORD}
    assert {"model.safetensors", "model.yaml", "metrics.json", "oof.csv"} <= kept
    assert json.loads(storage.read_text(f"{uri}/{TRIAL_RECORD}")) == record
    assert record["fold"] == 0 and record["data_version"] == prepared_version(prepared_root)

    best = {"model_uri": uri, "model_record": record}
    version = prepared_version(prepared_root)
    # the K-fold step's fold 0 with the same overrides (any order, fold last) reuses it
    same = ["tracking.wandb=disabled", *TINY, "train.batch_size=16", "train.epochs=2"]
    assert reusable_model(best, 0, same, version) == uri
    # another fold, another setting, other data: train anew
    assert reusable_model(best, 1, same, version) is None
    assert reusable_model(best, 0, [*same, "train.epochs=30"], version) is None
    assert reusable_model(best, 0, same[:-1], version) is None
    assert reusable_model(best, 0, same, "another-version") is None
    assert reusable_model({"model_uri": None}, 0, same, version) is None

    out = tmp_path / "fold0"
    result_dir = tmp_path / "result"
    result_dir.mkdir()
    (result_dir / "best.json").write_text(json.dumps(best))
    assert reuse_member(result_dir, 0, same, prepared_root, out) == uri
    for name in ("model.safetensors", "metrics.json", "oof.csv"):
        assert (out / name).read_bytes() == (trained_member / name).read_bytes()
    # a member deleted (or rewritten) since the sweep is not reused
    storage.client().delete_object(
        Bucket=s3_server.bucket, Key=f"sweeps/s1/trials/exp-00000001/{TRIAL_RECORD}"
    )
    assert reusable_model(best, 0, same, version) is None


class KeepingKatib(FakeCustomObjectsApi):
    """The stand-in Katib whose succeeded trials' pods kept ``member`` under their prefix."""

    def __init__(self, member: Path, trials_uri: str, prepared: Path, **kwargs):
        super().__init__(**kwargs)
        self.member, self.trials_uri, self.prepared = member, trials_uri, prepared

    def _reconcile(self, exp):
        before = {k for k, o in self.objects.items() if k[0] == "trials" and _done(o)}
        super()._reconcile(exp)
        for key, trial in self.objects.items():
            if key[0] == "trials" and _done(trial) and key not in before:
                args = [a["name"] + "=" + a["value"] for a in trial["spec"]["parameterAssignments"]]
                keep_member(self.member, f"{self.trials_uri}/{key[2]}",
                            trial_record(["fold=0", *args], self.prepared))  # fmt: skip


def _done(trial) -> bool:
    return trial["status"]["conditions"][-1]["type"] == "Succeeded"


@pytest.mark.slow  # 6-10 s on 2 cores: `make test-slow`
def test_the_sweep_result_names_the_best_trials_member(s3_server, trained_member, prepared_root):
    trials_uri = f"s3://{s3_server.bucket}/runs/r1/sweep-op/trials"
    api = KeepingKatib(trained_member, trials_uri, prepared_root, outcome=quality)
    out = f"s3://{s3_server.bucket}/runs/r1/sweep-op/result"  # docsort sweep --out s3://...
    result = sweep.run_katib_sweep(
        "s3://b/p", "cpu_small", out, namespace="team-a", api=api, poll_s=0,
        trials_uri=trials_uri, check_config=False,
    )  # fmt: skip
    assert len(storage.read_text(f"{out}/trials.csv").splitlines()) == 1 + len(result.trials)
    best = json.loads(storage.read_text(f"{out}/best.json"))
    assert best["model_uri"] == f"{trials_uri}/{result.best_trial}"
    assert best["trial_overrides"][0] == "fold=0"
    assert {o.split("=")[0] for o in best["trial_overrides"][1:]} == set(result.params)
    assert f"{result.best_trial}/{TRIAL_RECORD}" in _keys(trials_uri)


def test_the_local_twin_keeps_trials_in_the_same_layout(tmp_path, prepared_root):
    from .test_sweep import FAKE_TRAINER, space_dict

    script = tmp_path / "fake_train.py"
    script.write_text(FAKE_TRAINER)

    def command(prepared: str, trial_dir: Path, overrides: list[str]) -> list[str]:
        return [sys.executable, str(script), prepared, "--out", str(trial_dir), *overrides]

    out = tmp_path / "sweep"
    result = sweep.run_local_sweep(
        prepared_root, space_dict(max_trial_count=3, early_stopping=None), out, command=command
    )
    best = json.loads((out / "best.json").read_text())
    folder = out / "trials" / result.best_trial
    assert best["model_uri"] == str(folder)
    record = json.loads((folder / TRIAL_RECORD).read_text())
    assert record["data_version"] == prepared_version(prepared_root) and record["fold"] == 0
    assert best["model_record"] == record and best["trial_overrides"] == record["overrides"]
    assert sweep_results.reusable_model(out, 0, record["overrides"], record["data_version"]) == str(
        folder
    )


# ------------------------------------------------------------------------- one trial, in its pod


def _run_on_a_tty(command: str, env: dict, cwd: Path) -> tuple[int, str]:
    """``sh -c command`` with stdout and stderr on one TTY (a container with ``tty: true``):
    the bytes its log gets, progress bars included (raw mode: no newline translation)."""
    master, slave = pty.openpty()
    tty.setraw(slave)
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    proc = subprocess.Popen(
        ["sh", "-c", command],
        stdout=slave,
        stderr=slave,
        stdin=subprocess.DEVNULL,
        env=env,
        cwd=cwd,
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 1 << 16)
        except OSError:  # EIO: the child side closed
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return proc.wait(timeout=600), b"".join(chunks).decode("utf-8", errors="replace")


@pytest.mark.slow
def test_a_trial_pods_log_is_read_as_katib_reads_it_and_its_member_kept_on_s3(
    s3_server, prepared_root, tmp_path
):
    trials_uri = f"s3://{s3_server.bucket}/runs/r1/sweep-op/trials"
    fixed = TINY_TRAIN
    exp = katib.build_experiment("cpu_small", namespace="ns", prepared=str(prepared_root),
                                 fixed_overrides=fixed, trials_uri=trials_uri)  # fmt: skip
    # a suggestion that makes the loss diverge: val_loss is printed as nan
    job = substitute(exp, {"train.lr": "1000000000.0", "train.weight_decay": "0.01",
                           "train.label_smoothing": "0.1"}, trial="exp-trial001")  # fmt: skip
    container = job["spec"]["template"]["spec"]["containers"][0]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.update({e["name"]: e["value"] for e in container["env"] if "value" in e})
    env["HOME"] = env["MPLCONFIGDIR"] = env["WANDB_DIR"] = str(tmp_path)
    env["TMPDIR"] = str(tmp_path)
    rc, log = _run_on_a_tty(container["command"][2], env, tmp_path)
    assert rc == 0, log[-3000:]

    assert "\r" in log and "%|" in log  # progress bars, redrawn in place
    assert "val_loss=nan" in log.split("\n")
    member = f"{trials_uri}/exp-trial001"
    metrics = json.loads(storage.read_text(f"{member}/metrics.json"))
    spec = exp["spec"]
    names = [spec["objective"]["objectiveMetricName"], *spec["objective"]["additionalMetricNames"]]
    formats = spec["metricsCollectorSpec"]["source"]["filter"]["metricsFormat"]
    found = katib_collect_text(log, names, formats)
    # the objective as metrics.json has it, nothing from bars or warnings, no value for nan
    assert found == [("val_macro_f1", f"{metrics['val_macro_f1']:.4f}")]
    assert math.isnan(metrics["val_loss"])
    # Katib's default format would have stored an empty value for the nan line
    default = r"([\w|-]+)\s*=\s*([+-]?\d*(\.\d+)?([Ee][+-]?\d+)?)"
    assert ("val_loss", "") in katib_collect_text(log, names, [default])

    kept = _keys(member)
    assert {"model.safetensors", "metrics.json", "oof.csv", TRIAL_RECORD} <= kept
    assert not any(k.startswith("checkpoints/") for k in kept)
    record = json.loads(storage.read_text(f"{member}/{TRIAL_RECORD}"))
    assert record["overrides"][0] == "fold=0" and "train.lr=1000000000.0" in record["overrides"]
    assert record["data_version"] == prepared_version(prepared_root)


def test_the_k_fold_step_reuses_the_best_trials_member_for_its_fold(
    s3_server, trained_member, prepared_root, tmp_path
):
    from kfp.dsl import Model

    from docsort.components.train import train_op

    args = [*TINY, "fold=0", "train.epochs=2", "train.batch_size=16", "tracking.wandb=disabled"]
    uri = f"s3://{s3_server.bucket}/runs/r1/sweep-op/trials/exp-00000003"
    record = trial_record(args, prepared_root)
    keep_member(trained_member, uri, record)
    result = tmp_path / "result"  # what sweep_op left for the next step
    result.mkdir()
    (result / "best.json").write_text(json.dumps({"model_uri": uri, "model_record": record}))
    (result / "best_overrides.txt").write_text(" ".join(a for a in args if a != "fold=0") + "\n")

    model, metrics = tmp_path / "model", tmp_path / "metrics"
    train_op.python_func(
        prepared=Dataset(uri=str(prepared_root)), model=Model(uri=str(model)),
        metrics=Metrics(uri=str(metrics)), fold=0, sweep=Dataset(uri=str(result)),
    )  # fmt: skip
    # the trial's member, not a new one: its trial.json came along, its weights are the trial's
    assert json.loads((model / TRIAL_RECORD).read_text()) == record
    assert (model / "model.safetensors").read_bytes() == (
        trained_member / "model.safetensors"
    ).read_bytes()
    logged = json.loads(metrics.read_text())
    assert logged["val_macro_f1"] == pytest.approx(
        json.loads((trained_member / "metrics.json").read_text())["val_macro_f1"]
    )
