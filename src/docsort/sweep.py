"""Sweep stage: one search-space YAML, run as a Katib Experiment or a local Optuna study.

The search space (``conf/hpo/<name>.yaml``) names Hydra override keys of
``docsort train``. On a cluster :mod:`docsort.katib` turns it into a Katib
Experiment; locally :func:`run_local_sweep` runs the same trials as
``docsort train`` subprocesses, reads the same ``name=value`` metric lines with
the same regex as Katib's StdOut collector, prunes with a median rule configured
like Katib's ``medianstop`` and stops on ``max_failed_trial_count`` with Katib's
rule. Both backends return a :class:`SweepResult` and write ``trials.csv`` and
``best.json``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from docsort.atomic import write_text_atomic
from docsort.errors import ConfigError, DocsortError

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- metric lines

#: Regex for the metric lines ``docsort train`` prints (``val_macro_f1=0.8312``), used
#: verbatim as Katib's StdOut ``metricsFormat`` and by the local twin. Written for both
#: Go RE2 and Python ``re``: group 1 is the name, group 2 the value (Katib requires two
#: top groups). Anchored to the whole line so that progress bars that happen to contain
#: ``val_macro_f1=0.51`` (Lightning's tqdm postfix) are not counted twice; an optional
#: RFC 3339 timestamp prefix is allowed because Katib's median stop orders reports by it.
METRICS_FORMAT = (
    r"^(?:[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]+(?:Z|[+-][0-9]{2}:?[0-9]{2})? )?"
    r"([A-Za-z_][A-Za-z0-9_.-]*)=([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)\s*$"
)
METRIC_RE = re.compile(METRICS_FORMAT)


def parse_metric_line(line: str) -> tuple[str, float] | None:
    """``("val_loss", 0.51)`` for a metric line, else ``None`` (same rule as Katib)."""
    m = METRIC_RE.match(line.rstrip("\n"))
    return (m.group(1), float(m.group(2))) if m else None


# --------------------------------------------------------------------------- search space

ALGORITHMS: dict[str, frozenset[str]] = {
    # Katib algorithm name -> the algorithmSettings Katib accepts for it.
    "random": frozenset({"random_state"}),
    "grid": frozenset({"random_state"}),
    "tpe": frozenset({"n_startup_trials", "n_ei_candidates", "random_state"}),
    "multivariate-tpe": frozenset({"n_startup_trials", "n_ei_candidates", "random_state"}),
    "cmaes": frozenset({"random_state", "sigma", "restart_strategy"}),
    "bayesianoptimization": frozenset(
        {"base_estimator", "n_initial_points", "acq_func", "acq_optimizer", "random_state"}
    ),
    "hyperband": frozenset({"resource_name", "eta", "r_l"}),
}
EARLY_STOPPING: dict[str, frozenset[str]] = {
    "medianstop": frozenset({"min_trials_required", "start_step"}),
}
PARAM_TYPES = ("double", "int", "categorical")
OBJECTIVE_TYPES = ("maximize", "minimize")
STRATEGIES = ("max", "min", "latest")
IMAGE_VARIANTS = ("cpu", "gpu")
# Values end up in a shell command line inside the trial pod (Katib wraps the command in
# `sh -c`), so categorical choices are restricted to characters that need no quoting.
_SAFE_VALUE = re.compile(r"^[A-Za-z0-9_.:/@+-]+$")
_HYDRA_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*(?:\.[A-Za-z_][A-Za-z0-9_-]*)*$")
_OVERRIDE = re.compile(r"^(\+{0,2}|~)([A-Za-z_][A-Za-z0-9_./@-]*)(=.*)?$")
_CPU_QTY = re.compile(r"^[0-9]+(?:\.[0-9]+)?m?$")
_MEM_QTY = re.compile(r"^[0-9]+(?:\.[0-9]+)?(?:[KMGTPE]i?)?$")
_TABLE_COLUMNS = {"number", "name", "value", "state", "reason", "steps", "duration_s"}

_TOP_KEYS = {
    "description",
    "objective",
    "algorithm",
    "early_stopping",
    "max_trial_count",
    "parallel_trial_count",
    "max_failed_trial_count",
    "parameters",
    "overrides",
    "trial",
}
_TRIAL_KEYS = {
    "image",
    "gpu",
    "cpu",
    "memory",
    "nodes",
    "shm",
    "timeout_s",
    "node_selector",
    "tolerations",
}


@dataclass(frozen=True)
class Param:
    """One searched Hydra override: ``name`` is the key (``train.lr``)."""

    name: str
    type: str
    min: float | int | None = None
    max: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[str, ...] = ()

    def format(self, value: Any) -> str:
        """The value as it appears on the command line (``train.lr=0.001``)."""
        return f"{self.name}={format_value(value)}"


@dataclass(frozen=True)
class TrialResources:
    """Where and how big each trial runs on a cluster (ignored by the local twin)."""

    image: str = "cpu"
    gpu: int = 0
    cpu: str = "2"
    memory: str = "8Gi"
    nodes: int = 1
    shm: str = "2Gi"
    timeout_s: int | None = None
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()


@dataclass(frozen=True)
class SearchSpace:
    """A validated search space; build with :func:`load_space`."""

    name: str
    metric: str
    objective_type: str
    goal: float | None
    additional_metrics: tuple[str, ...]
    strategies: Mapping[str, str]
    algorithm: str
    algorithm_settings: Mapping[str, str]
    early_stopping: str | None
    early_stopping_settings: Mapping[str, int]
    max_trial_count: int
    parallel_trial_count: int
    max_failed_trial_count: int
    parameters: tuple[Param, ...]
    overrides: tuple[str, ...] = ()
    trial: TrialResources = field(default_factory=TrialResources)
    description: str = ""

    @property
    def maximize(self) -> bool:
        return self.objective_type == "maximize"

    @property
    def strategy(self) -> str:
        """How a trial's objective reports become its value (max, min or latest)."""
        return self.strategies[self.metric]

    def param(self, name: str) -> Param:
        return next(p for p in self.parameters if p.name == name)


def format_value(value: Any) -> str:
    """Render a parameter value for a Hydra override (bools lower-case, floats exact)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def list_spaces() -> list[str]:
    """Names of the search spaces shipped in ``docsort/conf/hpo``."""
    folder = resources.files("docsort").joinpath("conf/hpo")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_space(space: str | os.PathLike | Mapping[str, Any] | SearchSpace) -> SearchSpace:
    """Load and validate a search space: a shipped name, a YAML path, or a dict.

    Every problem raises :class:`ConfigError` before any trial starts, naming the
    field and listing the valid choices.
    """
    if isinstance(space, SearchSpace):
        return space
    if isinstance(space, Mapping):
        return _parse_space(
            dict(space), name=str(space.get("name", "custom")), where="search space"
        )
    text_name = os.fspath(space)
    path = Path(text_name)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError("search space file not found", file=text_name)
        raw, name, where = path.read_text(encoding="utf-8"), path.stem, text_name
    else:
        shipped = list_spaces()
        if text_name not in shipped:
            raise ConfigError(
                f"unknown search space {text_name!r}; choose from {shipped} or give a YAML path"
            )
        raw = resources.files("docsort").joinpath(f"conf/hpo/{text_name}.yaml").read_text("utf-8")
        name, where = text_name, f"hpo/{text_name}.yaml"
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {exc}", file=where) from None
    if not isinstance(data, dict):
        raise ConfigError("a search space must be a mapping", file=where)
    return _parse_space(data, name=name, where=where)


def _bad(where: str, msg: str) -> ConfigError:
    return ConfigError(msg, file=where)


def _number(where: str, key: str, value: Any, *, integer: bool = False) -> float | int:
    # YAML 1.1 reads `1e-4` (no dot) as a string; accept any numeric text.
    if isinstance(value, bool) or value is None:
        raise _bad(where, f"{key} must be a number, got {value!r}")
    try:
        num = float(value)
    except (TypeError, ValueError):
        raise _bad(where, f"{key} must be a number, got {value!r}") from None
    if not math.isfinite(num):
        raise _bad(where, f"{key} must be finite, got {value!r}")
    if integer:
        if not num.is_integer():
            raise _bad(where, f"{key} must be an integer, got {value!r}")
        return int(num)
    return num


def _count(where: str, key: str, value: Any, minimum: int) -> int:
    num = _number(where, key, value, integer=True)
    if num < minimum:
        raise _bad(where, f"{key} must be >= {minimum}, got {num}")
    return int(num)


def _unknown_keys(where: str, section: str, given: Iterable[str], valid: Iterable[str]) -> None:
    extra = sorted(set(given) - set(valid))
    if extra:
        raise _bad(where, f"unknown key(s) {extra} in {section}; valid keys: {sorted(valid)}")


def _parse_param(where: str, i: int, raw: Any) -> Param:
    if not isinstance(raw, dict) or "name" not in raw:
        raise _bad(where, f"parameters[{i}] must be a mapping with a name")
    name = raw["name"]
    at = f"parameter {name!r}"
    if not isinstance(name, str) or not _HYDRA_KEY.match(name):
        raise _bad(where, f"parameters[{i}]: name must be a Hydra key like train.lr, got {name!r}")
    if name in _TABLE_COLUMNS:
        raise _bad(where, f"{at}: name is reserved for the trials table")
    if name.startswith("data.") or name == "fold":
        # data.* shapes the prepared image cache; a trial cannot change it.
        raise _bad(where, f"{at}: data.* and fold are fixed by prepare; pass them as overrides")
    ptype = raw.get("type")
    if ptype not in PARAM_TYPES:
        raise _bad(where, f"{at}: unknown type {ptype!r}; choose from {list(PARAM_TYPES)}")
    if ptype == "categorical":
        _unknown_keys(where, at, raw, {"name", "type", "list"})
        choices = raw.get("list")
        if not isinstance(choices, list) or not choices:
            raise _bad(where, f"{at}: categorical needs a non-empty list")
        values = tuple(format_value(c) for c in choices)
        if len(set(values)) != len(values):
            raise _bad(where, f"{at}: list has duplicates: {list(values)}")
        for v in values:
            if not _SAFE_VALUE.match(v):
                raise _bad(where, f"{at}: choice {v!r} may only use letters, digits and _.:/@+-")
        return Param(name=name, type=ptype, choices=values)
    _unknown_keys(where, at, raw, {"name", "type", "min", "max", "log", "step"})
    integer = ptype == "int"
    if "min" not in raw or "max" not in raw:
        raise _bad(where, f"{at}: {ptype} needs min and max")
    lo = _number(where, f"{at} min", raw["min"], integer=integer)
    hi = _number(where, f"{at} max", raw["max"], integer=integer)
    if lo >= hi:
        raise _bad(where, f"{at}: min ({lo}) must be < max ({hi})")
    use_log = raw.get("log", False)
    if not isinstance(use_log, bool):
        raise _bad(where, f"{at}: log must be true or false")
    if use_log and lo <= 0:
        raise _bad(where, f"{at}: log scale needs min > 0, got {lo}")
    step = raw.get("step")
    if step is not None:
        step = _number(where, f"{at} step", step, integer=integer)
        if step <= 0 or step > hi - lo:
            raise _bad(where, f"{at}: step must be in (0, max - min], got {step}")
        if use_log:
            raise _bad(where, f"{at}: step and log cannot be combined")
    return Param(name=name, type=ptype, min=lo, max=hi, log=use_log, step=step)


def _parse_trial(where: str, raw: Any) -> TrialResources:
    if raw is None:
        return TrialResources()
    if not isinstance(raw, dict):
        raise _bad(where, "trial must be a mapping")
    _unknown_keys(where, "trial", raw, _TRIAL_KEYS)
    image = raw.get("image", "cpu")
    if image not in IMAGE_VARIANTS:
        raise _bad(
            where, f"trial.image: unknown variant {image!r}; choose from {list(IMAGE_VARIANTS)}"
        )
    gpu = _count(where, "trial.gpu", raw.get("gpu", 0), 0)
    if gpu and image != "gpu":
        raise _bad(where, "trial.gpu > 0 needs trial.image: gpu (the cpu image has no CUDA)")
    cpu = str(raw.get("cpu", "2"))
    if not _CPU_QTY.match(cpu):
        raise _bad(
            where, f"trial.cpu must be a Kubernetes CPU quantity like 4 or 500m, got {cpu!r}"
        )
    qty = {}
    for key, default in (("memory", "8Gi"), ("shm", "2Gi")):
        qty[key] = str(raw.get(key, default))
        if not _MEM_QTY.match(qty[key]):
            raise _bad(where, f"trial.{key} must be a memory quantity like 16Gi, got {qty[key]!r}")
    timeout = raw.get("timeout_s")
    timeout = None if timeout is None else _count(where, "trial.timeout_s", timeout, 1)
    selector = raw.get("node_selector") or {}
    tolerations = raw.get("tolerations") or []
    if not isinstance(selector, dict) or not isinstance(tolerations, list):
        raise _bad(where, "trial.node_selector must be a mapping and trial.tolerations a list")
    return TrialResources(
        image=image,
        gpu=gpu,
        cpu=cpu,
        memory=qty["memory"],
        nodes=_count(where, "trial.nodes", raw.get("nodes", 1), 1),
        shm=qty["shm"],
        timeout_s=timeout,
        node_selector={str(k): str(v) for k, v in selector.items()},
        tolerations=tuple(dict(t) for t in tolerations),
    )


def _parse_space(data: dict[str, Any], *, name: str, where: str) -> SearchSpace:
    data = {k: v for k, v in data.items() if k != "name"}
    _unknown_keys(where, "the search space", data, _TOP_KEYS)

    obj = data.get("objective")
    if not isinstance(obj, dict):
        raise _bad(where, "objective is required (metric, type, goal, additional_metrics)")
    _unknown_keys(
        where,
        "objective",
        obj,
        {"metric", "type", "goal", "additional_metrics", "metric_strategies"},
    )
    metric = obj.get("metric", "val_macro_f1")
    otype = obj.get("type", "maximize")
    if otype not in OBJECTIVE_TYPES:
        raise _bad(where, f"objective.type: unknown {otype!r}; choose from {list(OBJECTIVE_TYPES)}")
    extra = tuple(obj.get("additional_metrics") or ())
    for m in (metric, *extra):
        if not isinstance(m, str) or not re.match(r"^[A-Za-z_][A-Za-z0-9_.-]*$", m):
            raise _bad(where, f"objective: metric names must be identifiers, got {m!r}")
    if metric in extra or len(set(extra)) != len(extra):
        raise _bad(where, "objective.additional_metrics must not repeat the objective metric")
    goal = obj.get("goal")
    goal = None if goal is None else float(_number(where, "objective.goal", goal))
    # Katib's metricStrategies: how one trial's reports become its value. The objective
    # defaults to its best report (Katib's default); other metrics to the latest one.
    raw_strategies = obj.get("metric_strategies") or {}
    if not isinstance(raw_strategies, dict):
        raise _bad(where, "objective.metric_strategies must map metric names to max/min/latest")
    _unknown_keys(where, "objective.metric_strategies", raw_strategies, (metric, *extra))
    strategies = {metric: "max" if otype == "maximize" else "min", **{m: "latest" for m in extra}}
    strategies.update(raw_strategies)
    for m, strat in strategies.items():
        if strat not in STRATEGIES:
            raise _bad(
                where,
                f"objective.metric_strategies.{m}: unknown {strat!r}; choose from {list(STRATEGIES)}",
            )

    raw_params = data.get("parameters")
    if not isinstance(raw_params, list) or not raw_params:
        raise _bad(where, "parameters must be a non-empty list")
    params = tuple(_parse_param(where, i, p) for i, p in enumerate(raw_params))
    names = [p.name for p in params]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise _bad(where, f"duplicate parameter names: {dupes}")

    alg = data.get("algorithm") or {}
    if not isinstance(alg, dict):
        raise _bad(where, "algorithm must be a mapping with name and settings")
    _unknown_keys(where, "algorithm", alg, {"name", "settings"})
    alg_name = alg.get("name", "random")
    if alg_name not in ALGORITHMS:
        raise _bad(where, f"algorithm.name: unknown {alg_name!r}; choose from {sorted(ALGORITHMS)}")
    settings = alg.get("settings") or {}
    if not isinstance(settings, dict):
        raise _bad(where, "algorithm.settings must be a mapping")
    _unknown_keys(where, f"algorithm.settings for {alg_name}", settings, ALGORITHMS[alg_name])
    settings = {str(k): format_value(v) for k, v in settings.items()}

    es = data.get("early_stopping")
    es_name, es_settings = None, {}
    if es is not None:
        if not isinstance(es, dict):
            raise _bad(where, "early_stopping must be a mapping with name and settings")
        _unknown_keys(where, "early_stopping", es, {"name", "settings"})
        es_name = es.get("name", "medianstop")
        if es_name not in EARLY_STOPPING:
            raise _bad(
                where,
                f"early_stopping.name: unknown {es_name!r}; choose from {sorted(EARLY_STOPPING)}",
            )
        raw_es = es.get("settings") or {}
        _unknown_keys(
            where, f"early_stopping.settings for {es_name}", raw_es, EARLY_STOPPING[es_name]
        )
        es_settings = {
            k: _count(where, f"early_stopping.settings.{k}", v, 1) for k, v in raw_es.items()
        }
        es_settings.setdefault("min_trials_required", 3)
        es_settings.setdefault("start_step", 4)

    max_trials = _count(where, "max_trial_count", data.get("max_trial_count", 12), 1)
    parallel = _count(where, "parallel_trial_count", data.get("parallel_trial_count", 1), 1)
    max_failed = _count(where, "max_failed_trial_count", data.get("max_failed_trial_count", 3), 0)
    if parallel > max_trials:
        raise _bad(
            where, f"parallel_trial_count ({parallel}) must be <= max_trial_count ({max_trials})"
        )
    if max_failed > max_trials:
        raise _bad(
            where,
            f"max_failed_trial_count ({max_failed}) must be <= max_trial_count ({max_trials})",
        )

    _check_algorithm(where, alg_name, settings, params, parallel, es_name)

    overrides = data.get("overrides") or []
    if not isinstance(overrides, list):
        raise _bad(where, "overrides must be a list of Hydra overrides like train.epochs=8")
    overrides = tuple(str(o) for o in overrides)
    check_overrides(overrides, params, where=where)

    return SearchSpace(
        name=name,
        metric=metric,
        objective_type=otype,
        goal=goal,
        additional_metrics=extra,
        strategies=strategies,
        algorithm=alg_name,
        algorithm_settings=settings,
        early_stopping=es_name,
        early_stopping_settings=es_settings,
        max_trial_count=max_trials,
        parallel_trial_count=parallel,
        max_failed_trial_count=max_failed,
        parameters=params,
        overrides=overrides,
        trial=_parse_trial(where, data.get("trial")),
        description=str(data.get("description", "")),
    )


def _check_algorithm(
    where: str,
    alg: str,
    settings: Mapping[str, str],
    params: Sequence[Param],
    parallel: int,
    early_stopping: str | None,
) -> None:
    """Rules Katib's suggestion services enforce, checked here so both backends agree."""
    if alg == "grid":
        for p in params:
            if p.type == "double" and p.step is None:
                raise _bad(where, f"grid needs a step for double parameter {p.name!r}")
            if p.log:
                raise _bad(
                    where, f"grid cannot sample {p.name!r} on a log scale; list values instead"
                )
    if alg == "cmaes" and all(p.type == "categorical" for p in params):
        raise _bad(where, "cmaes needs at least one double or int parameter")
    if alg == "hyperband":
        if early_stopping:
            raise _bad(where, "hyperband stops trials itself; remove early_stopping")
        missing = {"resource_name", "r_l"} - set(settings)
        if missing:
            raise _bad(where, f"hyperband needs algorithm.settings {sorted(missing)}")
        resource = settings["resource_name"]
        if resource not in {p.name for p in params if p.type == "int"}:
            ints = [p.name for p in params if p.type == "int"]
            raise _bad(
                where, f"hyperband resource_name must be an int parameter; choose from {ints}"
            )
        r_l = float(_number(where, "hyperband r_l", settings["r_l"]))
        eta = int(float(_number(where, "hyperband eta", settings.get("eta", 3))))
        if r_l <= 1 or eta < 2:
            raise _bad(where, "hyperband needs r_l > 1 and eta >= 2")
        need = math.ceil(eta ** int(math.log(r_l) / math.log(eta)))
        if parallel < need:
            raise _bad(
                where, f"hyperband with r_l={r_l:g}, eta={eta} needs parallel_trial_count >= {need}"
            )


def override_key(override: str) -> str:
    """``+train.lr=1`` -> ``train.lr``: the key an override sets."""
    m = _OVERRIDE.match(override)
    if not m or (m.group(3) is None and m.group(1) != "~"):
        raise ConfigError(f"not a Hydra override (key=value): {override!r}")
    return m.group(2)


def check_overrides(
    overrides: Sequence[str], params: Sequence[Param], *, where: str = "overrides"
) -> None:
    """Reject malformed overrides and ones that fix a key the space searches."""
    searched = {p.name for p in params}
    for o in overrides:
        try:
            key = override_key(o)
        except ConfigError as exc:
            raise _bad(where, str(exc)) from None
        if key in searched:
            raise _bad(where, f"{key} is both searched and fixed by override {o!r}")


def trial_overrides(
    space: SearchSpace, fixed_overrides: Sequence[str] = (), param_args: Sequence[str] = ()
) -> list[str]:
    """The override list of one trial: ``fold=0``, the space's, the caller's, then the params.

    A later override of the same key replaces an earlier one, so a caller can say
    ``fold=2`` or ``train.epochs=3`` without Hydra seeing the key twice.
    """
    check_overrides(fixed_overrides, space.parameters)
    merged: dict[str, str] = {}
    for o in ("fold=0", *space.overrides, *fixed_overrides, *param_args):
        key = override_key(o)
        merged.pop(key, None)
        merged[key] = o
    fold = merged["fold"].split("=", 1)[1]
    if not fold.isdigit():
        raise ConfigError(f"a sweep trial trains one fold; fold={fold} is not a fold index")
    return list(merged.values())


def representative_point(space: SearchSpace) -> dict[str, Any]:
    """A valid point of the space (each range's lower end, each list's first choice)."""
    return {p.name: p.choices[0] if p.type == "categorical" else p.min for p in space.parameters}


def check_space_against_config(space: SearchSpace, fixed_overrides: Sequence[str] = ()) -> None:
    """Compose the training config for points of the space, so a typo fails before any trial.

    Every categorical choice is composed once (e.g. each ``model=...`` must exist as a
    config group option); the numeric keys are checked at the representative point.
    """
    from docsort.config import load_config  # the Hydra compose entry point

    base = representative_point(space)
    points = [base] + [
        {**base, p.name: c}
        for p in space.parameters
        if p.type == "categorical"
        for c in p.choices[1:]
    ]
    for point in points:
        args = trial_overrides(
            space, fixed_overrides, [space.param(k).format(v) for k, v in point.items()]
        )
        try:
            load_config(args)
        except Exception as exc:  # Hydra raises many types; report them all as config errors
            raise ConfigError(
                f"search space {space.name!r} does not compose with the training config "
                f"({' '.join(args)}): {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
            ) from None


# --------------------------------------------------------------------------- results

#: Trial states in the trials table, for both backends (Katib's EarlyStopped is "pruned").
STATES = ("succeeded", "pruned", "failed", "metrics_unavailable", "killed", "running", "pending")


@dataclass
class FailedTrial:
    name: str
    reason: str


@dataclass
class SweepResult:
    """What a sweep found, the same for both backends.

    ``params`` maps Hydra keys to the best trial's values; ``trials`` has one row per
    trial (``number``, ``name``, one column per parameter, ``value``, additional
    metrics, ``steps``, ``state``, ``reason``); ``failed`` lists failed trials and why.
    """

    params: dict[str, Any]
    value: float | None
    trials: pd.DataFrame
    failed: list[FailedTrial]
    metric: str
    backend: str
    best_trial: str | None = None
    experiment: str | None = None

    @property
    def overrides(self) -> list[str]:
        """The best parameters as Hydra overrides for ``docsort train``."""
        return [f"{k}={format_value(v)}" for k, v in self.params.items()]

    def best_json(self) -> dict[str, Any]:
        states = self.trials["state"].value_counts().to_dict() if len(self.trials) else {}
        return {
            "metric": self.metric,
            "value": self.value,
            "params": self.params,
            "overrides": self.overrides,
            "best_trial": self.best_trial,
            "backend": self.backend,
            "experiment": self.experiment,
            "n_trials": len(self.trials),
            "states": {str(k): int(v) for k, v in states.items()},
            "failed": [{"name": f.name, "reason": f.reason} for f in self.failed],
        }


class SweepFailed(DocsortError):
    """The sweep stopped: too many failed trials, or none finished. ``result`` has the table."""

    def __init__(self, message: str, result: SweepResult | None = None):
        super().__init__(message)
        self.result = result


def describe_failures(failed: Sequence[FailedTrial], limit: int = 5) -> str:
    """One line naming failed trials and why: ``trial-001 (exit 1: ValueError: ...); ...``."""
    shown = "; ".join(f"{f.name} ({f.reason})" for f in failed[:limit])
    more = f"; and {len(failed) - limit} more" if len(failed) > limit else ""
    return shown + more


def trials_frame(
    rows: Sequence[Mapping[str, Any]], param_names: Sequence[str], additional_metrics: Sequence[str]
) -> pd.DataFrame:
    """The trials table with a fixed column order (params in search-space order)."""
    cols = [
        "number",
        "name",
        *param_names,
        "value",
        *additional_metrics,
        "steps",
        "state",
        "reason",
        "duration_s",
    ]
    frame = pd.DataFrame(list(rows), columns=cols)
    return frame.sort_values("number", kind="stable").reset_index(drop=True)


def write_outputs(
    result: SweepResult, out_dir: str | os.PathLike, *, best: bool = True
) -> dict[str, Path]:
    """Write ``trials.csv`` and, for a successful sweep, ``best.json`` (atomically).

    A failed sweep gets only its trials table, so nothing downstream mistakes it
    for a finished one.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"trials": write_text_atomic(out / "trials.csv", result.trials.to_csv(index=False))}
    if best and result.best_trial is not None:
        text = json.dumps(result.best_json(), indent=2, sort_keys=False) + "\n"
        paths["best"] = write_text_atomic(out / "best.json", text)
    else:
        (out / "best.json").unlink(missing_ok=True)  # never a stale best beside a new table
    return paths


def aggregate(values: Sequence[float], strategy: str) -> float | None:
    """Katib's metric strategy over one trial's reports: max, min or latest."""
    if not values:
        return None
    return {"max": max, "min": min, "latest": lambda v: v[-1]}[strategy](values)


# --------------------------------------------------------------------------- local twin

#: Builds a trial's argv from (prepared data, trial output folder, overrides).
Command = Callable[[str, Path, list[str]], list[str]]


def default_command(prepared: str, trial_dir: Path, overrides: list[str]) -> list[str]:
    """``python -m docsort.cli train PREPARED --out DIR overrides...`` with this interpreter."""
    return [
        sys.executable,
        "-m",
        "docsort.cli",
        "train",
        prepared,
        "--out",
        str(trial_dir),
        *overrides,
    ]


class _TrialFailed(Exception):
    """A trial ended badly; the message is the reason recorded in the table."""


def _sampler(space: SearchSpace):
    import optuna

    s = space.algorithm_settings
    seed = int(s["random_state"]) if "random_state" in s else None
    alg = space.algorithm
    tpe_kwargs = {"seed": seed}
    if "n_startup_trials" in s:
        tpe_kwargs["n_startup_trials"] = int(s["n_startup_trials"])
    if "n_ei_candidates" in s:
        tpe_kwargs["n_ei_candidates"] = int(s["n_ei_candidates"])
    if alg == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if alg in ("tpe", "hyperband"):
        return optuna.samplers.TPESampler(**tpe_kwargs)
    if alg == "multivariate-tpe":
        return optuna.samplers.TPESampler(multivariate=True, **tpe_kwargs)
    if alg == "cmaes":
        restart = s.get("restart_strategy")
        kwargs: dict[str, Any] = {"seed": seed}
        if "sigma" in s:
            kwargs["sigma0"] = float(s["sigma"])
        if restart and restart != "none":
            kwargs["restart_strategy"] = restart
        return optuna.samplers.CmaEsSampler(**kwargs)
    if alg == "grid":
        return optuna.samplers.GridSampler(grid_values(space), seed=seed)
    if alg == "bayesianoptimization":
        gp = getattr(optuna.samplers, "GPSampler", None)
        n_init = int(s.get("n_initial_points", 10))
        ignored = sorted(set(s) - {"random_state", "n_initial_points"})
        if gp is None:
            log.info("optuna has no GPSampler; bayesianoptimization runs as TPE locally")
            return optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_init)
        if ignored:
            log.info("bayesianoptimization settings %s apply on Katib only", ignored)
        return gp(seed=seed, n_startup_trials=n_init)
    raise ConfigError(f"unknown algorithm {alg!r}; choose from {sorted(ALGORITHMS)}")


def _pruner(space: SearchSpace):
    import optuna

    if space.algorithm == "hyperband":
        s = space.algorithm_settings
        resource = space.param(s["resource_name"])
        return optuna.pruners.HyperbandPruner(
            min_resource=1,
            max_resource=int(resource.max),
            reduction_factor=int(float(s.get("eta", 3))),
        )
    if space.early_stopping == "medianstop":
        es = space.early_stopping_settings
        # Katib's medianstop needs `min_trials_required` succeeded trials and applies its
        # rule once, when the objective has been reported `start_step` times: a huge
        # interval after the warm-up makes Optuna check exactly at that report too.
        return optuna.pruners.MedianPruner(
            n_startup_trials=es["min_trials_required"],
            n_warmup_steps=es["start_step"],
            interval_steps=10**9,
        )
    return optuna.pruners.NopPruner()


def grid_values(space: SearchSpace) -> dict[str, list[Any]]:
    """Every grid point per parameter (Katib's grid: lists, int steps, double steps)."""
    grid: dict[str, list[Any]] = {}
    for p in space.parameters:
        if p.type == "categorical":
            grid[p.name] = list(p.choices)
        elif p.type == "int":
            grid[p.name] = list(range(int(p.min), int(p.max) + 1, int(p.step or 1)))
        else:
            n = int(math.floor((p.max - p.min) / p.step + 1e-9))
            grid[p.name] = [round(p.min + i * p.step, 12) for i in range(n + 1)]
    return grid


def _suggest(trial, space: SearchSpace) -> dict[str, Any]:
    values: dict[str, Any] = {}
    fixed_resource = None
    if space.algorithm == "hyperband":
        # Hyperband's budget parameter is not searched: the pruner cuts the budget.
        fixed_resource = space.algorithm_settings["resource_name"]
    for p in space.parameters:
        if p.name == fixed_resource:
            values[p.name] = int(p.max)
        elif p.type == "categorical":
            values[p.name] = trial.suggest_categorical(p.name, list(p.choices))
        elif p.type == "int":
            values[p.name] = trial.suggest_int(
                p.name, int(p.min), int(p.max), step=int(p.step or 1), log=p.log
            )
        else:
            values[p.name] = trial.suggest_float(p.name, p.min, p.max, step=p.step, log=p.log)
    return values


def _last_line(path: Path) -> str:
    try:
        lines = [
            ln.strip() for ln in path.read_text(encoding="utf-8", errors="replace").splitlines()
        ]
    except OSError:
        return ""
    lines = [ln for ln in lines if ln]
    return lines[-1][:300] if lines else ""


def _kill(proc: subprocess.Popen) -> None:
    """Stop a trial and its DataLoader workers: SIGTERM to its process group, then SIGKILL."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _run_trial(
    trial,
    space: SearchSpace,
    argv: list[str],
    trial_dir: Path,
    env: Mapping[str, str],
    timeout_s: float | None,
) -> float:
    """Run one trial subprocess, report each objective line to Optuna, prune or fail it."""
    import optuna

    trial_dir.mkdir(parents=True, exist_ok=True)
    reports: list[float] = []
    extra: dict[str, list[float]] = {m: [] for m in space.additional_metrics}
    lines: queue.Queue[str | None] = queue.Queue()
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    with (
        open(trial_dir / "stdout.log", "w", encoding="utf-8") as out_log,
        open(trial_dir / "stderr.log", "w", encoding="utf-8") as err_log,
    ):
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=err_log,
            stdin=subprocess.DEVNULL,
            text=True,
            bufsize=1,
            env=dict(env),
            start_new_session=True,
        )

        def pump() -> None:
            assert proc.stdout is not None
            for text in proc.stdout:
                lines.put(text)
            lines.put(None)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            while True:
                wait = None if deadline is None else max(0.0, deadline - time.monotonic())
                try:
                    line = lines.get(timeout=wait)
                except queue.Empty:
                    _kill(proc)
                    raise _TrialFailed(f"timed out after {timeout_s:g}s") from None
                if line is None:
                    break
                out_log.write(line)
                parsed = parse_metric_line(line)
                if parsed is None:
                    continue
                name, value = parsed
                if name in extra:
                    extra[name].append(value)
                    trial.set_user_attr(name, aggregate(extra[name], space.strategies[name]))
                if name != space.metric:
                    continue
                reports.append(value)
                trial.set_user_attr("steps", len(reports))
                trial.report(value, step=len(reports))
                if trial.should_prune():
                    _kill(proc)
                    trial.set_user_attr("reason", f"pruned after {len(reports)} reports")
                    raise optuna.TrialPruned()
            rc = proc.wait()
        finally:
            _kill(proc)
            reader.join(timeout=5)
    if rc != 0:
        why = _last_line(trial_dir / "stderr.log") or _last_line(trial_dir / "stdout.log")
        code = f"killed by signal {-rc}" if rc < 0 else f"exit {rc}"
        raise _TrialFailed(f"{code}: {why}" if why else code)
    value = aggregate(reports, space.strategy)
    if value is None:
        raise _TrialFailed(f"no {space.metric}= line in the trial's stdout")
    return value


def _state_of(frozen) -> str:
    import optuna

    return {
        optuna.trial.TrialState.COMPLETE: "succeeded",
        optuna.trial.TrialState.PRUNED: "pruned",
        optuna.trial.TrialState.FAIL: "failed",
        optuna.trial.TrialState.RUNNING: "running",
        optuna.trial.TrialState.WAITING: "pending",
    }[frozen.state]


def run_local_sweep(
    prepared_dir: str | os.PathLike,
    space: str | os.PathLike | Mapping[str, Any] | SearchSpace,
    out_dir: str | os.PathLike,
    n_trials: int | None = None,
    fixed_overrides: Sequence[str] = (),
    timeout_s: float | None = None,
    *,
    command: Command | None = None,
    parallel: int = 1,
    trial_timeout_s: float | None = None,
    env: Mapping[str, str] | None = None,
) -> SweepResult:
    """Run the search space as a local Optuna study of ``docsort train`` subprocesses.

    ``n_trials`` defaults to the space's ``max_trial_count``; ``timeout_s`` bounds the
    whole study (running trials finish). As on Katib, the study ends successfully when
    the objective reaches ``goal``, and fails (:class:`SweepFailed`, after writing
    ``trials.csv``) once more than ``max_failed_trial_count`` trials have failed.
    ``command`` replaces the trainer (tests use a small script printing metric lines).
    """
    import optuna

    sp = load_space(space)
    fixed = list(fixed_overrides)
    check_overrides(fixed, sp.parameters)
    prepared = os.fspath(prepared_dir)
    if command is None:
        if not Path(prepared).exists() and "://" not in prepared:
            raise DocsortError("prepared data folder not found", file=prepared)
        check_space_against_config(sp, fixed)
    run = command or default_command
    out = Path(out_dir)
    (out / "trials").mkdir(parents=True, exist_ok=True)
    study_name = f"docsort-{sp.name}"
    base_env = dict(os.environ if env is None else env)
    base_env.update(PYTHONUNBUFFERED="1", WANDB_RUN_GROUP=study_name)
    per_trial_timeout = trial_timeout_s if trial_timeout_s is not None else sp.trial.timeout_s

    # Failed trials are logged once by this module; Optuna would add a traceback each.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(
        study_name=study_name,
        direction=sp.objective_type,
        sampler=_sampler(sp),
        pruner=_pruner(sp),
    )

    def objective(trial) -> float:
        name = f"trial-{trial.number:03d}"
        params = _suggest(trial, sp)
        args = trial_overrides(sp, fixed, [sp.param(k).format(v) for k, v in params.items()])
        if (out / "trials" / name).exists():  # a previous sweep in the same folder
            shutil.rmtree(out / "trials" / name)
        argv = run(prepared, out / "trials" / name, args)
        trial.set_user_attr("name", name)
        trial.set_user_attr("params", {k: format_value(v) for k, v in params.items()})
        log.info("%s: %s", name, " ".join(args))
        try:
            return _run_trial(
                trial,
                sp,
                argv,
                out / "trials" / name,
                {**base_env, "WANDB_NAME": name},
                per_trial_timeout,
            )
        except _TrialFailed as exc:
            trial.set_user_attr("reason", str(exc))
            log.warning("%s failed: %s", name, exc)
            raise

    def stop_rules(study, frozen) -> None:
        failed = sum(t.state == optuna.trial.TrialState.FAIL for t in study.trials)
        if failed > sp.max_failed_trial_count:  # Katib: failed > maxFailedTrialCount
            study.stop()
        if frozen.state == optuna.trial.TrialState.COMPLETE and sp.goal is not None:
            reached = frozen.value >= sp.goal if sp.maximize else frozen.value <= sp.goal
            if reached:
                log.info("goal %s=%g reached by trial %d", sp.metric, sp.goal, frozen.number)
                study.stop()

    study.optimize(
        objective,
        n_trials=n_trials or sp.max_trial_count,
        timeout=timeout_s,
        n_jobs=parallel,
        catch=(_TrialFailed,),
        callbacks=[stop_rules],
    )

    rows, failed = [], []
    for t in study.trials:
        state = _state_of(t)
        row = {
            "number": t.number,
            "name": t.user_attrs.get("name", f"trial-{t.number:03d}"),
            **t.user_attrs.get("params", {}),
            "value": t.value if state == "succeeded" else None,
            "steps": t.user_attrs.get("steps", 0),
            "state": state,
            "reason": t.user_attrs.get("reason", ""),
            "duration_s": round(t.duration.total_seconds(), 3) if t.duration else None,
        }
        row.update({m: t.user_attrs.get(m) for m in sp.additional_metrics})
        rows.append(row)
        if state == "failed":
            failed.append(FailedTrial(row["name"], row["reason"]))
    table = trials_frame(rows, [p.name for p in sp.parameters], sp.additional_metrics)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = None
    if done:
        best = max(done, key=lambda t: t.value) if sp.maximize else min(done, key=lambda t: t.value)
    result = SweepResult(
        params={p.name: _typed(p, best.user_attrs["params"][p.name]) for p in sp.parameters}
        if best
        else {},
        value=best.value if best else None,
        trials=table,
        failed=failed,
        metric=sp.metric,
        backend="local",
        best_trial=best.user_attrs["name"] if best else None,
        experiment=study_name,
    )
    too_many = len(failed) > sp.max_failed_trial_count
    write_outputs(result, out, best=not too_many)
    if too_many:
        raise SweepFailed(
            f"sweep stopped: {len(failed)} trials failed (max_failed_trial_count="
            f"{sp.max_failed_trial_count}): {describe_failures(failed)}",
            result,
        )
    if best is None:
        raise SweepFailed(f"sweep finished with no successful trial ({len(table)} trials)", result)
    return result


def _typed(p: Param, text: str) -> Any:
    """Parameter value from its override text: int/float for numbers, str for choices."""
    if p.type == "int":
        return int(text)
    if p.type == "double":
        return float(text)
    return text


# --------------------------------------------------------------------------- katib backend


def dry_run_yaml(
    data_uri: str,
    space: str | os.PathLike | Mapping[str, Any] | SearchSpace = "default",
    *,
    name: str | None = None,
    namespace: str = "docsort",
    image: str | None = None,
    fixed_overrides: Sequence[str] = (),
    gpu: int | None = None,
    check_config: bool = True,
    n_trials: int | None = None,
    pod: Mapping[str, Any] | None = None,
) -> str:
    """The Katib Experiment for ``docsort sweep DATA --backend katib --dry-run``, as YAML."""
    from docsort import katib

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


def run_katib_sweep(
    data_uri: str,
    space: str | os.PathLike | Mapping[str, Any] | SearchSpace,
    out_dir: str | os.PathLike,
    *,
    name: str | None = None,
    namespace: str = "docsort",
    image: str | None = None,
    fixed_overrides: Sequence[str] = (),
    gpu: int | None = None,
    timeout_s: float = 6 * 3600,
    poll_s: float = 15.0,
    api=None,
    core_api=None,
    kubeconfig: str | None = None,
    check_config: bool = True,
    n_trials: int | None = None,
    pod: Mapping[str, Any] | None = None,
) -> SweepResult:
    """Create the Katib Experiment, wait for it, write ``trials.csv``/``best.json``.

    ``api``/``core_api`` default to clients from the in-cluster service account or
    ``kubeconfig``. ``n_trials`` caps the space's trial count; ``pod`` (node pool,
    pull policy) comes from the k8s profile. On failure :class:`SweepFailed`
    still leaves ``trials.csv``.
    """
    from docsort import katib

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
    )
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
