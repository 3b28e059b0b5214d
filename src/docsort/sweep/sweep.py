"""Sweep stage: one search-space YAML, run as a Katib Experiment or a local Optuna study.

The search space (``conf/hpo/<name>.yaml``) names Hydra override keys of
``docsort train``. On a cluster :mod:`docsort.sweep.katib` turns it into a Katib
Experiment; locally :func:`run_local_sweep` runs the same trials as
``docsort train`` subprocesses, reads the same ``name=value`` metric lines with
the same regex as Katib's StdOut collector, prunes with a median rule configured
like Katib's ``medianstop`` and stops on ``max_failed_trial_count`` with Katib's
rule. Both backends return a :class:`SweepResult` and write ``trials.csv`` and
``best.json``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from docsort.core import storage
from docsort.core.errors import ConfigError, DocsortError
from docsort.core.outputs import stage
from docsort.sweep.local import default_command, run_local_sweep
from docsort.sweep.results import (
    BEST_OVERRIDES,
    SweepFailed,
    SweepResult,
    read_trial_record,
    reusable_model,
    write_outputs,
)

# The sweep API in one place; the parts live in search_space, results and local.
from docsort.sweep.search_space import (
    METRICS_FORMAT,
    SearchSpace,
    check_space_against_config,
    list_spaces,
    load_space,
    override_key,
    parse_metric_line,
    trial_overrides,
)

__all__ = [
    "METRICS_FORMAT",
    "SearchSpace",
    "SweepFailed",
    "SweepResult",
    "SweepStep",
    "check_space_against_config",
    "default_command",
    "dry_run_yaml",
    "list_spaces",
    "load_space",
    "override_key",
    "parse_metric_line",
    "reusable_model",
    "run_katib_sweep",
    "run_local_sweep",
    "run_sweep",
    "sweep_step",
    "sweep_wait_s",
    "trial_overrides",
    "write_outputs",
]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- katib backend


def _katib_experiment(
    prepared: str,
    space: str | os.PathLike | Mapping[str, Any] | SearchSpace,
    *,
    name: str | None,
    namespace: str,
    image: str | None,
    fixed_overrides: Sequence[str],
    gpu: int | None,
    check_config: bool,
    n_trials: int | None,
    pod: Mapping[str, Any] | None,
    trials_uri: str | None,
) -> dict[str, Any]:
    """The Experiment both the dry run and the real run send: space capped and podded, checked."""
    from docsort.sweep import katib

    sp = with_pod(with_trials(load_space(space), n_trials), pod, gpu)
    if check_config:
        check_space_against_config(sp, fixed_overrides)
    return katib.build_experiment(
        sp,
        name=name,
        namespace=namespace,
        prepared=prepared,
        image=image,
        fixed_overrides=fixed_overrides,
        gpu=gpu,
        image_pull_policy=(pod or {}).get("image_pull_policy"),
        image_pull_secrets=(pod or {}).get("image_pull_secrets") or (),
        trials_uri=trials_uri,
    )


def dry_run_yaml(
    prepared: str,
    space: str | os.PathLike | Mapping[str, Any] | SearchSpace = "default",
    *,
    name: str | None = None,
    namespace: str = "",
    image: str | None = None,
    fixed_overrides: Sequence[str] = (),
    gpu: int | None = None,
    check_config: bool = True,
    n_trials: int | None = None,
    pod: Mapping[str, Any] | None = None,
    trials_uri: str | None = None,
) -> str:
    """The Katib Experiment for ``docsort sweep DATA --backend katib --dry-run``, as YAML."""
    exp = _katib_experiment(prepared, space, name=name, namespace=namespace, image=image,
                            fixed_overrides=fixed_overrides, gpu=gpu, check_config=check_config,
                            n_trials=n_trials, pod=pod, trials_uri=trials_uri)  # fmt: skip
    return yaml.safe_dump(exp, sort_keys=False, default_flow_style=False, width=1000)


def with_trials(space: SearchSpace, n_trials: int | None) -> SearchSpace:
    """``space`` capped at ``n_trials`` trials (its parallel and failure limits shrink with it)."""
    if n_trials is None:
        return space
    if n_trials < 1:
        raise ConfigError(f"the number of trials must be >= 1, got {n_trials}")
    return replace(
        space,
        max_trial_count=n_trials,
        parallel_trial_count=min(space.parallel_trial_count, n_trials),
        max_failed_trial_count=min(space.max_failed_trial_count, n_trials),
    )


def with_pod(
    space: SearchSpace, pod: Mapping[str, Any] | None, gpu: int | None = None
) -> SearchSpace:
    """GPU trials that name no node pool of their own go to ``pod``'s pool.

    ``pod`` is :func:`docsort.components.k8s.trial_pod` of the k8s profile, so
    Katib trials and the pipeline's GPU tasks land on the same nodes.
    """
    gpus = space.trial.gpu if gpu is None else gpu
    if not pod or not gpus or space.trial.node_selector or space.trial.tolerations:
        return space
    trial = replace(
        space.trial,
        node_selector={str(k): str(v) for k, v in (pod.get("node_selector") or {}).items()},
        tolerations=tuple(dict(t) for t in pod.get("tolerations") or ()),
    )
    return replace(space, trial=trial)


@stage("sweep", inputs=("prepared",), folder="out_dir", mode="add")
def run_katib_sweep(
    prepared: str,
    space: str | os.PathLike | Mapping[str, Any] | SearchSpace,
    out_dir: str | os.PathLike,
    *,
    name: str | None = None,
    namespace: str = "",
    image: str | None = None,
    fixed_overrides: Sequence[str] = (),
    gpu: int | None = None,
    timeout_s: float | None = None,
    poll_s: float = 15.0,
    api=None,
    core_api=None,
    kubeconfig: str | None = None,
    check_config: bool = True,
    n_trials: int | None = None,
    pod: Mapping[str, Any] | None = None,
    trials_uri: str | None = None,
) -> SweepResult:
    """Create the Katib Experiment, wait for it, write ``trials.csv``/``best.json``.

    ``api``/``core_api`` default to clients from the in-cluster service account or
    ``kubeconfig``. ``n_trials`` caps the space's trial count; ``pod`` (node pool,
    pull policy) comes from the k8s profile. ``timeout_s`` defaults to the
    Experiment's worst case (:func:`docsort.sweep.katib.worst_case_s`). With
    ``trials_uri`` (``s3://.../trials``) each trial keeps its member there and
    ``best.json`` names the best one. On failure :class:`SweepFailed` still
    leaves ``trials.csv``.
    """
    from docsort.sweep import katib

    exp = _katib_experiment(prepared, space, name=name, namespace=namespace, image=image,
                            fixed_overrides=fixed_overrides, gpu=gpu, check_config=check_config,
                            n_trials=n_trials, pod=pod, trials_uri=trials_uri)  # fmt: skip
    if not timeout_s:
        timeout_s = katib.worst_case_s(exp) or 6 * 3600
    if not trials_uri:
        log.warning("no s3:// output for the trials: their members stay in their pods' /tmp")
    if api is None:
        api, core_api = katib.connect(kubeconfig)
    try:
        result = katib.run_experiment(
            api, exp, timeout_s=timeout_s, poll_s=poll_s, core_api=core_api
        )
    except SweepFailed as exc:
        if exc.result is not None:
            write_outputs(exc.result, out_dir, best=False)
        raise
    if trials_uri and result.best_trial:
        uri = storage.join(trials_uri, result.best_trial)
        run = read_trial_record(uri)
        if run is None:  # stopped early or killed: its pod never kept the member
            log.info("best trial %s left no member under %s", result.best_trial, uri)
        else:
            result.model_uri, result.model_record = uri, run
    write_outputs(result, out_dir)
    return result


def run_sweep(
    prepared: str,
    space: str | os.PathLike | Mapping[str, Any] | SearchSpace,
    out_dir: str | os.PathLike,
    *,
    backend: str = "local",
    fixed_overrides: Sequence[str] = (),
    **kwargs: Any,
) -> SweepResult:
    """The sweep stage: ``backend="local"`` (Optuna) or ``"katib"`` (cluster), same outputs."""
    if backend == "local":
        return run_local_sweep(prepared, space, out_dir, fixed_overrides=fixed_overrides, **kwargs)
    if backend == "katib":
        return run_katib_sweep(prepared, space, out_dir, fixed_overrides=fixed_overrides, **kwargs)
    raise ConfigError(f"unknown sweep backend {backend!r}; choose from ['katib', 'local']")


# --------------------------------------------------------------------------- the pipeline step

#: Env of the pipeline's sweep task: JSON pod settings for its Katib trials
#: (set by :func:`docsort.components.k8s.apply` as ``k8s.TRIAL_POD_ENV``).
TRIAL_POD_ENV = "DOCSORT_TRIAL_POD"


@dataclass
class SweepStep:
    """What the pipeline's sweep step found: the result, the best config and what to log."""

    result: SweepResult
    #: The best trial's overrides without ``fold`` (fixed overrides included), as written to ``best_overrides.txt``.
    best_overrides: list[str]
    metrics: dict[str, float]
    metadata: dict[str, str]


def _s3(uri: str) -> str:
    """KFP names MinIO artifacts ``minio://``; boto3 and the trials read them as ``s3://``."""
    return uri.replace("minio://", "s3://", 1)


def sweep_step(
    prepared: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    prepared_uri: str = "",
    out_uri: str = "",
    space: str = "default",
    backend: str = "auto",
    n_trials: int = 0,
    fixed_overrides: Sequence[str] = (),
    namespace: str = "",
    timeout_s: float = 0,
) -> SweepStep:
    """The pipeline's sweep step: run the sweep, then write ``best_overrides.txt`` beside its outputs.

    ``prepared``/``out_dir`` are the task's local paths, ``prepared_uri``/``out_uri`` the
    same artifacts' URIs. ``auto`` picks Katib inside a Kubernetes pod and the local twin
    elsewhere (kfp.local). Katib trials read the prepared data by its S3 URI and keep
    their members beside the result (``<task output>/trials/<trial>/``, so the result
    stays small for the steps that download it). ``n_trials``/``timeout_s``: 0 = the
    space's count and the Experiment's worst case; a shorter wait is refused before the
    Experiment is created.
    """
    if backend == "auto":
        backend = "katib" if os.environ.get("KUBERNETES_SERVICE_HOST") else "local"
    fixed = list(fixed_overrides)
    if backend == "katib":
        uri = _s3(str(prepared_uri))
        if not uri.startswith("s3://"):
            raise DocsortError(
                f"Katib trials read the prepared data from S3, but it is at {uri}: use an s3:// pipeline root"
            )
        pod = json.loads(os.environ.get(TRIAL_POD_ENV) or "{}")
        wait = sweep_wait_s(space, n_trials or None, timeout_s)  # refuses one too short for it
        result_uri = _s3(str(out_uri)).rstrip("/")
        trials = (
            result_uri.rsplit("/", 1)[0] + "/trials" if result_uri.startswith("s3://") else None
        )
        found = run_sweep(uri, space, out_dir, backend="katib", fixed_overrides=fixed, namespace=namespace,
                          timeout_s=wait, n_trials=n_trials or None, pod=pod, trials_uri=trials)  # fmt: skip
    else:
        found = run_sweep(prepared, space, out_dir, backend=backend, fixed_overrides=fixed,
                          n_trials=n_trials or None, timeout_s=timeout_s or None)  # fmt: skip
    best = [
        o
        for o in trial_overrides(load_space(space), fixed, found.overrides)
        if override_key(o) != "fold"
    ]
    (Path(out_dir) / BEST_OVERRIDES).write_text(" ".join(best) + "\n")
    metrics = {f"best_{found.metric}": float(found.value)}
    states = found.trials["state"].value_counts().to_dict()
    for state in ("succeeded", "pruned", "failed"):
        metrics[f"trials_{state}"] = int(states.get(state, 0))
    metadata = {
        "backend": found.backend,
        "experiment": found.experiment or "",
        "best_overrides": " ".join(best),
    }
    return SweepStep(found, best, metrics, metadata)


# --------------------------------------------------------------------------- deadlines


def _experiment(space: Any, n_trials: int | None) -> dict[str, Any]:
    from docsort.sweep import katib

    # Only the counts and the trial deadline matter here; placeholders fill the rest.
    return katib.build_experiment(
        with_trials(load_space(space), n_trials), namespace="x", prepared="s3://x/x", name="x"
    )


def sweep_wait_s(space: Any, n_trials: int | None, timeout_s: float | None = None) -> float:
    """How long the sweep step waits for its Experiment: ``timeout_s``, or 0/None for its worst
    case; refused (one line with the numbers) when shorter than that worst case."""
    from docsort.sweep import katib

    exp = _experiment(space, n_trials)
    if not timeout_s:
        worst = katib.worst_case_s(exp)
        if worst is None:
            katib.check_wait(exp, 0)  # raises: no trial deadline, no worst case
        return float(worst)
    katib.check_wait(exp, float(timeout_s), "the sweep step (sweep_timeout_s)")
    return float(timeout_s)
