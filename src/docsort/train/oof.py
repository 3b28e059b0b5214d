"""Stage ``oof report``: merge the fold members' out-of-fold predictions and score them.

Each K-fold member predicts only its own validation fold (``oof.csv``); together
they predict every training image exactly once, which is the honest estimate of
what the recipe scores on unseen data. Writes into ``out``::

    oof.csv          ID, target, fold, p0..pK-1 (index order)
    per_class.csv    precision, recall, F1, support per class
    report.json      macro F1 and accuracy overall and per fold, coverage, members
    report.md        the same as a short Markdown summary (the KFP UI shows it)
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from docsort.core.atomic import atomic_path
from docsort.core.errors import DocsortError
from docsort.core.probs import read_probs, write_probs
from docsort.core.stats import accuracy, macro_f1, per_class_table, predictions
from docsort.data.prepared import Prepared


def _member_oof(member: Path) -> tuple[pd.DataFrame, np.ndarray]:
    path = member / "oof.csv"
    ids, probs, df = read_probs(path)
    for col in ("target", "fold"):
        if col not in df.columns:
            raise DocsortError(f"out-of-fold table has no {col!r} column", file=str(path))
    return df[["ID", "target", "fold"]].assign(member=member.name), probs


def oof_report(
    prepared: str | os.PathLike, members: Sequence[str | os.PathLike], out: str | os.PathLike
) -> dict:
    """Merge ``members``' ``oof.csv`` into one table over the prepared index and score it.

    An image predicted by two members (two models trained on the same fold) is
    an error; images no member predicted are counted as ``missing`` (fewer
    folds trained than prepared) and left out of the scores.
    """
    prep = Prepared(Path(prepared))
    if not members:
        raise DocsortError("no trained members to report on")
    frames, blocks = [], []
    for m in members:
        frame, probs = _member_oof(Path(m))
        if probs.shape[1] != prep.num_classes:
            raise DocsortError(
                f"{probs.shape[1]} probability columns, the data has {prep.num_classes} classes",
                file=str(Path(m) / "oof.csv"),
            )
        frames.append(frame)
        blocks.append(probs)
    table = pd.concat(frames, ignore_index=True)
    probs = np.concatenate(blocks)
    dup = table["ID"].duplicated(keep=False)
    if dup.any():
        first = table.loc[dup, "ID"].iloc[0]
        owners = sorted(table.loc[table["ID"] == first, "member"])
        raise DocsortError(
            f"image {first!r} is out-of-fold for several members {owners}: train each fold once"
        )
    index = prep.index.set_index("ID")
    unknown = sorted(set(table["ID"]) - set(index.index))
    if unknown:
        raise DocsortError(
            f"image {unknown[0]!r} is not in the prepared index ({len(unknown)} such)",
            file="oof.csv",
        )
    order = [i for i in index.index if i in set(table["ID"])]
    pos = pd.Series(np.arange(len(table)), index=table["ID"]).loc[order].to_numpy()
    table, probs = table.iloc[pos].reset_index(drop=True), probs[pos]
    truth = index.loc[order, "target"].to_numpy()
    if not np.array_equal(truth, table["target"].to_numpy()):
        raise DocsortError(
            "a member's oof.csv targets differ from the prepared index (prepared again since?)"
        )

    preds = predictions(probs)
    labels = range(prep.num_classes)
    per_fold = {
        int(f): {
            "macro_f1": macro_f1(truth[m], preds[m], labels=labels),
            "accuracy": accuracy(truth[m], preds[m]),
            "images": int(m.sum()),
        }
        for f in sorted(table["fold"].unique())
        for m in [table["fold"].to_numpy() == f]
    }
    report = {
        "macro_f1": macro_f1(truth, preds, labels=labels),
        "accuracy": accuracy(truth, preds),
        "images": len(order),
        "missing": int(len(index) - len(order)),
        "folds": per_fold,
        "members": [Path(m).name for m in members],
    }
    out = Path(out)
    with atomic_path(out, is_dir=True) as tmp:
        write_probs(
            tmp / "oof.csv", table["ID"], probs, {"target": table["target"], "fold": table["fold"]}
        )
        per_class_table(truth, preds, prep.class_names).to_csv(tmp / "per_class.csv", index=False)
        (tmp / "report.json").write_text(json.dumps(report, indent=2))
        (tmp / "report.md").write_text(summary_md(report))
    return report


def summary_md(report: dict) -> str:
    """A short Markdown table of the OOF scores."""
    lines = [
        f"**Out-of-fold macro F1 {report['macro_f1']:.4f}** (accuracy {report['accuracy']:.4f}, "
        f"{report['images']} images"
        + (f", {report['missing']} not predicted" if report["missing"] else "")
        + ")",
        "",
        "| fold | macro F1 | accuracy | images |",
        "|---:|---:|---:|---:|",
        *(
            f"| {f} | {r['macro_f1']:.4f} | {r['accuracy']:.4f} | {r['images']} |"
            for f, r in report["folds"].items()
        ),
    ]
    return "\n".join(lines) + "\n"
