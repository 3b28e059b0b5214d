"""Trained members as the review stages see them: one model folder, or a K-fold bundle.

``docsort train ... fold=K`` writes one model folder; ``fold=all`` writes a
bundle (``fold0/ .. fold{K-1}/`` model folders plus the pooled ``oof.csv``).
Either is an ensemble *member*: its out-of-fold (OOF) predictions score it, and
at prediction time a bundle is the mean of its fold models' probabilities.
This module finds the pieces (model files, OOF tables, per-view OOF logits)
so ensembles, the TTA ablation and reports treat both the same way.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from docsort.core.errors import DocsortError
from docsort.core.probs import read_probs
from docsort.models.folders import model_folders
from docsort.models.tta import check_views, merge


@dataclass(frozen=True)
class OOFViews:
    """Per-view OOF logits of a member (rows = held-out training images)."""

    ids: list[str]
    targets: np.ndarray
    folds: np.ndarray
    logits: dict[str, np.ndarray]

    def probs(self, views: Sequence[str], how: str = "mean") -> np.ndarray:
        """OOF probabilities merged over ``views`` exactly as ``docsort predict`` merges them."""
        missing = [v for v in views if v not in self.logits]
        if missing:
            raise DocsortError(f"OOF views lack {missing[0]!r}; have {', '.join(self.logits)}")
        stacked = torch.stack([torch.from_numpy(self.logits[v]) for v in check_views(list(views))])
        return merge(stacked, how).numpy().astype(np.float64)

    def view_probs(self) -> dict[str, np.ndarray]:
        """Softmax probabilities of every stored view."""
        return {
            v: torch.from_numpy(z).float().softmax(-1).numpy().astype(np.float64)
            for v, z in self.logits.items()
        }


def checkpoint_files(path: str | os.PathLike) -> list[Path]:
    """Weight files of a member (hashed into the submission lineage)."""
    return [m / "model.safetensors" for m in model_folders(path)]


def member_name(path: str | os.PathLike) -> str:
    """A readable name: ``<arch>-f<fold>`` for one fold, ``<arch>-cv<K>`` for a bundle, ``<arch>-all`` for all data."""
    from omegaconf import OmegaConf

    folders = model_folders(path)
    doc = OmegaConf.load(folders[0] / "model.yaml")
    if len(folders) > 1:
        return f"{doc.arch}-cv{len(folders)}"
    fold = doc.get("fold")
    return f"{doc.arch}-f{fold}" if fold is not None else f"{doc.arch}-all"


def unique_names(names: Sequence[str]) -> list[str]:
    """Names made unique by suffixes ``-2``, ``-3`` ... (two seeds of one recipe share a base name)."""
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}-{seen[n]}")
    return out


def data_settings(
    path: str | os.PathLike, keys: Sequence[str] = ("image_size", "channels", "resize")
) -> dict[str, str]:
    """``data.<key>`` values the member was trained with (prepared data must match the image spec)."""
    from omegaconf import OmegaConf

    doc = OmegaConf.load(model_folders(path)[0] / "model.yaml")
    return {k: str(doc.config.data[k]) for k in keys if k in doc.config.data}


def _load_npz(folder: Path) -> OOFViews | None:
    npz = folder / "oof_views.npz"
    if not npz.is_file():
        return None
    # Never unpickle: IDs stored as an object array are taken from oof.csv (same rows, same order).
    with np.load(npz, allow_pickle=False) as z:
        logits = {
            k: np.asarray(z[k], dtype=np.float32) for k in z.files if k not in ("ids", "targets")
        }
        try:
            ids = [str(i) for i in z["ids"]]
        except ValueError:
            ids = None
        targets = np.asarray(z["targets"], dtype=np.int64) if "targets" in z.files else None
    table = folder / "oof.csv"
    folds = None
    if table.is_file():
        t_ids, _, df = read_probs(table)
        if ids is None:
            ids = t_ids
        if t_ids == ids:
            folds = df["fold"].to_numpy() if "fold" in df.columns else None
            targets = (
                df["target"].to_numpy() if targets is None and "target" in df.columns else targets
            )
    if ids is None or targets is None:
        raise DocsortError(
            "oof_views.npz has no readable IDs/targets and no matching oof.csv", file=str(npz)
        )
    n = len(ids)
    if any(v.shape[0] != n for v in logits.values()) or len(targets) != n:
        raise DocsortError("oof_views.npz arrays disagree on the number of rows", file=str(npz))
    if folds is None:
        folds = np.full(n, _model_fold(folder), dtype=np.int64)
    return OOFViews(
        ids=ids, targets=targets, folds=np.asarray(folds, dtype=np.int64), logits=logits
    )


def _model_fold(folder: Path) -> int:
    from omegaconf import OmegaConf

    if (folder / "model.yaml").is_file():
        fold = OmegaConf.load(folder / "model.yaml").get("fold")
        if fold is not None:
            return int(fold)
    return -1


def oof_views(path: str | os.PathLike) -> OOFViews | None:
    """Per-view OOF logits of a member (a bundle's folds concatenated), or None if not stored."""
    path = Path(path)
    own = _load_npz(path)
    if own is not None:
        return own
    parts = [_load_npz(m) for m in model_folders(path)]
    if not parts or any(p is None for p in parts):
        return None
    views = [v for v in parts[0].logits if all(v in p.logits for p in parts)]
    return OOFViews(
        ids=[i for p in parts for i in p.ids],
        targets=np.concatenate([p.targets for p in parts]),
        folds=np.concatenate([p.folds for p in parts]),
        logits={v: np.concatenate([p.logits[v] for p in parts]) for v in views},
    )


@dataclass(frozen=True)
class OOF:
    """One member's OOF probabilities (merged over its TTA views)."""

    ids: list[str]
    targets: np.ndarray
    folds: np.ndarray
    probs: np.ndarray


def oof_probs(
    path: str | os.PathLike, views: Sequence[str] | None = None, how: str = "mean"
) -> OOF | None:
    """OOF probabilities for ``views`` (recomputed from the per-view logits), else ``oof.csv``, else None.

    Ensembles must be fitted on OOF predictions made with the same views the
    member uses at test time, or weights and temperatures fit the wrong thing.
    """
    path = Path(path)
    if views is not None:
        ov = oof_views(path)
        if ov is not None and all(v in ov.logits for v in views):
            return OOF(ov.ids, ov.targets, ov.folds, ov.probs(views, how))
    table = path / "oof.csv"
    if not table.is_file():
        return None
    ids, probs, df = read_probs(table)
    if "target" not in df.columns:
        raise DocsortError("OOF table has no target column", file=str(table))
    folds = df["fold"].to_numpy() if "fold" in df.columns else np.full(len(ids), -1)
    return OOF(ids, df["target"].to_numpy(dtype=np.int64), np.asarray(folds, dtype=np.int64), probs)


def predict_member(
    prepared: str | os.PathLike,
    member: str | os.PathLike,
    out: str | os.PathLike,
    views: Sequence[str],
    how: str = "mean",
    overrides: Sequence[str] = (),
) -> Path:
    """Test probabilities of one member with its TTA views (``docsort predict``: a bundle averages its folds).

    Writes ``probs.csv`` and ``predict.json`` into ``out`` (plus ``fold*/`` for a bundle).
    """
    from docsort.predict.predict import predict

    args = [*overrides, f"tta.views=[{','.join(check_views(list(views)))}]", f"tta.merge={how}"]
    return predict(prepared, member, out, args)


def class_names(path: str | os.PathLike) -> list[str]:
    """The class names a member was trained with (its ``model.yaml``)."""
    from omegaconf import OmegaConf

    return [str(c) for c in OmegaConf.load(model_folders(path)[0] / "model.yaml").class_names]


def pooled(
    tables: Sequence[tuple[Sequence[str], np.ndarray, np.ndarray]],
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Per ID, the mean of the probabilities of the members that hold it out.

    ``tables`` are ``(ids, targets, probs)``; returns ``(ids, targets, probs)``, IDs in
    first-seen order. Members trained on different folds share no OOF rows; pooling
    is then the only OOF view of their combination (what one K-fold bundle's OOF is).
    """
    order: dict[str, int] = {}
    for ids, _, _ in tables:
        for i in ids:
            order.setdefault(i, len(order))
    k = tables[0][2].shape[1]
    total = np.zeros((len(order), k))
    count = np.zeros(len(order))
    target = np.full(len(order), -1, dtype=np.int64)
    for ids, targets, probs in tables:
        rows = np.array([order[i] for i in ids], dtype=np.int64)
        t = np.asarray(targets, dtype=np.int64)
        clash = (target[rows] >= 0) & (target[rows] != t)
        if clash.any():
            bad = list(order)[rows[np.flatnonzero(clash)[0]]]
            raise DocsortError(
                f"members disagree on the training label of {bad!r}; were they trained on the same data?"
            )
        target[rows] = t
        total[rows] += probs
        count[rows] += 1
    return list(order), target, total / count[:, None]


def shared_rows(tables: Sequence[tuple[Sequence[str], np.ndarray, np.ndarray]]) -> list[str]:
    """IDs every member holds out, in the first member's order."""
    common = set(tables[0][0])
    for ids, _, _ in tables[1:]:
        common &= set(ids)
    return [i for i in tables[0][0] if i in common]
