"""Stage ``submission``: a validated submission file, versioned, with its lineage.

Layout under the output root (a folder or ``s3://`` prefix)::

    submissions/<UTC time>-<candidate>-<random>.csv
    submissions/<UTC time>-<candidate>-<random>.lineage.json
    submissions/latest.json        {"submission": ..., "lineage": ...}

A version name is never reused: the random part makes two submissions of one
candidate in the same second distinct, and each file is created exclusively
(a hard link, or S3's ``If-None-Match: *``), so even a collision cannot
overwrite a version. Each object is complete before it becomes visible (rename
locally, one PUT on S3). The lineage goes first, the CSV second, ``latest.json``
last (replaced atomically): so any CSV that exists has its lineage beside it,
and a failure at any point (an S3 endpoint dying mid-upload, a full disk)
leaves ``latest`` pointing at a complete submission. What a failed run can
leave is a lineage record without its CSV, which nothing treats as a submission.

Every route (``docsort submission``, ``docsort candidate submission``, the
pipelines' submission task) goes through :func:`write_submission`, which reads the lineage
from the files beside ``probs.csv``: the candidate spec (``candidate.yaml``)
or a single model's ``predict.json``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import io
import json
import os
import re
import secrets
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from docsort import __version__
from docsort.core import storage
from docsort.core.csv_tables import read_csv
from docsort.core.errors import DocsortError
from docsort.core.outputs import stage
from docsort.core.probs import align, read_probs
from docsort.data.contract import Meta, parse_ids, read_meta
from docsort.data.prepared import Prepared
from docsort.ensemble import combiners as ens
from docsort.ensemble import members as mem


def check_known(ids: Sequence[str], sample_ids: Sequence[str], *, source: str) -> None:
    """Refuse a probability table with IDs that are not test images of this dataset."""
    known = set(sample_ids)
    extra = [(row, i) for row, i in enumerate(ids, start=1) if i not in known]
    if extra:
        row, first = extra[0]
        raise DocsortError(
            f"ID {first!r} is not in sample_submission.csv ({len(extra)} such rows)",
            file=source,
            row=row,
        )


def build_submission(
    sample_ids: Sequence[str], ids: Sequence[str], probs: np.ndarray, meta: Meta, *, source: str
) -> pd.DataFrame:
    """Predicted targets in sample_submission order, checked row by row (``probs`` as
    :func:`docsort.core.probs.read_probs` returns it: already a validated distribution per row)."""
    check_known(ids, sample_ids, source=source)
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


def lineage_of(probs: str | os.PathLike) -> dict:
    """Where ``probs`` came from, read from the files ``docsort`` writes beside it.

    ``candidate.yaml`` (a candidate folder from ``docsort ensemble`` or
    ``candidate run``) gives the spec, its members' checkpoint hashes and TTA
    views; ``predict.json`` (one model's ``docsort predict`` folder) gives the
    model and its views. A table with neither still gets a submission (it may
    come from outside docsort), but its lineage says ``"spec": null`` and why.
    """
    folder = Path(probs).parent
    spec_file = folder / "candidate.yaml"
    if spec_file.is_file():
        spec = ens.load_spec(spec_file)
        checkpoints = {k: v for m in spec.members for k, v in _hashes(m.model).items()}
        views = list(dict.fromkeys(v for i in range(len(spec.members)) for v in spec.views_of(i)))
        return {"name": spec.name, "spec_file": str(spec_file.resolve()), "spec": spec.to_dict(),
                "checkpoints": checkpoints, "tta_views": views}  # fmt: skip
    run = folder / "predict.json"
    if run.is_file():
        try:
            info = json.loads(run.read_text())
            model, views = str(info["model"]), [str(v) for v in info["views"]]
        except (ValueError, KeyError, TypeError):
            raise DocsortError(
                "not a prediction record (needs model and views)", file=str(run)
            ) from None
        return {"name": None, "spec_file": None, "spec": None,
                "spec_note": f"a single model's predictions ({run.name}): no candidate spec",
                "model": model, "checkpoints": _hashes(model),
                "tta_views": views}  # fmt: skip
    return {"name": None, "spec_file": None, "spec": None, "checkpoints": {}, "tta_views": [],
            "spec_note": f"no candidate.yaml or predict.json beside {Path(probs).name}: "
                         "where these probabilities came from is unknown"}  # fmt: skip


def _hashes(model: str) -> dict[str, str | None]:
    """sha256 of a member's weight files; ``None`` for one that cannot be hashed here (an S3 URI)."""
    if not storage.is_s3(model) and Path(model).is_dir():
        with contextlib.suppress(DocsortError):  # not a model folder: recorded by path below
            return {str(f): _sha256(f) for f in mem.checkpoint_files(model)}
    if not storage.is_s3(model) and Path(model).is_file():
        return {model: _sha256(Path(model))}
    return {model: None}


def version_name(candidate: str, now: dt.datetime | None = None) -> str:
    """``<UTC time>-<candidate>-<6 random hex>``: sorts by time, never the same twice."""
    stamp = (now or dt.datetime.now(dt.UTC)).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{candidate}-{secrets.token_hex(3)}"


@stage("submission", inputs=("prepared", "probs"), folder="out", mode="add")
def write_submission(
    prepared: str | os.PathLike,
    probs: str | os.PathLike,
    out: str,
    *,
    candidate: str | None = None,
    now: dt.datetime | None = None,
    version: str | None = None,
) -> str:
    """Write the submission for ``probs`` under ``out`` with its full lineage; returns its URI.

    ``candidate`` names the version (default: the spec's name beside ``probs``,
    else ``candidate``). ``version`` reuses a name made by :func:`version_name`
    (one submission written to two roots); it must be new under ``out``.
    """
    lineage_src = lineage_of(probs)
    candidate = candidate or lineage_src["name"] or "candidate"
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
    ids, p, _ = read_probs(probs, meta.num_classes)
    df = build_submission(sample_ids, ids, p, meta, source=str(probs))
    folder = storage.join(out, "submissions")
    buf = io.StringIO()
    df.to_csv(buf, index=False)
    data = buf.getvalue().encode()
    now = now or dt.datetime.now(dt.UTC)
    lineage = {
        "sha256": hashlib.sha256(data).hexdigest(),
        "created": now.strftime("%Y%m%dT%H%M%SZ"),
        "candidate": candidate,
        **{k: v for k, v in lineage_src.items() if k != "name"},
        "data_fingerprint": prep.info.get("fingerprint"),
        "probabilities": str(Path(probs).resolve()),
        "probabilities_sha256": _sha256(Path(probs)),
        "code_version": code_version(),
        "rows": len(df),
        "class_counts": {
            meta.class_names[k]: int(v) for k, v in df["target"].value_counts().sort_index().items()
        },
    }
    for attempt in range(8):
        name = version or version_name(candidate, now)
        lineage_uri = storage.join(folder, f"{name}.lineage.json")
        record = {"submission": f"{name}.csv", **lineage}
        try:
            storage.write_bytes_new(lineage_uri, json.dumps(record, indent=2).encode())
            break
        except FileExistsError:
            if version is not None or attempt == 7:
                raise DocsortError(
                    f"submission version {name} exists already; versions are never overwritten",
                    file=lineage_uri,
                ) from None
    csv_uri = storage.join(folder, f"{name}.csv")
    written = [lineage_uri]
    try:
        try:
            storage.write_bytes_new(csv_uri, data)
        except FileExistsError:
            raise DocsortError(
                "exists already without its lineage; versions are never overwritten", file=csv_uri
            ) from None
        written.append(csv_uri)
        storage.write_text_atomic(
            storage.join(folder, "latest.json"),
            json.dumps({"submission": f"{name}.csv", "lineage": f"{name}.lineage.json"}, indent=2),
        )
    except BaseException:  # a full disk, a dead endpoint, Ctrl-C: a failed run leaves nothing
        for uri in reversed(written):
            with contextlib.suppress(Exception):
                storage.remove(uri)
        raise
    if lineage_src.get("spec_note"):  # say so where the user sees it, not only in the file
        print(f"lineage: spec null ({lineage_src['spec_note']})", file=sys.stderr)
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


# ---------------------------------------------------------------- submission


@stage("submission", inputs=("prepared", "candidate"), folder="out", mode="add")
def write_candidate_submission(
    prepared: str | os.PathLike,
    candidate: str | os.PathLike,
    out: str,
    *,
    version: str | None = None,
) -> str:
    """A candidate folder's submission: :func:`write_submission` of its probs.csv (lineage from its spec)."""
    cand = Path(candidate)
    ens.load_spec(cand / "candidate.yaml")  # a candidate folder must carry its spec
    return write_submission(prepared, cand / "probs.csv", str(out), version=version)


def write_winner_submission(
    prepared: str | os.PathLike,
    comparison: str | os.PathLike,
    out: str | os.PathLike,
    output_root: str | None = None,
) -> str:
    """The submission of a hard-case comparison's winner (also to ``output_root`` if given, same version name)."""
    winner = Path(comparison) / "winner"
    uri = write_candidate_submission(prepared, winner, str(out))
    if output_root:
        version = uri.rsplit("/", 1)[-1].removesuffix(".csv")
        uri = write_candidate_submission(prepared, winner, output_root, version=version)
    return uri
