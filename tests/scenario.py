"""Helpers for tests that drive docsort the way a user does: CLI commands in sequence.

``run_cli`` runs ``docsort ARGV`` in this process; ``one_line`` asserts the single
``docsort: error: ...`` line a refusal must print; ``snapshot`` records every file
under a folder (path -> sha256) so a test can assert the user's files are
byte-identical after a refused command.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
from pathlib import Path

from docsort.cli.main import main
from docsort.core.console import LOG_NAME


def run_cli(*argv: str | Path) -> tuple[int, str, str]:
    """``docsort ARGV`` in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main([str(a) for a in argv])
        except SystemExit as exc:  # argparse usage errors
            rc = exc.code if isinstance(exc.code, int) else 2
    return rc, out.getvalue(), err.getvalue()


def one_line(stderr: str) -> str:
    """The single ``docsort: error: ...`` line; fails on anything more (tracebacks, warnings)."""
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one line, got:\n{stderr}"
    assert lines[0].startswith("docsort: error: "), lines[0]
    return lines[0].removeprefix("docsort: error: ")


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` (relative path -> sha256 of its bytes), hidden files included,
    but the command logs: every command that succeeds appends to its ``--out``'s docsort.log."""
    root = Path(root)
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != LOG_NAME
    }
