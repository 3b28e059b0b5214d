"""What a component does with a stage's result: scalar metrics for the KFP UI."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path


def log_metrics(metrics, values: Mapping[str, float]) -> None:
    """Log ``values`` on a KFP ``Metrics`` output and write its file.

    kfp.local treats an output artifact without a file as missing, so a cached task
    would never hit without the file.
    """
    for key, value in values.items():
        metrics.log_metric(key, value)
    Path(metrics.path).write_text(json.dumps(metrics.metadata))
