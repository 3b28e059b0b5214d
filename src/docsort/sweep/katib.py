"""Katib Experiments for docsort sweeps: build one from a search space, run it, read the result.

Built with the ``kubeflow-katib-api`` pydantic models (the kubeflow-katib SDK pins a
protobuf that kfp cannot live with) and submitted with the ``kubernetes`` client's
``CustomObjectsApi``. Each trial is a batch Job (a PyTorchJob when a trial needs
several GPUs or nodes) running the docsort image's ``docsort train`` with Hydra
overrides from the trial's parameters; Katib's StdOut collector reads the
``name=value`` lines it prints with :data:`docsort.sweep.sweep.METRICS_FORMAT`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from kubeflow_katib_api.models import (
    IoK8sApiCoreV1PodTemplateSpec,
    IoK8sApimachineryPkgApisMetaV1ObjectMeta,
    V1beta1AlgorithmSetting,
    V1beta1AlgorithmSpec,
    V1beta1CollectorSpec,
    V1beta1EarlyStoppingSetting,
    V1beta1EarlyStoppingSpec,
    V1beta1Experiment,
    V1beta1ExperimentSpec,
    V1beta1FeasibleSpace,
    V1beta1FilterSpec,
    V1beta1MetricsCollectorSpec,
    V1beta1MetricStrategy,
    V1beta1ObjectiveSpec,
    V1beta1ParameterSpec,
    V1beta1SourceSpec,
    V1beta1TrialParameterSpec,
    V1beta1TrialTemplate,
)

from docsort.core import container_images as images
from docsort.core.errors import ConfigError, DocsortError
from docsort.sweep.results import (
    FailedTrial,
    SweepFailed,
    SweepResult,
    describe_failures,
    trials_frame,
)
from docsort.sweep.search_space import (
    METRICS_FORMAT,
    SearchSpace,
    format_value,
    load_space,
    trial_overrides,
)

log = logging.getLogger(__name__)

GROUP, VERSION = "kubeflow.org", "v1beta1"
EXPERIMENTS, TRIALS = "experiments", "trials"
EXPERIMENT_LABEL = "katib.kubeflow.org/experiment"
#: Label on every trial pod (value: the Katib trial name), to find its logs.
TRIAL_POD_LABEL = "docsort.io/trial"
SPEC_HASH_ANNOTATION = "docsort.io/spec-hash"
PRIMARY_CONTAINER = "training"
PYTORCH_CONTAINER = "pytorch"  # the Training Operator requires this name
COLLECTOR_CONTAINER = "metrics-logger-and-collector"  # Katib's injected sidecar
TRIAL_NAME_PARAM = "trialName"
EXPERIMENT_NAME_PARAM = "experimentName"
RUN_AS_USER = 10001  # the docsort images' non-root user (images/Dockerfile.*)
#: The namespace a pod runs in, as Kubernetes mounts it for the pod's service account.
POD_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
#: Added to the trials' rounds in :func:`worst_case_s`: the Suggestion's start, trial
#: creation and metrics reporting, which no trial deadline counts.
EXPERIMENT_MARGIN_S = 1800
DEFAULT_SERVICE_ACCOUNT = "docsort-pipeline"  # k8s/base: S3 via IRSA on AWS, no API token
#: Non-secret S3 settings (AWS_REGION, AWS_ENDPOINT_URL) provided by k8s/.
S3_CONFIG_MAP = "docsort-s3-config"
#: Secret name -> env keys. Values never appear in a manifest, only secretKeyRefs.
DEFAULT_SECRETS: dict[str, tuple[str, ...]] = {
    "docsort-s3": ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"),
    "docsort-wandb": ("WANDB_API_KEY",),
}
#: What the launcher's service account must be allowed to do (namespace-scoped Role).
REQUIRED_RBAC: list[dict[str, Any]] = [
    {
        "apiGroup": GROUP,
        "resource": EXPERIMENTS,
        "verbs": ["create", "get", "list", "watch", "delete"],
    },
    {"apiGroup": GROUP, "resource": TRIALS, "verbs": ["get", "list", "watch"]},
    {"apiGroup": "", "resource": "pods", "verbs": ["get", "list", "watch"]},
    {"apiGroup": "", "resource": "pods/log", "verbs": ["get", "list", "watch"]},
]
_JOB_CONDITIONS = {
    "Job": ('status.conditions.#(type=="Complete")#|#(status=="True")#',
            'status.conditions.#(type=="Failed")#|#(status=="True")#'),
    "PyTorchJob": ('status.conditions.#(type=="Succeeded")#|#(status=="True")#',
                   'status.conditions.#(type=="Failed")#|#(status=="True")#'),
}  # fmt: skip
_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_SHELL_SAFE = re.compile(r"^[A-Za-z0-9_@%+=:,./${}-]+$")
_KLOG_PREFIX = re.compile(r"^[IWEF][0-9]{4} [0-9:.]+\s+[0-9]+ [^ ]+:[0-9]+\] ")
_ERROR_LINE = re.compile(r"(Error|Exception|error:|Killed|Traceback)")
MAX_NAME = 40  # trial = experiment + 9 chars, and pod labels cap names at 63


def resolve_namespace(namespace: str = "", pod_file: str | Path | None = None) -> str:
    """``namespace`` when given, else the namespace this pod runs in (its service account's).

    In a Kubeflow profile the pipeline's pods run in the user's namespace, so by
    default the Experiment and its trials go there too, beside the run.
    """
    if namespace:
        _check_name("namespace", namespace, 63)
        return namespace
    path = Path(pod_file) if pod_file is not None else POD_NAMESPACE_FILE
    try:
        found = path.read_text(encoding="utf-8").strip()
    except OSError:
        found = ""
    if not found:
        raise ConfigError(
            f"no Katib namespace given and none to discover ({path} is missing outside a pod): "
            "pass the namespace (docsort sweep --namespace NS, pipeline param namespace=NS)"
        )
    _check_name("namespace", found, 63)
    return found


def trial_deadline_s(experiment: Mapping[str, Any]) -> int | None:
    """The trial job's ``activeDeadlineSeconds`` (Job spec or PyTorchJob runPolicy), if set."""
    job = experiment["spec"]["trialTemplate"]["trialSpec"]["spec"]
    deadline = job.get(
        "activeDeadlineSeconds", (job.get("runPolicy") or {}).get("activeDeadlineSeconds")
    )
    return int(deadline) if deadline else None


def worst_case_s(experiment: Mapping[str, Any]) -> int | None:
    """Longest the Experiment can run: ``ceil(maxTrialCount / parallelTrialCount)`` rounds of
    the trial deadline, plus :data:`EXPERIMENT_MARGIN_S`; ``None`` without a trial deadline.

    Katib counts failed and early-stopped trials towards ``maxTrialCount``
    (pkg/controller.v1beta1/experiment/util/status_util.go, v0.19.0), and a Job's
    ``activeDeadlineSeconds`` includes the time its pod waits to be scheduled.
    """
    deadline = trial_deadline_s(experiment)
    if deadline is None:
        return None
    spec = experiment["spec"]
    rounds = -(-int(spec["maxTrialCount"]) // int(spec.get("parallelTrialCount") or 1))
    return rounds * deadline + EXPERIMENT_MARGIN_S


def check_wait(experiment: Mapping[str, Any], wait_s: float, what: str = "the sweep step") -> None:
    """Refuse a wait shorter than the Experiment's worst case, naming the numbers."""
    spec = experiment["spec"]
    worst = worst_case_s(experiment)
    counts = f"{spec['maxTrialCount']} trials / {spec.get('parallelTrialCount') or 1} parallel"
    if worst is None:
        raise ConfigError(
            f"the Experiment ({counts}) has no trial deadline, so no wait of {what} covers it: "
            "set trial.timeout_s in the search space"
        )
    if wait_s < worst:
        raise ConfigError(
            f"{what} waits {wait_s:g}s but the Experiment can run {worst}s "
            f"(ceil({counts}) x {trial_deadline_s(experiment)}s trial deadline + "
            f"{EXPERIMENT_MARGIN_S}s): raise the wait to >= {worst}s or use fewer trials"
        )


def _trial_param_name(key: str, taken: set[str]) -> str:
    """``train.lr`` -> ``train_lr``: the ``${trialParameters.X}`` name of a Hydra key."""
    base = re.sub(r"[^A-Za-z0-9]", "_", key)
    name, i = base, 2
    while name in taken or name in (TRIAL_NAME_PARAM, EXPERIMENT_NAME_PARAM):
        name, i = f"{base}_{i}", i + 1
    taken.add(name)
    return name


def _shell(argv: Sequence[str]) -> str:
    """Join argv for ``sh -c``; ``${trialParameters.x}`` stays bare so Katib can fill it."""
    return " ".join(a if _SHELL_SAFE.match(a) else shlex.quote(a) for a in argv)


def _slug(text: str) -> str:
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", text.lower())).strip("-") or "space"


def _check_name(kind: str, value: str, limit: int) -> None:
    if not _NAME.match(value) or len(value) > limit:
        raise ConfigError(
            f"{kind} {value!r} must be lower-case letters, digits and '-', start with a letter "
            f"and be at most {limit} characters"
        )


def _validated(model, data: dict[str, Any], what: str) -> dict[str, Any]:
    """Round-trip ``data`` through an API model; a dropped or changed field is a bug here."""
    back = model.from_dict(data).to_dict()
    if back != data:
        raise AssertionError(f"{what} does not match the {model.__name__} schema: {data}")
    return back


def _pod_template(
    *,
    container_name: str,
    image: str,
    command: str,
    env: list[dict[str, Any]],
    env_from: list[dict[str, Any]],
    sp: SearchSpace,
    gpu: int,
    service_account: str | None,
    image_pull_policy: str | None,
    image_pull_secrets: Sequence[str] = (),
) -> dict[str, Any]:
    limits: dict[str, str] = {"memory": sp.trial.memory}
    if gpu:
        limits["nvidia.com/gpu"] = str(gpu)
    container: dict[str, Any] = {
        "name": container_name,
        "image": image,
        "command": ["sh", "-c", command],
        "workingDir": "/tmp",
        "env": env,
        "resources": {
            "requests": {"cpu": sp.trial.cpu, "memory": sp.trial.memory},
            "limits": limits,
        },
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS_USER,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [
            {"name": "dshm", "mountPath": "/dev/shm"},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    if env_from:
        container["envFrom"] = env_from
    if image_pull_policy:
        container["imagePullPolicy"] = image_pull_policy
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": [container],
        "volumes": [
            # DataLoader workers share batches through /dev/shm; the default 64 MiB is too small.
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": sp.trial.shm}},
            {"name": "tmp", "emptyDir": {}},
        ],
    }
    tolerations = [dict(t) for t in sp.trial.tolerations]
    if gpu and not tolerations:
        tolerations = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    if tolerations:
        spec["tolerations"] = tolerations
    if sp.trial.node_selector:
        spec["nodeSelector"] = dict(sp.trial.node_selector)
    if service_account:
        spec["serviceAccountName"] = service_account
    if image_pull_secrets:  # the k8s profile's, as for the pipeline's own tasks
        spec["imagePullSecrets"] = [{"name": str(n)} for n in image_pull_secrets]
    template = {
        "metadata": {
            "labels": {
                "app.kubernetes.io/name": "docsort",
                "app.kubernetes.io/component": "sweep-trial",
                TRIAL_POD_LABEL: f"${{trialParameters.{TRIAL_NAME_PARAM}}}",
            },
            # Istio's sidecar never exits, so a Job with it never completes.
            "annotations": {"sidecar.istio.io/inject": "false"},
        },
        "spec": spec,
    }
    return _validated(IoK8sApiCoreV1PodTemplateSpec, template, "trial pod template")


def build_experiment(
    space: str | Mapping[str, Any] | SearchSpace,
    name: str | None = None,
    namespace: str = "",
    prepared: str | None = None,
    image: str | None = None,
    fixed_overrides: Sequence[str] = (),
    gpu: int | None = None,
    secrets: Mapping[str, Sequence[str]] = DEFAULT_SECRETS,
    *,
    env: Mapping[str, str] | None = None,
    trial_out: str = "/tmp/trial",
    trials_uri: str | None = None,
    retain: bool = True,
    service_account: str | None = DEFAULT_SERVICE_ACCOUNT,
    config_maps: Sequence[str] = (S3_CONFIG_MAP,),
    image_pull_policy: str | None = None,
    image_pull_secrets: Sequence[str] = (),
) -> dict[str, Any]:
    """The Katib ``Experiment`` for ``space`` as a plain dict (for ``kubectl apply`` or the API).

    Each trial runs ``docsort train --prepared PREPARED --out TRIAL_OUT fold=0 <overrides>
    <param>=${trialParameters.x}``; with ``trials_uri`` (an ``s3://`` prefix, e.g.
    ``<sweep output>/trials``) TRIAL_OUT is ``<trials_uri>/<trial name>``, so each
    trial's member and metrics outlive its pod. ``namespace`` defaults to the one
    this pod runs in (:func:`resolve_namespace`). ``gpu`` overrides ``trial.gpu`` (GPUs per
    node); more than one GPU or node makes the trial a PyTorchJob under torchrun.
    ``secrets`` maps Secret names to env keys; ``config_maps`` are loaded whole as
    env (optional, so a missing one does not block a trial); ``env`` adds plain
    (non-secret) variables such as ``AWS_ENDPOINT_URL``. ``retain`` keeps finished trial pods so
    their logs explain failures. Without ``name`` a stable one is derived from the
    spec, so re-submitting the same sweep adopts the existing Experiment.
    """
    sp = load_space(space)
    if not prepared:
        raise ConfigError("build_experiment needs prepared (the prepared folder the trials read)")
    namespace = resolve_namespace(namespace)
    if trials_uri:
        if not trials_uri.startswith("s3://"):
            raise ConfigError(
                f"trials_uri must be an s3:// prefix the trial pods can write, got {trials_uri!r}"
            )
        trial_out = f"{trials_uri.rstrip('/')}/${{trialParameters.{TRIAL_NAME_PARAM}}}"
    gpu = sp.trial.gpu if gpu is None else gpu
    if gpu < 0:
        raise ConfigError(f"gpu must be >= 0, got {gpu}")
    nodes = sp.trial.nodes
    distributed = gpu > 1 or nodes > 1
    image = image or images.image("gpu" if gpu else sp.trial.image)
    secret_keys = {k for keys in secrets.values() for k in keys}
    leaked = sorted(secret_keys & set(env or {}))
    if leaked:
        raise ConfigError(f"{leaked} must come from a Kubernetes Secret, not a plain env value")

    taken: set[str] = set()
    tparams = {p.name: _trial_param_name(p.name, taken) for p in sp.parameters}
    param_args = [f"{key}=${{trialParameters.{tp}}}" for key, tp in tparams.items()]
    argv = [
        "docsort",
        "train",
        "--prepared",
        prepared,
        "--out",
        trial_out,
        *trial_overrides(sp, fixed_overrides, param_args),
    ]
    if distributed:
        # torchrun starts one process per GPU; node rank and master come from the
        # Training Operator's env (RANK is the pod index without nprocPerNode).
        launcher = (
            f"torchrun --nnodes={nodes} --nproc-per-node={max(gpu, 1)} "
            '--node-rank="${RANK:-0}" --master-addr="${MASTER_ADDR:-localhost}" '
            '--master-port="${MASTER_PORT:-29500}" --no-python '
        )
        command = launcher + _shell(argv)
    else:
        command = _shell(argv)

    trial_env: list[dict[str, Any]] = [
        {"name": "PYTHONUNBUFFERED", "value": "1"},  # metric lines must stream for early stopping
        {"name": "HOME", "value": "/tmp"},  # the root filesystem is read-only
        {"name": "MPLCONFIGDIR", "value": "/tmp/.matplotlib"},
        {"name": "WANDB_DIR", "value": "/tmp"},
        {"name": "WANDB_NAME", "value": f"${{trialParameters.{TRIAL_NAME_PARAM}}}"},
        {"name": "WANDB_RUN_GROUP", "value": f"${{trialParameters.{EXPERIMENT_NAME_PARAM}}}"},
        {"name": "DOCSORT_TRIAL", "value": f"${{trialParameters.{TRIAL_NAME_PARAM}}}"},
    ]
    trial_env += [{"name": str(k), "value": str(v)} for k, v in (env or {}).items()]
    for secret, keys in secrets.items():
        # Trials read S3 only for s3:// data; W&B stays offline without its key.
        optional = not (secret == "docsort-s3" and prepared.startswith("s3://"))
        trial_env += [
            {
                "name": k,
                "valueFrom": {"secretKeyRef": {"name": secret, "key": k, "optional": optional}},
            }
            for k in keys
        ]

    container = PYTORCH_CONTAINER if distributed else PRIMARY_CONTAINER
    pod = _pod_template(
        container_name=container,
        image=image,
        command=command,
        env=trial_env,
        env_from=[{"configMapRef": {"name": c, "optional": True}} for c in config_maps],
        sp=sp,
        gpu=gpu,
        service_account=service_account,
        image_pull_policy=image_pull_policy,
        image_pull_secrets=image_pull_secrets,
    )
    if distributed:
        kind = "PyTorchJob"
        run_policy: dict[str, Any] = {
            "cleanPodPolicy": "None" if retain else "All",
            "backoffLimit": 0,
        }
        if sp.trial.timeout_s:
            run_policy["activeDeadlineSeconds"] = sp.trial.timeout_s
        replicas = {"Master": {"replicas": 1, "restartPolicy": "Never", "template": pod}}
        if nodes > 1:
            replicas["Worker"] = {"replicas": nodes - 1, "restartPolicy": "Never", "template": pod}
        trial_spec = {
            "apiVersion": "kubeflow.org/v1",
            "kind": kind,
            "spec": {"runPolicy": run_policy, "pytorchReplicaSpecs": replicas},
        }
    else:
        kind = "Job"
        job_spec: dict[str, Any] = {"backoffLimit": 0, "template": pod}  # Katib counts failures
        if sp.trial.timeout_s:
            job_spec["activeDeadlineSeconds"] = sp.trial.timeout_s
        trial_spec = {"apiVersion": "batch/v1", "kind": kind, "spec": job_spec}
    success, failure = _JOB_CONDITIONS[kind]

    trial_parameters = [
        V1beta1TrialParameterSpec(name=tp, reference=key, description=f"Hydra override {key}")
        for key, tp in tparams.items()
    ] + [
        V1beta1TrialParameterSpec(
            name=TRIAL_NAME_PARAM, reference="${trialSpec.Name}", description="Trial name"
        ),
        V1beta1TrialParameterSpec(
            name=EXPERIMENT_NAME_PARAM,
            reference=f"${{trialSpec.Labels[{EXPERIMENT_LABEL}]}}",
            description="Experiment name",
        ),
    ]
    template = V1beta1TrialTemplate(
        primary_container_name=container,
        primary_pod_labels={"training.kubeflow.org/job-role": "master"} if distributed else None,
        success_condition=success,
        failure_condition=failure,
        retain=retain,
        trial_parameters=trial_parameters,
        trial_spec=trial_spec,
    )
    parameters = []
    for p in sp.parameters:
        if p.type == "categorical":
            feasible = V1beta1FeasibleSpace(list=list(p.choices))
        else:
            feasible = V1beta1FeasibleSpace(
                min=format_value(p.min),
                max=format_value(p.max),
                step=None if p.step is None else format_value(p.step),
                distribution="logUniform" if p.log else "uniform",
            )
        parameters.append(
            V1beta1ParameterSpec(name=p.name, parameter_type=p.type, feasible_space=feasible)
        )
    early = None
    if sp.early_stopping:
        early = V1beta1EarlyStoppingSpec(
            algorithm_name=sp.early_stopping,
            algorithm_settings=[
                V1beta1EarlyStoppingSetting(name=k, value=str(v))
                for k, v in sp.early_stopping_settings.items()
            ],
        )
    spec = V1beta1ExperimentSpec(
        objective=V1beta1ObjectiveSpec(
            type=sp.objective_type,
            goal=sp.goal,
            objective_metric_name=sp.metric,
            additional_metric_names=list(sp.additional_metrics) or None,
            metric_strategies=[
                V1beta1MetricStrategy(name=m, value=v) for m, v in sp.strategies.items()
            ],
        ),
        algorithm=V1beta1AlgorithmSpec(
            algorithm_name=sp.algorithm,
            algorithm_settings=[
                V1beta1AlgorithmSetting(name=k, value=v) for k, v in sp.algorithm_settings.items()
            ]
            or None,
        ),
        early_stopping=early,
        max_trial_count=sp.max_trial_count,
        parallel_trial_count=sp.parallel_trial_count,
        max_failed_trial_count=sp.max_failed_trial_count,
        parameters=parameters,
        metrics_collector_spec=V1beta1MetricsCollectorSpec(
            collector=V1beta1CollectorSpec(kind="StdOut"),
            source=V1beta1SourceSpec(filter=V1beta1FilterSpec(metrics_format=[METRICS_FORMAT])),
        ),
        resume_policy="Never",
        trial_template=template,
    )
    spec_dict = spec.to_dict()
    digest = hashlib.sha256(json.dumps(spec_dict, sort_keys=True).encode()).hexdigest()[:12]
    if name is None:
        name = f"docsort-{_slug(sp.name)[: MAX_NAME - 17]}-{digest[:8]}".replace("--", "-")
    _check_name("experiment name", name, MAX_NAME)
    experiment = V1beta1Experiment(
        api_version=f"{GROUP}/{VERSION}",
        kind="Experiment",
        metadata=IoK8sApimachineryPkgApisMetaV1ObjectMeta(
            name=name,
            namespace=namespace,
            labels={
                "app.kubernetes.io/name": "docsort",
                "app.kubernetes.io/component": "sweep",
                "docsort.io/space": _slug(sp.name)[:63],
            },
            annotations={SPEC_HASH_ANNOTATION: digest, "docsort.io/data": prepared},
        ),
        spec=spec,
    )
    return experiment.to_dict()


# --------------------------------------------------------------------------- launcher


def connect(kubeconfig: str | None = None):
    """``(CustomObjectsApi, CoreV1Api)`` from ``kubeconfig``, else in-cluster, else ~/.kube/config."""
    from kubernetes import client, config

    if kubeconfig:
        config.load_kube_config(config_file=kubeconfig)
    else:
        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
    return client.CustomObjectsApi(), client.CoreV1Api()


def _api_error(exc: Exception, what: str) -> DocsortError:
    status = getattr(exc, "status", None)
    hint = {
        403: "; the service account needs the Role in docsort.sweep.katib.REQUIRED_RBAC",
        404: "; is Katib installed (experiments.kubeflow.org)?",
    }.get(status, "")
    return DocsortError(f"{what} failed: HTTP {status} {getattr(exc, 'reason', '')}{hint}".rstrip())


def submit_experiment(api, experiment: Mapping[str, Any]) -> dict[str, Any]:
    """Create the Experiment; adopt an existing one with the same spec (a retried step)."""
    from kubernetes.client.exceptions import ApiException

    meta = experiment["metadata"]
    name, ns = meta["name"], meta["namespace"]
    try:
        return api.create_namespaced_custom_object(
            GROUP, VERSION, ns, EXPERIMENTS, dict(experiment)
        )
    except ApiException as exc:
        if exc.status != 409:
            raise _api_error(exc, f"creating Katib experiment {ns}/{name}") from None
    existing = api.get_namespaced_custom_object(GROUP, VERSION, ns, EXPERIMENTS, name)
    theirs = (existing.get("metadata", {}).get("annotations") or {}).get(SPEC_HASH_ANNOTATION)
    if theirs != (meta.get("annotations") or {}).get(SPEC_HASH_ANNOTATION):
        raise DocsortError(
            f"Katib experiment {ns}/{name} already exists with a different spec; "
            "choose another name or delete it (kubectl delete experiment)"
        )
    log.info("adopting existing Katib experiment %s/%s", ns, name)
    return existing


def delete_experiment(api, name: str, namespace: str) -> None:
    """Delete an Experiment and, through owner references, its trials."""
    api.delete_namespaced_custom_object(GROUP, VERSION, namespace, EXPERIMENTS, name)


def _true_conditions(obj: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    conds = (obj.get("status") or {}).get("conditions") or []
    return {c.get("type"): c for c in conds if str(c.get("status")) == "True"}


def _metric_value(metrics: Sequence[Mapping[str, Any]], name: str, strategy: str) -> float | None:
    for m in metrics or []:
        if m.get("name") == name:
            raw = m.get(strategy, m.get("latest"))
            try:
                return float(raw)
            except (TypeError, ValueError):
                return None  # Katib writes "unavailable"
    return None


def _typed(ptype: str, text: Any) -> Any:
    try:
        if ptype == "int":
            return int(float(text))
        if ptype == "double":
            return float(text)
    except (TypeError, ValueError):
        pass
    return text


def _trial_state(trial: Mapping[str, Any]) -> tuple[str, str]:
    """(state, reason) of a Katib Trial from its conditions."""
    true = _true_conditions(trial)
    for ctype, state in (
        ("EarlyStopped", "pruned"),
        ("MetricsUnavailable", "metrics_unavailable"),
        ("Failed", "failed"),
        ("Killed", "killed"),
        ("Succeeded", "succeeded"),
        ("Running", "running"),
    ):
        if ctype in true:
            c = true[ctype]
            reason = ": ".join(x for x in (c.get("reason"), c.get("message")) if x)
            return state, reason if state != "succeeded" and state != "running" else ""
    return "pending", ""


def _pod_failure(core_api, namespace: str, trial: str) -> str:
    """Why a trial's pod failed: OOMKilled/exit code, termination message or last error line."""
    from kubernetes.client.exceptions import ApiException

    try:
        pods = core_api.list_namespaced_pod(
            namespace, label_selector=f"{TRIAL_POD_LABEL}={trial}"
        ).items
    except ApiException:
        return ""
    parts: list[str] = []
    for pod in pods:
        status = pod.status
        if status is not None and status.reason:  # Evicted, DeadlineExceeded, ...
            parts.append(f"pod {status.reason}")
        for cs in (status.container_statuses if status else None) or []:
            if cs.name not in (PRIMARY_CONTAINER, PYTORCH_CONTAINER):
                continue
            term = cs.state.terminated if cs.state else None
            if term is None or not term.exit_code:
                continue
            parts.append(f"{term.reason or 'Error'} exit {term.exit_code}")
            if term.message:
                parts.append(term.message.strip().splitlines()[-1][:300])
                return "; ".join(parts)
        for container in (COLLECTOR_CONTAINER, PRIMARY_CONTAINER, PYTORCH_CONTAINER):
            try:
                text = core_api.read_namespaced_pod_log(
                    pod.metadata.name, namespace, container=container, tail_lines=200
                )
            except ApiException:
                continue
            lines = [_KLOG_PREFIX.sub("", ln).strip() for ln in (text or "").splitlines()]
            errors = [ln for ln in lines if ln and _ERROR_LINE.search(ln)]
            if errors:
                parts.append(errors[-1][:300])
                break
        if parts:
            break
    return "; ".join(parts)


def list_trials(api, name: str, namespace: str) -> list[dict[str, Any]]:
    """The Experiment's Trial objects, oldest first."""
    items = api.list_namespaced_custom_object(
        GROUP, VERSION, namespace, TRIALS, label_selector=f"{EXPERIMENT_LABEL}={name}"
    ).get("items", [])
    return sorted(
        items, key=lambda t: (t["metadata"].get("creationTimestamp") or "", t["metadata"]["name"])
    )


def _duration(status: Mapping[str, Any]) -> float | None:
    start, end = status.get("startTime"), status.get("completionTime")
    if not (start and end):
        return None
    parse = lambda s: datetime.fromisoformat(str(s).replace("Z", "+00:00"))  # noqa: E731
    return (parse(end) - parse(start)).total_seconds()


def collect_result(api, experiment: Mapping[str, Any], core_api=None) -> SweepResult:
    """The trials table and the current optimal trial of a (finished) Experiment."""
    meta, spec = experiment["metadata"], experiment["spec"]
    name, ns = meta["name"], meta["namespace"]
    obj = api.get_namespaced_custom_object(GROUP, VERSION, ns, EXPERIMENTS, name)
    objective = spec["objective"]
    metric = objective["objectiveMetricName"]
    extra = list(objective.get("additionalMetricNames") or [])
    default = "max" if objective.get("type") == "maximize" else "min"
    strategies = {s["name"]: s["value"] for s in objective.get("metricStrategies") or []}
    ptypes = {p["name"]: p.get("parameterType", "categorical") for p in spec.get("parameters", [])}

    rows, failed = [], []
    for number, trial in enumerate(list_trials(api, name, ns)):
        tname = trial["metadata"]["name"]
        status = trial.get("status") or {}
        metrics = (status.get("observation") or {}).get("metrics") or []
        state, reason = _trial_state(trial)
        if state in ("failed", "metrics_unavailable") and core_api is not None:
            detail = _pod_failure(core_api, ns, tname)
            reason = f"{reason}; {detail}" if reason and detail else reason or detail
        if state == "metrics_unavailable" and not reason:
            reason = f"no {metric}= line in the trial's output"
        row = {
            "number": number,
            "name": tname,
            **{
                a["name"]: _typed(ptypes.get(a["name"], ""), a.get("value"))
                for a in (trial.get("spec") or {}).get("parameterAssignments") or []
            },
            "value": _metric_value(metrics, metric, strategies.get(metric, default)),
            "steps": None,
            "state": state,
            "reason": reason,
            "duration_s": _duration(status),
        }
        row.update({m: _metric_value(metrics, m, strategies.get(m, "latest")) for m in extra})
        rows.append(row)
        if state in ("failed", "metrics_unavailable"):
            failed.append(FailedTrial(tname, reason or state))

    optimal = (obj.get("status") or {}).get("currentOptimalTrial") or {}
    best = optimal.get("bestTrialName") or None
    params = {
        a["name"]: _typed(ptypes.get(a["name"], ""), a.get("value"))
        for a in optimal.get("parameterAssignments") or []
    }
    value = _metric_value(
        (optimal.get("observation") or {}).get("metrics") or [],
        metric,
        strategies.get(metric, default),
    )
    return SweepResult(
        params=params if best else {},
        value=value if best else None,
        trials=trials_frame(rows, list(ptypes), extra),
        failed=failed,
        metric=metric,
        backend="katib",
        best_trial=best,
        experiment=f"{ns}/{name}",
    )


class SweepTimeout(DocsortError):
    """The Experiment did not finish in time; it is left running for the Katib UI."""


def run_experiment(
    api,
    experiment: Mapping[str, Any],
    timeout_s: float = 6 * 3600,
    poll_s: float = 15.0,
    core_api=None,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> SweepResult:
    """Create ``experiment``, poll until Succeeded or Failed, return the best parameters.

    The Experiment and its trials are never deleted (the Katib UI shows them). A
    Failed Experiment (more than ``maxFailedTrialCount`` failed trials) raises
    :class:`~docsort.sweep.sweep.SweepFailed` naming the failed trials and why, with the
    trials table in ``.result``; no result in ``timeout_s`` raises :class:`SweepTimeout`.
    """
    import urllib3
    from kubernetes.client.exceptions import ApiException

    V1beta1Experiment.from_dict(dict(experiment))  # a malformed body fails before the API call
    meta = experiment["metadata"]
    name, ns = meta["name"], meta["namespace"]
    submit_experiment(api, experiment)
    deadline = clock() + timeout_s
    obj: Mapping[str, Any] = {}
    while True:
        try:
            obj = api.get_namespaced_custom_object(GROUP, VERSION, ns, EXPERIMENTS, name)
        except ApiException as exc:
            # An API server restart must not end a sweep that runs for hours.
            if exc.status is not None and exc.status < 500:
                raise _api_error(exc, f"reading Katib experiment {ns}/{name}") from None
            log.warning("polling %s/%s: HTTP %s, retrying", ns, name, exc.status)
        except (OSError, urllib3.exceptions.HTTPError) as exc:  # connection refused/reset
            log.warning("polling %s/%s: %s, retrying", ns, name, type(exc).__name__)
        true = _true_conditions(obj)
        done = next((c for c in ("Succeeded", "Failed") if c in true), None)
        if done:
            break
        if clock() >= deadline:
            last = next(iter(reversed((obj.get("status") or {}).get("conditions") or [])), {})
            raise SweepTimeout(
                f"Katib experiment {ns}/{name} did not finish within {timeout_s:g}s "
                f"(last condition: {last.get('type', 'none')}); it is left running for the Katib UI "
                f"(kubectl -n {ns} get experiment {name})"
            )
        sleep(poll_s)
    result = collect_result(api, experiment, core_api)
    cond = true[done]
    if done == "Failed":
        raise SweepFailed(
            f"Katib experiment {ns}/{name} failed ({cond.get('reason', '')}: {cond.get('message', '')}); "
            f"{len(result.failed)} failed trials: {describe_failures(result.failed) or 'none listed'}",
            result,
        )
    if result.best_trial is None:
        raise SweepFailed(
            f"Katib experiment {ns}/{name} succeeded ({cond.get('reason', '')}) but no trial reported "
            f"{result.metric}",
            result,
        )
    log.info(
        "Katib experiment %s/%s: best %s=%s %s",
        ns,
        name,
        result.metric,
        result.value,
        result.params,
    )
    return result
