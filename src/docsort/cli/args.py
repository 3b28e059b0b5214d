"""What every ``docsort`` subcommand shares: the parser class, the common arguments, input checks.

Light on purpose (argparse only): the parser is built, and its arguments checked,
before any stage module (and so torch) is imported.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import os
import re
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import NoReturn

from docsort.core.errors import DocsortError, safe_text

_INVALID_CHOICE = re.compile(r"invalid choice: '(?P<value>[^']*)' \(choose from (?P<choices>.*)\)$")


class Parser(argparse.ArgumentParser):
    """argparse with docsort's one-line errors: ``docsort: error: ...`` and exit status 2."""

    def error(self, message: str) -> NoReturn:
        m = _INVALID_CHOICE.search(message)
        if m:
            choices = re.findall(r"'([^']*)'", m["choices"])
            close = difflib.get_close_matches(m["value"], choices, n=1)
            if close:
                message = f"{message}; did you mean {close[0]!r}?"
        self.exit(2, safe_text(f"docsort: error: {message} (see `{self.prog} --help`)") + "\n")

    def format_help(self) -> str:
        with _shown_as_required(self._actions):
            return super().format_help()


@contextlib.contextmanager
def _shown_as_required(actions: Iterable[argparse.Action]) -> Iterator[None]:
    """Show a moved ``--prepared`` as required in ``--help``; ``main`` enforces it, so that an
    old positional prepared folder gets its own message instead of argparse's."""
    moved = [a for a in actions if getattr(a, "moved_prepared", False)]
    for a in moved:
        a.required = True
    try:
        yield
    finally:
        for a in moved:
            a.required = False


def add_command(
    sub: argparse._SubParsersAction, name: str, help: str, *, overrides: bool = False
) -> argparse.ArgumentParser:
    """A subcommand whose ``--help`` starts with ``help``; ``overrides``: it takes Hydra overrides."""
    p = sub.add_parser(name, help=help, description=help)
    if overrides:
        add_overrides(p)
    return p


def add_overrides(p: argparse.ArgumentParser, example: str = "model=resnet18 train.epochs=3"):
    """Trailing ``NAME=VALUE`` Hydra overrides (``main`` also takes them after options)."""
    p.add_argument(
        "overrides", nargs="*", metavar="NAME=VALUE", help=f"config overrides, e.g. {example}"
    )


def add_prepared(p: argparse.ArgumentParser, help: str | None = None, *, moved: bool = False):
    """``--prepared DIR``; ``moved``: the command took it as its first positional before, so
    ``main`` checks that it is given (and says where it went when it is not)."""
    text = help or "prepared data written by `docsort prepare`: folder or s3://bucket/prefix"
    action = p.add_argument(
        "--prepared", required=not moved, default=None, metavar="DIR", help=text
    )
    action.moved_prepared = moved


def check_moved_prepared(
    parser: argparse.ArgumentParser, args: argparse.Namespace, extra: Iterable[str]
) -> None:
    """The prepared folder of train/predict/submission/sweep is ``--prepared DIR`` now: an old
    positional one is refused in one line naming the new form. ``parser``: the subcommand's."""
    if args.prepared is not None:
        return
    stray = [a for a in (*getattr(args, "overrides", ()), *extra) if "=" not in a and a[:1] != "-"]
    if stray:
        parser.error(
            f"the prepared folder is now --prepared DIR "
            f"(docsort {args.command} --prepared {stray[0]} ...)"
        )
    parser.error("the following arguments are required: --prepared")


#: Where a stage command writes when ``--out`` is not given: ``runs/<command>/<UTC time>``.
RUNS = "runs"
STAMP = "%Y-%m-%d_%H-%M-%S"


def add_out(p: argparse.ArgumentParser, command: str, help: str) -> None:
    """An optional ``--out DIR``: without it the command writes to a new dated folder under
    ``runs/<command>/`` (see :func:`resolve_out`), so a quick run needs no name."""
    p.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help=f"{help} (default: a new {RUNS}/{command}/<UTC time>)",
    )
    p.set_defaults(out_command=command)


def run_folder(
    command: str, *, root: str | os.PathLike = RUNS, now: datetime | None = None
) -> Path:
    """Make and return a new ``root/command/<YYYY-mm-dd_HH-MM-SS>`` (UTC) folder; when that one
    exists, the first free ``...-2``, ``...-3``: made here, so two runs never share one."""
    stamp = (now or datetime.now(UTC)).strftime(STAMP)
    base = Path(root) / command
    for n in range(1, 10_000):
        path = base / (stamp if n == 1 else f"{stamp}-{n}")
        try:
            path.mkdir(parents=True)
        except FileExistsError:
            continue
        return path
    raise DocsortError(f"no free run folder for {stamp}", file=str(base))


def resolve_out(args: argparse.Namespace) -> str:
    """``args.out``, or a new run folder of the command when ``--out`` was not given (and a line
    on stderr naming it). Call it after the inputs are checked, so a refused command makes none."""
    if args.out is None:
        from docsort.core.console import say

        args.out = str(run_folder(args.out_command))
        say(f"writing to {args.out}")
    return args.out


def is_uri(path: str | os.PathLike) -> bool:
    """``s3://...`` and other URIs: their existence is the stage's to check (it needs a client)."""
    return "://" in str(path)


def present(path: str | os.PathLike | None) -> bool:
    """Whether an input passes :func:`exists`: there, a URI, or not given (``None``)."""
    return path is None or is_uri(path) or os.path.exists(path)


def exists(path: str | os.PathLike | None, what: str) -> None:
    """Refuse a local input named on the command line that is not there, in one line, before
    the stage (and torch) is imported; ``None`` (not given) and URIs pass."""
    if not present(path):
        raise DocsortError(f"{what} not found", file=str(path))


def exist(paths: Iterable[str | os.PathLike | None], what: str) -> None:
    """:func:`exists` for each of ``paths``."""
    for path in paths:
        exists(path, what)
