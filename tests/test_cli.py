"""The ``docsort`` parser: every argument described, and bad command lines refused fast.

"Fast" is asserted as behaviour, not time: a refused command line never imports
torch (the stage modules are imported only after the arguments and the local
inputs they name have been checked).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from docsort.cli.main import build_parser


def _parsers(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """The parser and every subcommand parser under it, nested ones included."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, (*path, name))


PARSERS = list(_parsers(build_parser()))


def test_the_walk_reaches_nested_subcommands():
    names = {" ".join(path) for path, _ in PARSERS}
    assert {"train", "candidate run", "candidate submission", "hardcases add", "sweep"} <= names


@pytest.mark.parametrize(
    ("path", "parser"), PARSERS, ids=[" ".join(p) or "docsort" for p, _ in PARSERS]
)
def test_every_argument_has_a_one_line_help(path: tuple[str, ...], parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        text = action.help or ""
        name = "/".join(action.option_strings) or action.dest
        assert text.strip() and text != argparse.SUPPRESS, (
            f"docsort {' '.join(path)}: {name} has no help"
        )
        assert "\n" not in text, f"docsort {' '.join(path)}: {name} help spans lines"


def test_every_subcommand_has_a_description():
    for path, parser in PARSERS[1:]:
        assert (parser.description or "").strip(), f"docsort {' '.join(path)} has no description"


# Each case: argv, a piece of the one error line. Run in a fresh interpreter, so that
# whether torch was imported is this command line's doing alone.
MISSING = "/nonexistent/docsort-test"
REFUSED = [
    (["trian", "--prepared", "p", "--out", "o"], "did you mean 'train'?"),
    (["train", "--prepared", "p", "--out", "o", "--epochs", "3"], "unrecognized arguments: --epochs"),
    (["train", "p", "--out", "o"], "the prepared folder is now --prepared DIR"),
    (["submission", "p", "--probs", "x.csv", "--out", "o"], "the prepared folder is now --prepared DIR"),
    (["train", "--out", "o"], "the following arguments are required: --prepared"),
    (["train", "--prepared", MISSING, "--out", "o"], f"{MISSING}: prepared folder not found"),
    (["predict", "--prepared", MISSING, "--model", "m", "--out", "o"], "prepared folder not found"),
    (["predict", "--prepared", ".", "--model", MISSING, "--out", "o"], f"{MISSING}: model folder not found"),
    (["sweep", "--prepared", MISSING, "--out", "o"], f"{MISSING}: prepared folder not found"),
    (["ensemble", "--model", MISSING, "--prepared", ".", "--out", "o"], "model folder not found"),
    (["ensemble", MISSING, "--out", "o"], f"{MISSING}: prediction folder not found"),
    (["ensemble", "--views", "identity,spin", "--out", "o"], "unknown TTA view 'spin'"),
    (["report", "--prepared", MISSING, "--out", "r.html"], f"{MISSING}: prepared folder not found"),
    (["report", "--prepared", ".", "--candidate", MISSING, "--out", "r.html"], "candidate folder not found"),
    (["report", "--prepared", ".", "-o", "r.html"], "required: --out"),
]  # fmt: skip

PROBE = """
import contextlib, io, json, sys
from docsort.cli.main import main
err = io.StringIO()
with contextlib.redirect_stderr(err):
    try:
        rc = main(sys.argv[1:])
    except SystemExit as e:
        rc = e.code
print(json.dumps({"rc": rc, "err": err.getvalue(), "torch": "torch" in sys.modules}))
"""


@pytest.mark.parametrize(("argv", "expect"), REFUSED, ids=[" ".join(a) for a, _ in REFUSED])
def test_a_bad_command_line_is_one_line_and_never_imports_torch(argv, expect, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *argv], cwd=tmp_path, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.splitlines()[-1])
    lines = [ln for ln in got["err"].splitlines() if ln.strip()]
    assert got["rc"] == 2, got
    assert len(lines) == 1 and lines[0].startswith("docsort: error: "), got["err"]
    assert expect in lines[0]
    assert not got["torch"], f"torch imported for: docsort {' '.join(argv)}"


def test_help_of_a_moved_prepared_shows_it_required(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    usage = capsys.readouterr().out.split("\n\n")[0]
    assert "--prepared DIR" in usage and "[--prepared" not in usage


def test_views_from_and_views_are_exclusive(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(
            ["ensemble", "--views", "identity", "--views-from", "abl", "--out", "o"]
        )
    assert "not allowed with argument" in capsys.readouterr().err
