"""Stage ``submit``: a validated submission file, versioned, with its lineage.

Layout under the output root (a folder or ``s3://`` prefix)::

    submissions/<UTC timestamp>-<candidate>.csv
    submissions/<UTC timestamp>-<candidate>.lineage.json
    submissions/latest.json        {"submission": ..., "lineage": ...}

Each object is complete before it becomes visible (rename locally, one PUT on
S3). The lineage goes first, the CSV second, ``latest.json`` last: so any CSV
that exists has its lineage beside it, and a failure at any point (an S3
endpoint dying mid-upload, a full disk) leaves the previous ``latest`` pointing
at a complete submission. What a failed run can leave is a lineage record
without its CSV, which nothing treats as a submission.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import re
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from docsort import __version__, storage
from docsort.data import Meta, parse_ids, read_csv, read_meta
from docsort.errors import DocsortError
from docsort.prepared import Prepared
from docsort.probs import align, read_probs


def check_probs(
    ids: Sequence[str], probs: np.ndarray, sample_ids: Sequence[str], *, source: str
) -> None:
    """Refuse a probability table that cannot be the one for this test set: duplicate or
    unknown IDs, values that are not probabilities (NaN, inf, negative, above 1)."""
    seen: dict[str, int] = {}
    for row, i in enumerate(ids, start=1):
        if i in seen:
            raise DocsortError(f"duplicate ID {i!r} (first at row {seen[i]})", file=source, row=row)
        seen[i] = row
    known = set(sample_ids)
    extra = [(row, i) for row, i in enumerate(ids, start=1) if i not in known]
    if extra:
        row, first = extra[0]
        raise DocsortError(
            f"ID {first!r} is not in sample_submission.csv ({len(extra)} such rows)",
            file=source,
            row=row,
        )
    bad = ~np.isfinite(probs) | (probs < 0) | (probs > 1 + 1e-3)
    if bad.any():
        r, k = (int(v) for v in np.argwhere(bad)[0])
        raise DocsortError(
            f"p{k}={float(probs[r, k])!r} is not a probability", file=source, row=r + 1
        )


def build_submission(
    sample_ids: Sequence[str], ids: Sequence[str], probs: np.ndarray, meta: Meta, *, source: str
) -> pd.DataFrame:
    """Predicted targets in sample_submission order, checked row by row."""
    if probs.shape[1] != meta.num_classes:
        raise DocsortError(
            f"has {probs.shape[1]} classes, meta.csv has {meta.num_classes}", file=source
        )
    check_probs(ids, probs, sample_ids, source=source)
    ordered = align(ids, probs, sample_ids, source=source)
    df = pd.DataFrame({"ID": list(sample_ids), "target": ordered.argmax(1).astype(int)})
    validate_submission(df, sample_ids, meta, source=source)
    return df


def validate_submission(
    df: pd.DataFrame, sample_ids: Sequence[str], meta: Meta, *, source: str
) -> None:
    """Every sample ID exactly once, in order, with a label of meta.csv."""
    if list(df.columns) != ["ID", "target"]:
        raise DocsortError(f"columns must be ID,target, got {','.join(df.columns)}", file=source)
    if len(df) != len(sample_ids):
        raise DocsortError(
            f"{len(df)} rows, sample_submission.csv has {len(sample_ids)}", file=source
        )
    for row, (a, b) in enumerate(zip(df["ID"], sample_ids, strict=True), start=1):
        if a != b:
            raise DocsortError(
                f"ID {a!r} where sample_submission.csv has {b!r}", file=source, row=row
            )
    bad = ~df["target"].isin(range(meta.num_classes))
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0]) + 1
        raise DocsortError(
            f"label {df['target'].iloc[row - 1]} is not in meta.csv", file=source, row=row
        )


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def code_version() -> str:
    """Package version plus the git commit when running from a checkout."""
    try:
        here = Path(__file__).resolve().parent
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
        )
        if sha.returncode == 0 and sha.stdout.strip():
            return f"{__version__}+g{sha.stdout.strip()}"
    except (OSError, subprocess.SubprocessError):
        pass
    return __version__


def submit(
    prepared: str | os.PathLike,
    probs: str | os.PathLike,
    out: str,
    *,
    candidate: str = "candidate",
    spec: Mapping | None = None,
    checkpoints: Sequence[str | os.PathLike] = (),
    views: Sequence[str] = (),
    now: dt.datetime | None = None,
) -> str:
    """Write the submission for ``probs`` under ``out``; returns its URI."""
    if not re.fullmatch(r"[A-Za-z0-9._-]+", candidate):
        raise DocsortError(
            f"candidate name {candidate!r} may only use letters, digits, '.', '_' and '-'"
        )
    prep = Prepared(Path(prepared))
    meta = read_meta(prep.root / "meta.csv")
    sample_ids = parse_ids(
        read_csv(prep.root / "sample_submission.csv", ("ID", "target")),
        file="sample_submission.csv",
    )
    ids, p, _ = read_probs(probs)
    df = build_submission(sample_ids, ids, p, meta, source=str(probs))
    stamp = (now or dt.datetime.now(dt.UTC)).strftime("%Y%m%dT%H%M%SZ")
    name = f"{stamp}-{candidate}"
    folder = storage.join(out, "submissions")
    csv_uri = storage.join(folder, f"{name}.csv")
    lineage_uri = storage.join(folder, f"{name}.lineage.json")
    buf = io.StringIO()
    df.to_csv(buf, index=False)
    data = buf.getvalue().encode()
    lineage = {
        "submission": f"{name}.csv",
        "sha256": hashlib.sha256(data).hexdigest(),
        "created": stamp,
        "candidate": candidate,
        "spec": dict(spec or {}),
        "data_fingerprint": prep.info.get("fingerprint"),
        "checkpoints": {
            str(c): _sha256(Path(c) / "model.safetensors" if Path(c).is_dir() else Path(c))
            for c in checkpoints
        },
        "tta_views": list(views),
        "probabilities": str(probs),
        "code_version": code_version(),
        "rows": len(df),
        "class_counts": {
            meta.class_names[k]: int(v) for k, v in df["target"].value_counts().sort_index().items()
        },
    }
    storage.write_text_atomic(lineage_uri, json.dumps(lineage, indent=2))
    storage.write_bytes_atomic(csv_uri, data)
    storage.write_text_atomic(
        storage.join(folder, "latest.json"),
        json.dumps({"submission": f"{name}.csv", "lineage": f"{name}.lineage.json"}, indent=2),
    )
    return csv_uri


def latest(out: str) -> str | None:
    """URI of the newest complete submission under ``out``, if any."""
    pointer = storage.join(out, "submissions", "latest.json")
    if not storage.exists(pointer):
        return None
    try:
        name = json.loads(storage.read_text(pointer))["submission"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise DocsortError(
            "not a submission pointer (needs a JSON object with 'submission')", file=pointer
        ) from None
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9._-]+\.csv", name):
        raise DocsortError(f"points at {name!r}, not a submission file name", file=pointer)
    uri = storage.join(out, "submissions", name)
    if not storage.exists(uri):
        raise DocsortError(f"points at {name}, which does not exist", file=pointer)
    return uri
