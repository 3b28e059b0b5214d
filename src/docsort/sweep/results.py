"""What a sweep returns, whichever backend ran it: trial states, the trials table, best.json.

Each trial keeps its member under ``<sweep output>/trials/<trial name>/`` (an
``s3://`` prefix on Katib, a folder for the local twin) with ``trial.json`` written
last: the overrides it trained with, its fold and the prepared data's version.
``best.json`` names the best trial's member, and :func:`reusable_model` tells the
pipeline's K-fold step when that member is exactly the one it would train.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from docsort.core.errors import DocsortError
from docsort.sweep.search_space import format_value, override_key

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- results

#: Trial states in the trials table, for both backends (Katib's EarlyStopped is "pruned").
STATES = ("succeeded", "pruned", "failed", "metrics_unavailable", "killed", "running", "pending")
#: A kept trial's record, written after everything else in its folder: present = complete.
TRIAL_RECORD = "trial.json"
#: Trial folders under a sweep's output: ``<sweep output>/trials/<trial name>/``.
TRIALS_DIR = "trials"
#: In the sweep step's result: the best trial's whole override list without ``fold``.
BEST_OVERRIDES = "best_overrides.txt"
#: Not copied to S3: resume state (optimizer included), useless once the trial is over.
_NOT_KEPT = ("checkpoints",)


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
    #: Where the best trial's member lies, and its trial record (overrides, fold, data version).
    model_uri: str | None = None
    model_record: dict[str, Any] | None = None

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
            "model_uri": self.model_uri,
            "trial_overrides": (self.model_record or {}).get("overrides"),
            "model_record": self.model_record,
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
) -> dict[str, str]:
    """Write ``trials.csv`` and, for a successful sweep, ``best.json`` (atomically), into a
    folder or an ``s3://`` prefix.

    A failed sweep gets only its trials table, so nothing downstream mistakes it
    for a finished one.
    """
    from docsort.core import storage

    if not storage.is_s3(out_dir):
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    table, best_file = storage.join(out_dir, "trials.csv"), storage.join(out_dir, "best.json")
    paths = {"trials": storage.write_text_atomic(table, result.trials.to_csv(index=False))}
    if best and result.best_trial is not None:
        text = json.dumps(result.best_json(), indent=2, sort_keys=False) + "\n"
        paths["best"] = storage.write_text_atomic(best_file, text)
    else:  # never a stale best beside a new table
        storage.remove(best_file)
    return paths


def aggregate(values: Sequence[float], strategy: str) -> float | None:
    """Katib's metric strategy over one trial's reports: max, min or latest."""
    if not values:
        return None
    return {"max": max, "min": min, "latest": lambda v: v[-1]}[strategy](values)


# --------------------------------------------------------------------------- trial members


def prepared_version(prepared: str | os.PathLike) -> str | None:
    """The version of a prepared folder or prefix: a hash of its ``prepared.json``.

    ``prepared.json`` holds the images' fingerprint, the folds' seed and count and
    the image spec; its ``source`` (where the raw data was read) is left out, so
    the same prepared data read from S3 or from a local copy has one version.
    ``None`` when there is no ``prepared.json`` to read.
    """
    from docsort.core import storage

    try:
        info = json.loads(storage.read_text(storage.join(prepared, "prepared.json")))
    except (DocsortError, OSError, ValueError):
        return None
    info.pop("source", None)
    return hashlib.sha256(json.dumps(info, sort_keys=True).encode()).hexdigest()[:24]


def _merged(overrides: Sequence[str]) -> dict[str, str]:
    """Overrides by key, a later one replacing an earlier one (Hydra's rule for one key)."""
    return {override_key(o): o for o in overrides}


def trial_record(overrides: Sequence[str], prepared: str | os.PathLike) -> dict[str, Any]:
    """What a trial's ``trial.json`` says: its overrides, its fold and the data version."""
    fold = _merged(overrides).get("fold", "fold=0").split("=", 1)[1]
    return {
        "overrides": list(overrides),
        "fold": int(fold) if fold.isdigit() else fold,
        "data_version": prepared_version(prepared),
    }


def write_trial_record(folder: str | os.PathLike, record: Mapping[str, Any]) -> str:
    """Write ``trial.json`` into a trial folder (local or ``s3://``), after everything else."""
    from docsort.core import storage

    text = json.dumps(dict(record), indent=2) + "\n"
    return storage.write_text_atomic(storage.join(folder, TRIAL_RECORD), text)


def read_trial_record(folder: str | os.PathLike) -> dict[str, Any] | None:
    """A trial folder's ``trial.json``, or ``None`` when the trial left no complete member."""
    from docsort.core import storage

    try:
        return json.loads(storage.read_text(storage.join(folder, TRIAL_RECORD)))
    except (DocsortError, OSError, ValueError):
        return None


def keep_member(local: str | os.PathLike, uri: str, record: Mapping[str, Any]) -> str:
    """Copy a trained member folder to ``uri`` (not its resume checkpoints), ``trial.json`` last."""
    from docsort.core import storage

    storage.upload_dir(local, uri, exclude=_NOT_KEPT)
    write_trial_record(uri, record)
    return uri


def train_to_s3(prepared: str | os.PathLike, uri: str, overrides: Sequence[str] = ()) -> str:
    """``docsort train --prepared PREPARED --out s3://...``: train in scratch space, keep the member on S3.

    A Katib trial's pod is gone once the trial ends; its member and metrics stay
    under ``uri`` (``<sweep output>/trials/<trial name>/``), complete once
    ``trial.json`` is there. Under torchrun only global rank 0 copies.
    """
    from docsort.train.train import train

    with tempfile.TemporaryDirectory(prefix="docsort-train-") as tmp:
        local = Path(tmp) / "member"
        train(prepared, local, overrides)
        if os.environ.get("RANK", "0") == "0":
            keep_member(local, uri, trial_record(overrides, prepared))
    return uri


def _best_of(result: SweepResult | Mapping[str, Any] | str | os.PathLike) -> Mapping[str, Any]:
    if isinstance(result, SweepResult):
        return result.best_json()
    if isinstance(result, Mapping):
        return result
    from docsort.core import storage

    try:
        return json.loads(storage.read_text(storage.join(result, "best.json")))
    except (DocsortError, OSError, ValueError):
        return {}


def reusable_model(
    result: SweepResult | Mapping[str, Any] | str | os.PathLike,
    fold: int,
    overrides: Sequence[str],
    data_version: str | None,
) -> str | None:
    """The best trial's member when it is the one ``train ... overrides fold=<fold>`` would make.

    ``result`` is a sweep result, its ``best.json`` or the folder holding it. The
    member is reused only when its fold, its data version and its overrides
    (by key, the last one of a key winning) all match and its ``trial.json`` is
    still there; anything else (another fold, more epochs, new data) trains anew.
    """
    best = _best_of(result)
    uri, run = best.get("model_uri"), best.get("model_record")
    if not uri or not run or data_version is None:
        return None
    wanted = _merged([*overrides, f"fold={fold}"])
    if str(run.get("fold")) != str(fold) or run.get("data_version") != data_version:
        return None
    if _merged(run.get("overrides") or []) != wanted:
        return None
    if read_trial_record(uri) != run:  # deleted or rewritten since the sweep
        return None
    return str(uri)


def reuse_member(
    result: str | os.PathLike,
    fold: int,
    overrides: Sequence[str],
    prepared: str | os.PathLike,
    out: str | os.PathLike,
) -> str | None:
    """Copy the sweep's best member into ``out`` if :func:`reusable_model` allows it; its URI."""
    from docsort.core import storage

    uri = reusable_model(result, fold, overrides, prepared_version(prepared))
    if uri is None:
        return None
    dest = Path(out)
    dest.mkdir(parents=True, exist_ok=True)
    if storage.is_s3(uri):
        storage.download_to(uri, dest, progress=False)
    else:
        shutil.copytree(uri, dest, dirs_exist_ok=True)
    log.info("reusing the sweep's best trial %s for fold %s (same overrides and data)", uri, fold)
    return uri


#: The member scores the pipeline's train step logs as KFP metrics.
MEMBER_METRICS = ("val_macro_f1", "val_loss", "oof_tta_macro_f1")


@dataclass
class Member:
    """What the pipeline's train step made: the overrides it trained with and its scores."""

    overrides: list[str]
    metrics: dict[str, float]
    #: The sweep trial's member it copied instead of training, if any.
    reused: str | None = None


def train_member(
    prepared: str | os.PathLike,
    out: str | os.PathLike,
    overrides: Sequence[str] = (),
    *,
    fold: int = -1,
    sweep: str | os.PathLike | None = None,
) -> Member:
    """The pipeline's train step: one member with a ``sweep`` result's best config (when
    given), then ``overrides``, then ``fold=<fold>`` when ``fold >= 0``.

    The sweep's best trial already trained this member when its overrides, fold and
    data match (:func:`reuse_member`); it is copied then, not trained again.
    """
    from docsort.train.train import train

    best = (Path(sweep) / BEST_OVERRIDES).read_text().split() if sweep is not None else []
    args = [*best, *overrides, *([f"fold={fold}"] if fold >= 0 else [])]
    kept = None
    if sweep is not None and fold >= 0:
        kept = reuse_member(sweep, fold, args, prepared, out)
    if kept is None:
        train(prepared, out, args)
    result = json.loads((Path(out) / "metrics.json").read_text())
    metrics = {k: float(result[k]) for k in MEMBER_METRICS if k in result}
    return Member(args, metrics, kept)
