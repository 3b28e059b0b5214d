"""The ensemble stage: member predictions -> a candidate folder (spec, probabilities, honest OOF, report).

A *candidate* is a folder: ``candidate.yaml`` (the re-runnable spec),
``candidate.json`` (name, method, member count, honest OOF macro F1),
``probs.csv`` (test probabilities) and, when the members' out-of-fold
predictions allow it, ``oof.csv`` (the candidate's own honest OOF
probabilities) plus the ensemble report.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from docsort.core import storage, tracking
from docsort.core.atomic import atomic_path, scratch_dir
from docsort.core.choices import COMBINERS
from docsort.core.errors import DocsortError
from docsort.core.outputs import stage
from docsort.core.probs import align, as_written, read_probs, write_probs
from docsort.core.tables import frame_text
from docsort.ensemble import combiners as ens
from docsort.ensemble import members as mem

MIN_SHARED_ROWS = 10


# ---------------------------------------------------------------- candidates


def _read_predict_json(pred: Path) -> dict:
    f = pred / "predict.json"
    return json.loads(f.read_text()) if f.is_file() else {}


def _abs(path: str | os.PathLike) -> str:
    """Models are recorded absolute (or as URIs) so a spec re-runs from any folder."""
    return str(path) if storage.is_s3(path) else str(Path(path).resolve())


@dataclass(frozen=True)
class CandidateOOF:
    """A candidate's honest OOF probabilities and how they were formed."""

    ids: list[str]
    targets: np.ndarray
    folds: np.ndarray
    probs: np.ndarray
    rows: str  # "shared": every member predicts every row; "pooled": per row, the members holding it out


def member_oofs(spec: ens.CandidateSpec, model_dirs: Sequence[Path | None]) -> list[mem.OOF] | None:
    out = []
    for i, m in enumerate(model_dirs):
        o = mem.oof_probs(m, spec.views_of(i), spec.tta_merge) if m is not None else None
        if o is None:
            return None
        out.append(o)
    return out


def _shared(oofs: Sequence[mem.OOF]) -> tuple[list[str], np.ndarray, np.ndarray, list[np.ndarray]]:
    tables = [(o.ids, o.targets, o.probs) for o in oofs]
    ids = mem.shared_rows(tables)
    if not ids:
        return [], np.zeros(0, np.int64), np.zeros(0, np.int64), []
    pos = [{i: n for n, i in enumerate(o.ids)} for o in oofs]
    rows = [np.array([p[i] for i in ids]) for p in pos]
    targets = oofs[0].targets[rows[0]]
    for o, r in zip(oofs[1:], rows[1:], strict=True):
        if not np.array_equal(o.targets[r], targets):
            raise DocsortError(
                "members disagree on OOF training labels; were they trained on the same prepared data?"
            )
    return (
        ids,
        targets,
        oofs[0].folds[rows[0]],
        [o.probs[r] for o, r in zip(oofs, rows, strict=True)],
    )


def candidate_oof(spec: ens.CandidateSpec, oofs: Sequence[mem.OOF]) -> CandidateOOF | None:
    """Honest OOF probabilities of ``spec``: fitted parts are cross-fitted, never scored in-sample.

    Members that share at least MIN_SHARED_ROWS OOF rows are combined on those
    rows; members held out on different folds (fold0 + fold1 models) are pooled
    per image, which only equal-weight methods allow. The probabilities are
    rounded as ``oof.csv`` stores them, so a score recorded from them equals the
    score of the file (near-ties can flip).
    """
    ids, targets, folds, probs = _shared(oofs)
    fitted = spec.method in ("weighted", "stacked") or spec.temperatures is not None
    if len(ids) >= MIN_SHARED_ROWS:
        if fitted:
            p = ens.cross_fit_oof(probs, targets, method=spec.method, merge=spec.merge, objective=spec.objective,
                                  calibrate=spec.temperatures is not None, folds=ens.cv_folds(targets))  # fmt: skip
        else:
            p = ens.combine(spec, probs)
        return CandidateOOF(ids, targets, folds, as_written(p), "shared")
    if fitted:
        return None
    pids, ptargets, p = mem.pooled([(o.ids, o.targets, o.probs) for o in oofs])
    fold_of = {i: f for o in oofs for i, f in zip(o.ids, o.folds, strict=True)}
    return CandidateOOF(
        pids, ptargets, np.array([fold_of[i] for i in pids]), as_written(p), "pooled"
    )


def write_candidate(
    tmp: Path,
    spec: ens.CandidateSpec,
    ids: Sequence[str],
    probs: np.ndarray,
    oof: CandidateOOF | None,
    extra: dict | None = None,
    *,
    class_names: Sequence[str] | None = None,
) -> None:
    ens.save_spec(spec, tmp / "candidate.yaml")
    write_probs(tmp / "probs.csv", ids, probs, class_names=class_names)
    if oof is not None:
        write_probs(tmp / "oof.csv", oof.ids, oof.probs, {"target": oof.targets, "fold": oof.folds})
    info = {
        "name": spec.name,
        "method": spec.method,
        "members": len(spec.members),
        "objective": spec.objective,
        "oof_macro_f1": spec.oof_macro_f1,
        "oof_rows": None if oof is None else oof.rows,
        "oof_images": 0 if oof is None else len(oof.ids),
        **(extra or {}),
    }
    (tmp / "candidate.json").write_text(json.dumps(info, indent=2))


@stage("candidate", inputs=("predictions", "models", "prepared"), folder="out")
def ensemble(
    predictions: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    models: Sequence[str | os.PathLike] = (),
    name: str | None = None,
    method: str = "auto",
    weights: Sequence[float] | None = None,
    objective: str = "macro_f1",
    merge: str = "mean",
    calibrate: bool = False,
    report: bool = True,
    prepared: str | os.PathLike | None = None,
    views: Sequence[str] | None = None,
    tta_merge: str = "mean",
    predict_overrides: Sequence[str] = (),
) -> Path:
    """Combine member prediction folders (``docsort predict`` output) into a candidate folder.

    ``method=auto`` (the default) is soft voting unless stacking beats it on
    the members' shared OOF rows by the evidence rule (:func:`ens.choose_combiner`);
    the choice and its evidence go into ``candidate.json`` as ``method_choice``.

    Each member's model folder comes from ``models`` or from the ``model`` its
    ``predict.json`` names. Without ``predictions``, the ``models`` (model
    folders or fold bundles) are predicted here on ``prepared`` with ``views``
    (default: the configured ``tta.views``) and kept under ``members/``.
    ``weighted`` and ``stacked`` (and ``calibrate``) fit on the members' OOF
    predictions, recomputed for the views each member was predicted with, on
    the rows all members share. ``report`` adds the ensemble report: every
    member alone vs soft / weighted / stacked / hard on OOF, with nested-CV
    scores and ECE before/after temperature scaling.
    """
    ens.check_choice(method, COMBINERS, "method")
    if method == "auto" and weights is not None:
        raise DocsortError(
            "weights are given for method weighted; method auto chooses soft or stacked"
        )
    if predictions:
        return _ensemble([Path(p) for p in predictions], Path(out), models=models, name=name, method=method, weights=weights,
                         objective=objective, merge=merge, calibrate=calibrate, report=report)  # fmt: skip
    if not models or prepared is None:
        raise DocsortError(
            "ensemble needs member prediction folders, or --model folders and --prepared data to predict them"
        )
    if views is None:
        from docsort.core.config import load_config

        views = list(load_config(predict_overrides).tta.views)
    if (
        method in ("weighted", "stacked") or calibrate
    ):  # fail before minutes of prediction, not after (auto falls back to soft instead)
        oofs = [mem.oof_probs(m, views, tta_merge) for m in models]
        shared = mem.shared_rows([(o.ids, o.targets, o.probs) for o in oofs]) if all(oofs) else []
        if len(shared) < MIN_SHARED_ROWS:
            raise DocsortError(
                _no_shared_oof(
                    method,
                    calibrate,
                    "no oof.csv in a model folder"
                    if not all(oofs)
                    else f"only {len(shared)} OOF rows shared by every member",
                )
            )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with scratch_dir(out) as work:
        preds = []
        for i, m in enumerate(models):
            preds.append(
                mem.predict_member(
                    prepared,
                    m,
                    Path(work) / "members" / f"{i:02d}-{Path(m).name}",
                    views,
                    tta_merge,
                    predict_overrides,
                )
            )
        return _ensemble(preds, out, models=models, name=name, method=method, weights=weights, objective=objective,
                         merge=merge, calibrate=calibrate, report=report, keep=Path(work) / "members")  # fmt: skip


def _ensemble(
    preds: list[Path],
    out: Path,
    *,
    models: Sequence[str | os.PathLike],
    name: str | None,
    method: str,
    weights: Sequence[float] | None,
    objective: str,
    merge: str,
    calibrate: bool,
    report: bool,
    keep: Path | None = None,
) -> Path:
    infos = [_read_predict_json(p) for p in preds]
    if models:
        if len(models) != len(preds):
            raise DocsortError(f"{len(preds)} prediction folders but {len(models)} model folders")
        model_dirs: list[Path | None] = [Path(m) for m in models]
    else:
        model_dirs = [
            Path(i["model"]) if i.get("model") and Path(i["model"]).exists() else None
            for i in infos
        ]
    tables = [read_probs(p / "probs.csv") for p in preds]
    ids = tables[0][0]
    member_probs = [
        align(t[0], t[1], ids, source=str(p / "probs.csv"))
        for t, p in zip(tables, preds, strict=True)
    ]
    views = [list(i.get("views") or ["identity"]) for i in infos]
    merges = {i.get("merge", "mean") for i in infos}
    if len(merges) > 1:
        raise DocsortError(
            f"members were predicted with different tta.merge ({', '.join(sorted(merges))}); predict them alike"
        )
    tta_merge = merges.pop()
    names = mem.unique_names(
        [mem.member_name(m) if m is not None else f"member{n}" for n, m in enumerate(model_dirs)]
    )
    members = [
        ens.MemberSpec(
            name=nm, model=_abs(m if m is not None else p), views=v if v != views[0] else None
        )
        for nm, m, p, v in zip(names, model_dirs, preds, views, strict=True)
    ]
    base = ens.CandidateSpec(
        name=name or method,
        members=members,
        method="soft" if method == "auto" else method,
        merge=merge,
        tta_views=views[0],
        tta_merge=tta_merge,
        objective=objective,
    )
    oofs = member_oofs(base, model_dirs)
    ids_s, targets, folds, shared = _shared(oofs) if oofs else ([], None, None, [])
    method_choice = None
    if method == "auto":
        method, method_choice = _auto_method(shared, targets, len(members), merge, objective)
        base.method = method
    name = name or method
    base.name = name
    needs_fit = (method in ("weighted", "stacked") and weights is None) or calibrate
    if needs_fit and len(ids_s) < MIN_SHARED_ROWS:
        why = (
            "no oof.csv in a model folder"
            if oofs is None
            else f"only {len(ids_s)} OOF rows shared by every member"
        )
        raise DocsortError(_no_shared_oof(method, calibrate, why))
    if needs_fit:
        spec = ens.fit_candidate(name, members, shared, targets, method=method, merge=merge, objective=objective,
                                 calibrate=calibrate, tta_views=views[0], tta_merge=tta_merge)  # fmt: skip
    else:
        spec = base
        if weights is not None:
            spec.weights = [float(w) for w in weights]
    spec.validate()
    oof = candidate_oof(spec, oofs) if oofs else None
    if oof is not None:
        spec.oof_macro_f1 = ens.score(oof.probs, oof.targets, "macro_f1")
    probs = ens.combine(spec, member_probs)
    known = [m for m in model_dirs if m is not None]
    with atomic_path(out, is_dir=True) as tmp:
        write_candidate(tmp, spec, ids, probs, oof, {"method_choice": method_choice} if method_choice else None,
                        class_names=mem.class_names(known[0]) if known else None)  # fmt: skip
        if report and oofs and len(ids_s) >= MIN_SHARED_ROWS:
            rep = ens.evaluate_methods(names, shared, targets, objective=objective, merge=merge)
            write_method_report(tmp, rep, len(ids_s))
        if keep is not None:
            shutil.copytree(keep, tmp / "members")
    scores = {"oof_macro_f1": spec.oof_macro_f1} if spec.oof_macro_f1 is not None else {}
    tracking.log_artifact(out, kind="candidate", name=spec.name, metrics=scores)
    return out


def _auto_method(
    shared: list[np.ndarray], targets: np.ndarray | None, n_members: int, merge: str, objective: str
) -> tuple[str, dict]:
    """``method=auto``: soft, or stacked where the shared OOF rows say it beats soft."""
    if n_members < 2 or len(shared) == 0 or len(targets) < MIN_SHARED_ROWS:
        why = (
            "one member"
            if n_members < 2
            else f"only {0 if targets is None else len(targets)} shared OOF rows"
        )
        text = f"soft voting: stacking needs members' shared OOF predictions to be judged ({why})"
        return "soft", {
            "requested": "auto",
            "chosen": "soft",
            "decided_by": "prior",
            "evidence": {"text": text},
        }
    c = ens.choose_combiner(shared, targets, merge=merge, objective=objective)
    return c.method, {**c.record, "oof": {m: round(v, 4) for m, v in c.oof_scores.items()}}


def _no_shared_oof(method: str, calibrate: bool, why: str) -> str:
    return (f"method {method}{' with --calibrate' if calibrate else ''} fits on out-of-fold predictions the members share: {why}; "
            "train the members on the same folds (fold=all) or use soft/hard voting")  # fmt: skip


def write_method_report(folder: Path, rep: ens.MethodReport, rows: int) -> None:
    """``ensemble_report.csv``/``.md``, ``calibration.csv`` and ``nested_cv.csv`` of an ensemble."""
    rep.table.to_csv(folder / "ensemble_report.csv", index=False)
    rep.calibration.to_csv(folder / "calibration.csv", index=False)
    if rep.nested is not None:
        rep.nested.table.to_csv(folder / "nested_cv.csv", index=False)
    (folder / "ensemble_report.md").write_text(format_method_report(rep, rows))


def format_method_report(rep: ens.MethodReport, rows: int) -> str:
    """Plain-text ensemble report (also valid Markdown inside a code block)."""
    t = rep.table[
        [
            "candidate",
            "method",
            "members",
            "macro_f1",
            "fit_macro_f1",
            "accuracy",
            "log_loss",
            "ece",
            "macro_f1_cal",
            "log_loss_cal",
            "ece_cal",
        ]
    ]
    lines = [
        f"Ensemble methods on {rows} shared OOF images (macro_f1: nested CV, each row scored by a fit that never saw it;",
        "fit_macro_f1: in-sample; *_cal: with per-member temperature scaling)",
        frame_text(t),
        "",
        "Temperature scaling per member (fitted on its OOF predictions)",
        frame_text(rep.calibration),
    ]
    if rep.nested is not None:
        n = rep.nested
        verdict = "pays" if n.weighted_beats_equal else "does not pay"
        lines += ["", f"Nested CV of the weight search ({n.objective}): weighted {n.pooled_weighted:.4f} vs equal {n.pooled_equal:.4f}: weighting {verdict} out of sample",
                  frame_text(n.table)]  # fmt: skip
    return "\n".join(lines) + "\n"


@stage("candidates", inputs=("predictions", "models"), folder="out")
def ensemble_candidates(
    predictions: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    models: Sequence[str | os.PathLike] = (),
    methods: Sequence[str] = ("soft",),
    include_members: bool = True,
) -> Path:
    """One candidate folder per method under ``out`` (plus one per member alone)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    models = list(models) or [None] * len(predictions)
    for method in methods:
        ensemble(
            predictions,
            out / method,
            models=[m for m in models if m],
            method=method,
        )
    if include_members and len(predictions) > 1:
        names = mem.unique_names(
            [mem.member_name(m) if m else f"member{n}" for n, m in enumerate(models)]
        )
        for nm, p, m in zip(names, predictions, models, strict=True):
            ensemble([p], out / nm, models=[m] if m else [], name=nm, method="soft", report=False)
    return out
