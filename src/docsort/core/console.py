"""What a person sees: a header per step, one progress display per long step, a summary.

Everything else (Lightning, W&B, kfp's executor logs, library warnings) goes to
the command's log file (:func:`capture`), and ``docsort -v`` shows it as well.
On a terminal a progress display is a tqdm bar on stderr; elsewhere (a pipeline
task, CI, a pipe) it is a plain line every few seconds, so a log read later
still shows how far a step got. Nothing here writes ANSI codes unless stderr is
a terminal. Katib's metric lines (``name=value`` on stdout) are not touched.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, TypeVar

from docsort.core.errors import safe_text

T = TypeVar("T")

#: How often a non-terminal progress display prints its plain line.
PLAIN_EVERY_S = 10.0
#: The log file a command leaves in its output folder.
LOG_NAME = "docsort.log"

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_verbose = False
_log: IO | None = None  # the open log file while :func:`capture` runs
_metric_lines: bool | None = None


def set_verbose(on: bool) -> None:
    """``docsort -v``: library output is shown on stderr as well as written to the log."""
    global _verbose
    _verbose = bool(on)


def verbose() -> bool:
    return _verbose


def set_metric_lines(on: bool | None) -> None:
    """Force Katib's ``name=value`` lines on (a trial: its pod may have a TTY) or back to auto."""
    global _metric_lines
    _metric_lines = on


def metric_lines() -> bool:
    """Whether training prints its ``name=value`` lines: always in a Katib trial, else when
    stdout is not a terminal (a collector, a pipe, a file); a terminal shows the progress display."""
    return _metric_lines if _metric_lines is not None else not interactive(sys.stdout)


def interactive(stream: IO | None = None) -> bool:
    """Whether ``stream`` (default stderr) is a terminal: bars and colour only there."""
    stream = stream or sys.stderr
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def plain(text: str) -> str:
    """``text`` without ANSI escape codes."""
    return ANSI.sub("", text)


def say(text: str) -> None:
    """One status line on stderr (stdout stays for results and Katib's metric lines)."""
    print(text, file=sys.stderr, flush=True)


def header(text: str) -> None:
    """The line that opens a fold, a member or a step."""
    say(f"== {text}")


def plural(n: int, noun: str) -> str:
    """``1 epoch``, ``2 epochs``."""
    return f"{n} {noun}" + ("" if n == 1 else "s")


def fmt_seconds(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``1 h 02 min``."""
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


class Progress:
    """One progress display: a tqdm bar on a terminal, else a plain line every ``every_s`` seconds.

    A terminal bar leaves nothing behind when closed: the step's result line
    (printed by the step) follows it. ``update``'s ``postfix`` (the epoch and
    score of a training run) is shown beside the count.
    """

    def __init__(self, total: int | None, desc: str, unit: str = "it", *,
                 every_s: float = PLAIN_EVERY_S, stream: IO | None = None) -> None:  # fmt: skip
        self.total, self.desc, self.unit, self.every_s = total, desc, unit, every_s
        self.stream = stream or sys.stderr
        self.n, self.t0 = 0, time.monotonic()
        self._last = self.t0
        self._postfix = ""
        self.bar = None
        if interactive(self.stream):
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, unit=unit, file=self.stream, leave=False,
                            dynamic_ncols=True, mininterval=0.5)  # fmt: skip

    def update(self, n: int = 1, postfix: str = "") -> None:
        self.n += n
        if postfix:
            self._postfix = postfix
        if self.bar is not None:
            if postfix:
                self.bar.set_postfix_str(postfix, refresh=False)
            self.bar.update(n)
            return
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._last = now
            print(self._line(now), file=self.stream, flush=True)

    def _line(self, now: float) -> str:
        of = f"/{self.total}" if self.total else ""
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        post = f"  {self._postfix}" if self._postfix else ""
        return f"{self.desc}: {self.n}{of} {self.unit}{pct}, {fmt_seconds(now - self.t0)}{post}"

    def close(self) -> float:
        """Close the display; returns the seconds it was open."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        return time.monotonic() - self.t0

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def track(items: Iterable[T], desc: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
    """``items`` with a :class:`Progress` display (total from ``len`` when it has one)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with Progress(total, desc, unit) as bar:
        for item in items:
            yield item
            bar.update(1)


def summary(title: str, rows: Sequence[tuple[str, object]]) -> str:
    """The block a command ends with: what was written where, and the scores (on stdout)."""
    width = max((len(k) for k, _ in rows), default=0)
    lines = [f"\n{title}"] + [f"  {k:<{width}}  {v}" for k, v in rows]
    text = "\n".join(lines)
    print(text, flush=True)
    return text


# ---------------------------------------------------------------- the log file


class _PlainFile(logging.FileHandler):
    """A log file without colour codes (kfp colours its task names)."""

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            record.msg, record.args = plain(record.getMessage()), None
        super().emit(record)


class LogStream:
    """A text stream into the log file, ANSI-free (and to ``echo`` under ``-v``).

    ``on_line`` sees every complete line (kfp.local's task status lines become
    docsort's one line per task). Threads may share it: kfp.local runs the
    iterations of a ParallelFor at once.
    """

    def __init__(self, log: IO | None, echo: IO | None = None, on_line=None) -> None:
        import threading

        self.log, self.echo, self.on_line = log, echo, on_line
        self._lock = threading.Lock()
        self._partial = threading.local()

    def write(self, text: str) -> int:
        shown = safe_text(text, keep_color=True)  # a task's output may carry a URL's password
        with self._lock:
            if self.log is not None:
                self.log.write(plain(shown))
            if self.echo is not None:
                self.echo.write(shown)
        if self.on_line is not None:
            buf = getattr(self._partial, "text", "") + text
            *lines, self._partial.text = buf.split("\n")
            for line in lines:
                self.on_line(plain(line))
        return len(text)

    def flush(self) -> None:
        with self._lock:
            for s in (self.log, self.echo):
                if s is not None:
                    s.flush()

    def isatty(self) -> bool:
        return False


def log_stream(on_line=None) -> LogStream:
    """A stream into the current command's log (stderr too under ``-v``, or when there is no log)."""
    echo = sys.stderr if (_verbose or _log is None) else None
    return LogStream(_log, echo, on_line)


def quiet_libraries() -> None:
    """Settings that keep W&B, Lightning and friends from printing banners and tips."""
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("WANDB_CONSOLE", "off")


@contextlib.contextmanager
def capture(log_path: str | os.PathLike) -> Iterator[Path]:
    """Send library logging and warnings to ``log_path`` for the duration (stderr too under ``-v``).

    docsort's own lines (:func:`say`, :class:`Progress`, results on stdout) are
    untouched. The root logger and the library loggers get one file handler;
    their own stream handlers are set aside and restored afterwards, so tests
    and callers see the logging set-up they had.
    """
    path = Path(log_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    global _log
    handler = _PlainFile(path, encoding="utf-8", delay=False)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handlers: list[logging.Handler] = [handler]
    if _verbose:
        echo = logging.StreamHandler(sys.stderr)
        echo.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        handlers.append(echo)
    root = logging.getLogger()
    saved_root = (root.level, root.handlers[:])
    saved: dict[logging.Logger, tuple[list[logging.Handler], bool]] = {}

    def to_file_only(lg: logging.Logger) -> None:
        """A library logger's terminal handlers are set aside; its records reach the root's file."""
        if lg not in saved:
            saved[lg] = (lg.handlers[:], lg.propagate)
        for h in lg.handlers[:]:
            if _is_terminal_handler(h):
                lg.removeHandler(h)
        lg.propagate = True

    for lg in list(logging.Logger.manager.loggerDict.values()):
        if isinstance(lg, logging.Logger) and any(_is_terminal_handler(h) for h in lg.handlers):
            to_file_only(lg)
    # Libraries imported during the command (Lightning, torchmetrics, huggingface_hub) add a
    # stderr handler to their logger at import time; while capturing, such a handler goes to
    # the file instead. Restored on exit, like everything else here.
    add_handler = logging.Logger.addHandler

    def add(lg: logging.Logger, h: logging.Handler) -> None:
        if lg is not root and _is_terminal_handler(h):
            to_file_only(lg)
            saved[lg][0].append(h)  # the library gets it back on exit
            return
        add_handler(lg, h)

    logging.Logger.addHandler = add  # type: ignore[method-assign]
    # the root's terminal handlers are set aside too; others (pytest's caplog, a user's file) stay
    root.handlers = [h for h in root.handlers if not _is_terminal_handler(h)] + handlers
    root.setLevel(logging.INFO)
    quiet_libraries()
    was_capturing = logging.getLogger("py.warnings").handlers[:]
    logging.captureWarnings(True)
    _log = handler.stream
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            yield path
    finally:
        _log = None
        logging.Logger.addHandler = add_handler  # type: ignore[method-assign]
        logging.captureWarnings(False)
        logging.getLogger("py.warnings").handlers = was_capturing
        root.setLevel(saved_root[0])
        root.handlers = saved_root[1]
        for lg, (hs, prop) in saved.items():
            lg.handlers, lg.propagate = hs, prop
        handler.close()


def _is_terminal_handler(h: logging.Handler) -> bool:
    """A library's plain stream handler (stderr/stdout, or the stream that was stderr when it was
    made, e.g. a test's capture), not a file, a null sink or a capturing subclass (pytest's caplog)."""
    return type(h) is logging.StreamHandler or type(h).__name__ == "_StderrHandler"
