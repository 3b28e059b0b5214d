"""The hard-case workflow: mine candidates for review, record a person's verdicts.

``hardcases.csv`` (``ID,target,note,kind``) is a versioned input of the
dataset: every comparison records its hash, and every change made here is
appended to ``hardcases.history.jsonl`` beside it (who changed which row from
what to what, and when). Kinds:

* ``hard`` / ``ambiguous`` / ``model_error``: a test (or training) image with
  its true label, used to compare candidates;
* ``label_error``: a *training* image whose label in train.csv is wrong; the
  row's target is the correct label. Training ignores it unless
  ``data.exclude_label_errors`` or ``data.correct_label_errors`` is on.

Mining proposes rows, it never writes hardcases.csv: a person decides.
"""

from __future__ import annotations

import csv
import datetime as dt
import getpass
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from docsort.core import storage
from docsort.core.atomic import atomic_path
from docsort.core.choices import HARDCASE_KINDS
from docsort.core.csv_tables import read_csv, read_table
from docsort.core.errors import DocsortError
from docsort.core.probs import align, read_probs
from docsort.data.contract import Meta, parse_ids, read_hardcases, read_labelled, read_meta
from docsort.data.prepared import Prepared

COLUMNS = ["ID", "target", "note", "kind"]
HISTORY = "hardcases.history.jsonl"
# An OOF error is proposed as a label error when the sources' mean probability of another
# class beats the label's by at least this much (and clears that class's own confidence, see
# rank_label_errors): a model rarely disagrees that hard with a right label.
LABEL_ERROR_MARGIN = 0.5


# ---------------------------------------------------------------- the current file


@dataclass(frozen=True)
class Verdicts:
    """The hard-case file a stage uses: where it is, its rows, its hash and why this one."""

    file: str
    rows: pd.DataFrame
    sha256: str | None
    note: str = ""

    def describe(self, used: int | None = None) -> str:
        """``hard cases: FILE (N verdicts, M used)``: the line compare and report print."""
        n = len(self.rows)
        what = f"{n} verdict{'s' if n != 1 else ''}" + ("" if used is None else f", {used} used")
        return f"hard cases: {self.file} ({what}){'; ' + self.note if self.note else ''}"


def current_hardcases(prep: Prepared, file: str | os.PathLike | None = None) -> Verdicts:
    """The hard-case verdicts as they are now, not as they were when the data was prepared.

    ``file`` (``--hardcases``) wins; else the data root's ``hardcases.csv``
    (the root ``prepare`` recorded as ``source``; no file there means no
    verdicts). Only when the data root itself cannot be reached (moved, or a
    pipeline task that sees only the prepared folder) is the copy made at
    prepare time used, and the note says so.
    """
    meta = read_meta(prep.root / "meta.csv")
    if file is not None:
        if not storage.exists(file):
            raise DocsortError("hard-case file not found", file=str(file))
        return _verdicts(str(file), meta)
    source = prep.info.get("source")
    reachable = bool(source) and (storage.is_s3(source) or Path(source).is_dir())
    if reachable:
        uri = storage.join(source, "hardcases.csv")
        if storage.exists(uri):
            return _verdicts(uri, meta)
        return Verdicts(uri, _no_rows(), None, "no such file, so none yet")
    copy = prep.root / "hardcases.csv"
    why = (
        f"the copy made at prepare time (data root {source} not found)"
        if source
        else ("the copy made at prepare time (the prepared folder records no data root)")
    )
    if copy.is_file():
        return _verdicts(str(copy), meta, why)
    return Verdicts(str(copy), _no_rows(), None, why)


def _verdicts(uri: str, meta: Meta, note: str = "") -> Verdicts:
    data = storage.read_bytes(uri)
    if storage.is_s3(uri):
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / "hardcases.csv"
            local.write_bytes(data)
            rows = read_hardcases(local, meta, name=uri)
    else:
        rows = read_hardcases(uri, meta)
    return Verdicts(uri, rows, hashlib.sha256(data).hexdigest(), note)


# ---------------------------------------------------------------- add / mark


@dataclass(frozen=True)
class Dataset:
    """What a verdict is validated against: classes, training labels, test IDs."""

    meta: Meta
    train: dict[str, int]
    test: set[str]

    @classmethod
    def read(cls, root: str | os.PathLike) -> Dataset:
        root = Path(root)
        meta = read_meta(root / "meta.csv")
        train = read_labelled(root / "train.csv", meta) if (root / "train.csv").is_file() else None
        test = set()
        if (root / "sample_submission.csv").is_file():
            test = set(
                parse_ids(
                    read_csv(root / "sample_submission.csv", ("ID", "target")),
                    file="sample_submission.csv",
                )
            )
        labels = dict(zip(train.ids, train.targets, strict=True)) if train else {}
        return cls(meta=meta, train=labels, test=test)

    def target(self, value: str | int) -> int:
        """A class given as its target number or its name in meta.csv."""
        s = str(value).strip()
        if s.lstrip("-").isdigit():
            t = int(s)
            if 0 <= t < self.meta.num_classes:
                return t
        elif s in self.meta.class_names:
            return self.meta.class_names.index(s)
        raise DocsortError(
            f"target {s!r} is neither a target 0..{self.meta.num_classes - 1} nor a class name of meta.csv"
        )


def _no_rows() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in COLUMNS})


def _read_rows(path: Path, meta: Meta) -> pd.DataFrame:
    if not path.is_file():
        return _no_rows()
    return read_hardcases(path, meta).astype({"target": int})


def _write_rows(path: Path, rows: pd.DataFrame, meta: Meta) -> None:
    """Rewrite hardcases.csv atomically, validated by the same reader every stage uses."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for r in rows.itertuples(index=False):
        w.writerow([r.ID, int(r.target), r.note, r.kind])
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue(), encoding="utf-8")
        read_hardcases(tmp, meta)


def _history(path: Path, action: str, image_id: str, before: dict | None, after: dict) -> None:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = ""
    entry = {
        "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "user": user,
        "action": action,
        "ID": image_id,
        "before": before,
        "after": after,
    }
    with (path.parent / HISTORY).open("a", encoding="utf-8") as f:
        f.write(json.dumps(entry) + "\n")


def _check(ds: Dataset, image_id: str, target: int, kind: str) -> None:
    if kind not in HARDCASE_KINDS:
        raise DocsortError(f"kind {kind!r} is not one of {', '.join(HARDCASE_KINDS)}")
    if kind == "label_error":
        if image_id not in ds.train:
            raise DocsortError(
                f"{image_id!r} is not a training image (train.csv); kind=label_error marks a wrong training label"
            )
        if ds.train[image_id] == target:
            raise DocsortError(
                f"{image_id!r} is already labelled {target} in train.csv; give the correct label with --target"
            )
    elif image_id not in ds.test and image_id not in ds.train:
        raise DocsortError(
            f"{image_id!r} is neither a test image (sample_submission.csv) nor a training image (train.csv)"
        )


def _clean_note(note: str) -> str:
    if any(ord(c) < 32 for c in note):
        raise DocsortError("note must be one line of printable text")
    return note


def add(
    file: str | os.PathLike,
    image_id: str,
    target: str | int,
    *,
    kind: str = "hard",
    note: str = "",
    data: str | os.PathLike | None = None,
) -> dict:
    """Append a new hard case; the dataset (``data``, default: the file's folder) validates it."""
    path = Path(file)
    ds = Dataset.read(data or path.parent)
    t = ds.target(target)
    _check(ds, image_id, t, kind)
    rows = _read_rows(path, ds.meta)
    if image_id in set(rows["ID"]):
        raise DocsortError(
            f"{image_id!r} is already a hard case; use `docsort hardcases mark` to change its verdict",
            file=str(path),
        )
    row = {"ID": image_id, "target": t, "note": _clean_note(note), "kind": kind}
    _write_rows(path, pd.concat([rows, pd.DataFrame([row])], ignore_index=True), ds.meta)
    _history(path, "add", image_id, None, row)
    return row


def mark(
    file: str | os.PathLike,
    image_id: str,
    *,
    kind: str | None = None,
    target: str | int | None = None,
    note: str | None = None,
    data: str | os.PathLike | None = None,
) -> dict:
    """Record a verdict on an existing hard case: its kind, and its target or note if given."""
    path = Path(file)
    ds = Dataset.read(data or path.parent)
    rows = _read_rows(path, ds.meta)
    hit = np.flatnonzero(rows["ID"].to_numpy() == image_id)
    if not len(hit):
        raise DocsortError(
            f"{image_id!r} is not in hardcases.csv; use `docsort hardcases add` first",
            file=str(path),
        )
    i = int(hit[0])
    before = {c: rows.at[i, c] for c in COLUMNS}
    before["target"] = int(before["target"])
    after = dict(before)
    if kind is not None:
        after["kind"] = kind
    if target is not None:
        after["target"] = ds.target(target)
    if note is not None:
        after["note"] = _clean_note(note)
    _check(ds, image_id, after["target"], after["kind"])
    for c in COLUMNS:
        rows.at[i, c] = after[c]
    _write_rows(path, rows, ds.meta)
    _history(path, "mark", image_id, before, after)
    return after


def accept(
    file: str | os.PathLike,
    proposals: str | os.PathLike,
    *,
    kind: str = "label_error",
    top: int | None = None,
    data: str | os.PathLike | None = None,
) -> tuple[list[dict], list[str]]:
    """Add the first ``top`` proposals of ``mine`` suggesting ``kind``, with their suggested targets.

    For a person who has read the proposals CSV (and deleted the rows they
    reject): one command instead of an ``add`` per row. Proposals are taken in
    the file's order (``mine`` writes them best first); an image already in
    hardcases.csv is left as it is and reported. The file is rewritten once,
    and every added row is logged. Returns the rows added and the IDs skipped.
    """
    if kind not in HARDCASE_KINDS:
        raise DocsortError(f"kind {kind!r} is not one of {', '.join(HARDCASE_KINDS)}")
    path = Path(file)
    ds = Dataset.read(data or path.parent)
    if not Path(proposals).is_file():
        raise DocsortError("proposals file not found", file=str(proposals))
    table = read_table(
        proposals,
        text=("split", "source", "reason", "label", "suggested_class", "suggested_kind"),
        required=("suggested_target", "suggested_kind"),
    )
    chosen = table[table["suggested_kind"].str.strip() == kind]
    if top is not None:
        chosen = chosen.head(top)
    rows = _read_rows(path, ds.meta)
    have = set(rows["ID"])
    added, skipped = [], []
    name = Path(str(proposals)).name
    for r in chosen.itertuples(index=False):
        image_id = str(r.ID).strip()
        if image_id in have:
            skipped.append(image_id)
            continue
        value = r.suggested_target
        t = ds.target(int(value) if isinstance(value, float) and value.is_integer() else value)
        _check(ds, image_id, t, kind)
        score = float(getattr(r, "score", float("nan")))
        note = f"accepted from {name}" + ("" if np.isnan(score) else f" (score {score:.2f})")
        added.append({"ID": image_id, "target": t, "note": _clean_note(note), "kind": kind})
        have.add(image_id)
    if added:
        _write_rows(path, pd.concat([rows, pd.DataFrame(added)], ignore_index=True), ds.meta)
        for row in added:
            _history(path, "accept", row["ID"], None, row)
    return added, skipped


# ---------------------------------------------------------------- label-error ranking


def rank_label_errors(
    tables: Sequence[tuple[Sequence[str], np.ndarray]],
    labels: Mapping[str, int],
    *,
    skip: Collection[str] = (),
    min_score: float = LABEL_ERROR_MARGIN,
) -> pd.DataFrame:
    """Every labelled training image, most likely mislabelled first.

    ``tables`` are OOF probability tables ``(ids, N x K probs)``, one per
    source (a member, a fold bundle, a candidate); ``labels`` the training
    label of each ID. An ID may be missing from some tables (a single fold's
    member): it is scored over the tables that hold it. The sources'
    probabilities are averaged, and the ``score`` is the normalized margin of
    that mean (confident learning's ranking, Northcutt et al. 2021):
    ``p(other) - p(label)``, with *other* the most probable class besides the
    label, from -1 (sure of the label) to 1 (sure of another class). Because
    it is one margin of the mean, sources that agree on the same other class
    raise it and a lone dissenting source only lowers the label's share.

    ``threshold`` is confident learning's per-class threshold of the other
    class (the mean probability its own labelled images get; for a class no
    image is labelled with, the mean of the other classes' thresholds) and
    ``confident`` says the image clears it. ``label_error`` (the suggestion)
    needs both ``score >= min_score`` and ``confident``: a margin alone
    would flag images of a class every model is unsure of. IDs in ``skip``
    (already reviewed) are left out of the result, but still count towards
    the thresholds.
    """
    if not tables:
        raise DocsortError("no OOF probability table to rank label errors on")
    k = int(np.asarray(tables[0][1]).shape[1])
    pos: dict[str, int] = {}
    for ids, _ in tables:
        for i in ids:
            if i in labels and i not in pos:
                pos[i] = len(pos)
    n = len(pos)
    total = np.zeros((n, k))
    votes = np.zeros((n, k), dtype=np.int64)
    count = np.zeros(n, dtype=np.int64)
    for ids, probs in tables:
        probs = np.asarray(probs, dtype=np.float64)
        if probs.ndim != 2 or probs.shape[1] != k or probs.shape[0] != len(ids):
            raise DocsortError(
                f"OOF tables disagree: {probs.shape} probabilities for {len(ids)} IDs, "
                f"{k} classes expected"
            )
        rows = np.array([pos.get(i, -1) for i in ids], dtype=np.int64)
        keep = rows >= 0
        rows, probs = rows[keep], probs[keep]
        if len(np.unique(rows)) != len(rows):
            raise DocsortError("an OOF table lists an ID twice")
        total[rows] += probs
        votes[rows, probs.argmax(1)] += 1
        count[rows] += 1
    ids = list(pos)
    y = np.array([int(labels[i]) for i in ids], dtype=np.int64)
    if n and (y.min() < 0 or y.max() >= k):
        raise DocsortError(f"a training label is outside 0..{k - 1}")
    mean = total / np.maximum(count, 1)[:, None]
    r = np.arange(n)
    p_label = mean[r, y]
    others = mean.copy()
    others[r, y] = -np.inf
    other = others.argmax(1)
    p_other = mean[r, other]
    # Confident learning's per-class threshold: the mean probability of class j over images labelled j.
    per_class = np.bincount(y, weights=p_label, minlength=k)
    labelled = np.bincount(y, minlength=k)
    threshold = per_class / np.maximum(labelled, 1)
    # A class nobody labelled has no threshold of its own: the mean of the others'.
    threshold[labelled == 0] = threshold[labelled > 0].mean() if (labelled > 0).any() else 0.0
    score = p_other - p_label
    confident = p_other >= threshold[other]
    df = pd.DataFrame({
        "ID": ids, "label": y, "other": other, "score": score, "p_label": p_label, "p_other": p_other,
        "threshold": threshold[other], "confident": confident, "sources": count,
        "agree": votes[r, other], "wrong": count - votes[r, y],
        "label_error": confident & (score >= min_score),
    })  # fmt: skip
    df = df[~df["ID"].isin(set(skip))]
    return df.sort_values(["score", "ID"], ascending=[False, True], kind="stable").reset_index(
        drop=True
    )


# ---------------------------------------------------------------- mining


def _top_names(meta_names: Sequence[str], t: int) -> str:
    return str(meta_names[t]) if 0 <= t < len(meta_names) else str(t)


def mine(
    prepared: str | os.PathLike,
    candidates: Sequence[str | os.PathLike] = (),
    *,
    models: Sequence[str | os.PathLike] = (),
    top: int = 20,
    existing: str | os.PathLike | None = None,
    min_score: float = LABEL_ERROR_MARGIN,
    ranking: str | os.PathLike | None = None,
) -> pd.DataFrame:
    """Proposals for review, best first within each source; ``score`` says how strongly.

    * ``oof_error``: training images at least one source's OOF prediction
      (the candidates' and the models' ``oof.csv``) gets wrong, ranked by
      :func:`rank_label_errors` (``score``: the sources' mean margin of the
      other class over the label, -1..1); where the ranking flags a label
      error (margin >= ``min_score`` and that class's confident-learning
      threshold cleared) the suggested kind is ``label_error`` with the
      other class as the suggested target, else ``hard`` with the training
      label;
    * ``disagreement``: test images on which the candidates' top-1 classes differ;
    * ``low_confidence``: test images with the smallest top-1 probability of
      the candidates' mean.

    Images already in hardcases.csv (``existing``, default the data root's current file,
    :func:`current_hardcases`) are left out. ``ranking``: also write the whole
    label-error ranking (every training image, :func:`oof_ranking`) there.
    """
    from docsort.ensemble.candidate import expand_candidates

    prep = Prepared(Path(prepared))
    names = prep.class_names
    cands = expand_candidates(candidates) if candidates else []
    if not cands and not models:
        raise DocsortError(
            "nothing to mine: give candidate folders and/or --model folders with oof.csv"
        )
    skip = set(current_hardcases(prep, existing).rows["ID"])
    rows: list[dict] = []

    # Training images the OOF predictions get wrong, most likely label errors first.
    sources = [c / "oof.csv" for c in cands if (c / "oof.csv").is_file()] + [
        Path(m) / "oof.csv" for m in models
    ]
    ranked = oof_ranking(prep, sources, skip=skip, min_score=min_score)
    if ranking is not None:
        write_proposals(ranked, ranking)
    oof_rows = []
    for r in ranked[ranked["wrong"] > 0].head(top).itertuples():
        label, other = int(r.label), int(r.other)
        reason = (f"OOF: {r.agree}/{r.sources} predictions say {_top_names(names, other)} (mean p={r.p_other:.2f}), "
                  f"train.csv says {_top_names(names, label)} (p={r.p_label:.2f}); margin {r.score:+.2f}")  # fmt: skip
        oof_rows.append({
            "ID": r.ID, "split": "train", "source": "oof_error", "reason": reason, "label": names[label],
            "suggested_target": other if r.label_error else label,
            "suggested_kind": "label_error" if r.label_error else "hard", "confidence": float(r.p_other),
            "score": float(r.score),
        })  # fmt: skip
    rows += oof_rows

    # Test images: disagreement and low confidence between candidates.
    if cands:
        test_ids = prep.test_ids
        probs_by = {}
        for c in cands:
            name = (
                json.loads((c / "candidate.json").read_text())["name"]
                if (c / "candidate.json").is_file()
                else c.name
            )
            ids, p, _ = read_probs(c / "probs.csv")
            probs_by[name] = align(ids, p, test_ids, source=str(c / "probs.csv"))
        stack = np.stack(list(probs_by.values()))
        preds = stack.argmax(2)
        mean = stack.mean(0)
        dis = []
        if len(probs_by) > 1:
            for n in np.flatnonzero((preds != preds[0]).any(0)):
                if test_ids[n] in skip:
                    continue
                detail = "; ".join(
                    f"{c}: {_top_names(names, int(preds[k, n]))} ({stack[k, n].max():.2f})"
                    for k, c in enumerate(probs_by)
                )
                top1 = int(mean[n].argmax())
                dis.append({
                    "ID": test_ids[n], "split": "test", "source": "disagreement", "reason": f"candidates disagree: {detail}",
                    "label": "", "suggested_target": top1, "suggested_kind": "hard", "confidence": float(mean[n].max()),
                    "score": len(set(preds[:, n].tolist())) - float(mean[n].max()),
                })  # fmt: skip
        rows += sorted(dis, key=lambda r: (-r["score"], r["ID"]))[:top]
        taken = {r["ID"] for r in rows}
        order = np.argsort(mean.max(1), kind="stable")
        low = []
        for n in order:
            if test_ids[n] in skip or test_ids[n] in taken:
                continue
            two = np.argsort(-mean[n], kind="stable")[:2]
            reason = (f"least confident: {_top_names(names, int(two[0]))} {mean[n, two[0]]:.2f} vs "
                      f"{_top_names(names, int(two[1]))} {mean[n, two[1]]:.2f}")  # fmt: skip
            low.append({
                "ID": test_ids[n], "split": "test", "source": "low_confidence", "reason": reason, "label": "",
                "suggested_target": int(two[0]), "suggested_kind": "hard", "confidence": float(mean[n].max()),
                "score": 1.0 - float(mean[n].max()),
            })  # fmt: skip
            if len(low) >= top:
                break
        rows += low
    cols = [
        "ID",
        "split",
        "source",
        "reason",
        "label",
        "suggested_target",
        "suggested_class",
        "suggested_kind",
        "confidence",
    ]
    df = pd.DataFrame(rows, columns=[*cols, "score"])
    df["suggested_class"] = [names[int(t)] for t in df["suggested_target"]]
    return df[[*cols, "score"]].reset_index(drop=True)


def oof_ranking(
    prepared: str | os.PathLike | Prepared,
    sources: Sequence[str | os.PathLike],
    *,
    skip: Collection[str] = (),
    min_score: float = LABEL_ERROR_MARGIN,
) -> pd.DataFrame:
    """:func:`rank_label_errors` on OOF tables (``oof.csv`` files) against the prepared training labels.

    Adds ``label_class`` and ``other_class`` (the class names). No source: an empty ranking.
    """
    prep = prepared if isinstance(prepared, Prepared) else Prepared(Path(prepared))
    names = prep.class_names
    labels = dict(zip(prep.index["ID"], prep.index["target"].astype(int), strict=True))
    tables = []
    for src in sources:
        ids, probs, _ = read_probs(src, prep.num_classes)
        tables.append((ids, probs))
    if not tables:
        tables = [([], np.zeros((0, prep.num_classes)))]
    df = rank_label_errors(tables, labels, skip=skip, min_score=min_score)
    df.insert(2, "label_class", [names[int(t)] for t in df["label"]])
    df.insert(4, "other_class", [names[int(t)] for t in df["other"]])
    return df


def write_proposals(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write the proposals CSV atomically."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, float_format="%.4f")
    return Path(path)
