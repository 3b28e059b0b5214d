"""One error type for bad input: the CLI prints it as one line and exits 2.

Every message docsort prints goes through :func:`safe_text`: credentials in
URLs are redacted and control characters (terminal escape sequences, ``\\r``)
are shown escaped, so neither a password nor a hostile class name reaches the
terminal or a log as is.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
from collections.abc import Iterator

# user:password@ in a URL's authority part; the password may hold an unencoded "/" (pasted
# AWS secrets do), so "http://host:9/a@b" is redacted too: better too much than a leak
_URL_PASSWORD = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]*:)[^@\s]*@")
# query-string or key=value credentials: X-Amz-Signature=..., token=..., password=...
_SECRET_PARAM = re.compile(
    r"(?P<key>\b(?:X-Amz-(?:Signature|Credential|Security-Token)|AWSAccessKeyId|Signature|"
    r"access_token|refresh_token|token|api[_-]?key|apikey|password|passwd|secret|sig)=)"
    r"[^&\s\"']+",
    re.IGNORECASE,
)
# C0 controls except tab and newline, DEL, and C1 controls (ESC starts ANSI sequences).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


#: Environment variables whose values are secrets: never shown, wherever they turn up.
SECRET_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "KF_PIPELINES_TOKEN",
    "DOCSORT_KFP_TOKEN",
    "WANDB_API_KEY",
)


def redact(text: str) -> str:
    """``scheme://user:pw@host`` -> ``scheme://user:***@host``; ``token=...`` -> ``token=***``;
    the value of any :data:`SECRET_ENV` variable -> ``***``."""
    text = _URL_PASSWORD.sub(lambda m: m["head"] + "***@", text)
    text = _SECRET_PARAM.sub(lambda m: m["key"] + "***", text)
    for name in SECRET_ENV:
        value = os.environ.get(name)
        if value and len(value) >= 8:
            text = text.replace(value, "***")
    return text


def printable(text: str) -> str:
    """``text`` with control characters shown as escapes (``\\x1b``, ``\\r``), safe for a terminal."""
    return _CONTROL.sub(lambda m: repr(m[0])[1:-1], text)


def plot_label(name: str, width: int = 28) -> str:
    """A name from the user's files as matplotlib text: escaped (:func:`printable`), '$' kept
    out of math mode, shortened to ``width`` characters."""
    name = printable(name)
    name = name if len(name) <= width else name[: width - 1] + "…"
    return name.replace("$", r"\$")


_COLOR = re.compile(r"(\x1b\[[0-9;]*m)")


def safe_text(text: str, *, keep_color: bool = False) -> str:
    """What docsort prints: credentials redacted, control characters escaped.

    ``keep_color`` leaves colour codes (``ESC [ ... m``) alone, as kfp.local's task
    logs use them; cursor moves, screen clears and title changes are still escaped.
    """
    text = redact(text)
    if not keep_color:
        return printable(text)
    return "".join(part if i % 2 else printable(part) for i, part in enumerate(_COLOR.split(text)))


class SafeStream:
    """A text stream that writes :func:`safe_text` of everything (docsort's stdout)."""

    def __init__(self, raw) -> None:
        self.raw = raw

    def write(self, text: str) -> int:
        self.raw.write(safe_text(text, keep_color=True))
        return len(text)

    def __getattr__(self, name: str):
        return getattr(self.raw, name)


class DocsortError(Exception):
    """A problem with the user's input or config, reported as one clear line.

    The message names the file, the row (when there is one) and the problem,
    e.g. ``train.csv row 12: label 42 is not in meta.csv``. It is made safe to
    print (:func:`safe_text`) when the error is raised, so a pipeline task's
    log shows the same redacted line as the command line.
    """

    exit_code = 2

    def __init__(self, message: str, *, file: str | None = None, row: int | None = None):
        where = ""
        if file is not None:
            where = f"{file}" + (f" row {row}" if row is not None else "") + ": "
        super().__init__(safe_text(where + message))


class ConfigError(DocsortError):
    """An invalid configuration, raised before any work starts."""


_ADVICE = {
    errno.ENOSPC: "; free space and run again",
    errno.EDQUOT: "; free space or raise the quota and run again",
    errno.EFBIG: "; the file system or a limit refuses a file this large",
}


# ``.<name>.<host>-<pid>.<random>.tmp``: a temporary of docsort.core.atomic, shown as ``<name>``
_TEMP_SEGMENT = re.compile(r"^\.(?P<name>.+)\.[A-Za-z0-9-]+-\d+\.[^./]+\.tmp$")


def _shown_path(path: object) -> str:
    parts = str(path).split("/")
    return "/".join((m["name"] if (m := _TEMP_SEGMENT.match(p)) else p) for p in parts)


def from_os_error(err: OSError) -> DocsortError:
    """One line for an OS failure: ``<path>: no space left on device`` (path first, then why).

    A full disk, a read-only or forbidden folder is the user's environment, not a
    bug: it is reported like bad input, without a traceback.
    """
    reason = err.strerror or str(err) or type(err).__name__
    reason = reason[:1].lower() + reason[1:]
    # a copy or rename names its destination second: that is where the space or permission ran out
    path = err.filename2 if err.filename2 is not None else err.filename
    message = reason + _ADVICE.get(err.errno or 0, "")
    if path is None:
        return DocsortError(message)
    return DocsortError(message, file=_shown_path(path))


@contextlib.contextmanager
def safe_log_records() -> Iterator[None]:
    """While docsort runs, every log record's message is :func:`safe_text` (any logger: botocore
    and kfp log URLs, which may carry signatures or passwords)."""
    make = logging.getLogRecordFactory()

    def factory(*args, **kwargs) -> logging.LogRecord:
        record = make(*args, **kwargs)
        # a record whose arguments do not format is left alone: logging reports it itself
        with contextlib.suppress(Exception):
            record.msg, record.args = safe_text(record.getMessage(), keep_color=True), None
        return record

    logging.setLogRecordFactory(factory)
    try:
        yield
    finally:
        logging.setLogRecordFactory(make)
