"""Write outputs so that nothing half-written is ever visible under its final name.

Temporary names say who made them: ``.<name>.<host>-<pid>.<random>.tmp`` beside
the final path. A run killed before it could clean up leaves such a folder; the
next write of the same final path removes it once its owner process (on this
host) is gone, and never touches another live run's temporary or any name
docsort did not make.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

from docsort.core.outputs import check_folder, current_stage, write_marker


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"


def owner_tag() -> str:
    """``<host>-<pid>`` of this process, as temporary names carry it."""
    return f"{_host()}-{os.getpid()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def stale_temps(final: str | os.PathLike) -> list[Path]:
    """Temporaries of ``final`` left by dead docsort processes on this host."""
    final = Path(final)
    pattern = re.compile(
        rf"\.{re.escape(final.name)}\.{re.escape(_host())}-(?P<pid>\d+)\.[^/]*\.tmp"
    )
    try:
        entries = list(final.parent.iterdir())
    except OSError:
        return []
    out = []
    for p in entries:
        m = pattern.fullmatch(p.name)
        if m and int(m["pid"]) != os.getpid() and not _alive(int(m["pid"])):
            out.append(p)
    return out


def remove_stale_temps(final: str | os.PathLike) -> None:
    """Remove what :func:`stale_temps` finds (a killed run's leftovers)."""
    for p in stale_temps(final):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                p.unlink()


def temp_name(final: str | os.PathLike) -> Path:
    """A temporary file name beside ``final`` that :func:`remove_stale_temps` recognises."""
    final = Path(final)
    return final.with_name(f".{final.name}.{owner_tag()}.{os.urandom(4).hex()}.tmp")


@contextlib.contextmanager
def atomic_path(
    final: str | os.PathLike, *, is_dir: bool = False, kind: str | None = None
) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it into place only on success.

    On any exception the temporary file or folder is removed, so a crashed or
    interrupted stage leaves nothing that looks complete. A folder is marked as
    docsort's ``kind`` output (default: the running stage) and replaces an
    existing ``final`` only when that is empty or marked with the same kind:
    docsort never removes a folder it did not make.
    """
    final = Path(final)
    kind = kind or current_stage() or "folder"
    if is_dir:
        check_folder(final, kind)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(final)
    tmp = Path(
        tempfile.mkdtemp(prefix=f".{final.name}.{owner_tag()}.", suffix=".tmp", dir=final.parent)
    )
    try:
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp makes 0700; outputs should get the usual permissions
        if is_dir:
            write_marker(tmp, kind)
        target = tmp if is_dir else tmp / final.name
        yield target
        if is_dir:
            _replace_dir(tmp, final, kind)
        else:
            os.replace(target, final)
    except OSError as err:
        if err.filename is None:  # a write() that ran out of space names no file: this one
            err.filename = str(final)
        raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _replace_dir(tmp: Path, final: Path, kind: str) -> None:
    """Swap the finished folder ``tmp`` in for ``final`` (checked again: it may have appeared)."""
    check_folder(final, kind)
    if not final.exists():
        os.replace(tmp, final)
        return
    old = temp_name(final)
    os.rename(final, old)  # the old output stays whole until the new one is in place
    try:
        os.replace(tmp, final)
    except OSError:
        os.rename(old, final)
        raise
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def scratch_dir(final: str | os.PathLike) -> Iterator[Path]:
    """A working folder beside ``final`` for a stage's intermediates, removed when it ends.

    Named like :func:`atomic_path`'s temporaries, so one a killed run left is
    removed by the next run that writes ``final``.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(final)
    work = Path(
        tempfile.mkdtemp(prefix=f".{final.name}.{owner_tag()}.", suffix=".tmp", dir=final.parent)
    )
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary name and a rename."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
