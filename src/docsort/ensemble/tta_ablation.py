"""TTA ablation: which dihedral views are worth predicting, measured on OOF data.

Rotations are natural for scanned pages (the seed's test pages come rotated),
but mirrored text is not a natural document: whether flipped views help or
hurt is an empirical question per dataset and model. So every subset of the
available views (255 for all eight, cheap: it is only averaging) is scored
against identity alone, with the predictions each subset fixes and breaks.

The best-scoring subset is not simply recommended: on a few hundred OOF images
the top of 255 subsets is often one image ahead. The recommendation follows
:func:`docsort.core.evidence.choose`: the *prior* is the configured views
(``tta.views``, all eight by default), and the best subset (ties on macro F1 go
to fewer views: each view costs a full forward pass at prediction time)
replaces it only if it beats the prior on the same images with an exact
McNemar p < alpha. Otherwise the prior is kept and the summary says so.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from docsort.core.atomic import atomic_path
from docsort.core.choices import MERGES, VIEW_NAMES
from docsort.core.config import load_config
from docsort.core.csv_tables import read_table
from docsort.core.errors import DocsortError
from docsort.core.evidence import ALPHA, Choice, check_alpha, choice_from_record, choose
from docsort.core.outputs import stage
from docsort.core.stats import PairedResult, accuracy, fast_macro_f1, mcnemar_p, paired_compare
from docsort.core.tables import text_table
from docsort.ensemble import members as mem
from docsort.ensemble.combiners import check_choice, check_member_probs, merge_probs

ROTATIONS = ("identity", "rot90", "rot180", "rot270")
FLIPS = ("flip", "flip_rot90", "flip_rot180", "flip_rot270")


def named_families(views: Sequence[str]) -> dict[tuple[str, ...], str]:
    """Readable labels for the subsets people ask about, restricted to the views present."""
    have = [v for v in VIEW_NAMES if v in views]
    fams: dict[tuple[str, ...], str] = {("identity",): "identity"}
    for v in have:
        if v != "identity":
            fams[("identity", v)] = f"identity + {v}"
    if all(v in have for v in ROTATIONS):
        fams[ROTATIONS] = "rotations"
    if all(v in have for v in FLIPS):
        fams[FLIPS] = "flips only"
    if len(have) == len(VIEW_NAMES):
        fams[VIEW_NAMES] = "all 8"
    return fams


def _subsets(views: Sequence[str], mode: str) -> list[tuple[str, ...]]:
    """Subsets to score: every non-empty subset, or single views plus the named families."""
    if mode == "all":
        return [c for r in range(1, len(views) + 1) for c in combinations(views, r)]
    picked = [(v,) for v in views] + list(named_families(views))
    return list(dict.fromkeys(picked))


@dataclass(frozen=True)
class Ablation:
    """Scores of every subset (best first), the prior and the recommended subset.

    ``choice`` says whether evidence or the prior decided, with the counts
    (``None`` for an ablation folder written before the rule existed).
    """

    table: pd.DataFrame
    recommended: tuple[str, ...]
    merge: str
    prior: tuple[str, ...] = ()
    choice: Choice | None = None

    def summary(self, top: int = 10) -> pd.DataFrame:
        """The ``top`` best subsets plus every single view, named family and the prior, best first."""
        keep = (
            (self.table["rank"] <= top)
            | (self.table["n_views"] == 1)
            | (self.table["family"] != "")
            | (self.table["views"] == "+".join(self.prior))
        )
        return self.table[keep].reset_index(drop=True)

    def row(self, views: Sequence[str]) -> pd.Series:
        """The table row of one subset (``recommended``, ``prior``)."""
        return self.table[self.table["views"] == "+".join(views)].iloc[0]


def _canonical(views: Sequence[str]) -> tuple[str, ...]:
    """Views in the canonical order, without repeats (the form subsets are named in)."""
    return tuple(v for v in VIEW_NAMES if v in set(views))


def tta_ablation(
    view_probs: Mapping[str, np.ndarray],
    targets: Sequence[int],
    *,
    merge: str = "mean",
    subsets: str = "all",
    prior: Sequence[str] | None = None,
    alpha: float = ALPHA,
) -> Ablation:
    """Score view subsets against identity alone on OOF probabilities; recommend by evidence.

    ``view_probs`` maps view name to that view's N x K OOF probabilities (rows
    aligned with ``targets``); ``identity`` must be there, it is the baseline.
    ``fixed`` counts rows identity got wrong and the subset gets right;
    ``broken`` the reverse; ``p_vs_identity`` is the exact McNemar p-value of
    those two counts. ``prior`` (default: every view given, as the default
    config predicts with all of them) is kept unless the best subset beats it
    with p < ``alpha``; ``fixed_vs_prior``, ``broken_vs_prior`` and
    ``p_vs_prior`` are the same counts against the prior.
    """
    check_choice(merge, MERGES, "merge")
    check_choice(subsets, ("all", "families"), "subsets mode")
    alpha = check_alpha(alpha)
    for v in view_probs:
        check_choice(v, VIEW_NAMES, "TTA view")
    if "identity" not in view_probs:
        raise DocsortError("TTA ablation needs the identity view as its baseline")
    views = [v for v in VIEW_NAMES if v in view_probs]
    for v in prior or ():
        check_choice(v, VIEW_NAMES, "TTA view")
        if v not in views:
            raise DocsortError(f"the prior views name {v!r}, which the OOF predictions lack; have {', '.join(views)}")  # fmt: skip
    prior_views = _canonical(prior) if prior else tuple(views)
    arrays = dict(zip(views, check_member_probs([view_probs[v] for v in views]), strict=True))
    y = np.asarray(targets, dtype=np.int64)
    if len(y) != arrays["identity"].shape[0]:
        raise DocsortError(f"{len(y)} targets for {arrays['identity'].shape[0]} rows")
    k = arrays["identity"].shape[1]
    base_ok = arrays["identity"].argmax(axis=1) == y
    families = named_families(views)

    def correct(subset: tuple[str, ...]) -> np.ndarray:
        return merge_probs([arrays[v] for v in subset], None, merge).argmax(axis=1) == y

    prior_ok = correct(prior_views)
    rows = []
    for subset in dict.fromkeys([*_subsets(views, subsets), prior_views]):
        pred = merge_probs([arrays[v] for v in subset], None, merge).argmax(axis=1)
        ok = pred == y
        rows.append(
            {
                "views": "+".join(subset),
                "family": families.get(subset, ""),
                "n_views": len(subset),
                "macro_f1": fast_macro_f1(y, pred, k),
                "accuracy": accuracy(y, pred),
                "fixed": int(np.sum(ok & ~base_ok)),
                "broken": int(np.sum(~ok & base_ok)),
                "fixed_vs_prior": int(np.sum(ok & ~prior_ok)),
                "broken_vs_prior": int(np.sum(~ok & prior_ok)),
            }
        )
    table = pd.DataFrame(rows)
    table["net"] = table["fixed"] - table["broken"]
    # Exact McNemar on fixed vs broken: is the subset different from identity, or is it noise?
    # (The best of 255 subsets is chosen on these same rows, so read its p-value as optimistic.)
    table["p_vs_identity"] = [
        mcnemar_p(int(f), int(b)) for f, b in zip(table["fixed"], table["broken"], strict=True)
    ]
    table["p_vs_prior"] = [
        mcnemar_p(int(f), int(b))
        for f, b in zip(table["fixed_vs_prior"], table["broken_vs_prior"], strict=True)
    ]
    # Best first; ties on macro F1 go to fewer views, then accuracy, then canonical order.
    # Rounded so float noise between equal scores cannot outrank a smaller subset.
    table["_f1"] = table["macro_f1"].round(12)
    table["_acc"] = table["accuracy"].round(12)
    table["_order"] = np.arange(len(table))
    table = table.sort_values(
        ["_f1", "n_views", "_acc", "_order"], ascending=[False, True, False, True]
    ).drop(columns=["_f1", "_acc", "_order"])
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    table = table.reset_index(drop=True)
    # The rule tests the best subset only (and shows the runner-up when the prior is best).
    paired = {v: paired_compare(correct(tuple(v.split("+"))), prior_ok) for v in table["views"][:2]}
    choice = _choose_views(table, prior_views, paired, alpha)
    return Ablation(table=table, recommended=tuple(choice.name.split("+")), merge=merge,
                    prior=prior_views, choice=choice)  # fmt: skip


def _choose_views(
    table: pd.DataFrame,
    prior: tuple[str, ...],
    paired: Mapping[str, PairedResult],
    alpha: float,
) -> Choice:
    """The shared rule on the ranked table: the best subset replaces ``prior`` only by evidence."""
    ranked = table["views"].tolist()
    prior_f1 = float(table.loc[table["views"] == "+".join(prior), "macro_f1"].iloc[0])
    notes = {
        r.views: f"macro F1 {r.macro_f1:.4f}"
        + ("" if r.views == "+".join(prior) else f", {r.macro_f1 - prior_f1:+.4f}")
        for r in table.head(2).itertuples()
    }
    notes["+".join(prior)] = f"macro F1 {prior_f1:.4f}"
    return choose(ranked, "+".join(prior), paired, alpha, noun="subset",
                  counts=("fixed", "broken"), notes=notes, prior_reason="the configured views")  # fmt: skip


# ---------------------------------------------------------------- TTA ablation


def member_views(
    models: Sequence[str | os.PathLike], names: Sequence[str] | None = None
) -> dict[str, mem.OOFViews]:
    """Every member's per-view OOF logits, keyed by ``names`` (default: unique member names)."""
    if not models:
        raise DocsortError("tta-ablation needs at least one model folder")
    names = names or mem.unique_names([mem.member_name(m) for m in models])
    found = {}
    for name, m in zip(names, models, strict=True):
        ov = mem.oof_views(m)
        if ov is None:
            raise DocsortError(
                "no per-view OOF predictions (oof_views.npz); train with a validation fold",
                file=str(m),
            )
        found[name] = ov
    return found


def pooled_ablation(
    views: Mapping[str, mem.OOFViews],
    merge: str = "mean",
    subsets: str = "all",
    *,
    prior: Sequence[str] | None = None,
    alpha: float = ALPHA,
) -> tuple[Ablation, int]:
    """Ablation on the members' pooled OOF rows (:func:`docsort.ensemble.members.pooled`).

    ``prior`` defaults to the configured views (:func:`configured_prior`).
    """
    prior = configured_prior(views, prior)[0]
    common = [v for v in VIEW_NAMES if all(v in ov.logits for ov in views.values())]
    per_view, targets, n = {}, None, 0
    probs = {name: ov.view_probs() for name, ov in views.items()}
    for v in common:
        ids, targets, p = mem.pooled(
            [(ov.ids, ov.targets, probs[name][v]) for name, ov in views.items()]
        )
        per_view[v], n = p, len(ids)
    return tta_ablation(
        per_view, targets, merge=merge, subsets=subsets, prior=prior, alpha=alpha
    ), n


def configured_prior(
    views: Mapping[str, mem.OOFViews],
    prior: Sequence[str] | None = None,
    overrides: Sequence[str] = (),
) -> tuple[tuple[str, ...], str]:
    """The prior views and a note: ``prior`` as given, else the configured ``tta.views``.

    The configured views are what ``docsort predict`` uses without an
    override; those the members' OOF views lack are left out (and the note says
    so), since they cannot be scored.
    """
    common = [v for v in VIEW_NAMES if all(v in ov.logits for ov in views.values())]
    if prior:
        return _canonical(prior), ""
    configured = _canonical(load_config(overrides).tta.views)
    kept = tuple(v for v in configured if v in common) or ("identity",)
    if kept == configured:
        return kept, ""
    return (
        kept,
        f"configured tta.views without the views the OOF predictions lack: {'+'.join(kept)}",
    )


@stage("tta-ablation", inputs=("models",), folder="out", files=("summary",))
def ablate_tta(
    models: Sequence[str | os.PathLike],
    out: str | os.PathLike | None = None,
    *,
    merge: str = "mean",
    subsets: str = "all",
    summary: str | os.PathLike | None = None,
    prior: Sequence[str] | None = None,
    alpha: float = ALPHA,
    overrides: Sequence[str] = (),
) -> Ablation:
    """Score every subset of the 8 dihedral views on the members' OOF logits and recommend one.

    Several members are pooled per image (the mean of the members that held it
    out), so the recommendation is for the ensemble; each member's own table is
    written too. The recommendation is ``prior`` (default: the configured
    ``tta.views``, with ``overrides``) unless the best subset beats it with McNemar p < ``alpha``
    (:mod:`docsort.core.evidence`). Writes ``ablation.csv``,
    ``recommended.json`` (with the ``tta.views=[...]`` override, ``decided_by``
    and the ``evidence``), ``recommended.yaml`` and ``summary.txt``;
    ``summary`` gets the same text as Markdown (a KFP Markdown output).
    """
    check_choice(merge, MERGES, "merge")
    alpha = check_alpha(alpha)
    views = member_views(models)
    prior_views, prior_note = configured_prior(views, prior, overrides)
    abl, n = pooled_ablation(views, merge, subsets, prior=prior_views, alpha=alpha)
    per_member = (
        {
            name: pooled_ablation({name: ov}, merge, subsets, prior=prior_views, alpha=alpha)[0]
            for name, ov in views.items()
        }
        if len(views) > 1
        else {}
    )
    if out is not None:
        with atomic_path(Path(out), is_dir=True) as tmp:
            abl.table.to_csv(tmp / "ablation.csv", index=False)
            for name, a in per_member.items():
                (tmp / "members").mkdir(exist_ok=True)
                a.table.to_csv(tmp / "members" / f"{name}.csv", index=False)
            rec = abl.row(abl.recommended)
            ident = abl.row(("identity",))
            info = {
                "views": list(abl.recommended),
                "merge": merge,
                "override": recommended_override(abl.recommended),
                "macro_f1": float(rec["macro_f1"]),
                "identity_macro_f1": float(ident["macro_f1"]),
                "fixed": int(rec["fixed"]),
                "broken": int(rec["broken"]),
                "p_vs_identity": float(rec["p_vs_identity"]),
                "prior": list(abl.prior),
                "prior_note": prior_note,
                **(abl.choice.record() if abl.choice else {}),
                "best": abl.table.loc[0, "views"].split("+"),
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
            (tmp / "summary.txt").write_text(format_ablation(abl, n, per_member, note=prior_note))
    if summary is not None:
        Path(summary).write_text(
            f"# TTA ablation\n\nRecommended: **{'+'.join(abl.recommended)}** (`{recommended_override(abl.recommended)}`, decided by {abl.choice.decided_by if abl.choice else 'score'})\n\n```\n{format_ablation(abl, n, per_member, note=prior_note)}```\n"
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
    note: str = "",
) -> str:
    """Readable ablation table: best subsets, single views, named families, then the choice."""
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
    c = abl.choice
    how = f" (decided by {c.decided_by}; prior: {c.prior})" if c else ""
    lines = [
        head,
        body,
        "",
        f"Recommended: {'+'.join(abl.recommended)}{how}   ->   {recommended_override(abl.recommended)}",
    ]
    if c:
        lines.append(f"  Why: {c.evidence_text}.")
        if c.decided_by == "prior" and c.challenger and c.prior != abl.table.loc[0, "views"]:
            lines.append("  More OOF images (or more folds) would tell.")
    if note:
        lines.append(f"  Prior: {note}.")
    for name, a in (per_member or {}).items():
        how = f" ({a.choice.decided_by})" if a.choice else ""
        lines.append(f"  {name} alone: {'+'.join(a.recommended)}{how}")
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
    choice = choice_from_record("+".join(info["views"]), info)
    return Ablation(table=table, recommended=tuple(info["views"]), merge=info["merge"],
                    prior=tuple(info.get("prior") or ()), choice=choice)  # fmt: skip
