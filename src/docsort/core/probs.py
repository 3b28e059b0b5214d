"""Probability tables: the one format every stage uses to pass class probabilities.

A table is a CSV with ``ID`` first, then the predicted class for a person to
read (``pred_target``, and ``pred_name`` when the writer knows the class names),
optional columns such as ``target`` and ``fold`` (out-of-fold tables), then
``p0 .. p{K-1}``: column ``pN`` is the probability of target ``N``. Readers use
only ``ID`` and the ``pN`` block (plus ``target``/``fold`` where they need them),
so tables written before the prediction columns existed read the same. CSV keeps
them greppable and diffable; at the scale of a competition test set (thousands
of rows) it is fast enough.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from docsort.core.atomic import atomic_path
from docsort.core.csv_tables import read_table, refuse_blank, row_numbers
from docsort.core.errors import DocsortError

# How far a row's sum may be from 1. Tables are written with 6 significant digits
# (at most ~1e-5 off for 17 classes); anything further is not a distribution.
SUM_TOLERANCE = 1e-3
#: The predicted class, written after ``ID`` for people; no reader uses them.
PRED_TARGET, PRED_NAME = "pred_target", "pred_name"


def prob_columns(num_classes: int) -> list[str]:
    """Column names of the probability block for ``num_classes`` classes."""
    return [f"p{k}" for k in range(num_classes)]


#: How probabilities are written: 6 significant digits (a reader's argmax is taken on these).
FLOAT_FORMAT = "%.6g"


def as_written(probs: np.ndarray) -> np.ndarray:
    """``probs`` rounded as :data:`FLOAT_FORMAT` writes them, so a score or a predicted class
    computed before writing equals the one computed from the file (near-ties can flip)."""
    probs = np.asarray(probs, dtype=np.float64)
    return np.char.mod(FLOAT_FORMAT, probs).astype(np.float64) if probs.size else probs


def probs_frame(
    ids: Sequence[str],
    probs: np.ndarray,
    extra: Mapping[str, Sequence] | None = None,
    class_names: Sequence[str] | None = None,
) -> pd.DataFrame:
    """The table as written: ``ID``, ``pred_target`` [, ``pred_name``], ``extra``, ``p0..``."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[0] != len(ids):
        raise ValueError(f"probs shape {probs.shape} does not match {len(ids)} ids")
    probs = as_written(probs)  # the predicted class is the argmax a reader of the file gets
    if class_names is not None and len(class_names) != probs.shape[1]:
        raise ValueError(f"{len(class_names)} class names for {probs.shape[1]} classes")
    pred = probs.argmax(axis=1) if probs.shape[0] else np.zeros(0, dtype=np.int64)
    df = pd.DataFrame({"ID": list(ids), PRED_TARGET: pred})
    if class_names is not None:
        df[PRED_NAME] = [str(class_names[k]) for k in pred]
    for name, values in (extra or {}).items():
        df[name] = list(values)
    block = pd.DataFrame(probs, columns=prob_columns(probs.shape[1]))
    return pd.concat([df, block], axis=1)


def write_probs(
    path: str | os.PathLike,
    ids: Sequence[str],
    probs: np.ndarray,
    extra: Mapping[str, Sequence] | None = None,
    *,
    class_names: Sequence[str] | None = None,
) -> Path:
    """Write ``probs`` (N x K) for ``ids`` atomically (:func:`probs_frame` gives the columns).

    ``class_names`` (the prepared data's meta, or the model's) add ``pred_name``;
    without them the table carries the predicted id only.
    """
    df = probs_frame(ids, probs, extra, class_names)
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, float_format=FLOAT_FORMAT)
    return Path(path)


def read_probs(
    path: str | os.PathLike, num_classes: int | None = None
) -> tuple[list[str], np.ndarray, pd.DataFrame]:
    """Read and validate a probability table: ``(ids, probs N x K, whole frame)``.

    Every reader of a table goes through here, so a table that is not one
    distribution per image is refused wherever it is used (:func:`check_probs`).
    ``num_classes``, when known, must match the number of ``pN`` columns. The
    ``pred_target``/``pred_name`` columns are for people and are not checked.
    """
    path = Path(path)
    if not path.is_file():
        raise DocsortError("probability table not found", file=str(path))
    is_prob = re.compile(r"p[0-9]+").fullmatch
    df = read_table(path, text=lambda c: not is_prob(c) and c not in ("target", "fold"), ids=None)
    cols = sorted((c for c in df.columns if is_prob(c)), key=lambda c: int(c[1:]))
    if "ID" not in df.columns or not cols:
        raise DocsortError("not a probability table (needs ID and p0..pK columns)", file=str(path))
    refuse_blank(df, "ID", file=str(path))
    if cols != prob_columns(len(cols)):
        gap = next(c for c in prob_columns(len(cols) + 1) if c not in cols)
        raise DocsortError(
            f"probability columns must be p0..p{len(cols) - 1}; {gap} is missing", file=str(path)
        )
    if num_classes is not None and len(cols) != num_classes:
        raise DocsortError(
            f"has {len(cols)} probability columns, the data has {num_classes} classes",
            file=str(path),
        )
    for k, c in enumerate(cols):
        if not pd.api.types.is_numeric_dtype(df[c]):
            bad = pd.to_numeric(df[c], errors="coerce").isna() & df[c].notna()
            n = int(np.flatnonzero(bad.to_numpy())[0])
            raise DocsortError(
                f"{cols[k]}={df[c].iloc[n]!r} is not a number",
                file=str(path),
                row=row_numbers(df)[n],
            )
    probs = df[cols].to_numpy(dtype=np.float64)
    ids = df["ID"].tolist()
    check_probs(ids, probs, source=str(path), rows=(df.index.to_numpy() + 1).tolist())
    return ids, probs, df


def check_probs(
    ids: Sequence[str],
    probs: np.ndarray,
    *,
    source: str,
    rows: Sequence[int] | None = None,
    tolerance: float = SUM_TOLERANCE,
) -> None:
    """One distribution per image, or one line naming the file, the row and the problem.

    Every value finite and non-negative, each row summing to 1 within
    ``tolerance`` (tables are written with 6 significant digits, so a real
    distribution is off by at most about 1e-5), and no ID twice.
    """
    rows = list(rows) if rows is not None else list(range(1, len(ids) + 1))
    seen: dict[str, int] = {}
    for row, i in zip(rows, ids, strict=True):
        if i in seen:
            raise DocsortError(f"duplicate ID {i!r} (first at row {seen[i]})", file=source, row=row)
        seen[i] = row
    bad = ~np.isfinite(probs) | (probs < 0)  # with rows summing to 1, none can exceed 1
    if bad.any():
        r, k = (int(v) for v in np.argwhere(bad)[0])
        raise DocsortError(
            f"p{k}={float(probs[r, k]):.6g} is not a probability", file=source, row=rows[r]
        )
    sums = probs.sum(axis=1)
    off = np.abs(sums - 1.0) > tolerance
    if off.any():
        r = int(np.flatnonzero(off)[0])
        raise DocsortError(
            f"probabilities sum to {float(sums[r]):.6g}, not 1 (tolerance {tolerance:g}; "
            f"{int(off.sum())} such rows): not a distribution over the classes",
            file=source,
            row=rows[r],
        )


def align(
    ids: Sequence[str], probs: np.ndarray, order: Sequence[str], *, source: str
) -> np.ndarray:
    """Reorder ``probs`` to ``order``; every ID of ``order`` must be present."""
    pos = {i: n for n, i in enumerate(ids)}
    missing = [i for i in order if i not in pos]
    if missing:
        raise DocsortError(f"{len(missing)} IDs missing, first {missing[0]!r}", file=source)
    return probs[[pos[i] for i in order]]
