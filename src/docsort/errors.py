"""One error type for bad input: the CLI prints it as one line and exits 2."""

from __future__ import annotations


class DocsortError(Exception):
    """A problem with the user's input or config, reported as one clear line.

    The message names the file, the row (when there is one) and the problem,
    e.g. ``train.csv row 12: label 42 is not in meta.csv``.
    """

    exit_code = 2

    def __init__(self, message: str, *, file: str | None = None, row: int | None = None):
        where = ""
        if file is not None:
            where = f"{file}" + (f" row {row}" if row is not None else "") + ": "
        super().__init__(where + message)


class ConfigError(DocsortError):
    """An invalid configuration, raised before any work starts."""
