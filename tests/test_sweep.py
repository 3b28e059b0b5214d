"""Search spaces and the local Optuna twin of a Katib sweep.

The local sweep tests run real subprocesses in a real Optuna study; the trainer is
replaced by a small script that prints the same ``epoch=`` / ``val_macro_f1=`` lines
as ``docsort train``, its quality depending on the trial's parameters.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pandas as pd
import pytest

from docsort.core.errors import ConfigError, DocsortError
from docsort.sweep import local as sweep_local
from docsort.sweep import sweep
from docsort.sweep.sweep import SweepFailed, load_space, run_local_sweep

FAKE_TRAINER = textwrap.dedent(
    """
    import json, math, os, sys, time
    from pathlib import Path

    args = sys.argv[1:]
    out = Path(args[args.index("--out") + 1])
    out.mkdir(parents=True, exist_ok=True)
    ov = dict(a.split("=", 1) for a in args if "=" in a and not a.startswith("-"))
    (out / "argv.json").write_text(json.dumps({"args": args, "unbuffered": os.environ.get("PYTHONUNBUFFERED")}))
    model = ov.get("model", "good")
    if model == "broken":
        print("building model", file=sys.stderr)
        print("ValueError: model 'broken' is not registered", file=sys.stderr)
        sys.exit(1)
    if model == "silent":
        sys.exit(0)
    if model == "slow":
        time.sleep(30)
    lr = float(ov["train.lr"])
    quality = max(0.05, 1 - abs(math.log10(lr) + 2.5) / 2.5)  # best at lr = 10**-2.5
    if model == "weak":
        quality *= 0.3
    print("lightning banner: val_macro_f1 goes here", flush=True)
    for epoch in range(1, int(ov.get("train.epochs", 6)) + 1):
        f1 = quality * (1 - 0.5 ** epoch)
        print(f"epoch={epoch}", flush=True)
        print(f"val_macro_f1={f1:.4f}", flush=True)
        print(f"val_loss={1 - f1:.4f}", flush=True)
        time.sleep(float(ov.get("delay", "0.05")))
    (out / "done").write_text("finished")
    """
)


@pytest.fixture
def fake_command(tmp_path: Path):
    script = tmp_path / "fake_train.py"
    script.write_text(FAKE_TRAINER)

    def command(prepared: str, trial_dir: Path, overrides: list[str]) -> list[str]:
        return [sys.executable, str(script), prepared, "--out", str(trial_dir), *overrides]

    return command


def space_dict(**changes) -> dict:
    base = {
        "objective": {"metric": "val_macro_f1", "type": "maximize", "additional_metrics": ["val_loss"],
                      "metric_strategies": {"val_loss": "min"}},
        "algorithm": {"name": "random", "settings": {"random_state": 3}},
        "early_stopping": {"name": "medianstop", "settings": {"min_trials_required": 2, "start_step": 2}},
        "max_trial_count": 12,
        "parallel_trial_count": 1,
        "max_failed_trial_count": 3,
        "overrides": ["train.epochs=6"],
        "parameters": [
            {"name": "model", "type": "categorical", "list": ["good", "weak"]},
            {"name": "train.lr", "type": "double", "min": 1e-4, "max": 1e-1, "log": True},
        ],
    }  # fmt: skip
    base.update(changes)
    return base


# --------------------------------------------------------------------------- search spaces


def test_shipped_spaces_load_and_compose_with_the_training_config():
    names = sweep.list_spaces()
    assert {"default", "cpu_small"} <= set(names)
    for name in names:
        sp = load_space(name)
        assert sp.metric == "val_macro_f1" and sp.maximize
        assert "val_loss" in sp.additional_metrics
        assert sp.early_stopping == "medianstop"
        # every parameter and choice is a real key/option of `docsort train`'s config
        sweep.check_space_against_config(sp)


def test_yaml_numbers_without_a_dot_are_accepted(tmp_path: Path):
    # YAML 1.1 reads `1e-4` as a string; the space must still read it as a number.
    path = tmp_path / "mine.yaml"
    path.write_text(
        "objective: {metric: val_macro_f1, type: maximize}\n"
        "parameters:\n  - {name: train.lr, type: double, min: 1e-4, max: 1e-2, log: true}\n"
    )
    sp = load_space(path)
    assert sp.name == "mine"
    assert sp.parameters[0].min == pytest.approx(1e-4) and sp.parameters[0].log


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"algorithm": {"name": "bayes"}}, "choose from ['bayesianoptimization', 'cmaes', 'grid', 'hyperband'"),
        ({"algorithm": {"name": "tpe", "settings": {"n_trials": 3}}}, "hyperopt suggestion service, which refuses setting 'n_trials'"),
        ({"parameters": [{"name": "train.lr", "type": "double", "min": 0.1, "max": 0.1}]}, "min (0.1) must be < max"),
        ({"parameters": [{"name": "train.lr", "type": "double", "min": 0, "max": 1, "log": True}]}, "log scale needs min > 0"),
        ({"parameters": [{"name": "train.lr", "type": "float", "min": 0, "max": 1}]}, "choose from ['double', 'int', 'categorical']"),
        ({"parameters": [{"name": "train.lr", "type": "double", "min": 1e-3, "max": 1, "log": True, "step": 0.1}]}, "step and log"),
        ({"parameters": [{"name": "model", "type": "categorical", "list": ["a b"]}]}, "may only use letters"),
        ({"parameters": [{"name": "data.image_size", "type": "int", "min": 64, "max": 128}]}, "fixed by prepare"),
        ({"parameters": [{"name": "x", "type": "int", "min": 1, "max": 3}] * 2}, "duplicate parameter names"),
        ({"early_stopping": {"name": "hyperband"}}, "choose from ['medianstop']"),
        ({"parallel_trial_count": 20}, "parallel_trial_count (20) must be <= max_trial_count"),
        ({"max_failed_trial_count": -1}, "max_failed_trial_count must be >= 0"),
        ({"overrides": ["train.lr=0.1"]}, "train.lr is both searched and fixed"),
        ({"max_trials": 3}, "unknown key(s) ['max_trials']"),
        ({"trial": {"image": "cpu", "gpu": 1}}, "needs trial.image: gpu"),
        ({"trial": {"image": "tpu"}}, "choose from ['cpu', 'gpu']"),
        ({"algorithm": {"name": "grid"}}, "grid needs a step for double parameter 'train.lr'"),
        ({"algorithm": {"name": "hyperband", "settings": {"eta": 3}}, "early_stopping": None}, "needs algorithm.settings ['r_l', 'resource_name']"),
        ({"algorithm": {"name": "cmaes"}}, "cmaes needs at least two double or int parameters"),
        ({"algorithm": {"name": "grid"}, "parameters": [{"name": "model", "type": "categorical", "list": ["a", "b"]}]},
         "grid has 2 points but max_trial_count is 12"),
    ],
)  # fmt: skip
def test_invalid_spaces_fail_before_any_trial_naming_the_valid_choices(change, message):
    with pytest.raises(ConfigError) as err:
        load_space(space_dict(**change))
    assert message in str(err.value)


def test_unknown_space_name_lists_the_shipped_ones():
    with pytest.raises(
        ConfigError, match=r"unknown search space 'nope'; choose from \['cpu_small', 'default'"
    ):
        load_space("nope")


def test_a_typo_in_a_parameter_name_fails_against_the_training_config():
    sp = load_space(
        space_dict(parameters=[{"name": "train.lrr", "type": "double", "min": 1e-4, "max": 1e-2}])
    )
    with pytest.raises(ConfigError, match="does not compose with the training config"):
        sweep.check_space_against_config(sp)
    with pytest.raises(ConfigError, match="model=nope"):
        sweep.check_space_against_config(
            load_space(
                space_dict(
                    parameters=[
                        {"name": "model", "type": "categorical", "list": ["resnet18", "nope"]}
                    ]
                )
            )
        )


def test_trial_overrides_put_params_last_and_let_a_later_key_win():
    sp = load_space(space_dict())
    args = sweep.trial_overrides(sp, ["fold=2", "train.epochs=3"], ["model=good", "train.lr=0.01"])
    assert args == ["fold=2", "train.epochs=3", "model=good", "train.lr=0.01"]
    with pytest.raises(ConfigError, match="one fold"):
        sweep.trial_overrides(sp, ["fold=all"])
    with pytest.raises(ConfigError, match="both searched and fixed"):
        sweep.trial_overrides(sp, ["model=weak"])


@pytest.mark.parametrize(
    ("algorithm", "settings", "sampler"),
    [
        ("random", {"random_state": 1}, optuna.samplers.RandomSampler),
        ("tpe", {"n_EI_candidates": 3}, optuna.samplers.TPESampler),
        ("multivariate-tpe", {"n_startup_trials": 3}, optuna.samplers.TPESampler),
        ("cmaes", {"sigma": 0.5}, optuna.samplers.CmaEsSampler),
        ("sobol", {}, optuna.samplers.QMCSampler),
        ("bayesianoptimization", {"n_initial_points": 4}, optuna.samplers.GPSampler),
        ("grid", {}, optuna.samplers.GridSampler),
    ],
)
def test_each_katib_algorithm_maps_to_its_optuna_sampler(algorithm, settings, sampler):
    params = [{"name": "train.lr", "type": "double", "min": 0.001, "max": 0.01, "step": 0.003},
              {"name": "train.label_smoothing", "type": "double", "min": 0.0, "max": 0.2, "step": 0.1},
              {"name": "model", "type": "categorical", "list": ["a", "b"]}]  # fmt: skip
    sp = load_space(
        space_dict(algorithm={"name": algorithm, "settings": settings}, parameters=params)
    )
    assert isinstance(sweep_local._sampler(sp), sampler)
    if algorithm == "grid":
        assert sweep_local.grid_values(sp) == {
            "train.lr": [0.001, 0.004, 0.007, 0.01],
            "train.label_smoothing": [0.0, 0.1, 0.2],
            "model": ["a", "b"],
        }


def test_hyperband_uses_optunas_hyperband_pruner_with_the_resource_as_budget():
    sp = load_space(
        space_dict(
            algorithm={"name": "hyperband", "settings": {"resource_name": "train.epochs", "r_l": 9, "eta": 3}},
            early_stopping=None,
            parallel_trial_count=9,
            overrides=[],
            parameters=[{"name": "train.lr", "type": "double", "min": 1e-4, "max": 1e-1, "log": True},
                        {"name": "train.epochs", "type": "int", "min": 1, "max": 9}],
        )
    )  # fmt: skip
    assert isinstance(sweep_local._pruner(sp), optuna.pruners.HyperbandPruner)
    with pytest.raises(ConfigError, match="parallel_trial_count >= 9"):
        load_space(
            space_dict(algorithm=sp_algorithm(sp), early_stopping=None, parameters=space_params(sp))
        )


def sp_algorithm(sp):
    return {"name": sp.algorithm, "settings": dict(sp.algorithm_settings)}


def space_params(sp):
    return [
        {"name": p.name, "type": p.type, "min": p.min, "max": p.max, "log": p.log}
        for p in sp.parameters
    ]


def test_median_pruner_judges_once_at_start_step_like_katib_medianstop():
    """min_trials_required completed trials, then one check at the start_step-th report."""
    sp = load_space(
        space_dict(
            early_stopping={
                "name": "medianstop",
                "settings": {"min_trials_required": 2, "start_step": 3},
            }
        )
    )
    study = optuna.create_study(direction="maximize", pruner=sweep_local._pruner(sp))
    for _ in range(2):
        study.add_trial(
            optuna.trial.create_trial(
                value=0.9,
                intermediate_values={1: 0.5, 2: 0.7, 3: 0.8, 4: 0.9},
                distributions={},
                params={},
            )
        )
    bad = study.ask()
    verdicts = []
    for step, value in enumerate([0.1, 0.1, 0.1, 0.1], start=1):
        bad.report(value, step)
        verdicts.append(bad.should_prune())
    assert verdicts == [False, False, True, False]


# --------------------------------------------------------------------------- local twin


def test_local_sweep_prunes_bad_trials_and_returns_the_best_params(
    tmp_path: Path, fake_command, capsys
):
    out = tmp_path / "sweep"
    prep = tmp_path / "prep"  # the trials are fake: any folder beside the output will do
    prep.mkdir()
    result = run_local_sweep(str(prep), space_dict(), out, command=fake_command)
    # one line per trial as it finishes, like Optuna's log: state or value, params, best so far
    shown = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("trial-")]
    assert len(shown) == 12
    assert sum("pruned (pruned after 2 reports)" in ln for ln in shown) > 0
    last = shown[-1]
    assert re.search(r"\[model=\w+ train\.lr=\S+\]; best trial-\d{3} \d\.\d{4}$", last), last

    table = pd.read_csv(out / "trials.csv")
    assert len(table) == 12
    assert list(table.columns[:4]) == ["number", "name", "model", "train.lr"]
    states = table["state"].value_counts().to_dict()
    assert states.get("pruned", 0) > 0, states
    assert states.get("succeeded", 0) >= 2, states
    # pruned trials were killed mid-run: they never wrote their end marker
    for row in table.itertuples():
        done = (out / "trials" / row.name / "done").exists()
        assert done == (row.state == "succeeded"), row
        if row.state == "pruned":
            assert row.steps == 2 and "pruned after 2 reports" in row.reason

    succeeded = table[table.state == "succeeded"]
    best_row = succeeded.loc[succeeded.value.idxmax()]
    assert result.best_trial == best_row["name"]
    assert result.value == pytest.approx(best_row.value)
    assert result.params == {
        "model": best_row.model,
        "train.lr": pytest.approx(best_row["train.lr"]),
    }
    assert result.params["model"] == "good"
    # value = the best epoch (strategy max); val_loss = its minimum
    assert (succeeded.value > 0).all() and (
        succeeded.val_loss == (1 - succeeded.value).round(4)
    ).all()

    best = json.loads((out / "best.json").read_text())
    assert best["params"]["model"] == "good"
    assert (
        best["overrides"]
        == result.overrides
        == ["model=good", f"train.lr={result.params['train.lr']!r}"]
    )
    assert best["states"]["pruned"] == states["pruned"]

    # each trial got the same argv shape as `docsort train`, with unbuffered output
    seen = json.loads((out / "trials" / "trial-000" / "argv.json").read_text())
    assert seen["unbuffered"] == "1"
    assert seen["args"][:3] == [str(prep), "--out", str(out / "trials" / "trial-000")]
    assert seen["args"][3:5] == ["fold=0", "train.epochs=6"]


def test_failed_trials_stop_the_sweep_at_max_failed_trial_count_with_reasons(
    tmp_path: Path, fake_command
):
    space = space_dict(
        early_stopping=None,
        max_failed_trial_count=1,
        parameters=[{"name": "model", "type": "categorical", "list": ["good", "broken"]},
                    {"name": "train.lr", "type": "double", "min": 1e-3, "max": 1e-2}],
    )  # fmt: skip
    out = tmp_path / "sweep"
    with pytest.raises(SweepFailed) as err:
        run_local_sweep("prep", space, out, command=fake_command)
    msg = str(err.value)
    assert "\n" not in msg  # the CLI prints it as one line
    assert "2 trials failed (max_failed_trial_count=1)" in msg
    assert "exit 1: ValueError: model 'broken' is not registered" in msg

    table = pd.read_csv(out / "trials.csv")
    failed = table[table.state == "failed"]
    assert len(failed) == 2 and len(table) < 12  # Katib's rule: the 2nd failure > 1 stops it
    assert set(failed.model) == {"broken"}
    assert (failed.reason == "exit 1: ValueError: model 'broken' is not registered").all()
    for name in failed.name:
        assert name in msg
    assert err.value.result is not None and len(err.value.result.failed) == 2
    assert not (out / "best.json").exists()  # a failed sweep has no "best" to pick up


def test_goal_reached_stops_the_sweep_early(tmp_path: Path, fake_command):
    space = space_dict(objective={"metric": "val_macro_f1", "type": "maximize", "goal": 0.5},
                       early_stopping=None,
                       parameters=[{"name": "train.lr", "type": "double", "min": 0.003, "max": 0.0035}])  # fmt: skip
    result = run_local_sweep("prep", space, tmp_path / "s", command=fake_command)
    assert len(result.trials) == 1 and result.value >= 0.5


def test_a_second_sweep_into_the_same_folder_is_refused_and_keeps_the_trials(
    tmp_path: Path, fake_command
):
    from tests.scenario import snapshot

    space = space_dict(objective={"metric": "val_macro_f1", "type": "maximize", "goal": 0.5},
                       early_stopping=None,
                       parameters=[{"name": "train.lr", "type": "double", "min": 0.003, "max": 0.0035}])  # fmt: skip
    run_local_sweep("prep", space, tmp_path / "s", command=fake_command)
    before = snapshot(tmp_path / "s")
    with pytest.raises(DocsortError, match="trials of an earlier sweep") as err:
        run_local_sweep("prep", space, tmp_path / "s", command=fake_command)
    assert "trial-000" in str(err.value)
    assert snapshot(tmp_path / "s") == before


def test_trials_without_metric_lines_or_over_time_fail_with_a_reason(tmp_path: Path, fake_command):
    space = space_dict(
        early_stopping=None,
        max_trial_count=2,
        max_failed_trial_count=2,
        algorithm={"name": "grid"},
        parameters=[{"name": "model", "type": "categorical", "list": ["silent", "slow"]}],
    )
    with pytest.raises(SweepFailed, match="no successful trial"):
        run_local_sweep(
            "prep", space, tmp_path / "s", n_trials=2, command=fake_command, trial_timeout_s=2
        )
    table = pd.read_csv(tmp_path / "s" / "trials.csv").set_index("model")
    assert table.loc["silent", "reason"] == "no val_macro_f1= line in the trial's stdout"
    assert table.loc["slow", "reason"] == "timed out after 2s"
    assert (table.state == "failed").all()


def test_unknown_backend_is_a_config_error(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"choose from \['katib', 'local'\]"):
        sweep.run_sweep("prep", "cpu_small", tmp_path, backend="slurm")


# --------------------------------------------------------------------------- the real trainer


TINY = [
    "data.image_size=64",
    "model=resnet10t",
    "train.scheduler=cosine",
    "tracking.wandb=disabled",
]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """Tiny real data: 3 images per class, 2 folds, 64 px (the lead's sample generator + prepare)."""
    from docsort.data.sample import generate_sample_data

    root = tmp_path_factory.mktemp("tiny")
    generate_sample_data(root / "raw", per_class=3)
    cli = [sys.executable, "-m", "docsort.cli.main"]
    subprocess.run([*cli, "prepare", str(root / "raw"), "--out", str(root / "prep"),
                    "data.num_folds=2", "data.image_size=64"], check=True, capture_output=True)  # fmt: skip
    return root / "prep"


@pytest.mark.slow
def test_local_sweep_runs_the_real_trainer(prepared: Path, tmp_path: Path):
    out = tmp_path / "sweep"
    result = run_local_sweep(
        prepared, "cpu_small", out, n_trials=2, fixed_overrides=[*TINY, "train.epochs=2"]
    )
    table = pd.read_csv(out / "trials.csv")
    assert list(table.state) == ["succeeded", "succeeded"]
    assert set(result.params) == {"train.lr", "train.weight_decay", "train.label_smoothing"}
    assert 0.0 <= result.value <= 1.0
    for name in table.name:
        assert (out / "trials" / name / "metrics.json").exists()
        lines = (out / "trials" / name / "stdout.log").read_text().splitlines()
        assert [ln for ln in lines if ln.startswith("epoch=")] == ["epoch=1", "epoch=2"]
