"""Read a prepared folder (the output of ``prepare``) for training and prediction."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from docsort.core.csv_tables import read_table
from docsort.core.errors import DocsortError


@dataclass
class Prepared:
    """Index, classes and image caches of a prepared folder."""

    root: Path

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        if not (self.root / "prepared.json").is_file():
            raise DocsortError(
                "not a prepared folder (no prepared.json); run `docsort prepare` first",
                file=str(self.root),
            )

    @cached_property
    def info(self) -> dict:
        return json.loads((self.root / "prepared.json").read_text())

    @property
    def class_names(self) -> list[str]:
        return list(self.info["class_names"])

    @property
    def num_classes(self) -> int:
        return int(self.info["num_classes"])

    @cached_property
    def index(self) -> pd.DataFrame:
        return read_table(self.root / "index.csv", required=("target", "fold"))

    @cached_property
    def test_ids(self) -> list[str]:
        return read_table(self.root / "test.csv")["ID"].tolist()

    def images(self, split: str) -> np.ndarray:
        """Memory-mapped uint8 images of ``split`` (train or test), rows in index/test order."""
        return np.load(self.root / "cache" / self.info["cache"][split], mmap_mode="r")

    def file(self, name: str) -> Path | None:
        p = self.root / name
        return p if p.is_file() else None
