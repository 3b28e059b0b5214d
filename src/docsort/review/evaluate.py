"""Stage ``evaluate``: score one set of predictions against labels.

The first question about any prediction (a member's ``probs.csv``, a
candidate, a submission CSV, a member's out-of-fold table) is how good it is.
This stage answers it on whichever labels there are: a labels CSV, the
prepared folder's ``test_labels.csv`` (sample data), its training labels for
out-of-fold predictions, or the hand-reviewed hard cases. Every labelled image
must have a prediction (a score over a silently smaller set would mislead);
predictions without a label are left out and counted.

Probability tables also get calibration (ECE, log loss, a reliability
diagram); a submission CSV holds hard labels, so it gets none.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from docsort.core.atomic import atomic_path
from docsort.core.csv_tables import read_csv, read_table, row_numbers
from docsort.core.errors import DocsortError
from docsort.core.outputs import stage
from docsort.core.probs import read_probs
from docsort.core.stats import (
    accuracy,
    confusion,
    log_loss,
    macro_f1,
    most_confused_pairs,
    per_class_table,
    predictions,
)
from docsort.core.tables import fmt_cell, frame_text
from docsort.data.contract import Meta, parse_ids, parse_targets, read_hardcases, read_labelled
from docsort.data.prepared import Prepared
from docsort.ensemble.calibration import ece

#: What an evaluation can be computed on.
SPLITS = ("test", "oof")
#: Bins of the ECE and the reliability diagram (the ensemble reports use the same).
ECE_BINS = 15

_PROB_COLUMN = re.compile(r"p[0-9]+").fullmatch


@dataclass(frozen=True)
class Evaluation:
    """Scores of one prediction on one labelled set.

    ``ece`` and ``log_loss`` are None for hard labels (a submission CSV).
    ``ignored``: predicted images without a label (left out of every score).
    ``f1_over``: which classes macro F1 averages (``truth+predicted``, as the
    competition score does, or ``truth`` for a small hand-picked set).
    """

    prediction: str
    labels: str
    split: str
    kind: str  # "probabilities" or "hard labels"
    images: int
    ignored: int
    macro_f1: float
    accuracy: float
    ece: float | None
    log_loss: float | None
    f1_over: str
    class_names: list[str]
    per_class: pd.DataFrame
    confusion: np.ndarray
    confused: pd.DataFrame
    out: Path | None = None
    notes: list[str] = field(default_factory=list)

    def metrics(self) -> dict:
        """The JSON-safe summary written as ``metrics.json`` (NaN as null)."""
        return {
            "prediction": self.prediction,
            "labels": self.labels,
            "split": self.split,
            "kind": self.kind,
            "images": self.images,
            "ignored_predictions": self.ignored,
            "macro_f1": _num(self.macro_f1),
            "macro_f1_over": self.f1_over,
            "accuracy": _num(self.accuracy),
            "ece": _num(self.ece),
            "ece_bins": ECE_BINS if self.ece is not None else None,
            "log_loss": _num(self.log_loss),
            "class_names": self.class_names,
            "most_confused": self.confused.to_dict(orient="records"),
            "notes": self.notes,
        }

    def text(self) -> str:
        """The terminal report: headline scores, the per-class table, the most confused pairs."""
        rows = [
            ("macro F1", fmt_cell(self.macro_f1)),
            ("accuracy", fmt_cell(self.accuracy)),
            ("images", str(self.images)),
            ("ECE", "n/a (hard labels)" if self.ece is None else f"{self.ece:.4f}"),
            ("log loss", "n/a (hard labels)" if self.log_loss is None else f"{self.log_loss:.4f}"),
        ]
        width = max(len(k) for k, _ in rows)
        lines = [f"{self.prediction} against {self.labels} ({self.split}, {self.kind})"]
        lines += [f"  {k:<{width}}  {v}" for k, v in rows]
        if self.ignored:
            lines.append(f"  ({self.ignored} predicted images have no label and were left out)")
        lines += [f"  note: {n}" for n in self.notes]
        lines += ["", "per class", frame_text(self.per_class)]
        lines += ["", "most confused (true -> predicted)"]
        lines.append(frame_text(self.confused) if len(self.confused) else "  none: no errors")
        return "\n".join(lines)


def _num(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


# ---------------------------------------------------------------- predictions


@dataclass(frozen=True)
class _Prediction:
    file: str
    ids: list[str]
    probs: np.ndarray | None  # None: hard labels
    preds: np.ndarray
    folds: np.ndarray | None = None


def _read_prediction(pred: Path, split: str, num_classes: int | None) -> _Prediction:
    """A probability table, a folder holding one (``probs.csv`` or ``oof.csv``), or a submission CSV."""
    if pred.is_dir():
        if split == "oof":
            return _oof_prediction(pred, num_classes)
        table = pred / "probs.csv"
        if not table.is_file():
            raise DocsortError(
                "no probs.csv in this folder; give a probs.csv, a candidate or prediction "
                "folder, or a submission CSV (--split oof for a model's oof.csv)",
                file=str(pred),
            )
        pred = table
    if not pred.is_file():
        raise DocsortError("prediction not found", file=str(pred))
    columns = read_table(pred, ids=None, text=lambda c: True).columns
    if any(_PROB_COLUMN(c) for c in columns):
        ids, probs, df = read_probs(pred, num_classes)
        folds = df["fold"].to_numpy(dtype=np.int64) if "fold" in df.columns else None
        return _Prediction(str(pred), ids, probs, predictions(probs), folds)
    if split == "oof":
        raise DocsortError("--split oof needs out-of-fold probabilities (oof.csv)", file=str(pred))
    df = read_csv(pred, ("ID", "target"))
    valid = set(range(num_classes)) if num_classes is not None else None
    targets = parse_targets(df, valid, file=str(pred))
    return _Prediction(str(pred), parse_ids(df, file=str(pred)), None, np.asarray(targets))


def _oof_prediction(folder: Path, num_classes: int | None) -> _Prediction:
    """A model folder's or a candidate's ``oof.csv``; a fold bundle without one: its folds pooled."""
    table = folder / "oof.csv"
    if table.is_file():
        return _read_prediction(table, "oof", num_classes)
    from docsort.ensemble.members import oof_probs, pooled

    parts = [oof_probs(f) for f in sorted(folder.glob("fold*")) if (f / "oof.csv").is_file()]
    if not parts:
        raise DocsortError(
            "no oof.csv here (a model folder, fold bundle or candidate holds one)",
            file=str(folder),
        )
    ids, _, probs = pooled([(p.ids, p.targets, p.probs) for p in parts])
    fold_of = {i: int(f) for p in parts for i, f in zip(p.ids, p.folds, strict=True)}
    if num_classes is not None and probs.shape[1] != num_classes:
        raise DocsortError(
            f"has {probs.shape[1]} probability columns, the data has {num_classes} classes",
            file=str(folder / "fold*/oof.csv"),
        )
    folds = np.array([fold_of[i] for i in ids], dtype=np.int64)
    return _Prediction(str(folder / "fold*/oof.csv"), ids, probs, predictions(probs), folds)


# ---------------------------------------------------------------- labels


@dataclass(frozen=True)
class _Labels:
    source: str
    ids: list[str]
    targets: np.ndarray
    hand_picked: bool = False
    notes: tuple[str, ...] = ()


def _check_range(targets: list[int], df: pd.DataFrame, k: int, file: str) -> None:
    for row, t in zip(row_numbers(df), targets, strict=True):
        if not 0 <= t < k:
            raise DocsortError(
                f"label {t} is not a class of the predictions (0..{k - 1})", file=file, row=row
            )


def _labels_file(path: Path, meta: Meta | None, k: int | None) -> _Labels:
    lab = read_labelled(path, meta)
    if meta is None and k is not None:
        _check_range(lab.targets, lab.frame, k, str(path))
    return _Labels(str(path), lab.ids, np.asarray(lab.targets, dtype=np.int64))


def _verdicts(path: Path, meta: Meta | None, k: int | None, scope: set[str] | None, split: str):
    """Reviewed hard cases with their verdict label, restricted to the images of ``split``.

    On test predictions ``label_error`` rows are left out: they are training
    images whose training label is wrong, not test images.
    """
    if meta is None:
        lab = read_labelled(path, None, optional=("note", "kind"))
        if k is not None:
            _check_range(lab.targets, lab.frame, k, str(path))
        meta = Meta(tuple(str(c) for c in range(k if k is not None else max(lab.targets) + 1)))
    rows = read_hardcases(path, meta)
    keep = np.ones(len(rows), dtype=bool)
    if split == "test":
        keep &= (rows["kind"] != "label_error").to_numpy()
    if scope is not None:
        keep &= rows["ID"].isin(scope).to_numpy()
    left = int((~keep).sum())
    where = "the training images held out" if split == "oof" else "test images"
    notes = (
        (f"{left} of {len(rows)} verdicts are not on {where} and were left out",) if left else ()
    )
    used = rows[keep]
    return _Labels(
        str(path),
        used["ID"].tolist(),
        used["target"].to_numpy(dtype=np.int64),
        hand_picked=True,
        notes=notes,
    )


def _train_labels(prep: Prepared, pred: _Prediction) -> tuple[_Labels, set[str]]:
    """The training labels of the folds the OOF table holds out (a one-fold model: that fold)."""
    index = prep.index
    folds = None if pred.folds is None else {int(f) for f in pred.folds if f >= 0}
    rows = index if not folds else index[index["fold"].isin(folds)]
    what = "all folds" if not folds else "fold " + ", ".join(str(f) for f in sorted(folds))
    labels = _Labels(
        f"{prep.root / 'index.csv'} ({what})",
        rows["ID"].tolist(),
        rows["target"].to_numpy(dtype=np.int64),
    )
    return labels, set(labels.ids)


# ---------------------------------------------------------------- the stage


@stage("evaluate", inputs=("pred", "labels", "prepared", "hardcases"), folder="out")
def evaluate(
    pred: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    labels: str | os.PathLike | None = None,
    prepared: str | os.PathLike | None = None,
    hardcases: str | os.PathLike | None = None,
    split: str = "test",
) -> Evaluation:
    """Score ``pred`` against one labelled set; with ``out``, also write the scores and figures.

    Labels: ``labels`` (an ``ID,target`` CSV), ``hardcases`` (the verdict
    file), else the prepared folder's ``test_labels.csv`` (``split="test"``)
    or its training labels (``split="oof"``, the prediction being a model's,
    bundle's or candidate's ``oof.csv``). Class names come from the prepared
    folder when given, else they are the target numbers of the probability
    columns. ``out`` gets ``metrics.json``, ``per_class.csv``,
    ``confusion.png`` and, for probabilities, ``reliability.png``.
    """
    if split not in SPLITS:
        raise DocsortError(f"split {split!r} is not one of {', '.join(SPLITS)}")
    if labels is not None and hardcases is not None:
        raise DocsortError("give --labels or --hardcases, not both")
    if split == "oof" and prepared is None:
        raise DocsortError("--split oof scores against the training labels: give --prepared DIR")
    if split == "oof" and labels is not None:
        raise DocsortError(
            "--split oof scores against the prepared training labels; leave out --labels"
        )
    if labels is None and hardcases is None and prepared is None:
        raise DocsortError(
            "nothing to score against: give --labels FILE, --prepared DIR or --hardcases FILE"
        )
    prep = Prepared(Path(prepared)) if prepared is not None else None
    meta = Meta(tuple(prep.class_names)) if prep is not None else None
    k_meta = prep.num_classes if prep is not None else None
    p = _read_prediction(Path(pred), split, k_meta)
    k = k_meta if k_meta is not None else (p.probs.shape[1] if p.probs is not None else None)

    scope: set[str] | None = None
    if split == "oof":
        truth, scope = _train_labels(prep, p)
    elif prep is not None:
        scope = set(prep.test_ids)
    if hardcases is not None:
        truth = _verdicts(Path(hardcases), meta, k, scope, split)
    elif labels is not None:
        truth = _labels_file(Path(labels), meta, k)
    elif split == "test":
        f = prep.file("test_labels.csv")
        if f is None:
            raise DocsortError(
                "no test_labels.csv in the prepared folder (only sample data has one); "
                "give --labels FILE or --hardcases FILE",
                file=str(prep.root),
            )
        truth = _labels_file(f, meta, k)
    if not truth.ids:
        why = f" ({truth.notes[0]})" if truth.notes else ""
        raise DocsortError(f"no labelled images to score{why}", file=truth.source)

    pos = {i: n for n, i in enumerate(p.ids)}
    missing = [i for i in truth.ids if i not in pos]
    if missing:
        raise DocsortError(
            f"{len(missing)} of {len(truth.ids)} labelled IDs have no prediction, "
            f"e.g. {missing[0]!r} (labels: {truth.source})",
            file=p.file,
        )
    rows = np.array([pos[i] for i in truth.ids], dtype=np.int64)
    y, preds = truth.targets, p.preds[rows]
    if k is None:  # hard labels and no prepared folder: the classes anyone named
        k = int(max(y.max(), preds.max())) + 1
    names = list(prep.class_names) if prep is not None else [str(c) for c in range(k)]
    probs = p.probs[rows] if p.probs is not None else None
    present = sorted({int(t) for t in y})
    cm = confusion(y, preds, k)
    result = Evaluation(
        prediction=p.file,
        labels=truth.source,
        split=split,
        kind="hard labels" if probs is None else "probabilities",
        images=len(y),
        ignored=len(p.ids) - len(y),
        macro_f1=macro_f1(y, preds, labels=present if truth.hand_picked else None),
        accuracy=accuracy(y, preds),
        ece=None if probs is None else ece(probs, y, n_bins=ECE_BINS),
        log_loss=None if probs is None else log_loss(y, probs),
        f1_over="truth" if truth.hand_picked else "truth+predicted",
        class_names=names,
        per_class=per_class_table(y, preds, names),
        confusion=cm,
        confused=most_confused_pairs(cm, names),
        out=Path(out) if out is not None else None,
        notes=list(truth.notes),
    )
    if out is not None:
        _write(result, Path(out), probs, y)
    return result


def _write(result: Evaluation, out: Path, probs: np.ndarray | None, y: np.ndarray) -> None:
    """All files at once: the folder appears complete or not at all.

    The figure modules are imported here: matplotlib (and, through the error
    notebook's module, torch) would triple the time of a plain scoring run.
    """
    from docsort.review.figures import reliability_png
    from docsort.review.report_html import confusion_png

    with atomic_path(out, is_dir=True) as tmp:
        (tmp / "metrics.json").write_text(
            json.dumps(result.metrics(), indent=2) + "\n", encoding="utf-8"
        )
        result.per_class.to_csv(tmp / "per_class.csv", index=False, float_format="%.6g")
        (tmp / "confusion.png").write_bytes(confusion_png(result.confusion, result.class_names))
        if probs is not None:
            (tmp / "reliability.png").write_bytes(reliability_png(probs, y, n_bins=ECE_BINS))
