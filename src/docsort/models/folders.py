"""What a model folder is: one trained member, or a K-fold bundle of them.

``docsort train ... fold=K`` (or ``fold=none``) writes one model folder
(``model.safetensors`` + ``model.yaml``); ``fold=all`` writes a bundle, whose
``fold0/ .. fold{K-1}/`` are model folders. Every command that takes a model
(``predict --model``, ``export``, ``ensemble --model``, ``tta-ablation``) takes
either, through :func:`model_folders`, so they agree on what they accept.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from docsort.core.errors import DocsortError

WEIGHTS = "model.safetensors"


def model_folders(path: str | os.PathLike) -> list[Path]:
    """The model folders of ``path``: itself, or its ``fold*/`` sub-folders (a bundle), by fold number."""
    path = Path(path)
    if (path / WEIGHTS).is_file():
        return [path]
    folds = sorted((p.parent for p in path.glob(f"fold*/{WEIGHTS}")), key=_fold_number)
    if not folds:
        raise DocsortError(
            f"not a model folder or fold bundle (no {WEIGHTS}, no fold*/{WEIGHTS})",
            file=str(path),
        )
    return folds


def _fold_number(p: Path) -> int:
    m = re.search(r"(\d+)$", p.name)
    return int(m.group(1)) if m else 0
