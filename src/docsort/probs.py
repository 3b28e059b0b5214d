"""Probability tables: the one format every stage uses to pass class probabilities.

A table is a CSV with ``ID`` first, optional columns such as ``target`` and
``fold`` (out-of-fold tables), then ``p0 .. p{K-1}``: column ``pN`` is the
probability of target ``N``. CSV keeps them greppable and diffable; at the
scale of a competition test set (thousands of rows) it is fast enough.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from docsort.atomic import atomic_path
from docsort.errors import DocsortError


def prob_columns(num_classes: int) -> list[str]:
    """Column names of the probability block for ``num_classes`` classes."""
    return [f"p{k}" for k in range(num_classes)]


def write_probs(
    path: str | os.PathLike,
    ids: Sequence[str],
    probs: np.ndarray,
    extra: Mapping[str, Sequence] | None = None,
) -> Path:
    """Write ``probs`` (N x K) for ``ids`` atomically; ``extra`` columns go after ``ID``."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[0] != len(ids):
        raise ValueError(f"probs shape {probs.shape} does not match {len(ids)} ids")
    df = pd.DataFrame({"ID": list(ids)})
    for name, values in (extra or {}).items():
        df[name] = list(values)
    block = pd.DataFrame(probs, columns=prob_columns(probs.shape[1]))
    df = pd.concat([df, block], axis=1)
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, float_format="%.6g")
    return Path(path)


def read_probs(path: str | os.PathLike) -> tuple[list[str], np.ndarray, pd.DataFrame]:
    """Read a probability table: ``(ids, probs N x K, whole frame)``."""
    path = Path(path)
    if not path.is_file():
        raise DocsortError("probability table not found", file=str(path))
    try:
        df = pd.read_csv(path, dtype={"ID": str})
    except (ValueError, UnicodeDecodeError) as err:  # pandas' parse errors are ValueErrors
        raise DocsortError(
            f"cannot parse CSV: {(str(err).splitlines() or [type(err).__name__])[0]}",
            file=str(path),
        ) from None
    cols = [c for c in df.columns if c.startswith("p") and c[1:].isdigit()]
    cols.sort(key=lambda c: int(c[1:]))
    if "ID" not in df.columns or not cols:
        raise DocsortError("not a probability table (needs ID and p0..pK columns)", file=str(path))
    if cols != prob_columns(len(cols)):
        raise DocsortError(f"probability columns must be p0..p{len(cols) - 1}", file=str(path))
    try:
        probs = df[cols].to_numpy(dtype=np.float64)
    except (TypeError, ValueError):
        r, k = np.argwhere(df[cols].apply(pd.to_numeric, errors="coerce").isna().to_numpy())[0]
        raise DocsortError(
            f"{cols[k]}={df[cols[k]].iloc[r]!r} is not a number", file=str(path), row=int(r) + 1
        ) from None
    return df["ID"].tolist(), probs, df


def align(
    ids: Sequence[str], probs: np.ndarray, order: Sequence[str], *, source: str
) -> np.ndarray:
    """Reorder ``probs`` to ``order``; every ID of ``order`` must be present."""
    pos = {i: n for n, i in enumerate(ids)}
    missing = [i for i in order if i not in pos]
    if missing:
        raise DocsortError(f"{len(missing)} IDs missing, first {missing[0]!r}", file=source)
    return probs[[pos[i] for i in order]]
