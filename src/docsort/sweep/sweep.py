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

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import yaml

from docsort.core import storage
from docsort.core.errors import ConfigError
from docsort.core.outputs import stage
from docsort.sweep.local import default_command, run_local_sweep
from docsort.sweep.results import (
    SweepFailed,
    SweepResult,
    read_trial_record,
    reusable_model,
    write_outputs,
)

# The sweep API in one place; the parts live in search_space, sweep_results and sweep_local.
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
    "sweep_wait_s",
    "trial_overrides",
    "write_outputs",
]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- katib backend


def dry_run_yaml(
    data_uri: str,
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
    from docsort.sweep import katib

    sp = with_pod(with_trials(load_space(space), n_trials), pod, gpu)
    if check_config:
        check_space_against_config(sp, fixed_overrides)
    exp = katib.build_experiment(
        sp,
        name=name,
        namespace=namespace,
        data_uri=data_uri,
        image=image,
        fixed_overrides=fixed_overrides,
        gpu=gpu,
        image_pull_policy=(pod or {}).get("image_pull_policy"),
        image_pull_secrets=(pod or {}).get("image_pull_secrets") or (),
        trials_uri=trials_uri,
    )
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


@stage("sweep", inputs=("data_uri",), folder="out_dir", mode="add")
def run_katib_sweep(
    data_uri: str,
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

    sp = with_pod(with_trials(load_space(space), n_trials), pod, gpu)
    if check_config:
        check_space_against_config(sp, fixed_overrides)
    exp = katib.build_experiment(
        sp,
        name=name,
        namespace=namespace,
        data_uri=data_uri,
        image=image,
        fixed_overrides=fixed_overrides,
        gpu=gpu,
        image_pull_policy=(pod or {}).get("image_pull_policy"),
        image_pull_secrets=(pod or {}).get("image_pull_secrets") or (),
        trials_uri=trials_uri,
    )
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
    data: str,
    space: str | os.PathLike | Mapping[str, Any] | SearchSpace,
    out_dir: str | os.PathLike,
    *,
    backend: str = "local",
    fixed_overrides: Sequence[str] = (),
    **kwargs: Any,
) -> SweepResult:
    """The sweep stage: ``backend="local"`` (Optuna) or ``"katib"`` (cluster), same outputs."""
    if backend == "local":
        return run_local_sweep(data, space, out_dir, fixed_overrides=fixed_overrides, **kwargs)
    if backend == "katib":
        return run_katib_sweep(data, space, out_dir, fixed_overrides=fixed_overrides, **kwargs)
    raise ConfigError(f"unknown sweep backend {backend!r}; choose from ['katib', 'local']")


# --------------------------------------------------------------------------- deadlines


def _experiment(space: Any, n_trials: int | None) -> dict[str, Any]:
    from docsort.sweep import katib

    # Only the counts and the trial deadline matter here; placeholders fill the rest.
    return katib.build_experiment(
        with_trials(load_space(space), n_trials), namespace="x", data_uri="s3://x/x", name="x"
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


def check_pipeline_params(
    params: Mapping[str, Any], pod_deadline_s: int | None | str = "profile"
) -> None:
    """Compile/submit check of a pipeline with a sweep step (inputs ``space``, ``n_trials``,
    ``sweep_timeout_s``, as in pipelines/sweep.py; others pass): the step's wait covers the
    Experiment's worst case, and the step's pod deadline (default: the active k8s profile's
    ``components.sweep.timeout_s``) covers the wait."""
    if "space" not in params or "sweep_timeout_s" not in params:
        return
    if str(params.get("backend", "auto")) == "local":
        return
    if pod_deadline_s == "profile":
        from docsort.components import k8s

        pod_deadline_s = int(k8s.task_settings("sweep")["timeout_s"] or 0) or None
    wait = sweep_wait_s(
        str(params["space"]), int(params.get("n_trials") or 0) or None, params["sweep_timeout_s"]
    )
    if pod_deadline_s and pod_deadline_s < wait:
        raise ConfigError(
            f"the sweep step's pod deadline ({pod_deadline_s}s, k8s profile components.sweep."
            f"timeout_s) is shorter than its wait for the Experiment ({wait:g}s, space="
            f"{params['space']}): raise it to >= {wait:g}s or use fewer trials"
        )
