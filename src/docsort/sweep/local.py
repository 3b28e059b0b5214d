"""The local twin of a Katib Experiment: the same trials as ``docsort train`` subprocesses under Optuna.

It reads the same ``name=value`` metric lines with the same regex as Katib's
StdOut collector, prunes with a median rule configured like Katib's
``medianstop`` and stops on ``max_failed_trial_count`` with Katib's rule.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from docsort.core import console, outputs
from docsort.core.errors import ConfigError, DocsortError
from docsort.sweep import search_space
from docsort.sweep.results import (
    TRIALS_DIR,
    FailedTrial,
    SweepFailed,
    SweepResult,
    aggregate,
    describe_failures,
    read_trial_record,
    trial_record,
    trials_frame,
    write_outputs,
    write_trial_record,
)
from docsort.sweep.search_space import (
    ALGORITHMS,
    Param,
    SearchSpace,
    check_overrides,
    check_space_against_config,
    format_value,
    load_space,
    parse_metric_line,
    trial_overrides,
)

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- local twin

#: Builds a trial's argv from (prepared data, trial output folder, overrides).
Command = Callable[[str, Path, list[str]], list[str]]


def default_command(prepared: str, trial_dir: Path, overrides: list[str]) -> list[str]:
    """``python -m docsort.cli.main train --prepared PREPARED --out DIR overrides...`` with this interpreter."""
    return [
        sys.executable,
        "-m",
        "docsort.cli.main",
        "train",
        "--prepared",
        prepared,
        "--out",
        str(trial_dir),
        *overrides,
    ]


class _TrialFailed(Exception):
    """A trial ended badly; the message is the reason recorded in the table."""


def _hyperopt_gamma(gamma: float) -> Callable[[int], int]:
    """hyperopt's TPE split (``ceil(gamma * sqrt(n))`` good trials, at most 25) for Optuna."""
    return lambda n: min(int(math.ceil(gamma * math.sqrt(n))), 25)


#: Katib settings the local twin has no Optuna counterpart for (Optuna 4.9+ deprecates them).
KATIB_ONLY = {
    "tpe": ("prior_weight",),
    "cmaes": ("restart_strategy",),
    "bayesianoptimization": ("base_estimator", "acq_func", "acq_optimizer"),
}


def _sampler(space: SearchSpace):
    """The Optuna sampler that mirrors the Katib service running ``space.algorithm``.

    The space's settings use Katib's names (see ``search_space.KATIB_ALGORITHMS``);
    here they become the Optuna sampler's arguments, so one YAML drives both backends.
    """
    import warnings

    import optuna

    ignored = sorted(set(KATIB_ONLY.get(space.algorithm, ())) & set(space.algorithm_settings))
    if ignored:
        log.info("%s settings %s apply on Katib only", space.algorithm, ignored)
    with warnings.catch_warnings():  # Optuna's experimental/deprecation notices, not the user's
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return _make_sampler(space)


def _make_sampler(space: SearchSpace):
    import optuna

    s = space.algorithm_settings
    seed = int(s["random_state"]) if "random_state" in s else None
    alg = space.algorithm
    samplers = optuna.samplers
    if alg == "random":
        return samplers.RandomSampler(seed=seed)
    if alg == "tpe":
        # Katib's hyperopt service: the first request (parallelTrialCount trials) is random,
        # then independent TPE with hyperopt's split and no constant liar.
        return samplers.TPESampler(
            seed=seed,
            n_startup_trials=space.parallel_trial_count,
            n_ei_candidates=int(s.get("n_EI_candidates", 24)),
            gamma=_hyperopt_gamma(float(s.get("gamma", 0.25))),
            constant_liar=False,
        )
    if alg == "multivariate-tpe":
        # Katib's optuna service: TPESampler(multivariate=True, constant_liar=True, ...)
        return samplers.TPESampler(
            seed=seed,
            multivariate=True,
            constant_liar=True,
            n_startup_trials=int(s.get("n_startup_trials", 10)),
            n_ei_candidates=int(s.get("n_ei_candidates", 24)),
        )
    if alg == "cmaes":
        # Katib's goptuna service: no random start-up trials
        sigma = float(s["sigma"]) if "sigma" in s else None
        return samplers.CmaEsSampler(seed=seed, n_startup_trials=0, sigma0=sigma)
    if alg == "sobol":
        return samplers.QMCSampler(qmc_type="sobol", scramble=False)
    if alg == "grid":
        return samplers.GridSampler(grid_values(space), seed=seed)
    if alg == "bayesianoptimization":
        n_init = int(s.get("n_initial_points", 10))
        return samplers.GPSampler(seed=seed, n_startup_trials=n_init)
    if alg == "hyperband":
        # Katib's hyperband service samples each bracket's configurations at random.
        return samplers.RandomSampler(seed=seed)
    raise ConfigError(f"unknown algorithm {alg!r}; choose from {list(ALGORITHMS)}")


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
    """Every grid point per parameter of ``space`` (Katib's grid)."""
    return search_space.grid_values(space.parameters)


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
    # docsort made this folder for the trial's `docsort train`: marked so, the logs beside
    # the member do not make train refuse it as someone else's folder
    outputs.write_marker(trial_dir, "train")
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


def trial_line(study, frozen, space: SearchSpace) -> str:
    """One line per finished trial, like Optuna's own log: state, value, time, params, best so far."""
    import optuna

    name = frozen.user_attrs.get("name", f"trial-{frozen.number:03d}")
    params = " ".join(f"{k}={v}" for k, v in frozen.user_attrs.get("params", {}).items())
    took = console.fmt_seconds(frozen.duration.total_seconds()) if frozen.duration else "-"
    state = _state_of(frozen)
    what = f"{space.metric}={frozen.value:.4f}" if state == "succeeded" else state
    if state != "succeeded" and frozen.user_attrs.get("reason"):
        what += f" ({frozen.user_attrs['reason']})"
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = ""
    if done:
        pick = max if space.maximize else min
        b = pick(done, key=lambda t: t.value)
        best = f"; best {b.user_attrs.get('name', b.number)} {b.value:.4f}"
    return f"{name}: {what} in {took}  [{params}]{best}"


def _state_of(frozen) -> str:
    import optuna

    return {
        optuna.trial.TrialState.COMPLETE: "succeeded",
        optuna.trial.TrialState.PRUNED: "pruned",
        optuna.trial.TrialState.FAIL: "failed",
        optuna.trial.TrialState.RUNNING: "running",
        optuna.trial.TrialState.WAITING: "pending",
    }[frozen.state]


@outputs.stage("sweep", inputs=("prepared_dir",), folder="out_dir", mode="add")
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
    earlier = sorted((out / TRIALS_DIR).iterdir()) if (out / TRIALS_DIR).is_dir() else []
    if earlier:  # the study lives in memory and never resumes: never delete an earlier sweep
        raise DocsortError(
            f"holds the trials of an earlier sweep ({earlier[0].name}, ...); "
            "choose a new --out (the earlier trials are kept)",
            file=str(out),
        )
    (out / TRIALS_DIR).mkdir(parents=True, exist_ok=True)
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
        argv = run(prepared, out / TRIALS_DIR / name, args)
        trial.set_user_attr("name", name)
        trial.set_user_attr("params", {k: format_value(v) for k, v in params.items()})
        log.info("%s: %s", name, " ".join(args))
        try:
            value = _run_trial(
                trial,
                sp,
                argv,
                out / TRIALS_DIR / name,
                {**base_env, "WANDB_NAME": name},
                per_trial_timeout,
            )
        except _TrialFailed as exc:
            trial.set_user_attr("reason", str(exc))
            log.warning("%s failed: %s", name, exc)
            raise
        # the same layout as a Katib trial's: the member, then trial.json last
        write_trial_record(out / TRIALS_DIR / name, trial_record(args, prepared))
        return value

    def stop_rules(study, frozen) -> None:
        failed = sum(t.state == optuna.trial.TrialState.FAIL for t in study.trials)
        if failed > sp.max_failed_trial_count:  # Katib: failed > maxFailedTrialCount
            study.stop()
        if frozen.state == optuna.trial.TrialState.COMPLETE and sp.goal is not None:
            reached = frozen.value >= sp.goal if sp.maximize else frozen.value <= sp.goal
            if reached:
                log.info("goal %s=%g reached by trial %d", sp.metric, sp.goal, frozen.number)
                study.stop()

    def report(study, frozen) -> None:
        console.say(trial_line(study, frozen, sp))

    study.optimize(
        objective,
        n_trials=n_trials or sp.max_trial_count,
        timeout=timeout_s,
        n_jobs=parallel,
        catch=(_TrialFailed,),
        callbacks=[stop_rules, report],
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
    if best is not None:
        folder = out / TRIALS_DIR / best.user_attrs["name"]
        result.model_record = read_trial_record(folder)
        result.model_uri = str(folder) if result.model_record else None
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
