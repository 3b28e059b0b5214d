"""CSV tables read without losing an ID: blank lines skipped, row numbers kept, one-line errors.

The data contract (``docsort.data.contract``) and the probability tables
(``docsort.core.probs``) read every CSV through here. Row numbers are 1-based
data rows (the header is row 0); blank lines are skipped without shifting the
numbers after them.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import re
from collections.abc import Callable, Collection, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from docsort.core.errors import DocsortError

_FIELDS = re.compile(r"Expected (\d+) fields in line (\d+), saw (\d+)")


def _decode_csv(path: Path, name: str) -> str:
    if not path.is_file():
        raise DocsortError("file not found", file=name)
    raw = path.read_bytes()
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DocsortError("is UTF-16 encoded; re-save it as UTF-8", file=name)
    try:
        return raw.decode("utf-8-sig")  # accepts a UTF-8 BOM
    except UnicodeDecodeError as err:
        row = raw[: err.start].count(b"\n")  # counted in lines: the header line is row 0
        where = "" if row else " in the header"
        raise DocsortError(
            f"not UTF-8 (byte 0x{raw[err.start]:02x}{where}); re-save it as UTF-8",
            file=name,
            row=row or None,
        ) from None


def row_numbers(df: pd.DataFrame) -> list[int]:
    """1-based data-row numbers of ``df`` (its 0-based positional index plus one)."""
    if pd.api.types.is_integer_dtype(df.index):
        return [int(i) + 1 for i in df.index]
    return list(range(1, len(df) + 1))


def _read_frame(
    path: Path, name: str, strings: Callable[[str], bool] | None = None
) -> pd.DataFrame:
    """A CSV as a frame; blank lines dropped, each row keeping its number.

    Nothing is ever read as a missing value in a string column: ``NA``,
    ``null``, ``None``, ``nan`` and empty cells stay the strings they are, so
    an image called ``NA`` keeps its name through every stage. ``strings``
    picks the string columns (default: all); the others are parsed as numbers
    by pandas' C parser, an empty cell there being NaN.
    """
    text = _decode_csv(path, name)
    if "\x00" in text:
        raise DocsortError("contains NUL bytes; not a text CSV", file=name)
    try:
        raw = next(csv.reader(io.StringIO(text)), [])
    except csv.Error as err:  # e.g. a lone carriage return inside the header row
        raise DocsortError(f"cannot parse CSV header: {err}", file=name) from None
    header = [h.strip() for h in raw]
    dup = next((h for n, h in enumerate(header) if h in header[:n]), None)
    if dup is not None:
        raise DocsortError(f"column {dup!r} appears twice in the header", file=name)
    if strings is None:
        how: dict = {"dtype": str, "na_filter": False}
    else:
        how = {
            "dtype": {r: str for r, h in zip(raw, header, strict=True) if strings(h)},
            "na_values": {r: [""] for r, h in zip(raw, header, strict=True) if not strings(h)},
        }
    try:
        df = pd.read_csv(io.StringIO(text), keep_default_na=False, skip_blank_lines=False, **how)
    except pd.errors.EmptyDataError:
        raise DocsortError("empty file (no header)", file=name) from None
    except ValueError as err:  # pandas' ParserError is a ValueError
        msg = (str(err).strip().splitlines() or ["?"])[0]
        m = _FIELDS.search(msg)
        if m:
            raise DocsortError(
                f"has {m[3]} fields, the header has {m[1]}", file=name, row=int(m[2]) - 1
            ) from None
        raise DocsortError(f"cannot parse CSV: {msg}", file=name) from None
    df.columns = [str(c).strip() for c in df.columns]
    blank = np.ones(len(df), dtype=bool)
    for col in df.columns:
        blank &= (df[col].isna() | (df[col] == "")).to_numpy()
    return df[~blank] if blank.any() else df


def read_csv(
    path: str | Path,
    columns: tuple[str, ...],
    *,
    optional: tuple[str, ...] = (),
    name: str | None = None,
) -> pd.DataFrame:
    """Read a dataset CSV as strings and check it has exactly ``columns`` (plus ``optional`` ones).

    ``name`` is how messages call the file (default: its path). The frame's
    index keeps each row's original position, so blank lines dropped here do
    not shift the row numbers that :func:`parse_ids` and friends report.
    """
    path = Path(path)
    name = name or str(path)
    df = _read_frame(path, name)
    got = list(df.columns)
    missing = [c for c in columns if c not in got]
    if missing:
        raise DocsortError(
            f"missing column(s) {', '.join(missing)}; has {', '.join(got)}", file=name
        )
    extra = [c for c in got if c not in columns and c not in optional]
    if extra:
        shown = ["(unnamed: trailing comma?)" if c.startswith("Unnamed: ") else c for c in extra]
        raise DocsortError(
            f"unexpected column(s) {', '.join(shown)}; expected {', '.join(columns + optional)}",
            file=name,
        )
    return df


def read_table(
    path: str | os.PathLike,
    *,
    text: Collection[str] | Callable[[str], bool] = (),
    ids: str | None = "ID",
    required: Sequence[str] = (),
    name: str | None = None,
) -> pd.DataFrame:
    """Read any table docsort wrote (index.csv, probs.csv, oof.csv, reports, submissions).

    The one reader for docsort's own CSVs, built on the same parser as the
    dataset readers: the ``ids`` column and the ``text`` columns stay strings
    and are never missing values (an image called ``NA`` or ``nan`` stays
    itself); every other column becomes numbers when all its cells parse as
    numbers (an empty cell there is NaN) and stays strings otherwise. A blank
    ID and a missing ``required`` column are refused with one line naming the
    file (and the row).
    """
    path = Path(path)
    name = name or str(path)
    keep = text if callable(text) else set(text).__contains__
    is_text = lambda col: col == ids or keep(col)  # noqa: E731
    df = _read_frame(path, name, strings=is_text)
    missing = [c for c in ([ids] if ids else []) + list(required) if c not in df.columns]
    if missing:
        raise DocsortError(
            f"missing column(s) {', '.join(missing)}; has {', '.join(df.columns)}", file=name
        )
    for col in df.columns:
        if is_text(col) or pd.api.types.is_numeric_dtype(df[col]):
            continue
        # the C parser leaves "nan"/"inf" as text; numbers still, if every cell is one
        with contextlib.suppress(ValueError, TypeError):  # else a text column: left as strings
            df[col] = pd.to_numeric(df[col])
    if ids:
        refuse_blank(df, ids, file=name)
    return df


def refuse_blank(df: pd.DataFrame, column: str, *, file: str) -> None:
    """One line naming the first row whose ``column`` is empty (an ID must never be blank)."""
    blank = df[column].astype(str).str.strip() == ""
    if blank.any():
        row = row_numbers(df)[int(np.flatnonzero(blank.to_numpy())[0])]
        raise DocsortError(f"empty {column}", file=file, row=row)
