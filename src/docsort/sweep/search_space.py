"""Search spaces (``conf/hpo/<name>.yaml``) and the metric lines trials print.

One YAML describes a sweep for both backends: the parameters (Hydra override keys
of ``docsort train``), the objective, the algorithm and Katib's settings. It is
validated here, once, with errors that name the file and the key, and checked to
compose with the training config before a single trial starts.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from docsort.core.errors import ConfigError

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- metric lines

#: Regex for the metric lines ``docsort train`` prints (``val_macro_f1=0.8312``), used
#: verbatim as Katib's StdOut ``metricsFormat`` and by the local twin. Written for Go's
#: RE2 (Katib's collector, pkg/metricscollector/v1beta1/file-metricscollector/
#: file-metricscollector.go at v0.19.0, splits the log on "\n" only and takes groups 1
#: and 2 of every match as name and value) and Python's ``re`` alike. Anchored to the whole
#: line, so a progress bar or a warning that quotes ``val_macro_f1=0.51`` counts nothing;
#: only the text after the line's last "\r" (what a terminal shows once a progress bar
#: has redrawn the line) may be a metric. The value must be a finite decimal number:
#: ``nan``/``inf`` lines match nothing, where Katib's default regex would take an empty
#: value (the collector's early-stopping path then exits on ParseFloat). An RFC 3339
#: timestamp prefix is allowed because Katib orders reports by it.
METRICS_FORMAT = (
    r"^(?:[^\n]*\r)?(?:[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]+(?:Z|[+-][0-9]{2}:?[0-9]{2})? )?"
    r"([A-Za-z_][A-Za-z0-9_.-]*)=([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)\s*$"
)
METRIC_RE = re.compile(METRICS_FORMAT)


def parse_metric_line(line: str) -> tuple[str, float] | None:
    """``("val_loss", 0.51)`` for a metric line, else ``None`` (same rule as Katib)."""
    m = METRIC_RE.match(line.rstrip("\n"))
    return (m.group(1), float(m.group(2))) if m else None


# --------------------------------------------------------------------------- search space


def _int(minimum: int | None = None) -> Callable[[str], bool]:
    # Python's int() / Go's strconv.Atoi: "4" passes, "4.0" does not.
    def ok(text: str) -> bool:
        try:
            value = int(text)
        except ValueError:
            return False
        return minimum is None or value >= minimum

    return ok


def _float(test: Callable[[float], bool] = lambda v: True) -> Callable[[str], bool]:
    def ok(text: str) -> bool:
        try:
            return test(float(text))
        except ValueError:
            return False

    return ok


def _one_of(*choices: str) -> Callable[[str], bool]:
    return lambda text: text in choices


@dataclass(frozen=True)
class KatibSetting:
    """One ``algorithmSettings`` entry a Katib suggestion service accepts, and its value check."""

    rule: str  # what the service accepts, for the error line
    ok: Callable[[str], bool]


@dataclass(frozen=True)
class KatibAlgorithm:
    """A Katib algorithm: the suggestion service that runs it and the settings that service takes.

    ``settings`` are exactly the names the service's ``ValidateAlgorithmSettings``
    accepts (or, for goptuna, which ignores unknown names, the names it reads);
    Katib marks the Suggestion Failed on any other name, so docsort refuses it first.
    """

    service: str  # the suggestion image in katib-config.yaml: suggestion-<service>
    source: str  # where kubeflow/katib v0.19.0 checks the settings
    settings: Mapping[str, KatibSetting]
    required: frozenset[str] = frozenset()


_RANDOM_STATE = KatibSetting("an integer >= 0", _int(0))
_HYPEROPT = "pkg/suggestion/v1beta1/hyperopt/service.py"
_OPTUNA = "pkg/suggestion/v1beta1/optuna/service.py"
_GOPTUNA = "pkg/suggestion/v1beta1/goptuna/converter.go"
_SKOPT = "pkg/suggestion/v1beta1/skopt/service.py"
_HYPERBAND = "pkg/suggestion/v1beta1/hyperband/service.py"

#: Katib v0.19.0: algorithm -> suggestion service (manifests/v1beta1/installs/
#: katib-standalone/katib-config.yaml, runtime.suggestions) -> the settings that
#: service accepts, with the value checks it makes. Names are case-sensitive
#: (hyperopt's ``n_EI_candidates`` is not optuna's ``n_ei_candidates``).
KATIB_ALGORITHMS: dict[str, KatibAlgorithm] = {
    # hyperopt: OptimizerConfiguration._validate_random_setting
    "random": KatibAlgorithm("hyperopt", _HYPEROPT, {"random_state": _RANDOM_STATE}),
    # hyperopt: OptimizerConfiguration._validate_tpe_setting (startup = the first request,
    # i.e. parallelTrialCount random trials, in hyperopt/base_service.py; not a setting)
    "tpe": KatibAlgorithm(
        "hyperopt",
        _HYPEROPT,
        {
            "gamma": KatibSetting("a number in (0, 1)", _float(lambda v: 0 < v < 1)),
            "prior_weight": KatibSetting("a number > 0", _float(lambda v: v > 0)),
            "n_EI_candidates": KatibSetting("an integer > 0", _int(1)),
            "random_state": _RANDOM_STATE,
        },
    ),
    # optuna: OptimizerConfiguration._validate_grid_setting (+ maxTrialCount <= grid size)
    "grid": KatibAlgorithm("optuna", _OPTUNA, {"random_state": _RANDOM_STATE}),
    # optuna: OptimizerConfiguration._validate_tpe_setting (TPESampler, constant_liar=True)
    "multivariate-tpe": KatibAlgorithm(
        "optuna",
        _OPTUNA,
        {
            "n_startup_trials": KatibSetting("an integer >= 0", _int(0)),
            "n_ei_candidates": KatibSetting("an integer >= 0", _int(0)),
            "random_state": _RANDOM_STATE,
        },
    ),
    # goptuna: toGoptunaSampler reads these (strconv.Atoi / ParseFloat) and ignores others;
    # service.go ValidateAlgorithmSettings needs >= 2 double/int parameters for cmaes.
    "cmaes": KatibAlgorithm(
        "goptuna",
        _GOPTUNA,
        {
            "random_state": KatibSetting("an integer", _int()),
            "sigma": KatibSetting("a number", _float()),
            "restart_strategy": KatibSetting(
                "one of ipop, bipop, none", _one_of("ipop", "bipop", "none")
            ),
        },
    ),
    # goptuna: sobol.NewSampler() takes no settings
    "sobol": KatibAlgorithm("goptuna", _GOPTUNA, {}),
    # skopt: OptimizerConfiguration._validate_bayesianoptimization_setting
    "bayesianoptimization": KatibAlgorithm(
        "skopt",
        _SKOPT,
        {
            "base_estimator": KatibSetting(
                "one of GP, RF, ET, GBRT", _one_of("GP", "RF", "ET", "GBRT")
            ),
            "n_initial_points": KatibSetting("an integer >= 0", _int(0)),
            "acq_func": KatibSetting(
                "one of gp_hedge, LCB, EI, PI, EIps, PIps",
                _one_of("gp_hedge", "LCB", "EI", "PI", "EIps", "PIps"),
            ),
            "acq_optimizer": KatibSetting(
                "one of auto, sampling, lbfgs", _one_of("auto", "sampling", "lbfgs")
            ),
            "random_state": _RANDOM_STATE,
        },
    ),
    # hyperband: HyperbandService.ValidateAlgorithmSettings; r_l and resource_name required,
    # parallelTrialCount >= eta**floor(log(r_l)/log(eta)). Its other settings (s_max, b_l, n,
    # r, current_s, current_i, evaluating_trials) are the service's own bracket state.
    "hyperband": KatibAlgorithm(
        "hyperband",
        _HYPERBAND,
        {
            "eta": KatibSetting("a number >= 2", _float(lambda v: int(v) >= 2)),
            "r_l": KatibSetting("a number > 1", _float(lambda v: v > 1)),
            "resource_name": KatibSetting("an int parameter of the space", lambda t: bool(t)),
        },
        required=frozenset({"r_l", "resource_name"}),
    ),
}
#: Algorithm names docsort accepts (every Katib hyperparameter algorithm except pbt).
ALGORITHMS: tuple[str, ...] = tuple(sorted(KATIB_ALGORITHMS))
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
    if alg_name not in KATIB_ALGORITHMS:
        raise _bad(where, f"algorithm.name: unknown {alg_name!r}; choose from {list(ALGORITHMS)}")
    settings = alg.get("settings") or {}
    if not isinstance(settings, dict):
        raise _bad(where, "algorithm.settings must be a mapping")
    settings = {str(k): format_value(v) for k, v in settings.items()}
    check_algorithm_settings(alg_name, settings, where=where)

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

    _check_algorithm(where, alg_name, settings, params, parallel, es_name, max_trials)

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


def check_algorithm_settings(
    algorithm: str, settings: Mapping[str, str], *, where: str = "algorithm.settings"
) -> None:
    """Refuse a setting the algorithm's Katib suggestion service refuses, in one line.

    The line names the algorithm, the service and the names it accepts, so a space
    that would leave the Suggestion Failed on a cluster never starts a trial.
    """
    spec = KATIB_ALGORITHMS[algorithm]
    allowed = ", ".join(spec.settings) or "none"
    service = f"Katib's {spec.service} suggestion service"
    for name, value in settings.items():
        rule = spec.settings.get(name)
        if rule is None:
            raise _bad(
                where,
                f"algorithm {algorithm} runs on {service}, which refuses setting {name!r}; "
                f"it accepts: {allowed}",
            )
        if not rule.ok(str(value)):
            raise _bad(
                where,
                f"algorithm {algorithm} ({service}): {name}={value} must be {rule.rule}",
            )
    missing = sorted(spec.required - set(settings))
    if missing:
        raise _bad(where, f"algorithm {algorithm} ({service}) needs algorithm.settings {missing}")


def grid_values(params: Sequence[Param]) -> dict[str, list[Any]]:
    """Every grid point per parameter, as Katib's grid builds them (lists, int and double steps).

    kubeflow/katib v0.19.0 pkg/suggestion/v1beta1/internal/search_space.py
    ``convert_to_combinations``: ``range(min, max + 1, step)`` for ints (step 1 by
    default), ``arange(min, max + step, step)`` without points past ``max`` for doubles.
    """
    grid: dict[str, list[Any]] = {}
    for p in params:
        if p.type == "categorical":
            grid[p.name] = list(p.choices)
        elif p.type == "int":
            grid[p.name] = list(range(int(p.min), int(p.max) + 1, int(p.step or 1)))
        else:
            n = int(math.floor((p.max - p.min) / p.step + 1e-9))
            grid[p.name] = [round(p.min + i * p.step, 12) for i in range(n + 1)]
    return grid


def _check_algorithm(
    where: str,
    alg: str,
    settings: Mapping[str, str],
    params: Sequence[Param],
    parallel: int,
    early_stopping: str | None,
    max_trials: int,
) -> None:
    """Rules Katib's suggestion services enforce on the parameters, so both backends agree."""
    if alg == "grid":
        for p in params:
            if p.type == "double" and p.step is None:
                raise _bad(where, f"grid needs a step for double parameter {p.name!r}")
            if p.log:
                raise _bad(
                    where, f"grid cannot sample {p.name!r} on a log scale; list values instead"
                )
        size = math.prod(len(v) for v in grid_values(params).values())
        if max_trials > size:
            # optuna service.py _validate_grid_setting: maxTrialCount <= all combinations
            raise _bad(where, f"grid has {size} points but max_trial_count is {max_trials}")
    numeric = [p for p in params if p.type != "categorical"]
    if alg == "cmaes" and len(numeric) < 2:
        # goptuna service.go ValidateAlgorithmSettings
        raise _bad(where, "cmaes needs at least two double or int parameters")
    if alg == "hyperband":
        if early_stopping:
            raise _bad(where, "hyperband stops trials itself; remove early_stopping")
        resource = settings["resource_name"]
        if resource not in {p.name for p in params if p.type == "int"}:
            ints = [p.name for p in params if p.type == "int"]
            raise _bad(
                where, f"hyperband resource_name must be an int parameter; choose from {ints}"
            )
        r_l = float(settings["r_l"])
        eta = int(float(settings.get("eta", 3)))
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
    from docsort.core.config import load_config  # the Hydra compose entry point

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
