"""Plain-text tables for terminals and summaries, and the one way numbers are shown in them."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd


def fmt_cell(value: object, digits: int = 4, missing: str = "") -> str:
    """A table cell: floats to ``digits`` places, NaN/None as ``missing``, anything else as text."""
    if value is None:
        return missing
    if isinstance(value, float | np.floating):
        return missing if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def text_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell, a dashed rule under the headers (for terminals)."""
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])


def frame_text(df: pd.DataFrame) -> str:
    """A DataFrame as a :func:`text_table`."""
    return text_table(
        list(df.columns), [[fmt_cell(v) for v in row] for row in df.itertuples(index=False)]
    )
