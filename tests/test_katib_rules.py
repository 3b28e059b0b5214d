"""The Experiment's algorithm settings, checked against Katib v0.19.0's suggestion services.

Katib runs each algorithm on one suggestion service (katib-config.yaml) and the
service's ``ValidateAlgorithmSettings`` refuses what it does not know, leaving the
Suggestion Failed before a single trial. The services' checks are re-stated below,
transcribed from the kubeflow/katib sources at tag v0.19.0 (not derived from
docsort's table), and every shipped search space is built with every algorithm
docsort accepts: Katib must accept the result, and docsort must refuse, in one
line, what Katib refuses.
"""

from __future__ import annotations

import copy
import math
from importlib import resources

import pytest
import yaml

from docsort.core.errors import ConfigError
from docsort.sweep import katib, search_space, sweep

from .scenario import one_line, run_cli

# manifests/v1beta1/installs/katib-standalone/katib-config.yaml (v0.19.0), runtime.suggestions
KATIB_CONFIG = {
    "random": "hyperopt",
    "tpe": "hyperopt",
    "grid": "optuna",
    "hyperband": "hyperband",
    "bayesianoptimization": "skopt",
    "cmaes": "goptuna",
    "sobol": "goptuna",
    "multivariate-tpe": "optuna",
}


def _py_int(v: str) -> int:
    return int(v)  # Python's int(): "3" passes, "3.0" raises


def _go_atoi(v: str) -> int:
    if not v.lstrip("+-").isdigit():
        raise ValueError(v)  # strconv.Atoi
    return int(v)


def hyperopt_validate(alg: str, settings: dict[str, str], exp: dict) -> str:
    """pkg/suggestion/v1beta1/hyperopt/service.py: OptimizerConfiguration.validate_algorithm_spec"""
    for name, value in settings.items():
        try:
            if alg == "tpe" and name == "gamma":
                if not 1 > float(value) > 0:
                    return "gamma should be in the range of (0, 1)"
            elif alg == "tpe" and name == "prior_weight":
                if not float(value) > 0:
                    return "prior_weight should be great than zero"
            elif alg == "tpe" and name == "n_EI_candidates":
                if not _py_int(value) > 0:
                    return "n_EI_candidates should be great than zero"
            elif name == "random_state":
                if not _py_int(value) >= 0:
                    return "random_state should be great or equal than zero"
            else:
                return f"unknown setting {name} for algorithm {alg}"
        except ValueError as e:
            return f"failed to validate {name}({value}): {e}"
    return ""


def optuna_validate(alg: str, settings: dict[str, str], exp: dict) -> str:
    """pkg/suggestion/v1beta1/optuna/service.py: _validate_tpe_setting / _validate_grid_setting."""
    allowed = (
        ["n_startup_trials", "n_ei_candidates", "random_state"]
        if alg != "grid"
        else ["random_state"]
    )
    for name, value in settings.items():
        if name not in allowed:
            return f"unknown setting {name} for algorithm {alg}"
        try:
            if not _py_int(value) >= 0:
                return f"{name} should be greate or equal than zero"
        except ValueError as e:
            return f"failed to validate {name}({value}): {e}"
    if alg == "grid":  # HyperParameterSearchSpace.convert_to_combinations
        size = 1
        for p in exp["spec"]["parameters"]:
            fs = p["feasibleSpace"]
            if p["parameterType"] == "categorical":
                size *= len(fs["list"])
            elif p["parameterType"] == "int":
                size *= len(range(int(fs["min"]), int(fs["max"]) + 1, int(fs.get("step") or 1)))
            else:
                if not fs.get("step"):
                    return f"Param {p['name']} step is nil"
                lo, hi, step = float(fs["min"]), float(fs["max"]), float(fs["step"])
                n = math.ceil((hi + step - lo) / step)  # numpy.arange length
                size *= n - (lo + (n - 1) * step > hi)
        if exp["spec"]["maxTrialCount"] > size:
            return f"Max Trial Count: {exp['spec']['maxTrialCount']} > combinations: {size}"
    return ""


def goptuna_validate(alg: str, settings: dict[str, str], exp: dict) -> str:
    """pkg/suggestion/v1beta1/goptuna/service.go ValidateAlgorithmSettings + converter.go
    toGoptunaSampler (which ignores names it does not read: docsort sends none of those)."""
    params = exp["spec"]["parameters"]
    if alg == "cmaes" and sum(p["parameterType"] in ("double", "int") for p in params) < 2:
        return "CMA-ES only supports two or more dimensional continuous search space."
    read = {"cmaes": {"random_state", "sigma", "restart_strategy"}, "sobol": set()}[alg]
    for name, value in settings.items():
        if name not in read:
            return f"setting {name} is ignored by goptuna's {alg} sampler"
        try:
            if name == "random_state":
                _go_atoi(value)
            elif name == "sigma":
                float(value)
            elif name == "restart_strategy" and value not in ("ipop", "bipop", "none"):
                return f"invalid restart_strategy: '{value}'"
        except ValueError as e:
            return str(e)
    return ""


def skopt_validate(alg: str, settings: dict[str, str], exp: dict) -> str:
    """pkg/suggestion/v1beta1/skopt/service.py: _validate_bayesianoptimization_setting."""
    for name, value in settings.items():
        try:
            if name == "base_estimator":
                if value not in ["GP", "RF", "ET", "GBRT"]:
                    return f"base_estimator {value} is not supported in Bayesian optimization"
            elif name == "n_initial_points":
                if not _py_int(value) >= 0:
                    return "n_initial_points should be great or equal than zero"
            elif name == "acq_func":
                if value not in ["gp_hedge", "LCB", "EI", "PI", "EIps", "PIps"]:
                    return f"acq_func {value} is not supported in Bayesian optimization"
            elif name == "acq_optimizer":
                if value not in ["auto", "sampling", "lbfgs"]:
                    return f"acq_optimizer {value} is not supported in Bayesian optimization"
            elif name == "random_state":
                if not _py_int(value) >= 0:
                    return "random_state should be great or equal than zero"
            else:
                return f"unknown setting {name} for algorithm bayesianoptimization"
        except ValueError as e:
            return f"failed to validate {name}({value}): {e}"
    return ""


def hyperband_validate(alg: str, settings: dict[str, str], exp: dict) -> str:
    """pkg/suggestion/v1beta1/hyperband/service.py: HyperbandService.ValidateAlgorithmSettings.

    The service logs and ignores names it does not read, and reads its own bracket state
    (s_max, b_l, n, r, current_s, ...) from the same list; a user sets only eta, r_l and
    resource_name, so anything else is a mistake that would pass silently or corrupt it.
    """
    if set(settings) - {"eta", "r_l", "resource_name"}:
        return f"unexpected settings {sorted(set(settings) - {'eta', 'r_l', 'resource_name'})}"
    if "r_l" not in settings or "resource_name" not in settings:
        return "r_l and resource_name must be set."
    try:
        rl = float(settings["r_l"])
    except ValueError:
        return "r_l must be a positive float number."
    if rl < 0:
        return "r_l must be a positive float number."
    eta = int(float(settings.get("eta", 3)))
    eta = eta if eta > 0 else 3
    smax = int(math.log(rl) / math.log(eta))
    if exp["spec"]["parallelTrialCount"] < int(math.ceil(eta**smax)):
        return f"parallelTrialCount must be not less than {int(math.ceil(eta**smax))}."
    if settings["resource_name"] not in {p["name"] for p in exp["spec"]["parameters"]}:
        return "value of resource_name setting must be in parameters."
    return ""


SERVICES = {
    "hyperopt": hyperopt_validate,
    "optuna": optuna_validate,
    "goptuna": goptuna_validate,
    "skopt": skopt_validate,
    "hyperband": hyperband_validate,
}


def katib_validate(exp: dict) -> str:
    """What Katib's Suggestion says about the Experiment's algorithm: "" = accepted."""
    alg = exp["spec"]["algorithm"]
    settings = {s["name"]: s["value"] for s in alg.get("algorithmSettings") or []}
    return SERVICES[KATIB_CONFIG[alg["algorithmName"]]](alg["algorithmName"], settings, exp)


# --------------------------------------------------------------------------- the spaces

# Every setting each service takes, with a value it accepts (resource_name is filled in).
ALL_SETTINGS = {
    "random": {"random_state": "7"},
    "tpe": {"gamma": "0.3", "prior_weight": "1.5", "n_EI_candidates": "12", "random_state": "7"},
    "grid": {"random_state": "7"},
    "multivariate-tpe": {"n_startup_trials": "5", "n_ei_candidates": "16", "random_state": "7"},
    "cmaes": {"random_state": "7", "sigma": "0.4", "restart_strategy": "ipop"},
    "sobol": {},
    "bayesianoptimization": {"base_estimator": "RF", "n_initial_points": "4", "acq_func": "EI",
                             "acq_optimizer": "sampling", "random_state": "7"},
    "hyperband": {"eta": "3", "r_l": "9", "resource_name": "train.epochs"},
}  # fmt: skip
# A setting each service refuses, or (goptuna, hyperband) silently ignores: the names of a
# neighbouring service, case included.
REFUSED = {
    "random": "n_startup_trials",
    "tpe": "n_startup_trials",
    "grid": "n_startup_trials",
    "multivariate-tpe": "n_EI_candidates",
    "cmaes": "sigma0",
    "sobol": "random_state",
    "bayesianoptimization": "n_startup_trials",
    "hyperband": "n_startup_trials",
}


def shipped(name: str) -> dict:
    text = (resources.files("docsort") / f"conf/hpo/{name}.yaml").read_text()
    return yaml.safe_load(text)


def with_algorithm(space: dict, algorithm: str, settings: dict[str, str]) -> dict:
    """``space`` run by ``algorithm``, its parameters shaped the way that algorithm needs."""
    sp = copy.deepcopy(space)
    sp["algorithm"] = {"name": algorithm, "settings": dict(settings)}
    if algorithm == "grid":  # a finite grid: steps, no log scale
        for p in sp["parameters"]:
            if p["type"] == "double":
                p.pop("log", None)
                p["step"] = (float(p["max"]) - float(p["min"])) / 2
        size = math.prod(
            3 if p["type"] == "double" else len(p.get("list", [])) or 1 for p in sp["parameters"]
        )
        sp["max_trial_count"] = min(sp["max_trial_count"], size)
    if algorithm == "hyperband":  # a budget parameter, no median stop, parallel >= eta**s_max
        sp["overrides"] = [o for o in sp.get("overrides", []) if not o.startswith("train.epochs=")]
        sp["parameters"].append({"name": "train.epochs", "type": "int", "min": 1, "max": 9})
        sp.pop("early_stopping", None)
        sp["parallel_trial_count"] = max(sp["parallel_trial_count"], 9)
        sp["max_trial_count"] = max(sp["max_trial_count"], 9)
    sp["parallel_trial_count"] = min(sp["parallel_trial_count"], sp["max_trial_count"])
    sp["max_failed_trial_count"] = min(sp["max_failed_trial_count"], sp["max_trial_count"])
    return sp


def build(space: dict) -> dict:
    return katib.build_experiment(space, namespace="team-a", prepared="s3://b/prepared")


def test_docsort_knows_the_service_of_every_algorithm_it_accepts():
    assert {a: r.service for a, r in search_space.KATIB_ALGORITHMS.items()} == KATIB_CONFIG
    assert list(search_space.ALGORITHMS) == sorted(KATIB_CONFIG)


@pytest.mark.parametrize("space", sweep.list_spaces())
def test_every_shipped_space_is_accepted_by_its_katib_service_as_shipped(space: str):
    exp = build(shipped(space))
    assert katib_validate(exp) == ""
    sent = {s["name"] for s in exp["spec"]["algorithm"].get("algorithmSettings") or []}
    assert sent <= set(
        search_space.KATIB_ALGORITHMS[exp["spec"]["algorithm"]["algorithmName"]].settings
    )


@pytest.mark.parametrize("space", sweep.list_spaces())
@pytest.mark.parametrize("algorithm", search_space.ALGORITHMS)
def test_every_space_with_every_algorithm_sends_exactly_what_the_service_accepts(space, algorithm):
    settings = ALL_SETTINGS[algorithm]
    exp = build(with_algorithm(shipped(space), algorithm, settings))
    sent = {s["name"]: s["value"] for s in exp["spec"]["algorithm"].get("algorithmSettings") or []}
    assert sent == settings  # nothing added, dropped or renamed on the way
    assert katib_validate(exp) == ""
    # every subset is fine too, except one that leaves out a required setting
    for name in settings:
        fewer = {k: v for k, v in settings.items() if k != name}
        if name in search_space.KATIB_ALGORITHMS[algorithm].required:
            with pytest.raises(ConfigError, match=f"needs algorithm.settings \\['{name}'\\]"):
                build(with_algorithm(shipped(space), algorithm, fewer))
            assert katib_validate({**exp, "spec": {**exp["spec"], "algorithm": {
                "algorithmName": algorithm, "algorithmSettings": [
                    {"name": k, "value": v} for k, v in fewer.items()]}}}) != ""  # fmt: skip
        else:
            assert katib_validate(build(with_algorithm(shipped(space), algorithm, fewer))) == ""


@pytest.mark.parametrize("algorithm", search_space.ALGORITHMS)
def test_a_setting_the_service_refuses_is_refused_in_one_line_naming_it(algorithm):
    rule = search_space.KATIB_ALGORITHMS[algorithm]
    bad = {**ALL_SETTINGS[algorithm], REFUSED[algorithm]: "1"}
    space = with_algorithm(shipped("cpu_small"), algorithm, bad)
    # Katib itself refuses it (the Experiment as it would be sent, docsort's check bypassed)
    exp = build(with_algorithm(shipped("cpu_small"), algorithm, ALL_SETTINGS[algorithm]))
    exp["spec"]["algorithm"]["algorithmSettings"] = [
        {"name": k, "value": v} for k, v in bad.items()
    ]
    assert katib_validate(exp) != ""
    with pytest.raises(ConfigError) as err:
        build(space)
    msg = str(err.value)
    assert "\n" not in msg
    assert f"algorithm {algorithm} runs on Katib's {rule.service} suggestion service" in msg
    assert f"refuses setting '{REFUSED[algorithm]}'" in msg
    assert f"it accepts: {', '.join(rule.settings) or 'none'}" in msg


@pytest.mark.parametrize(
    ("algorithm", "name", "value"),
    [
        ("tpe", "gamma", "1.5"), ("tpe", "n_EI_candidates", "0"), ("tpe", "random_state", "-1"),
        ("tpe", "prior_weight", "0"), ("random", "random_state", "1.5"),
        ("multivariate-tpe", "n_startup_trials", "-2"), ("grid", "random_state", "x"),
        ("cmaes", "restart_strategy", "None"), ("cmaes", "random_state", "4.0"),
        ("bayesianoptimization", "base_estimator", "gp"),
        ("bayesianoptimization", "acq_func", "ei"),
        ("bayesianoptimization", "acq_optimizer", "adam"), ("hyperband", "r_l", "abc"),
    ],
)  # fmt: skip
def test_a_value_the_service_refuses_is_refused_too(algorithm, name, value):
    settings = {**ALL_SETTINGS[algorithm], name: value}
    exp = build(with_algorithm(shipped("cpu_small"), algorithm, ALL_SETTINGS[algorithm]))
    exp["spec"]["algorithm"]["algorithmSettings"] = [
        {"name": k, "value": v} for k, v in settings.items()
    ]
    assert katib_validate(exp) != ""
    with pytest.raises(
        ConfigError, match=f"algorithm {algorithm} \\(Katib's .* service\\): {name}={value} must be"
    ):
        build(with_algorithm(shipped("cpu_small"), algorithm, settings))


def test_the_cli_refuses_a_space_katib_would_fail_in_one_line(tmp_path):
    space = shipped("cpu_small")
    space["algorithm"] = {"name": "tpe", "settings": {"n_startup_trials": 4}}
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(space))
    rc, out, err = run_cli(
        "sweep",
        "--prepared",
        "s3://b/prepared",
        "--space",
        str(path),
        "--dry-run",
        "--namespace",
        "team-a",
    )
    assert rc == 2 and out == ""
    assert one_line(err) == (
        f"{path}: algorithm tpe runs on Katib's hyperopt suggestion service, which refuses "
        "setting 'n_startup_trials'; it accepts: gamma, prior_weight, n_EI_candidates, random_state"
    )


def test_the_local_twin_maps_katib_names_to_optuna_arguments():
    from docsort.sweep import local as sweep_local

    sp = search_space.load_space(with_algorithm(shipped("cpu_small"), "tpe", ALL_SETTINGS["tpe"]))
    tpe = sweep_local._sampler(sp)
    # hyperopt: first request (parallelTrialCount) random, n_EI_candidates, gamma, no liar
    assert (tpe._n_startup_trials, tpe._n_ei_candidates, tpe._constant_liar) == (2, 12, False)
    assert tpe._gamma(100) == math.ceil(0.3 * 10) and tpe._gamma(10**6) == 25
    sp = search_space.load_space(shipped("default"))
    mtpe = sweep_local._sampler(sp)
    assert (mtpe._n_startup_trials, mtpe._n_ei_candidates) == (8, 24)
    assert mtpe._multivariate and mtpe._constant_liar  # as Katib's optuna service builds it
    sp = search_space.load_space(
        with_algorithm(shipped("cpu_small"), "cmaes", ALL_SETTINGS["cmaes"])
    )
    cma = sweep_local._sampler(sp)
    assert (cma._sigma0, cma._n_startup_trials) == (0.4, 0)
