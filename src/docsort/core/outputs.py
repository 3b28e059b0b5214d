"""Where a stage may write: never over its inputs, never into a folder docsort did not make.

Every stage function carries :func:`stage`, which, before the stage touches
the disk, checks its declared outputs against its declared inputs
(:func:`check_outputs`: equal, parent or child, after resolving symbolic
links, for local paths and ``s3://`` prefixes) and checks that an existing
output folder is one docsort made for the same kind of output (a ``.docsort``
marker file, see :func:`write_marker`). The KFP components call the same
functions, so a pipeline task gets the same checks as the command line. An
``OSError`` inside a stage (a full disk, a read-only folder) becomes one
``DocsortError`` line.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import json
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

from docsort.core.errors import DocsortError, from_os_error

#: The file every output folder docsort makes carries: ``{"kind": "<stage>"}``.
MARKER = ".docsort"

#: What a stage's output folder is: ``own`` means the stage writes fixed names in it
#: (it must be new, empty or docsort's folder of the same kind); ``add`` means the stage
#: only adds uniquely named entries (submission versions, pipeline runs) to any folder.
Mode = Literal["own", "add"]

_STAGE: contextvars.ContextVar[str | None] = contextvars.ContextVar("docsort_stage", default=None)
F = TypeVar("F", bound=Callable[..., Any])


def current_stage() -> str | None:
    """The kind of the innermost stage running now (what a new output folder is marked as)."""
    return _STAGE.get()


# ---------------------------------------------------------------- overlap


def _location(path: str | os.PathLike) -> tuple[str, tuple[str, ...]]:
    """``(root, segments)`` to compare paths by: the resolved local path, or bucket + key."""
    text = str(path)
    if text.startswith("s3://"):
        bucket, _, key = text[len("s3://") :].partition("/")
        return f"s3://{bucket}", tuple(s for s in key.split("/") if s)
    parts = Path(text).expanduser().resolve().parts
    return parts[0], tuple(parts[1:])


def _flatten(values: Iterable[Any]) -> list[str]:
    out: list[str] = []
    for v in values:
        if v is None or v == "":
            continue
        if isinstance(v, (list, tuple)):
            out += _flatten(v)
        elif isinstance(v, (str, os.PathLike)):  # a config mapping or object is not a path
            out.append(str(v))
    return out


def check_outputs(
    outputs: Iterable[Any], inputs: Iterable[Any], *, into: Iterable[Any] = ()
) -> None:
    """Refuse an output that is, contains or lies inside an input (one line naming both).

    ``into``: input folders a *file* output may be written inside (a report
    beside its comparison, ``model.onnx`` in its model folder); the output must
    still not be one of the inputs or contain one.
    """
    ins = [(p, _location(p)) for p in _flatten(inputs)]
    allowed = [_location(p) for p in _flatten(into)]
    for out in _flatten(outputs):
        root, segs = _location(out)
        for inp, (iroot, isegs) in ins:
            if root != iroot:
                continue
            if segs == isegs:
                how = "is the input"
            elif segs[: len(isegs)] == isegs:
                if (iroot, isegs) in allowed:
                    continue
                how = "lies inside the input"
            elif isegs[: len(segs)] == segs:
                how = "contains the input"
            else:
                continue
            raise DocsortError(f"output {how} {inp}; write outputs outside the inputs", file=out)


# ---------------------------------------------------------------- markers


def read_marker(folder: str | os.PathLike) -> str | None:
    """The kind recorded in ``folder/.docsort``, or None when docsort did not make the folder."""
    try:
        info = json.loads((Path(folder) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    kind = info.get("kind") if isinstance(info, dict) else None
    return kind if isinstance(kind, str) else None


def write_marker(folder: str | os.PathLike, kind: str) -> None:
    """Mark ``folder`` as a docsort ``kind`` output (so a later run may replace or resume it)."""
    (Path(folder) / MARKER).write_text(json.dumps({"kind": kind}) + "\n", encoding="utf-8")


def check_folder(folder: str | os.PathLike, kind: str) -> None:
    """Refuse to replace or write into an existing folder unless it is empty or docsort's ``kind``."""
    p = Path(folder)
    if p.is_symlink():
        raise DocsortError("output is a symbolic link; give the folder itself", file=str(folder))
    if not p.exists():
        return
    if not p.is_dir():
        raise DocsortError("output exists and is a file, not a folder", file=str(folder))
    if not any(p.iterdir()):
        return
    found = read_marker(p)
    if found is None:
        raise DocsortError(
            f"output exists and is not an empty folder, nor one docsort made (no {MARKER} "
            "marker); choose a new or empty folder",
            file=str(folder),
        )
    if found != kind:
        raise DocsortError(
            f"output folder holds a docsort {found} output, not a {kind} one; choose another folder",
            file=str(folder),
        )


def check_file(path: str | os.PathLike) -> None:
    """Refuse a file output that names an existing folder."""
    if not str(path).startswith("s3://") and Path(path).is_dir():
        raise DocsortError("output is an existing folder; give a file name", file=str(path))


# ---------------------------------------------------------------- the stage guard


def stage(
    kind: str,
    *,
    inputs: Sequence[str] = (),
    folder: str | None = None,
    mode: Mode = "own",
    files: Sequence[str] = (),
    into: Sequence[str] = (),
) -> Callable[[F], F]:
    """Declare what a stage function reads and writes, by parameter name, and guard it.

    Before the body runs: outputs (``folder``, ``files``) must not overlap the
    ``inputs`` (:func:`check_outputs`); a local output folder must be new,
    empty or a docsort ``kind`` folder (``add`` outputs only get new entries,
    so any folder will do); a file output must not be a folder. While the body
    runs, folders that :func:`docsort.core.atomic.atomic_path` makes are marked
    ``kind`` and an ``OSError`` becomes one ``DocsortError`` line naming the
    path; a new output folder the body made in place is marked afterwards.
    """

    def wrap(fn: F) -> F:
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            bound = sig.bind(*args, **kwargs)
            bound.apply_defaults()
            arg = bound.arguments
            out_dir = arg.get(folder) if folder else None
            out_files = _flatten(arg.get(n) for n in files)
            check_outputs(
                [out_dir, *out_files],
                [arg.get(n) for n in inputs],
                into=[arg.get(n) for n in into],
            )
            for f in out_files:
                check_file(f)
            local_dir = Path(out_dir) if out_dir and not str(out_dir).startswith("s3://") else None
            fresh = False
            if local_dir is not None and mode != "add":
                check_folder(local_dir, kind)
                fresh = not local_dir.exists() or not any(local_dir.iterdir())
            token = _STAGE.set(kind)
            try:
                return fn(*args, **kwargs)
            except OSError as err:
                raise from_os_error(err) from None
            finally:
                _STAGE.reset(token)
                if fresh and local_dir.is_dir() and read_marker(local_dir) is None:
                    with contextlib.suppress(OSError):  # a full disk: the stage's own error says so
                        write_marker(local_dir, kind)

        guarded.__docsort_stage__ = kind  # type: ignore[attr-defined]
        return guarded  # type: ignore[return-value]

    return wrap
