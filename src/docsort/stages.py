"""File-level review stages: TTA ablation, candidates, hard-case comparison, report, submission.

A *candidate* is a folder: ``candidate.yaml`` (the re-runnable spec),
``candidate.json`` (name, method, member count, honest OOF macro F1),
``probs.csv`` (test probabilities) and, when the members' out-of-fold
predictions allow it, ``oof.csv`` (the candidate's own honest OOF
probabilities) plus the ensemble report. ``ensemble`` builds one from member
predictions, ``run_candidate`` re-builds one from a saved spec and its
checkpoints, ``compare_hardcases`` picks the winner among several,
``error_report`` explains one, ``submit_candidate``/``submit_winner`` write the
submission. The numeric work lives in ``ensemble``, ``ablation``,
``hardcase_compare``, ``report`` and ``submit``; this module reads and writes files.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from docsort import ensemble as ens
from docsort import members as mem
from docsort import storage
from docsort.ablation import Ablation, tta_ablation
from docsort.atomic import atomic_path, scratch_dir
from docsort.data import read_meta, read_table
from docsort.errors import ConfigError, DocsortError
from docsort.hardcase_compare import Comparison, compare_candidates, text_table
from docsort.outputs import stage
from docsort.prepared import Prepared
from docsort.probs import align, read_probs, write_probs
from docsort.submit import submit

MIN_SHARED_ROWS = 10


def _fmt(x: object, digits: int = 4) -> str:
    if isinstance(x, float | np.floating):
        return "" if math.isnan(x) else f"{x:.{digits}f}"
    return str(x)


def _df_text(df: pd.DataFrame) -> str:
    return text_table(
        list(df.columns), [[_fmt(v) for v in row] for row in df.itertuples(index=False)]
    )


# ---------------------------------------------------------------- TTA ablation


def _pooled_views(models: Sequence[str | os.PathLike]) -> tuple[list[str], dict[str, mem.OOFViews]]:
    """Every member's per-view OOF logits, keyed by a unique member name."""
    if not models:
        raise DocsortError("tta-ablation needs at least one model folder")
    names = mem.unique_names([mem.member_name(m) for m in models])
    found = {}
    for name, m in zip(names, models, strict=True):
        ov = mem.oof_views(m)
        if ov is None:
            raise DocsortError(
                "no per-view OOF predictions (oof_views.npz); train with a validation fold",
                file=str(m),
            )
        found[name] = ov
    return names, found


def pooled_ablation(
    views: dict[str, mem.OOFViews], merge: str = "mean", subsets: str = "all"
) -> tuple[Ablation, int]:
    """Ablation on the members' pooled OOF rows (per ID, mean over the members holding it out)."""
    common = [v for v in ens.VIEW_NAMES if all(v in ov.logits for ov in views.values())]
    per_view, targets, n = {}, None, 0
    probs = {name: ov.view_probs() for name, ov in views.items()}
    for v in common:
        ids, targets, p, _ = mem.pooled(
            [(ov.ids, ov.targets, probs[name][v]) for name, ov in views.items()]
        )
        per_view[v], n = p, len(ids)
    return tta_ablation(per_view, targets, merge=merge, subsets=subsets), n


@stage("tta-ablation", inputs=("models",), folder="out", files=("summary",))
def ablate_tta(
    models: Sequence[str | os.PathLike],
    out: str | os.PathLike | None = None,
    *,
    merge: str = "mean",
    subsets: str = "all",
    summary: str | os.PathLike | None = None,
) -> Ablation:
    """Score every subset of the 8 dihedral views on the members' OOF logits and recommend one.

    Several members are pooled per image (the mean of the members that held it
    out), so the recommendation is for the ensemble; each member's own table is
    written too. Writes ``ablation.csv``, ``recommended.json`` (with the
    ``tta.views=[...]`` override), ``recommended.yaml`` and ``summary.txt``;
    ``summary`` gets the same text as Markdown (a KFP Markdown output).
    """
    ens.check_choice(merge, ens.MERGES, "merge")
    names, views = _pooled_views(models)
    abl, n = pooled_ablation(views, merge, subsets)
    per_member = (
        {name: pooled_ablation({name: views[name]}, merge, subsets)[0] for name in names}
        if len(names) > 1
        else {}
    )
    if out is not None:
        with atomic_path(Path(out), is_dir=True) as tmp:
            abl.table.to_csv(tmp / "ablation.csv", index=False)
            for name, a in per_member.items():
                (tmp / "members").mkdir(exist_ok=True)
                a.table.to_csv(tmp / "members" / f"{name}.csv", index=False)
            best = abl.table.iloc[0]
            ident = abl.table[abl.table["views"] == "identity"].iloc[0]
            info = {
                "views": list(abl.recommended),
                "merge": merge,
                "override": recommended_override(abl.recommended),
                "macro_f1": float(best["macro_f1"]),
                "identity_macro_f1": float(ident["macro_f1"]),
                "fixed": int(best["fixed"]),
                "broken": int(best["broken"]),
                "p_vs_identity": float(best["p_vs_identity"]),
                "rows": n,
                "members": [str(m) for m in models],
                "per_member": {name: list(a.recommended) for name, a in per_member.items()},
            }
            (tmp / "recommended.json").write_text(json.dumps(info, indent=2))
            (tmp / "recommended.yaml").write_text(
                yaml.safe_dump(
                    {"tta": {"views": list(abl.recommended), "merge": merge}}, sort_keys=False
                )
            )
            (tmp / "summary.txt").write_text(format_ablation(abl, n, per_member))
    if summary is not None:
        Path(summary).write_text(
            f"# TTA ablation\n\nRecommended: **{'+'.join(abl.recommended)}** (`{recommended_override(abl.recommended)}`)\n\n```\n{format_ablation(abl, n, per_member)}```\n"
        )
    return abl


def recommended_override(views: Sequence[str]) -> str:
    """The Hydra override that selects ``views`` (``tta.views=[identity,rot90]``)."""
    return f"tta.views=[{','.join(views)}]"


def format_ablation(
    abl: Ablation,
    rows: int | None = None,
    per_member: dict[str, Ablation] | None = None,
    top: int = 10,
) -> str:
    """Readable ablation table: best subsets, every single view and the named families."""
    s = abl.summary(top)
    body = text_table(
        [
            "rank",
            "views",
            "family",
            "n",
            "macro_f1",
            "accuracy",
            "fixed",
            "broken",
            "net",
            "p vs identity",
        ],
        [
            [
                str(r.rank),
                r.views,
                r.family or "",
                str(r.n_views),
                f"{r.macro_f1:.4f}",
                f"{r.accuracy:.4f}",
                str(r.fixed),
                str(r.broken),
                f"{r.net:+d}",
                f"{r.p_vs_identity:.3g}" if hasattr(r, "p_vs_identity") else "",
            ]
            for r in s.itertuples()
        ],
    )
    head = (
        f"TTA ablation on {rows} OOF images (merge: {abl.merge}; fixed/broken versus identity alone)"
        if rows
        else f"TTA ablation (merge: {abl.merge})"
    )
    lines = [
        head,
        body,
        "",
        f"Recommended: {'+'.join(abl.recommended)}   ->   {recommended_override(abl.recommended)}",
    ]
    best = abl.table.iloc[0]
    if (
        "p_vs_identity" in abl.table.columns
        and best["views"] != "identity"
        and best["p_vs_identity"] >= 0.05
    ):
        lines.append(f"  (not clearly better than identity: exact McNemar p={best['p_vs_identity']:.3g} on "
                     f"{best['fixed']} fixed vs {best['broken']} broken; more OOF images would tell)")  # fmt: skip
    for name, a in (per_member or {}).items():
        lines.append(f"  {name} alone: {'+'.join(a.recommended)}")
    return "\n".join(lines) + "\n"


def load_ablation(folder: str | os.PathLike) -> Ablation:
    """Read an ablation folder written by :func:`ablate_tta` back."""
    folder = Path(folder)
    for name in ("ablation.csv", "recommended.json"):
        if not (folder / name).is_file():
            raise DocsortError(
                f"not a TTA ablation folder (no {name}); run `docsort tta-ablation`",
                file=str(folder),
            )
    table = read_table(folder / "ablation.csv", text=("views", "family"), ids=None)
    info = json.loads((folder / "recommended.json").read_text())
    return Ablation(table=table, recommended=tuple(info["views"]), merge=info["merge"])


# ---------------------------------------------------------------- candidates


def _read_predict_json(pred: Path) -> dict:
    f = pred / "predict.json"
    return json.loads(f.read_text()) if f.is_file() else {}


def _abs(path: str | os.PathLike) -> str:
    """Checkpoints are recorded absolute (or as URIs) so a spec re-runs from any folder."""
    return str(path) if storage.is_s3(path) else str(Path(path).resolve())


@dataclass(frozen=True)
class CandidateOOF:
    """A candidate's honest OOF probabilities and how they were formed."""

    ids: list[str]
    targets: np.ndarray
    folds: np.ndarray
    probs: np.ndarray
    rows: str  # "shared": every member predicts every row; "pooled": per row, the members holding it out


def _member_oofs(
    spec: ens.CandidateSpec, model_dirs: Sequence[Path | None]
) -> list[mem.OOF] | None:
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
    per image, which only equal-weight methods allow.
    """
    ids, targets, folds, probs = _shared(oofs)
    fitted = spec.method in ("weighted", "stacked") or spec.temperatures is not None
    if len(ids) >= MIN_SHARED_ROWS:
        if fitted:
            p = ens.cross_fit_oof(probs, targets, method=spec.method, merge=spec.merge, objective=spec.objective,
                                  calibrate=spec.temperatures is not None, folds=ens.cv_folds(targets))  # fmt: skip
        else:
            p = ens.combine(spec, probs)
        return CandidateOOF(ids, targets, folds, p, "shared")
    if fitted:
        return None
    pids, ptargets, p, _ = mem.pooled([(o.ids, o.targets, o.probs) for o in oofs])
    fold_of = {i: f for o in oofs for i, f in zip(o.ids, o.folds, strict=True)}
    return CandidateOOF(pids, ptargets, np.array([fold_of[i] for i in pids]), p, "pooled")


def _write_candidate(
    tmp: Path,
    spec: ens.CandidateSpec,
    ids: Sequence[str],
    probs: np.ndarray,
    oof: CandidateOOF | None,
    extra: dict | None = None,
) -> None:
    ens.save_spec(spec, tmp / "candidate.yaml")
    write_probs(tmp / "probs.csv", ids, probs)
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
    method: str = "soft",
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
    ens.check_choice(method, ens.METHODS, "method")
    if predictions:
        return _ensemble([Path(p) for p in predictions], Path(out), models=models, name=name, method=method, weights=weights,
                         objective=objective, merge=merge, calibrate=calibrate, report=report)  # fmt: skip
    if not models or prepared is None:
        raise DocsortError(
            "ensemble needs member prediction folders, or --model folders and --prepared data to predict them"
        )
    if views is None:
        from docsort.config import load_config

        views = list(load_config(predict_overrides).tta.views)
    if (
        method in ("weighted", "stacked") or calibrate
    ):  # fail before minutes of prediction, not after
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
    name = name or {"soft": "soft-vote", "hard": "hard-vote"}.get(method, method)
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
            name=nm, checkpoint=_abs(m if m is not None else p), views=v if v != views[0] else None
        )
        for nm, m, p, v in zip(names, model_dirs, preds, views, strict=True)
    ]
    base = ens.CandidateSpec(
        name=name,
        members=members,
        method=method,
        merge=merge,
        tta_views=views[0],
        tta_merge=tta_merge,
        objective=objective,
    )
    oofs = _member_oofs(base, model_dirs)
    ids_s, targets, folds, shared = _shared(oofs) if oofs else ([], None, None, [])
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
    with atomic_path(out, is_dir=True) as tmp:
        _write_candidate(tmp, spec, ids, probs, oof)
        if report and oofs and len(ids_s) >= MIN_SHARED_ROWS:
            rep = ens.evaluate_methods(names, shared, targets, objective=objective, merge=merge)
            write_method_report(tmp, rep, len(ids_s))
        if keep is not None:
            shutil.copytree(keep, tmp / "members")
    return out


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
        _df_text(t),
        "",
        "Temperature scaling per member (fitted on its OOF predictions)",
        _df_text(rep.calibration),
    ]
    if rep.nested is not None:
        n = rep.nested
        verdict = "pays" if n.weighted_beats_equal else "does not pay"
        lines += ["", f"Nested CV of the weight search ({n.objective}): weighted {n.pooled_weighted:.4f} vs equal {n.pooled_equal:.4f}: weighting {verdict} out of sample",
                  _df_text(n.table)]  # fmt: skip
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
            out / {"soft": "soft-vote", "hard": "hard-vote"}.get(method, method),
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


def list_candidates(folder: str | os.PathLike) -> list[Path]:
    """Candidate folders (those with candidate.json) inside ``folder``, sorted by name."""
    found = sorted(p.parent for p in Path(folder).glob("*/candidate.json"))
    if not found:
        raise DocsortError("no candidate folders (*/candidate.json)", file=str(folder))
    return found


def expand_candidates(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Candidate folders from arguments that are candidate folders or folders of them."""
    out: list[Path] = []
    for p in map(Path, paths):
        out += [p] if (p / "candidate.json").is_file() else list_candidates(p)
    return out


def _fetch_spec(spec: str | os.PathLike, workdir: Path) -> Path:
    if storage.is_s3(spec):
        local = workdir / "candidate.yaml"
        local.write_bytes(storage.read_bytes(spec))
        return local
    return Path(spec)


def _fetch_checkpoint(ckpt: str, workdir: Path) -> Path:
    if storage.is_s3(ckpt):
        return storage.localize(ckpt, workdir / "models", progress=False)
    p = Path(ckpt)
    if not p.exists():
        raise DocsortError("member checkpoint not found", file=ckpt)
    return p


@stage("candidate", inputs=("spec", "prepared"), folder="out")
def run_candidate(
    spec: str | os.PathLike,
    prepared: str | os.PathLike,
    out: str | os.PathLike,
    overrides: Sequence[str] = (),
) -> Path:
    """Re-run a saved candidate spec from its checkpoints on the prepared test images.

    Each member predicts with its own TTA views (a fold bundle averages its
    folds), then the spec combines them with its stored method, weights,
    temperatures or stacker; nothing is refitted. ``overrides`` reach
    ``docsort predict`` (device, precision, tta.batch_size). The output is a
    candidate folder like ``docsort ensemble`` writes, plus ``members/``.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with scratch_dir(out) as work:
        spec_obj = ens.load_spec(_fetch_spec(spec, Path(work)))
        prep = Prepared(Path(prepared))
        checkpoints = [_fetch_checkpoint(m.checkpoint, Path(work)) for m in spec_obj.members]
        with atomic_path(out, is_dir=True) as tmp:
            member_probs = []
            for i, (m, ckpt) in enumerate(zip(spec_obj.members, checkpoints, strict=True)):
                folder = (
                    tmp
                    / "members"
                    / f"{i:02d}-{''.join(c if c.isalnum() or c in '._-' else '_' for c in m.name)}"
                )
                mem.predict_member(
                    prep.root, ckpt, folder, spec_obj.views_of(i), spec_obj.tta_merge, overrides
                )
                ids, p, _ = read_probs(folder / "probs.csv")
                member_probs.append(align(ids, p, prep.test_ids, source=str(folder / "probs.csv")))
            probs = ens.combine(spec_obj, member_probs)
            oofs = _member_oofs(spec_obj, checkpoints)
            oof = candidate_oof(spec_obj, oofs) if oofs else None
            if spec_obj.oof_macro_f1 is None and oof is not None:
                spec_obj.oof_macro_f1 = ens.score(oof.probs, oof.targets, "macro_f1")
            _write_candidate(
                tmp, spec_obj, prep.test_ids, probs, oof, {"spec": str(spec), "rerun": True}
            )
    return out


def prepare_for_candidates(
    data: str,
    specs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    overrides: Sequence[str] = (),
) -> Path:
    """``prepare`` the dataset with the image settings the candidates' members were trained with.

    Prediction needs the prepared images to match each model's
    ``data.image_size/channels/resize``; reading them from the members saves
    the user from repeating (and mistyping) them. ``data.num_folds`` defaults
    to the first member's (folds do not matter for prediction, but a small
    dataset may not split into the default number).
    """
    from docsort.prepare import prepare

    if not specs:
        raise DocsortError("no candidate specs given")
    out = Path(out)
    settings: dict[str, str] = {}
    defaults: dict[str, str] = {}
    with scratch_dir(out) as work:  # named so that a killed run's leftover is removed next time
        for s in specs:
            spec = ens.load_spec(_fetch_spec(s, work))
            for m in spec.members:
                ckpt = _fetch_checkpoint(m.checkpoint, work)
                defaults = defaults or mem.data_settings(ckpt, ("num_folds",))
                for key, value in mem.data_settings(ckpt).items():
                    if settings.setdefault(key, value) != value:
                        raise ConfigError(f"members need different data.{key} ({settings[key]} vs {value}); "
                                          "candidates run on one prepared folder, so their members must share it")  # fmt: skip
    given = {o.split("=", 1)[0].lstrip("+"): o.split("=", 1)[1] for o in overrides if "=" in o}
    for key, value in settings.items():
        if f"data.{key}" in given and given[f"data.{key}"] != value:
            raise ConfigError(
                f"data.{key}={given[f'data.{key}']} but the candidates' members were trained with {value}"
            )
    return prepare(
        data,
        out,
        [
            *overrides,
            *(
                f"data.{k}={v}"
                for k, v in {**defaults, **settings}.items()
                if f"data.{k}" not in given
            ),
        ],
    )


# ---------------------------------------------------------------- hard cases


@stage(
    "comparison",
    inputs=("prepared", "candidates", "hardcases"),
    folder="out",
    files=("summary",),
)
def compare_hardcases(
    prepared: str | os.PathLike,
    candidates: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    summary: str | os.PathLike | None = None,
    hardcases: str | os.PathLike | None = None,
) -> Path:
    """Score each candidate folder on the current hard cases; write the table and the winner.

    Arguments may be candidate folders (``docsort ensemble`` / ``docsort
    candidate run``) or folders holding several. The verdicts are the data
    root's hardcases.csv as it is now, or ``hardcases`` (see
    :func:`docsort.hardcases.current_hardcases`): a verdict added after
    ``prepare`` counts. Without any hard case on a test image the policy falls
    through to OOF macro F1, and the table says so. ``summary`` gets a copy of
    ``comparison.md`` (a KFP Markdown output).
    """
    from docsort.hardcases import current_hardcases

    prep = Prepared(Path(prepared))
    meta = read_meta(prep.root / "meta.csv")
    verdicts = current_hardcases(prep, hardcases)
    hard = verdicts.rows[verdicts.rows["ID"].isin(set(prep.test_ids))]
    cand_probs, oof, members, dirs = {}, {}, {}, {}
    for c in expand_candidates(candidates):
        info = json.loads((c / "candidate.json").read_text())
        name = info["name"]
        if name in cand_probs:
            raise DocsortError(f"two candidates are named {name!r}", file=str(c))
        ids, probs, _ = read_probs(c / "probs.csv", meta.num_classes)
        missing = set(prep.test_ids) - set(ids)
        if missing:
            raise DocsortError(
                f"{len(missing)} test images have no prediction (first {sorted(missing)[0]!r}); was it run on this prepared data?",
                file=str(c / "probs.csv"),
            )
        cand_probs[name] = (
            align(ids, probs, hard["ID"].tolist(), source=str(c / "probs.csv"))
            if len(hard)
            else np.zeros((0, probs.shape[1]))
        )
        oof[name] = (
            info.get("oof_macro_f1") if info.get("oof_macro_f1") is not None else float("nan")
        )
        members[name] = int(info["members"])
        dirs[name] = c
    cmp = compare_candidates(
        hard["ID"].tolist(), np.asarray(hard["target"], dtype=np.int64), cand_probs, class_names=meta.class_names,
        notes=hard["note"].tolist(), kinds=hard["kind"].tolist(), oof_macro_f1=oof, members=members,
    )  # fmt: skip
    out = Path(out)
    with atomic_path(out, is_dir=True) as tmp:
        cmp.per_image.to_csv(tmp / "per_image.csv", index=False)
        cmp.per_candidate.to_csv(tmp / "per_candidate.csv", index=False)
        cmp.pairwise.to_csv(tmp / "pairwise.csv", index=False)
        text = cmp.format_table()
        if hard.empty:
            text = (
                "No hard case is a test image (add some with `docsort hardcases add`): the winner is chosen on OOF macro F1.\n\n"
                + text
            )
        text = f"{verdicts.describe(len(hard))}\n\n{text}"
        (tmp / "comparison.txt").write_text(text)
        (tmp / "comparison.md").write_text(
            f"# Hard-case comparison\n\nWinner: **{cmp.winner}**\n\n```\n{text}\n```\n"
        )
        shutil.copytree(dirs[cmp.winner], tmp / "winner")
        record = {
            "winner": cmp.winner,
            "policy": cmp.policy,
            "candidates": {n: str(Path(d).resolve()) for n, d in dirs.items()},
            "hardcases": len(hard),
            "hardcases_file": verdicts.file,
            "hardcases_verdicts": len(verdicts.rows),
            "hardcases_sha256": verdicts.sha256,
        }
        (tmp / "winner.json").write_text(json.dumps(record, indent=2))
    if summary is not None:
        shutil.copyfile(out / "comparison.md", summary)
    return out


def load_comparison(folder: str | os.PathLike) -> Comparison:
    """Read a comparison folder written by :func:`compare_hardcases` back (for the report)."""
    folder = Path(folder)
    for name in ("per_image.csv", "per_candidate.csv", "pairwise.csv", "winner.json"):
        if not (folder / name).is_file():
            raise DocsortError(
                f"not a hard-case comparison folder (no {name}); run `docsort hardcases compare`",
                file=str(folder),
            )
    per_image = read_table(
        folder / "per_image.csv",
        text=lambda c: c in ("note", "kind", "truth") or c.endswith((":pred", ":ok")),
    )
    per_candidate = read_table(folder / "per_candidate.csv", text=("candidate",), ids="candidate")
    pairwise = read_table(folder / "pairwise.csv", text=("a", "b"), ids=None)
    record = json.loads((folder / "winner.json").read_text())
    names = [c[: -len(":pred")] for c in per_image.columns if c.endswith(":pred")] or per_candidate[
        "candidate"
    ].tolist()
    for c in names:
        per_image[f"{c}:pred"] = per_image[f"{c}:pred"].astype(str)
        per_image[f"{c}:ok"] = per_image[f"{c}:ok"].astype(str).str.lower() == "true"
        per_image[f"{c}:conf"] = per_image[f"{c}:conf"].astype(float)
    per_image["scored"] = per_image["scored"].astype(str).str.lower() == "true"
    return Comparison(candidates=names, per_image=per_image, per_candidate=per_candidate, pairwise=pairwise,
                      winner=record["winner"], policy=record["policy"])  # fmt: skip


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


ON_CHOICES = ("auto", "oof", "test", "hardcases")


def _labelled_set(
    prep: Prepared, cand: Path, on: str, hardcases: str | os.PathLike | None = None
) -> tuple[str, list[str], np.ndarray, np.ndarray, str, str | None]:
    """(kind, ids, targets, probs, split) the report is computed on; ``auto`` takes the first available.

    Order for ``auto``: the candidate's OOF predictions on the training images
    (the largest labelled set, and where wrong training labels show up), then
    the test labels (demo data only), then the hard cases: the current file
    (:func:`docsort.hardcases.current_hardcases`), whose description is the last item.
    """
    from docsort.hardcases import current_hardcases

    ens.check_choice(on, ON_CHOICES, "report set")
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
                verdicts = current_hardcases(prep, hardcases)
                labels = verdicts.rows
                labels = labels[
                    labels["ID"].isin(set(prep.test_ids)) & (labels["kind"] != "label_error")
                ]
                used = verdicts.describe(len(labels))
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
    """ID -> image array: the original file when the dataset root is a local folder, else the prepared cache."""
    from PIL import Image

    from docsort.data import image_path, upright

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
                        im.draft("L", (320, 320))
                        im = upright(im)  # as the model saw it: EXIF orientation applied
                        im.thumbnail((320, 320))
                        return np.asarray(im.convert("RGB") if im.mode not in ("L", "RGB") else im)
            except (OSError, ValueError, DocsortError):
                pass
        if image_id in rows:
            if cache is None:
                cache = prep.images(split)
            return np.asarray(cache[rows[image_id]])
        return None

    return load


def _candidate_ablation(cand: Path) -> Ablation | None:
    """TTA ablation of the candidate's members, when their per-view OOF logits are at hand."""
    spec_path = cand / "candidate.yaml"
    if not spec_path.is_file():
        return None
    spec = ens.load_spec(spec_path)
    paths = [m.checkpoint for m in spec.members]
    if any(storage.is_s3(p) or not Path(p).exists() for p in paths):
        return None
    try:
        views = {
            n: mem.oof_views(p)
            for n, p in zip(mem.unique_names([m.name for m in spec.members]), paths, strict=True)
        }
    except DocsortError:
        return None
    if any(v is None or "identity" not in v.logits for v in views.values()):
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
    from docsort.report import write_report, write_summary_md
    from docsort.stats import accuracy, macro_f1
    from docsort.stats import confusion as confusion_matrix

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
    kind, ids, targets, probs, split, used = _labelled_set(prep, cand, on, hardcases)
    cmp = load_comparison(comparison) if comparison is not None else None
    said = ([used] if used else []) + (
        [_comparison_verdicts(prep, Path(comparison), hardcases)] if comparison is not None else []
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
    write_report(html, class_names=prep.class_names, ids=ids, targets=targets, probs=probs, image_loader=image_loader(prep, split),
                 comparison=cmp, ablation=abl, title=title, note=note, tables=tables, max_gallery=max_gallery)  # fmt: skip
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
    )
    preds = probs.argmax(1)
    result = ReportResult(html=html, summary=md, on=kind, images=len(ids), macro_f1=macro_f1(targets, preds),
                          accuracy=accuracy(targets, preds), class_names=prep.class_names,
                          confusion=confusion_matrix(targets, preds, prep.num_classes), hardcases=tuple(said))  # fmt: skip
    if metrics is not None or confusion is not None:
        log_report_metrics(result, metrics, confusion)
    return result


def _comparison_verdicts(
    prep: Prepared, comparison: Path, hardcases: str | os.PathLike | None
) -> str:
    """Which hard-case file a comparison used, and whether that file has changed since."""
    from docsort.hardcases import current_hardcases

    record = json.loads((comparison / "winner.json").read_text())
    file, n = record.get("hardcases_file"), record.get("hardcases_verdicts")
    line = f"hard cases in the comparison: {file or 'unknown file'}" + (
        f" ({n} verdicts, {record.get('hardcases')} used)" if n is not None else ""
    )
    with contextlib.suppress(DocsortError):  # a broken current file is for compare to refuse
        now = current_hardcases(prep, hardcases)
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


# ---------------------------------------------------------------- submission


@stage("submission", inputs=("prepared", "candidate"), folder="out", mode="add")
def submit_candidate(
    prepared: str | os.PathLike,
    candidate: str | os.PathLike,
    out: str,
    *,
    version: str | None = None,
) -> str:
    """Submit a candidate folder: :func:`docsort.submit.submit` on its probs.csv (lineage from its spec)."""
    cand = Path(candidate)
    ens.load_spec(cand / "candidate.yaml")  # a candidate folder must carry its spec
    return submit(prepared, cand / "probs.csv", str(out), version=version)


def submit_winner(
    prepared: str | os.PathLike,
    comparison: str | os.PathLike,
    out: str | os.PathLike,
    output_root: str | None = None,
) -> str:
    """Submit the winning candidate of a hard-case comparison (also to ``output_root`` if given, same version name)."""
    winner = Path(comparison) / "winner"
    uri = submit_candidate(prepared, winner, str(out))
    if output_root:
        version = uri.rsplit("/", 1)[-1].removesuffix(".csv")
        uri = submit_candidate(prepared, winner, output_root, version=version)
    return uri


def score_against_labels(prepared: str | os.PathLike, probs: str | os.PathLike) -> float | None:
    """Macro F1 of ``probs`` on the prepared test_labels.csv (demo data), else None."""
    from docsort.stats import macro_f1

    prep = Prepared(Path(prepared))
    labels = prep.file("test_labels.csv")
    if labels is None:
        return None
    df = read_table(labels, required=("target",))
    ids, p, _ = read_probs(probs)
    return macro_f1(
        df["target"].to_numpy(), align(ids, p, df["ID"].tolist(), source=str(probs)).argmax(1)
    )
