"""What a person sees: progress lines off a terminal, library output in the log, not on stderr."""

from __future__ import annotations

import io
import logging
import re
import sys
import warnings

import pytest

from docsort.core import console
from tests.conftest import TINY_TRAIN
from tests.scenario import run_cli


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_progress_off_a_terminal_prints_a_plain_line_every_few_seconds(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(console.time, "monotonic", clock)
    stream = io.StringIO()
    bar = console.Progress(100, "predict m0", "batch", every_s=10, stream=stream)
    for _ in range(100):
        clock.t += 0.5  # 50 s in all: a line at 10, 20, 30, 40 and 50 s
        bar.update(1, "view 8/8")
    bar.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 5, lines
    assert lines[0] == "predict m0: 20/100 batch (20%), 10 s  view 8/8"
    assert lines[-1].startswith("predict m0: 100/100 batch (100%), 50 s")
    assert "\x1b" not in stream.getvalue()


def test_fmt_seconds():
    assert [console.fmt_seconds(s) for s in (4.4, 65, 3725)] == ["4 s", "1 min 05 s", "1 h 02 min"]


def test_capture_sends_library_logs_and_warnings_to_the_file_only(tmp_path, capsys):
    lib = logging.getLogger("some_library")
    own = logging.StreamHandler(sys.stderr)
    lib.addHandler(own)
    lib.propagate = False
    root_before = logging.getLogger().handlers[:]
    try:
        with console.capture(tmp_path / "docsort.log") as log:
            lib.warning("library chatter")
            late = logging.getLogger("imported_later")
            late.addHandler(logging.StreamHandler(sys.stderr))  # what Lightning does on import
            late.info("a tip nobody asked for")
            warnings.warn("deprecated thing", DeprecationWarning, stacklevel=1)
            logging.getLogger("kfp").info("\x1b[96m'train-op'\x1b[0m finished")
        text = log.read_text()
        assert "library chatter" in text and "a tip nobody asked for" in text
        assert "deprecated thing" in text
        assert "'train-op' finished" in text and "\x1b" not in text  # colour codes stripped
        err = capsys.readouterr().err
        assert "chatter" not in err and "tip" not in err and "deprecated" not in err
        # everything is as it was afterwards, the late handler included
        assert lib.handlers == [own] and lib.propagate is False
        assert len(late.handlers) == 1 and logging.getLogger().handlers == root_before
    finally:
        lib.removeHandler(own)
        lib.propagate = True


def test_verbose_shows_library_output_too(tmp_path, capsys):
    console.set_verbose(True)
    try:
        with console.capture(tmp_path / "docsort.log") as log:
            logging.getLogger("another_library").warning("shown under -v")
    finally:
        console.set_verbose(False)
    assert "shown under -v" in capsys.readouterr().err
    assert "shown under -v" in log.read_text()


@pytest.mark.slow  # trains a member
def test_train_shows_a_header_progress_and_a_result_and_logs_the_rest(prepared_root, tmp_path):
    """`docsort train`: a header per fold, the scores, the metric lines Katib reads on stdout
    (not a terminal) and Lightning's banners in <out>/docsort.log, not on stderr."""
    out = tmp_path / "m"
    rc, stdout, stderr = run_cli("train", "--prepared", prepared_root, "--out", out,
                                 *TINY_TRAIN, "fold=0")  # fmt: skip
    assert rc == 0, stderr
    assert re.search(r"^== fold 0/2: resnet18, 48 px, 1 epoch, \d+ train / \d+ val images$",
                     stderr, re.M)  # fmt: skip
    assert re.search(
        r"^fold 0: 1 epoch in .*; val macro F1 0\.\d{4} \(best epoch 1\)", stderr, re.M
    )
    assert "GPU available" not in stderr and "Tip" not in stderr
    # Katib's metric lines, each alone on its line
    assert re.findall(r"^(epoch|val_macro_f1|val_loss)=", stdout, re.M) == [
        "epoch", "val_macro_f1", "val_loss"
    ]  # fmt: skip
    log = (out / console.LOG_NAME).read_text()
    assert "docsort train" in log.splitlines()[0] and "GPU available" in log
    # a re-run that finds the work complete appends to the same log
    rc, _, stderr = run_cli(
        "train", "--prepared", prepared_root, "--out", out, *TINY_TRAIN, "fold=0"
    )
    assert rc == 0 and "already complete" in stderr
    assert (out / console.LOG_NAME).read_text().count("INFO docsort: docsort train") == 2


def test_verbose_flag_goes_anywhere_and_a_refusal_leaves_no_log(tmp_path):
    rc, _, stderr = run_cli(
        "train", "-v", "--prepared", tmp_path / "missing", "--out", tmp_path / "m"
    )
    assert rc == 2 and "prepared folder" in stderr
    assert not (tmp_path / "m").exists()
