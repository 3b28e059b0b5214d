"""Katib Experiments: built from every shipped search space, validated, and run.

No cluster runs here, so the Experiment is checked three ways: it round-trips
through the ``kubeflow-katib-api`` models, it passes the rules of Katib's
validating webhook (re-stated below), and its trial Job passes the Kubernetes
schema. The trial command is run for real (``docsort train`` on tiny data) and
its output parsed the way Katib's StdOut collector parses it. The launcher runs
against a stand-in ``CustomObjectsApi`` whose methods have the real signatures
and which advances the Experiment like Katib's controller does.
"""

from __future__ import annotations

import copy
import inspect
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pandas as pd
import pytest
import re2
import yaml
from kubeflow_katib_api.models import IoK8sApiCoreV1PodTemplateSpec, V1beta1Experiment
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from docsort.core.errors import ConfigError, DocsortError
from docsort.sweep import katib, search_space, sweep
from docsort.sweep.katib import SweepTimeout, build_experiment, run_experiment
from docsort.sweep.sweep import METRICS_FORMAT, SweepFailed

SHIPPED = sweep.list_spaces()


@pytest.fixture(autouse=True)
def _pod_namespace(tmp_path_factory, monkeypatch):
    """Run as if in a pod of namespace ``docsort`` (the service account's namespace file)."""
    path = tmp_path_factory.mktemp("sa") / "namespace"
    path.write_text("docsort\n")
    monkeypatch.setattr(katib, "POD_NAMESPACE_FILE", path)


# --------------------------------------------------------------------------- Katib's rules


def katib_collect_text(
    log_text: str, metric_names: list[str], formats: list[str]
) -> list[tuple[str, str]]:
    """Katib's StdOut collector with Go's RE2 semantics, values as the text it stores.

    kubeflow/katib v0.19.0 pkg/metricscollector/v1beta1/file-metricscollector/
    file-metricscollector.go, parseLogsInTextFormat: split the log on "\n" only, skip
    lines that contain no metric name, then every FindAllStringSubmatch match of every
    format gives (TrimSpace(group 1), TrimSpace(group 2)) for a known metric name.
    """
    found = []
    regexes = [re2.compile(f) for f in formats]
    for line in log_text.split("\n"):
        if not any(m in line for m in metric_names):
            continue
        for reg in regexes:
            for match in reg.finditer(line):
                if reg.groups < 2:
                    continue
                name, value = match.group(1).strip(GO_SPACE), (match.group(2) or "").strip(GO_SPACE)
                if name in metric_names:
                    found.append((name, value))
    return found


GO_SPACE = " \t\n\v\f\r\x85\xa0"  # strings.TrimSpace (unicode.IsSpace, Latin-1 part)


def katib_collect(
    log_text: str, metric_names: list[str], formats: list[str]
) -> list[tuple[str, float]]:
    """:func:`katib_collect_text` with values as numbers; the early-stopping path of the
    collector (cmd/metricscollector/v1beta1/file-metricscollector/main.go) exits on a
    value strconv.ParseFloat refuses, so every value must parse."""
    return [(n, float(v)) for n, v in katib_collect_text(log_text, metric_names, formats)]


def webhook_errors(exp: dict) -> list[str]:
    """The checks of Katib's experiment validating webhook that need no cluster."""
    errs = []
    spec, meta = exp["spec"], exp["metadata"]
    if not re.match(r"^[a-z]([-a-z0-9]*[a-z0-9])?$", meta["name"]):
        errs.append("metadata.name")
    mtc, ptc, mftc = (
        spec.get("maxTrialCount"),
        spec.get("parallelTrialCount"),
        spec.get("maxFailedTrialCount"),
    )
    if mtc is not None and (mtc <= 0 or (mftc or 0) > mtc or (ptc or 0) > mtc):
        errs.append("trial counts")
    obj = spec.get("objective") or {}
    if obj.get("type") not in ("maximize", "minimize") or not obj.get("objectiveMetricName"):
        errs.append("objective")
    if obj.get("objectiveMetricName") in (obj.get("additionalMetricNames") or []):
        errs.append("objective.additionalMetricNames")
    if not (spec.get("algorithm") or {}).get("algorithmName"):
        errs.append("algorithm")
    for p in spec.get("parameters") or []:
        fs = p.get("feasibleSpace") or {}
        if p.get("parameterType") not in ("int", "double", "categorical", "discrete"):
            errs.append(f"parameter {p['name']} type")
        if fs.get("distribution", "uniform") not in (
            "uniform",
            "logUniform",
            "normal",
            "logNormal",
        ):
            errs.append(f"parameter {p['name']} distribution")
        if p["parameterType"] in ("int", "double") and (
            fs.get("list") or not (fs.get("min") or fs.get("max"))
        ):
            errs.append(f"parameter {p['name']} range")
        if p["parameterType"] == "categorical" and (
            fs.get("min") or fs.get("max") or fs.get("step") or not fs.get("list")
        ):
            errs.append(f"parameter {p['name']} list")
    tt = spec.get("trialTemplate") or {}
    if (
        not tt.get("primaryContainerName")
        or not tt.get("successCondition")
        or not tt.get("failureCondition")
    ):
        errs.append("trialTemplate required fields")
    text = json.dumps(tt.get("trialSpec"))
    names = {p["name"] for p in spec.get("parameters") or []}
    seen_names, seen_refs = set(), set()
    for tp in tt.get("trialParameters") or []:
        if (
            "{" in tp["name"]
            or "}" in tp["name"]
            or tp["name"] in seen_names
            or tp["reference"] in seen_refs
        ):
            errs.append(f"trialParameter {tp['name']}")
        seen_names.add(tp["name"])
        seen_refs.add(tp["reference"])
        meta_ref = re.match(
            r"^\$\{trialSpec\.(Name|Namespace|Kind|APIVersion|(Labels|Annotations)\[.+\])\}$",
            tp["reference"],
        )
        if tp["reference"] not in names and not meta_ref:
            errs.append(f"trialParameter {tp['name']} reference")
        placeholder = f"${{trialParameters.{tp['name']}}}"
        if placeholder not in text:
            errs.append(f"trialParameter {tp['name']} unused")
        text = text.replace(placeholder, "test-value")
    if re.search(r"\$\{trialParameters\..+?\}", text):
        errs.append("template uses undeclared trialParameters")
    ts = tt.get("trialSpec") or {}
    if (ts.get("metadata") or {}).get("name") or (ts.get("metadata") or {}).get("namespace"):
        errs.append("trialSpec metadata")
    if not ts.get("apiVersion") or not ts.get("kind"):
        errs.append("trialSpec apiVersion/kind")
    mc = spec.get("metricsCollectorSpec") or {}
    for fmt in ((mc.get("source") or {}).get("filter") or {}).get("metricsFormat") or []:
        re.compile(fmt)
        if not re.match(r".*\(.*\).*\(.*\).*", fmt):
            errs.append("metricsFormat needs two groups")
    return errs


def assignment(space_name: str) -> dict[str, str]:
    """A Katib-style parameter assignment (strings) for every parameter of a space."""
    sp = sweep.load_space(space_name)
    return {
        k: search_space.format_value(v) for k, v in search_space.representative_point(sp).items()
    }


def substitute(exp: dict, values: dict[str, str], trial: str = "exp-abcd1234") -> dict:
    """What Katib does to the trial template for one trial: replace ${trialParameters.x}."""
    tt = exp["spec"]["trialTemplate"]
    text = json.dumps(tt["trialSpec"])
    for tp in tt["trialParameters"]:
        if tp["reference"] == "${trialSpec.Name}":
            value = trial
        elif tp["reference"].startswith("${trialSpec.Labels"):
            value = exp["metadata"]["name"]
        else:
            value = values[tp["reference"]]
        text = text.replace(f"${{trialParameters.{tp['name']}}}", value)
    return json.loads(text)


def pod_templates(trial_spec: dict) -> list[dict]:
    if trial_spec["kind"] == "Job":
        return [trial_spec["spec"]["template"]]
    return [r["template"] for r in trial_spec["spec"]["pytorchReplicaSpecs"].values()]


# --------------------------------------------------------------------------- the metric regex


SAMPLE_STDOUT = """\
\x1b[1;34mwandb\x1b[0m: Tracking run with wandb version 0.18.0
epoch=1
val_macro_f1=0.4120
val_loss=1.9031
fold0 epoch 2/3: 100%|##########| 9/9 [00:04<00:00, v_num=0, val_macro_f1=0.512]
epoch=2
val_macro_f1=0.8312
val_loss=0.5123
2024-05-01T12:00:00.123Z val_macro_f1=0.8400
val_loss=1e-05
val_macro_f1=nan
val_loss=inf
INFO val_macro_f1=0.99 (best)
wandb:  val_macro_f1 0.8312
\rfold0 epoch 3/3:  33%|###  | 1/3 [00:01<00:02, val_macro_f1=0.7]\r       \rval_macro_f1=0.8500
\rfold0 epoch 3/3:  66%|###  | 2/3 [00:01<00:02, val_macro_f1=0.7]
val_loss=0.4000\r
"""


def test_metric_regex_reads_our_lines_and_nothing_else():
    found = katib_collect(SAMPLE_STDOUT, ["val_macro_f1", "val_loss"], [METRICS_FORMAT])
    assert found == [
        ("val_macro_f1", 0.412), ("val_loss", 1.9031), ("val_macro_f1", 0.8312), ("val_loss", 0.5123),
        ("val_macro_f1", 0.84), ("val_loss", 1e-05), ("val_macro_f1", 0.85), ("val_loss", 0.4),
    ]  # fmt: skip
    # the local twin parses line by line with the same regex
    local = [sweep.parse_metric_line(ln) for ln in SAMPLE_STDOUT.splitlines()]
    assert [m for m in local if m and m[0] != "epoch"] == found
    assert sweep.parse_metric_line("epoch=3") == ("epoch", 3.0)


def test_metric_regex_is_valid_for_katibs_go_collector():
    # Katib's webhook: two top subexpressions (name, value); Go's RE2: no look-around or backrefs.
    assert re.compile(METRICS_FORMAT).groups == 2
    assert re.match(r".*\(.*\).*\(.*\).*", METRICS_FORMAT)
    assert not re.search(r"\(\?[=!<]|\\[1-9]|[*+?]\+", METRICS_FORMAT)
    # Katib's default regex would also count the progress-bar postfix: ours must not
    default = r"([\w|-]+)\s*=\s*([+-]?\d*(\.\d+)?([Ee][+-]?\d+)?)"
    bar = "epoch 2/3: 100%|####| 9/9 [00:04<00:00, v_num=0, val_macro_f1=0.512]"
    assert katib_collect(bar, ["val_macro_f1"], [default]) == [("val_macro_f1", 0.512)]
    assert katib_collect(bar, ["val_macro_f1"], [METRICS_FORMAT]) == []


# --------------------------------------------------------------------------- building


@pytest.mark.parametrize("space", SHIPPED)
def test_every_shipped_space_builds_a_valid_experiment(space: str):
    sp = sweep.load_space(space)
    exp = build_experiment(
        space, prepared="s3://docsort-data/prepared", fixed_overrides=["train.batch_size=16"]
    )

    # the Katib API models accept it without losing or changing anything
    assert V1beta1Experiment.from_dict(exp).to_dict() == exp
    assert webhook_errors(exp) == []
    assert (exp["apiVersion"], exp["kind"]) == ("kubeflow.org/v1beta1", "Experiment")
    assert exp["metadata"]["namespace"] == "docsort"

    s = exp["spec"]
    assert s["objective"] == {
        "type": "maximize", "goal": sp.goal, "objectiveMetricName": "val_macro_f1",
        "additionalMetricNames": ["val_loss"],
        "metricStrategies": [{"name": "val_macro_f1", "value": "max"}, {"name": "val_loss", "value": "min"}],
    }  # fmt: skip
    assert s["algorithm"]["algorithmName"] == sp.algorithm
    assert {a["name"]: a["value"] for a in s["algorithm"]["algorithmSettings"]} == dict(
        sp.algorithm_settings
    )
    assert s["earlyStopping"] == {
        "algorithmName": "medianstop",
        "algorithmSettings": [
            {"name": k, "value": str(v)} for k, v in sp.early_stopping_settings.items()
        ],
    }
    assert (s["maxTrialCount"], s["parallelTrialCount"], s["maxFailedTrialCount"]) == (
        sp.max_trial_count, sp.parallel_trial_count, sp.max_failed_trial_count)  # fmt: skip
    assert [p["name"] for p in s["parameters"]] == [p.name for p in sp.parameters]
    for p, param in zip(s["parameters"], sp.parameters, strict=True):
        fs = p["feasibleSpace"]
        if param.type == "categorical":
            assert fs == {"list": list(param.choices)}
        else:
            assert float(fs["min"]) == param.min and float(fs["max"]) == param.max
            assert fs["distribution"] == ("logUniform" if param.log else "uniform")
    assert s["metricsCollectorSpec"] == {
        "collector": {"kind": "StdOut"}, "source": {"filter": {"metricsFormat": [METRICS_FORMAT]}}}  # fmt: skip

    tt = s["trialTemplate"]
    assert tt["retain"] is True
    pod = pod_templates(tt["trialSpec"])[0]
    assert pod["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false"
    (container,) = pod["spec"]["containers"]
    assert container["name"] == tt["primaryContainerName"]
    assert container["image"].endswith(f"docsort-{sp.trial.image}:0.1.0")
    assert pod["spec"]["serviceAccountName"] == "docsort-pipeline"
    limits = container["resources"]["limits"]
    assert limits.get("nvidia.com/gpu") == (str(sp.trial.gpu) if sp.trial.gpu else None)
    assert container["resources"]["requests"] == {"cpu": sp.trial.cpu, "memory": sp.trial.memory}
    env = {e["name"]: e for e in container["env"]}
    for key, secret in (("AWS_ACCESS_KEY_ID", "docsort-s3"), ("AWS_SECRET_ACCESS_KEY", "docsort-s3"),
                        ("WANDB_API_KEY", "docsort-wandb")):  # fmt: skip
        assert env[key]["valueFrom"]["secretKeyRef"]["name"] == secret
        assert "value" not in env[key]
    assert (
        env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["optional"] is False
    )  # s3:// data needs it
    assert container["envFrom"] == [
        {"configMapRef": {"name": "docsort-s3-config", "optional": True}}
    ]
    assert {"mountPath": "/dev/shm", "name": "dshm"} in container["volumeMounts"]

    # the trial command: docsort train --prepared DIR --out DIR fold=0 <space> <fixed> <params>
    assert container["command"][:2] == ["sh", "-c"]
    argv = shlex.split(container["command"][2])
    assert argv[:7] == [
        "docsort",
        "train",
        "--prepared",
        "s3://docsort-data/prepared",
        "--out",
        "/tmp/trial",
        "fold=0",
    ]
    assert argv[7:] == [*sp.overrides, "train.batch_size=16", *[
        f"{tp['reference']}=${{trialParameters.{tp['name']}}}" for tp in tt["trialParameters"]
        if not tp["reference"].startswith("${")]]  # fmt: skip


@pytest.mark.parametrize("space", SHIPPED)
def test_a_substituted_trial_is_a_valid_kubernetes_job(space: str):
    exp = build_experiment(space, prepared="s3://docsort-data/prepared")
    job = substitute(exp, assignment(space))
    job["metadata"] = {
        "name": "exp-abcd1234",
        "namespace": "docsort",
    }  # Katib names it after the trial
    kubernetes_validate.validate(job, kubernetes_validate.latest_version(), strict=True)
    pod = job["spec"]["template"]
    assert pod["metadata"]["labels"][katib.TRIAL_POD_LABEL] == "exp-abcd1234"
    sc = pod["spec"]["containers"][0]["securityContext"]
    assert (
        sc["runAsNonRoot"] and sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"]
    )
    assert job["spec"]["backoffLimit"] == 0  # a failed trial is reported, not retried


def test_multi_gpu_multi_node_trials_run_as_pytorchjobs():
    space = yaml.safe_load(
        Path(sweep.__file__).parents[1].joinpath("conf").joinpath("hpo/default.yaml").read_text()
    )
    space["trial"].update(gpu=4, nodes=2)
    exp = build_experiment(space, name="docsort-ddp", prepared="s3://b/p")
    assert V1beta1Experiment.from_dict(exp).to_dict() == exp
    assert webhook_errors(exp) == []
    tt = exp["spec"]["trialTemplate"]
    ts = tt["trialSpec"]
    assert (ts["apiVersion"], ts["kind"]) == ("kubeflow.org/v1", "PyTorchJob")
    assert tt["primaryContainerName"] == "pytorch"
    assert tt["primaryPodLabels"] == {"training.kubeflow.org/job-role": "master"}
    assert tt["successCondition"] == 'status.conditions.#(type=="Succeeded")#|#(status=="True")#'
    replicas = ts["spec"]["pytorchReplicaSpecs"]
    assert (replicas["Master"]["replicas"], replicas["Worker"]["replicas"]) == (1, 1)
    for pod in pod_templates(ts):
        assert IoK8sApiCoreV1PodTemplateSpec.from_dict(pod).to_dict() == pod
        (c,) = pod["spec"]["containers"]
        assert c["name"] == "pytorch" and c["resources"]["limits"]["nvidia.com/gpu"] == "4"
        assert c["command"][2].startswith("torchrun --nnodes=2 --nproc-per-node=4 ")
        assert (
            " --no-python docsort train --prepared s3://b/p --out /tmp/trial fold=0 "
            in c["command"][2]
        )
    # a single GPU stays a plain Job
    assert (
        build_experiment("default", prepared="s3://b/p")["spec"]["trialTemplate"]["trialSpec"][
            "kind"
        ]
        == "Job"
    )


def test_build_refuses_bad_names_and_secrets_as_plain_env():
    with pytest.raises(ConfigError, match="experiment name 'Bad_Name'"):
        build_experiment("cpu_small", name="Bad_Name", prepared="s3://b/p")
    with pytest.raises(ConfigError, match="must come from a Kubernetes Secret"):
        build_experiment("cpu_small", prepared="s3://b/p", env={"AWS_SECRET_ACCESS_KEY": "x"})
    with pytest.raises(ConfigError, match="needs prepared"):
        build_experiment("cpu_small")
    # the name is stable for the same spec and changes with it (re-submits adopt)
    a = build_experiment("cpu_small", prepared="s3://b/p")["metadata"]["name"]
    assert a == build_experiment("cpu_small", prepared="s3://b/p")["metadata"]["name"]
    assert a != build_experiment("cpu_small", prepared="s3://b/q")["metadata"]["name"]
    assert re.match(r"^docsort-cpu-small-[0-9a-f]{8}$", a)


def test_dry_run_prints_the_experiment_yaml_for_kubectl_apply():
    text = sweep.dry_run_yaml("s3://b/prepared", "default", fixed_overrides=["train.batch_size=16"])
    assert yaml.safe_load(text) == build_experiment(
        "default", prepared="s3://b/prepared", fixed_overrides=["train.batch_size=16"])  # fmt: skip
    assert text.startswith("apiVersion: kubeflow.org/v1beta1\nkind: Experiment\n")
    with pytest.raises(ConfigError, match="does not compose"):
        sweep.dry_run_yaml("s3://b/prepared", "default", fixed_overrides=["train.nope=1"])


# --------------------------------------------------------------------------- the real trainer

TINY = [
    "data.image_size=64",
    "model=resnet10t",
    "train.scheduler=cosine",
    "tracking.wandb=disabled",
    "train.epochs=2",
]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """Tiny real data: 3 images per class, 2 folds, 64 px (sample generator + `docsort prepare`)."""
    from docsort.data.sample import generate_sample_data

    root = tmp_path_factory.mktemp("tiny")
    generate_sample_data(root / "raw", per_class=3)
    cli = [sys.executable, "-m", "docsort.cli.main"]
    subprocess.run([*cli, "prepare", str(root / "raw"), "--out", str(root / "prep"),
                    "data.num_folds=2", "data.image_size=64"], check=True, capture_output=True)  # fmt: skip
    return root / "prep"


@pytest.mark.slow  # over 9 s on 2 cores: `make test-slow`
def test_the_trial_command_runs_docsort_train_and_katib_reads_its_metrics(
    prepared: Path, tmp_path: Path
):
    exp = build_experiment("cpu_small", prepared=str(prepared), fixed_overrides=TINY)
    exp["spec"]["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"]["containers"][0][
        "command"
    ][2] = exp["spec"]["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"]["containers"][0][
        "command"
    ][2].replace(
        "--out /tmp/trial", f"--out {shlex.quote(str(tmp_path / 'trial'))}"
    )  # the pod's /tmp is an emptyDir; here a test folder stands in for it
    job = substitute(exp, assignment("cpu_small"))
    container = job["spec"]["template"]["spec"]["containers"][0]
    # exactly what Katib's webhook does with a StdOut collector: append a redirect to the log
    metrics_log = tmp_path / "metrics.log"
    wrapped = " ".join([*container["command"][2:], f"1>{metrics_log}", "2>&1"])
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.update({e["name"]: e["value"] for e in container["env"] if "value" in e})
    env["HOME"] = env["MPLCONFIGDIR"] = env["WANDB_DIR"] = str(tmp_path)
    proc = subprocess.run([*container["command"][:2], wrapped], env=env, cwd=tmp_path, timeout=600)
    log = metrics_log.read_text()
    assert proc.returncode == 0, log[-2000:]

    spec = exp["spec"]
    names = [spec["objective"]["objectiveMetricName"], *spec["objective"]["additionalMetricNames"]]
    found = katib_collect(
        log, names, spec["metricsCollectorSpec"]["source"]["filter"]["metricsFormat"]
    )
    f1 = [v for n, v in found if n == "val_macro_f1"]
    loss = [v for n, v in found if n == "val_loss"]
    assert len(f1) == len(loss) == 2  # one report per epoch, nothing from progress bars or W&B
    assert all(0.0 <= v <= 1.0 for v in f1) and all(v > 0 for v in loss)
    metrics = json.loads((tmp_path / "trial" / "metrics.json").read_text())
    assert metrics["val_macro_f1"] == pytest.approx(max(f1), abs=1e-4)  # Katib's "max" strategy
    lr = float(assignment("cpu_small")["train.lr"])
    assert f"train.lr={lr!r}" in container["command"][2]


# --------------------------------------------------------------------------- the launcher


class FakeCustomObjectsApi:
    """Katib in miniature: stores objects and, on each poll, advances the Experiment.

    Every poll starts at most ``parallelTrialCount`` trials from the Experiment's own
    parameter spec and finishes running ones with ``outcome(params)``: a float is the
    objective reported per epoch, a string is a failure message. Status and end
    conditions follow Katib's status_util (failed > maxFailedTrialCount fails it).
    """

    def __init__(self, outcome=lambda p: 0.5, stall: bool = False, errors: list[Exception] = ()):
        self.objects: dict[tuple[str, str, str], dict] = {}
        self.calls: list[tuple[str, str]] = []
        self.outcome, self.stall, self._n = outcome, stall, 0
        self.errors = list(errors)  # raised by the next experiment polls, in order

    def create_namespaced_custom_object(self, group, version, namespace, plural, body, **kwargs):
        self.calls.append((plural, "create"))
        assert (group, version) == ("kubeflow.org", "v1beta1")
        V1beta1Experiment.from_dict(body)  # the API server validates the schema
        key = (plural, namespace, body["metadata"]["name"])
        if key in self.objects:
            raise ApiException(status=409, reason="AlreadyExists")
        obj = copy.deepcopy(body)
        obj["metadata"]["creationTimestamp"] = "2024-05-01T00:00:00Z"
        obj["status"] = {"conditions": [self._cond("Created")]}
        self.objects[key] = obj
        return copy.deepcopy(obj)

    def get_namespaced_custom_object(self, group, version, namespace, plural, name, **kwargs):
        self.calls.append((plural, "get"))
        key = (plural, namespace, name)
        if key not in self.objects:
            raise ApiException(status=404, reason="NotFound")
        if plural == "experiments" and self.errors and len(self.calls) > 2:
            raise self.errors.pop(0)
        if plural == "experiments" and not self.stall:
            self._reconcile(self.objects[key])
        return copy.deepcopy(self.objects[key])

    def list_namespaced_custom_object(self, group, version, namespace, plural, **kwargs):
        self.calls.append((plural, "list"))
        want = dict(kv.split("=") for kv in kwargs.get("label_selector", "").split(",") if kv)
        items = [copy.deepcopy(o) for (p, ns, _), o in self.objects.items() if p == plural and ns == namespace
                 and all(o["metadata"].get("labels", {}).get(k) == v for k, v in want.items())]  # fmt: skip
        return {"apiVersion": "kubeflow.org/v1beta1", "kind": "TrialList", "items": items}

    def delete_namespaced_custom_object(self, group, version, namespace, plural, name, **kwargs):
        self.calls.append((plural, "delete"))
        self.objects.pop((plural, namespace, name))
        return {"status": "Success"}

    @staticmethod
    def _cond(ctype, reason="", message=""):
        return {"type": ctype, "status": "True", "reason": reason or ctype, "message": message}

    def _trials(self, exp):
        name = exp["metadata"]["name"]
        return [o for (p, _, _), o in self.objects.items()
                if p == "trials" and o["metadata"]["labels"]["katib.kubeflow.org/experiment"] == name]  # fmt: skip

    def _reconcile(self, exp):
        spec, status = exp["spec"], exp["status"]
        if any(c["type"] in ("Succeeded", "Failed") for c in status["conditions"]):
            return
        trials = self._trials(exp)
        for t in trials:  # finish what ran during the last poll
            if t["status"]["conditions"][-1]["type"] == "Running":
                params = {a["name"]: a["value"] for a in t["spec"]["parameterAssignments"]}
                result = self.outcome(params)
                if isinstance(result, str):
                    t["status"]["conditions"].append(self._cond("Failed", "TrialFailed", result))
                else:
                    m = {
                        "name": "val_macro_f1",
                        "min": "0.1",
                        "max": str(result),
                        "latest": str(result),
                    }
                    t["status"]["observation"] = {"metrics": [m]}
                    t["status"]["conditions"].append(self._cond("Succeeded", "TrialSucceeded"))
        running = [t for t in trials if t["status"]["conditions"][-1]["type"] == "Running"]
        while len(trials) < spec["maxTrialCount"] and len(running) < spec["parallelTrialCount"]:
            self._n += 1
            assignments = []
            for p in spec["parameters"]:
                fs = p["feasibleSpace"]
                values = fs.get("list") or [fs["min"], fs["max"]]
                assignments.append({"name": p["name"], "value": values[self._n % len(values)]})
            t = {
                "apiVersion": "kubeflow.org/v1beta1", "kind": "Trial",
                "metadata": {"name": f"{exp['metadata']['name']}-{self._n:08x}", "namespace": exp["metadata"]["namespace"],
                             "creationTimestamp": f"2024-05-01T00:00:{self._n:02d}Z",
                             "labels": {"katib.kubeflow.org/experiment": exp["metadata"]["name"]}},
                "spec": {"parameterAssignments": assignments},
                "status": {"startTime": "2024-05-01T00:00:00Z", "conditions": [self._cond("Created"), self._cond("Running")]},
            }  # fmt: skip
            self.objects[("trials", t["metadata"]["namespace"], t["metadata"]["name"])] = t
            trials.append(t)
            running.append(t)
        # Katib's status_util: counts, current optimal trial, end conditions
        kinds = [t["status"]["conditions"][-1]["type"] for t in trials]
        succeeded = [t for t, k in zip(trials, kinds, strict=True) if k == "Succeeded"]
        failed = kinds.count("Failed")
        status.update(trials=len(trials), trialsSucceeded=len(succeeded), trialsFailed=failed)
        if succeeded:
            best = max(
                succeeded, key=lambda t: float(t["status"]["observation"]["metrics"][0]["max"])
            )
            status["currentOptimalTrial"] = {
                "bestTrialName": best["metadata"]["name"],
                "parameterAssignments": best["spec"]["parameterAssignments"],
                "observation": best["status"]["observation"],
            }
        if failed > spec["maxFailedTrialCount"]:
            status["conditions"].append(
                self._cond(
                    "Failed",
                    "ExperimentFailed",
                    "Experiment has failed because max failed count has reached",
                )
            )
        elif len(succeeded) + failed >= spec["maxTrialCount"]:
            status["conditions"].append(
                self._cond("Succeeded", "ExperimentMaxTrialsReached", "max trial count has reached")
            )
        else:
            status["conditions"].append(self._cond("Running", "ExperimentRunning"))


class FakeCoreV1Api:
    """Trial pods and their logs, as the kubernetes client returns them."""

    def __init__(self, pods: list[k8s.V1Pod], logs: dict[tuple[str, str], str]):
        self.pods, self.logs = pods, logs
        self.calls: list[tuple[str, str]] = []

    def list_namespaced_pod(self, namespace, **kwargs):
        self.calls.append(("pods", "list"))
        key, value = kwargs["label_selector"].split("=")
        return k8s.V1PodList(items=[p for p in self.pods if p.metadata.labels.get(key) == value])

    def read_namespaced_pod_log(self, name, namespace, **kwargs):
        self.calls.append(("pods/log", "get"))
        if (name, kwargs["container"]) not in self.logs:
            raise ApiException(status=400, reason="container not found")
        return self.logs[(name, kwargs["container"])]


def test_fakes_have_the_kubernetes_client_signatures():
    for cls, real in ((FakeCustomObjectsApi, k8s.CustomObjectsApi), (FakeCoreV1Api, k8s.CoreV1Api)):
        for name, _ in inspect.getmembers(cls, inspect.isfunction):
            if not name.startswith("_"):
                assert inspect.signature(getattr(cls, name)) == inspect.signature(
                    getattr(real, name)
                ), name


def allowed(calls) -> None:
    """Every API call the launcher made is granted by REQUIRED_RBAC."""
    granted = {(r["resource"], v) for r in katib.REQUIRED_RBAC for v in r["verbs"]}
    assert set(calls) <= granted, set(calls) - granted


def quality(params: dict[str, str]) -> float | str:
    return 0.5 + float(params["train.lr"]) * 10


def test_launcher_waits_for_success_and_returns_the_optimal_trial(tmp_path: Path):
    api = FakeCustomObjectsApi(outcome=quality)
    exp = build_experiment("cpu_small", prepared="s3://b/p")
    sleeps: list[float] = []
    result = run_experiment(api, exp, timeout_s=60, poll_s=7, sleep=sleeps.append)

    sp = sweep.load_space("cpu_small")
    assert sleeps and set(sleeps) == {7}
    assert result.backend == "katib" and result.experiment == f"docsort/{exp['metadata']['name']}"
    assert len(result.trials) == sp.max_trial_count
    assert (result.trials.state == "succeeded").all()
    assert list(result.trials.columns[:5]) == [
        "number",
        "name",
        "train.lr",
        "train.weight_decay",
        "train.label_smoothing",
    ]
    best = result.trials.loc[result.trials.value.idxmax()]
    assert result.best_trial == best["name"] and result.value == pytest.approx(best.value)
    assert result.params["train.lr"] == pytest.approx(
        sp.param("train.lr").max
    )  # the best lr in quality()
    assert isinstance(result.params["train.lr"], float)
    assert result.overrides[0].startswith("train.lr=")
    # kept for the Katib UI
    assert ("experiments", "docsort", exp["metadata"]["name"]) in api.objects
    allowed(api.calls)

    sweep.write_outputs(result, tmp_path)
    assert json.loads((tmp_path / "best.json").read_text())["params"] == result.params


def test_too_many_failed_trials_fail_the_sweep_naming_them_and_why():
    def outcome(p):
        return (
            "Trial has failed. Job message: BackoffLimitExceeded"
            if float(p["train.lr"]) > 0.005
            else 0.6
        )

    api = FakeCustomObjectsApi(outcome=outcome)
    exp = build_experiment("cpu_small", prepared="s3://b/p")
    name = exp["metadata"]["name"]
    trial = f"{name}-00000001"  # the first trial (max lr) fails; tell why from its pod
    pods = [
        k8s.V1Pod(
            metadata=k8s.V1ObjectMeta(name=f"{trial}-x1", labels={katib.TRIAL_POD_LABEL: trial}),
            status=k8s.V1PodStatus(container_statuses=[k8s.V1ContainerStatus(
                name="training", image="i", image_id="", ready=False, restart_count=0,
                state=k8s.V1ContainerState(terminated=k8s.V1ContainerStateTerminated(exit_code=137, reason="OOMKilled")))]),
        )
    ]  # fmt: skip
    logs = {(f"{trial}-x1", "metrics-logger-and-collector"): (
        "I0501 10:00:01.000000      14 main.go:396] epoch=1\n"
        "I0501 10:00:09.000000      14 main.go:396] RuntimeError: DataLoader worker (pid 42) is killed by signal: Killed.\n"
        "I0501 10:00:10.000000      14 main.go:450] Metrics reported.\n")}  # fmt: skip
    core = FakeCoreV1Api(pods, logs)
    with pytest.raises(SweepFailed) as err:
        run_experiment(api, exp, timeout_s=60, poll_s=0, core_api=core, sleep=lambda s: None)
    msg = str(err.value)
    assert "\n" not in msg
    assert f"Katib experiment docsort/{name} failed (ExperimentFailed" in msg
    result = err.value.result
    failed = result.trials[result.trials.state == "failed"]
    assert len(failed) == len(result.failed) == 3  # maxFailedTrialCount=2: the 3rd ends it
    for f in result.failed:
        assert f.name in msg and "BackoffLimitExceeded" in f.reason
    first = next(f for f in result.failed if f.name == trial)
    assert "OOMKilled exit 137" in first.reason
    assert "RuntimeError: DataLoader worker (pid 42) is killed by signal: Killed." in first.reason
    assert "OOMKilled exit 137" in msg
    allowed(api.calls + core.calls)


def test_polling_survives_api_server_hiccups_but_not_a_deleted_experiment():
    import urllib3

    hiccups = [
        ApiException(status=503, reason="Unavailable"),
        urllib3.exceptions.ProtocolError("reset"),
    ]
    api = FakeCustomObjectsApi(outcome=quality, errors=hiccups)
    exp = build_experiment("cpu_small", prepared="s3://b/p")
    result = run_experiment(api, exp, timeout_s=60, poll_s=0, sleep=lambda s: None)
    assert not api.errors and result.best_trial
    api = FakeCustomObjectsApi(
        outcome=quality, errors=[ApiException(status=404, reason="NotFound")]
    )
    with pytest.raises(
        DocsortError, match=r"reading Katib experiment docsort/.* failed: HTTP 404 NotFound"
    ):
        run_experiment(api, exp, timeout_s=60, poll_s=0, sleep=lambda s: None)


def test_a_sweep_that_does_not_finish_in_time_is_left_for_the_katib_ui():
    api = FakeCustomObjectsApi(stall=True)
    exp = build_experiment("cpu_small", prepared="s3://b/p")
    now = [0.0]
    with pytest.raises(
        SweepTimeout,
        match=r"did not finish within 30s \(last condition: Created\); it is left running",
    ):
        run_experiment(api, exp, timeout_s=30, poll_s=10, clock=lambda: now[0],
                       sleep=lambda s: now.__setitem__(0, now[0] + s))  # fmt: skip
    assert now[0] == 30
    assert ("experiments", "docsort", exp["metadata"]["name"]) in api.objects
    assert ("experiments", "delete") not in api.calls


def test_resubmitting_the_same_sweep_adopts_it_and_a_different_one_is_refused():
    api = FakeCustomObjectsApi(outcome=quality)
    exp = build_experiment("cpu_small", prepared="s3://b/p")
    first = run_experiment(api, exp, timeout_s=60, poll_s=0, sleep=lambda s: None)
    again = run_experiment(
        api, exp, timeout_s=60, poll_s=0, sleep=lambda s: None
    )  # e.g. a retried step
    assert again.params == first.params and len(again.trials) == len(first.trials)
    other = build_experiment("cpu_small", name=exp["metadata"]["name"], prepared="s3://b/other")
    with pytest.raises(DocsortError, match="already exists with a different spec"):
        run_experiment(api, other, timeout_s=60, poll_s=0, sleep=lambda s: None)
    katib.delete_experiment(api, exp["metadata"]["name"], "docsort")
    assert ("experiments", "docsort", exp["metadata"]["name"]) not in api.objects
    allowed(api.calls)


def test_katib_backend_writes_the_same_outputs_as_the_local_one(tmp_path: Path):
    api = FakeCustomObjectsApi(outcome=quality)
    result = sweep.run_sweep(
        "s3://b/p", "cpu_small", tmp_path, backend="katib", api=api, poll_s=0, timeout_s=60
    )
    best = json.loads((tmp_path / "best.json").read_text())
    assert best["backend"] == "katib" and best["params"] == result.params
    table = pd.read_csv(tmp_path / "trials.csv")
    assert list(table.columns) == list(result.trials.columns)
    assert {"number", "name", "value", "state", "reason", "val_loss"} <= set(table.columns)


# --------------------------------------------------------------------------- a real cluster


@pytest.mark.e2e_cluster
@pytest.mark.skipif(
    not os.environ.get("DOCSORT_E2E_KUBECONFIG"), reason="needs DOCSORT_E2E_KUBECONFIG"
)
def test_a_real_sweep_on_a_real_cluster(tmp_path: Path):
    """A small sweep through a real Katib; DOCSORT_E2E_DATA is prepared data the pods can read."""
    data = os.environ.get("DOCSORT_E2E_DATA")
    if not data:
        pytest.skip("needs DOCSORT_E2E_DATA (an s3:// URI of prepared data)")
    api, core = katib.connect(os.environ["DOCSORT_E2E_KUBECONFIG"])
    space = yaml.safe_load(
        Path(sweep.__file__).parents[1].joinpath("conf").joinpath("hpo/cpu_small.yaml").read_text()
    )
    space.update(max_trial_count=2, parallel_trial_count=2, max_failed_trial_count=1)
    exp = build_experiment(
        space,
        namespace=os.environ.get("DOCSORT_E2E_NAMESPACE", "docsort"),
        prepared=data,
        image=os.environ.get("DOCSORT_E2E_IMAGE"),
        fixed_overrides=os.environ.get("DOCSORT_E2E_OVERRIDES", "train.epochs=2").split(),
    )
    try:
        result = run_experiment(api, exp, timeout_s=3600, poll_s=10, core_api=core)
        assert result.best_trial and set(result.params) == {
            "train.lr",
            "train.weight_decay",
            "train.label_smoothing",
        }
        assert len(result.trials) == 2
    finally:
        if not os.environ.get("DOCSORT_E2E_KEEP"):
            katib.delete_experiment(api, exp["metadata"]["name"], exp["metadata"]["namespace"])
