"""The report stage: a candidate's error notebook (HTML) on its labelled set."""

from __future__ import annotations

import contextlib
import functools
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from docsort.core import storage, tracking
from docsort.core.choices import REPORT_SETS
from docsort.core.csv_tables import read_table
from docsort.core.errors import DocsortError
from docsort.core.outputs import stage
from docsort.core.probs import align, read_probs
from docsort.data.prepared import Prepared
from docsort.ensemble import combiners as ens
from docsort.ensemble import members as mem
from docsort.ensemble.tta_ablation import Ablation, load_ablation, member_views, pooled_ablation
from docsort.review.compare import Comparison, load_comparison
from docsort.review.hardcases import Verdicts, current_hardcases

if TYPE_CHECKING:
    from docsort.review.report_html import PerImage

# ---------------------------------------------------------------- error report


@dataclass(frozen=True)
class ReportResult:
    """What the error notebook was computed on (also logged as KFP metrics)."""

    html: Path
    summary: Path
    on: str
    images: int
    macro_f1: float
    accuracy: float
    class_names: list[str]
    confusion: np.ndarray
    hardcases: tuple[str, ...] = ()  # which hard-case file(s) it used, with how many verdicts


def _labelled_set(
    prep: Prepared, cand: Path, on: str, verdicts: Callable[[], Verdicts]
) -> tuple[str, list[str], np.ndarray, np.ndarray, str, str | None]:
    """(kind, ids, targets, probs, split) the report is computed on; ``auto`` takes the first available.

    Order for ``auto``: the candidate's OOF predictions on the training images
    (the largest labelled set, and where wrong training labels show up), then
    the test labels (demo data only), then the hard cases: ``verdicts()``, the
    current file, whose description is the last item.
    """
    ens.check_choice(on, REPORT_SETS, "report set")
    order = ["oof", "test", "hardcases"] if on == "auto" else [on]
    for kind in order:
        if kind == "oof" and (cand / "oof.csv").is_file():
            ids, probs, df = read_probs(cand / "oof.csv")
            if len(ids):
                return kind, ids, df["target"].to_numpy(dtype=np.int64), probs, "train", None
        elif kind in ("test", "hardcases"):
            used = None
            if kind == "test":
                f = prep.file("test_labels.csv")
                if f is None:
                    continue
                labels = read_table(f, required=("target",))
            else:
                current = verdicts()
                labels = current.rows
                labels = labels[
                    labels["ID"].isin(set(prep.test_ids)) & (labels["kind"] != "label_error")
                ]
                used = current.describe(len(labels))
            if labels.empty:
                continue
            ids, probs, _ = read_probs(cand / "probs.csv")
            ids_l = labels["ID"].tolist()
            return (
                kind,
                ids_l,
                labels["target"].to_numpy(dtype=np.int64),
                align(ids, probs, ids_l, source=str(cand / "probs.csv")),
                "test",
                used,
            )
    wanted = "OOF predictions (oof.csv), test_labels.csv or hardcases.csv" if on == "auto" else on
    raise DocsortError(
        f"nothing labelled to report on: no {wanted} for this candidate", file=str(cand)
    )


_SET_TEXT = {
    "oof": "out-of-fold predictions on the training images (each image predicted by members that never trained on it)",
    "test": "the test images, scored against test_labels.csv",
    "hardcases": "the hand-labelled hard cases (test images in hardcases.csv)",
}


def image_loader(prep: Prepared, split: str):
    """ID -> image array: the original file when the dataset root is a local folder, else the prepared cache.

    The original is read at up to the report's full-size view (``FULL_MAX``
    pixels, colour kept): the person deciding between candidates reads the page.
    """
    from PIL import Image

    from docsort.data.contract import image_path, upright
    from docsort.review.report_html import FULL_MAX

    source = prep.info.get("source")
    root = Path(source) / split if source and not storage.is_s3(source) else None
    index = prep.index["ID"].tolist() if split == "train" else prep.test_ids
    rows = {i: n for n, i in enumerate(index)}
    cache = None

    def load(image_id: str) -> np.ndarray | None:
        nonlocal cache
        if root is not None and root.is_dir():
            try:
                p = image_path(root, image_id)
                if p.is_file():
                    with Image.open(p) as im:
                        im.draft(im.mode, (FULL_MAX, FULL_MAX))
                        im = upright(im)  # as the model saw it: EXIF orientation applied
                        im.thumbnail((FULL_MAX, FULL_MAX))
                        return np.asarray(im.convert("RGB") if im.mode not in ("L", "RGB") else im)
            except (OSError, ValueError, DocsortError):
                pass
        if image_id in rows:
            if cache is None:
                cache = prep.images(split)
            return np.asarray(cache[rows[image_id]])
        return None

    return load


def any_image_loader(prep: Prepared, test_ids: Sequence[str]):
    """ID -> image array for test and training images alike (hard cases are both); test wins a clash."""
    test, train, tests = image_loader(prep, "test"), image_loader(prep, "train"), set(test_ids)
    return lambda image_id: (test if image_id in tests else train)(image_id)


def _comparison_candidates(cmp: Comparison) -> tuple[dict[str, Path], list[str]]:
    """The compared candidates' folders, and a line per one that cannot be read."""
    found, missing = {}, []
    for name, folder in cmp.folders.items():
        path = Path(folder)
        if (path / "probs.csv").is_file():
            found[name] = path
        else:
            missing.append(f"{name} ({folder}: no probs.csv)")
    return found, missing or ([] if found else ["winner.json lists no candidate folders"])


def _predictions(folder: Path, ids: Sequence[str], test_ids: set[str], k: int) -> np.ndarray:
    """A candidate's probabilities for ``ids``: probs.csv for test images, oof.csv for training ones; NaN where none."""
    rows: dict[str, np.ndarray] = {}
    if (folder / "oof.csv").is_file():
        o_ids, o_probs, _ = read_probs(folder / "oof.csv", k)
        rows.update((i, o_probs[n]) for n, i in enumerate(o_ids) if i not in test_ids)
    t_ids, t_probs, _ = read_probs(folder / "probs.csv", k)
    rows.update((i, t_probs[n]) for n, i in enumerate(t_ids) if i in test_ids)
    out = np.full((len(ids), k), np.nan)
    for n, i in enumerate(ids):
        if i in rows:
            out[n] = rows[i]
    return out


def _texts(values) -> list[str]:
    """A text column of the hard-case file; NaN read as empty."""
    return ["" if pd.isna(v) else str(v) for v in values]


def _review_rows(
    prep: Prepared,
    cand: Path,
    name: str,
    cmp: Comparison | None,
    verdicts: Callable[[], Verdicts],
) -> tuple[PerImage | None, PerImage | None]:
    """The hard-case view (every verdict) and, with a comparison, the test images the candidates disagree on."""
    from docsort.review.report_html import PerImage

    k = prep.num_classes
    test_ids = prep.test_ids
    tests = set(test_ids)
    loader = any_image_loader(prep, test_ids)
    found, missing = _comparison_candidates(cmp) if cmp is not None else ({}, [])
    folders = found if found else {name: cand}
    try:
        current = verdicts()
    except DocsortError:
        current = None
    hard = None
    if current is not None:
        rows = current.rows
        ids = [str(i) for i in rows["ID"]]
        probs = {}
        for c, f in folders.items():
            with contextlib.suppress(DocsortError):  # a broken table is the comparison's to refuse
                probs[c] = _predictions(f, ids, tests, k)
        hard = PerImage(
            ids=ids,
            probs=probs,
            truth=rows["target"].to_numpy(dtype=np.int64),
            kinds=_texts(rows["kind"]),
            notes=_texts(rows["note"]),
            image_loader=loader,
            note=current.describe()
            + ". Predictions: probs.csv for test images, OOF for training images.",
        )
    if cmp is None:
        return hard, None
    truth = np.full(len(test_ids), -1, dtype=np.int64)
    position = {i: n for n, i in enumerate(test_ids)}
    known = "no test labels"
    if (f := prep.file("test_labels.csv")) is not None:
        labels = read_table(f, required=("target",))
        for i, t in zip(labels["ID"], labels["target"], strict=True):
            if i in position:
                truth[position[i]] = int(t)
        known = "labels from test_labels.csv"
    said: dict[str, tuple[str, str]] = {}
    if current is not None:
        rows = current.rows[current.rows["ID"].isin(tests)]
        said = dict(
            zip(
                rows["ID"],
                zip(_texts(rows["kind"]), _texts(rows["note"]), strict=True),
                strict=True,
            )
        )
        for i, t, kind in zip(rows["ID"], rows["target"], rows["kind"], strict=True):
            if kind != "label_error" and truth[position[i]] < 0:
                truth[position[i]] = int(t)
        known += " and the hard cases"
    probs = {}
    for c, f in found.items():
        try:
            ids_c, p_c, _ = read_probs(f / "probs.csv", k)
            probs[c] = align(ids_c, p_c, test_ids, source=str(f / "probs.csv"))
        except DocsortError as err:
            missing.append(f"{c} ({err})")
    note = f"The compared candidates' predictions on the test images (probs.csv); {known}."
    note += f" Winner: {cmp.winner} (decided by {cmp.decided_by})."
    if missing:
        note += " Not read: " + "; ".join(missing) + "."
    dis = PerImage(
        ids=list(test_ids),
        probs=probs,
        truth=truth,
        kinds=[said.get(i, ("", ""))[0] for i in test_ids],
        notes=[said.get(i, ("", ""))[1] for i in test_ids],
        image_loader=loader,
        note=note,
    )
    return hard, dis


def _candidate_ablation(cand: Path) -> Ablation | None:
    """TTA ablation of the candidate's members, when their per-view OOF logits are at hand."""
    spec_path = cand / "candidate.yaml"
    if not spec_path.is_file():
        return None
    spec = ens.load_spec(spec_path)
    paths = [m.model for m in spec.members]
    if any(storage.is_s3(p) or not Path(p).exists() for p in paths):
        return None
    try:
        views = member_views(paths, mem.unique_names([m.name for m in spec.members]))
    except DocsortError:  # a member without per-view OOF logits: nothing to ablate
        return None
    if any("identity" not in v.logits for v in views.values()):
        return None
    return pooled_ablation(views, spec.tta_merge, "all")[0]


@stage(
    "report",
    inputs=("prepared", "candidate", "comparison", "ablation", "hardcases"),
    files=("html", "summary"),
    into=("comparison",),
)
def error_report(
    prepared: str | os.PathLike,
    candidate: str | os.PathLike | None,
    html: str | os.PathLike,
    *,
    summary: str | os.PathLike | None = None,
    comparison: str | os.PathLike | None = None,
    ablation: str | os.PathLike | None = None,
    on: str = "auto",
    max_gallery: int = 500,
    metrics=None,
    confusion=None,
    hardcases: str | os.PathLike | None = None,
) -> ReportResult:
    """Write the error notebook (HTML) and its Markdown summary for one candidate.

    ``candidate`` defaults to the comparison's winner. The TTA ablation comes
    from ``ablation`` (a ``docsort tta-ablation`` folder) or, when omitted, is
    computed from the candidate members' stored per-view OOF logits. Hard
    cases are the current file (``hardcases`` or the data root's); the result
    says which file the report and the comparison used, and whether the file
    changed since the comparison was made. ``metrics``/``confusion`` (KFP ``Metrics``/``ClassificationMetrics``
    outputs) receive macro F1, accuracy and the confusion matrix.
    """
    from docsort.core.stats import accuracy, macro_f1
    from docsort.core.stats import confusion as confusion_matrix
    from docsort.review.report_html import write_report, write_summary_md

    prep = Prepared(Path(prepared))
    if candidate is None:
        if comparison is None:
            raise DocsortError(
                "report needs --candidate or --comparison (whose winner is reported)"
            )
        candidate = Path(comparison) / "winner"
    cand = Path(candidate)
    if not (cand / "probs.csv").is_file():
        raise DocsortError(
            "not a candidate folder (no probs.csv); use `docsort ensemble` or `docsort candidate run`",
            file=str(cand),
        )
    name = (
        json.loads((cand / "candidate.json").read_text())["name"]
        if (cand / "candidate.json").is_file()
        else cand.name
    )
    # The current hard-case file, read at most once: the labelled set and the comparison's check share it.
    verdicts = functools.cache(functools.partial(current_hardcases, prep, hardcases))
    kind, ids, targets, probs, split, used = _labelled_set(prep, cand, on, verdicts)
    cmp = load_comparison(comparison) if comparison is not None else None
    said = ([used] if used else []) + (
        [_comparison_verdicts(Path(comparison), verdicts)] if comparison is not None else []
    )
    abl = load_ablation(ablation) if ablation is not None else _candidate_ablation(cand)
    tables = []
    if (cand / "ensemble_report.csv").is_file():
        tables.append(
            (
                "ensemble-methods",
                "Ensemble methods on OOF (nested CV)",
                read_table(cand / "ensemble_report.csv", ids=None),
            )
        )
    if (cand / "calibration.csv").is_file():
        tables.append(
            (
                "calibration",
                "Temperature scaling per member (ECE before/after)",
                read_table(cand / "calibration.csv", ids=None),
            )
        )
    html = Path(html)
    title = f"docsort error report: {name}"
    note = " ".join(
        [f"Computed on {_SET_TEXT[kind]}.", *(f"{line[0].upper()}{line[1:]}." for line in said)]
    )
    hard, disagree = _review_rows(prep, cand, name, cmp, verdicts)
    write_report(html, class_names=prep.class_names, ids=ids, targets=targets, probs=probs, image_loader=image_loader(prep, split),
                 comparison=cmp, ablation=abl, title=title, note=note, tables=tables, max_gallery=max_gallery,
                 hardcases=hard, disagreements=disagree)  # fmt: skip
    md = Path(summary) if summary is not None else html.with_name("summary.md")
    write_summary_md(
        md,
        class_names=prep.class_names,
        targets=targets,
        probs=probs,
        comparison=cmp,
        ablation=abl,
        title=title,
        note=note,
        disagreements=disagree,
    )
    preds = probs.argmax(1)
    result = ReportResult(html=html, summary=md, on=kind, images=len(ids), macro_f1=macro_f1(targets, preds),
                          accuracy=accuracy(targets, preds), class_names=prep.class_names,
                          confusion=confusion_matrix(targets, preds, prep.num_classes), hardcases=tuple(said))  # fmt: skip
    if metrics is not None or confusion is not None:
        log_report_metrics(result, metrics, confusion)
    tracking.log_artifact([html, md], kind="report", name=f"{name}-{kind}",
                          metrics={"macro_f1": result.macro_f1, "accuracy": result.accuracy})  # fmt: skip
    return result


def _comparison_verdicts(comparison: Path, verdicts: Callable[[], Verdicts]) -> str:
    """Which hard-case file a comparison used, and whether that file (``verdicts()``) has changed since."""
    record = json.loads((comparison / "winner.json").read_text())
    file, n = record.get("hardcases_file"), record.get("hardcases_verdicts")
    line = f"hard cases in the comparison: {file or 'unknown file'}" + (
        f" ({n} verdicts, {record.get('hardcases')} used)" if n is not None else ""
    )
    with contextlib.suppress(DocsortError):  # a broken current file is for compare to refuse
        now = verdicts()
        if now.sha256 != record.get("hardcases_sha256"):
            line += f"; {now.file} has changed since: run `docsort hardcases compare` again"
    return line


def log_report_metrics(result: ReportResult, metrics=None, classification=None) -> None:
    """Log a report's scores to KFP ``Metrics`` and its confusion matrix to ``ClassificationMetrics``.

    The metadata is also written to the artifact's file: kfp.local counts an
    output artifact without a file as missing.
    """
    if metrics is not None:
        metrics.log_metric("macro_f1", round(float(result.macro_f1), 6))
        metrics.log_metric("accuracy", round(float(result.accuracy), 6))
        metrics.log_metric("images", float(result.images))
        Path(metrics.path).write_text(json.dumps({**metrics.metadata, "evaluated_on": result.on}))
    if classification is not None:
        classification.log_confusion_matrix(
            list(result.class_names), result.confusion.astype(int).tolist()
        )
        Path(classification.path).write_text(json.dumps(classification.metadata))
