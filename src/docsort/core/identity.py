"""A run knows what it is: the identity of a stage's work, recorded in its output folder.

A stage that resumes (``train``, ``predict``) writes ``run.json`` into its
output folder before any work: the keys that decide its result and their
values (for ``train`` the identity keys of the config schema, see
:func:`docsort.core.config.identity_keys`, plus the prepared data's fingerprint; for
``predict`` the model's weights, the images, the views, the merge, the runtime
and the precision). A re-run into the same folder then

- continues the work when the identity is the same and the run is unfinished;
- does nothing when the identity is the same and the run is complete;
- is refused with one line naming the keys that differ, unless the user passes
  ``--overwrite``, which removes what the stage writes in that folder (and only
  that) and starts again.

A key recorded on one side only (a setting added by a later docsort) is not a
difference.
"""

from __future__ import annotations

import fnmatch
import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

from docsort.core.atomic import write_text_atomic
from docsort.core.errors import DocsortError

RECORD = "run.json"


def read_record(folder: Path) -> dict | None:
    """The run record of ``folder``, None when it has none; an unreadable one is refused."""
    path = Path(folder) / RECORD
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        record = None
    if not isinstance(record, dict) or not isinstance(record.get("identity"), dict):
        raise DocsortError(
            f"{RECORD} is unreadable, so docsort cannot tell what this folder holds; "
            "use --overwrite to start again, or another --out",
            file=str(folder),
        )
    return record


def differences(was: Mapping[str, str], now: Mapping[str, str]) -> list[str]:
    """Keys whose values differ (keys recorded on one side only do not count)."""
    return [k for k in now if k in was and str(was[k]) != str(now[k])]


def mismatch_line(
    verb: str, was: Mapping[str, str], now: Mapping[str, str], keys: Sequence[str]
) -> str:
    """``was trained with train.lr=0.003, fold=0; this run asks train.lr=0.0001, fold=1 ...``.

    ``was`` and ``now`` map each key to the value as shown (which may add a path to a digest).
    """
    before = ", ".join(f"{k}={was[k]}" for k in keys)
    after = ", ".join(f"{k}={now[k]}" for k in keys)
    return (
        f"was {verb} with {before}; this run asks {after}; "
        "use --overwrite to start again, or another --out"
    )


def _matches(folder: Path, outputs: Sequence[str]) -> list[Path]:
    """Entries of ``folder`` that the stage writes (names or glob patterns of ``outputs``)."""
    if not folder.is_dir():
        return []
    return sorted(
        p for p in folder.iterdir() if any(fnmatch.fnmatchcase(p.name, pat) for pat in outputs)
    )


def clear(folder: Path, outputs: Sequence[str]) -> None:
    """Remove what the stage writes in ``folder`` (its record included); nothing else."""
    for p in _matches(folder, [*outputs, RECORD]):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)


def claim(
    folder: str | Path,
    stage: str,
    identity: Mapping[str, str],
    *,
    verb: str,
    outputs: Sequence[str],
    overwrite: bool = False,
    settings: Mapping | None = None,
    shown: Mapping[str, str] | None = None,
) -> dict:
    """Make ``folder`` this run's, before any work; returns its record.

    ``record["complete"]`` is True when the folder already holds this very work,
    finished. ``settings`` (not part of the identity: shard size, resolved
    precision) are recorded by a fresh run; a resumed run gets the recorded ones
    back in ``record["settings"]``, so it continues exactly as it began. ``shown``
    gives a key's value as a refusal names it (a digest with the path it came from).
    """
    folder = Path(folder)
    identity = {k: str(v) for k, v in identity.items()}
    record = read_record(folder)
    if record is not None:
        keys = differences(record["identity"], identity)
        if not keys:
            return record
        if not overwrite:
            was = {**record["identity"], **record.get("shown", {})}
            raise DocsortError(
                mismatch_line(verb, was, {**identity, **(shown or {})}, keys), file=str(folder)
            )
        clear(folder, outputs)
    else:
        found = _matches(folder, outputs)
        if found and not overwrite:
            raise DocsortError(
                f"holds {stage} outputs ({found[0].name}, ...) without a {RECORD}, so docsort "
                "cannot tell what they are; use --overwrite to start again, or another --out",
                file=str(folder),
            )
        clear(folder, outputs)
    folder.mkdir(parents=True, exist_ok=True)
    _mark(folder, stage)
    record = {"stage": stage, "identity": identity, "settings": dict(settings or {}),
              "shown": dict(shown or {}), "complete": False, "docsort": _version()}  # fmt: skip
    write_text_atomic(folder / RECORD, json.dumps(record, indent=2))
    return record


def complete(folder: str | Path) -> None:
    """Record that the work of ``folder`` is finished (the last write of a stage)."""
    folder = Path(folder)
    record = read_record(folder)
    if record is not None and not record.get("complete"):
        write_text_atomic(folder / RECORD, json.dumps({**record, "complete": True}, indent=2))


def _mark(folder: Path, stage: str) -> None:
    """Mark the folder as docsort's at the start, so a killed run's folder can be resumed."""
    from docsort.core import outputs

    if outputs.read_marker(folder) is None:
        outputs.write_marker(folder, stage)


def _version() -> str:
    import docsort

    return str(getattr(docsort, "__version__", "unknown"))
