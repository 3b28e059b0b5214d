"""What a sweep returns, whichever backend ran it: trial states, the trials table, best.json."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from docsort.atomic import write_text_atomic
from docsort.errors import DocsortError
from docsort.search_space import format_value

log = logging.getLogger(__name__)


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
