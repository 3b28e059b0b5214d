"""TTA ablation: which dihedral views are worth predicting, measured on OOF data.

Rotations are natural for scanned pages (the seed's test pages come rotated),
but mirrored text is not a natural document: whether flipped views help or
hurt is an empirical question per dataset and model. So every subset of the
available views (255 for all eight, cheap: it is only averaging) is scored
against identity alone, with the predictions each subset fixes and breaks, and
the best subset is recommended (ties go to fewer views: each view costs a full
forward pass at prediction time).
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
from docsort.core.csv_tables import read_table
from docsort.core.errors import DocsortError
from docsort.core.outputs import stage
from docsort.core.stats import accuracy, fast_macro_f1, mcnemar_p
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
    """Scores of every subset (best first) and the recommended one."""

    table: pd.DataFrame
    recommended: tuple[str, ...]
    merge: str

    def summary(self, top: int = 10) -> pd.DataFrame:
        """The ``top`` best subsets plus every single view and named family, best first."""
        keep = (
            (self.table["rank"] <= top)
            | (self.table["n_views"] == 1)
            | (self.table["family"] != "")
        )
        return self.table[keep].reset_index(drop=True)


def tta_ablation(
    view_probs: Mapping[str, np.ndarray],
    targets: Sequence[int],
    *,
    merge: str = "mean",
    subsets: str = "all",
) -> Ablation:
    """Score view subsets against identity alone on OOF probabilities.

    ``view_probs`` maps view name to that view's N x K OOF probabilities (rows
    aligned with ``targets``); ``identity`` must be there, it is the baseline.
    ``fixed`` counts rows identity got wrong and the subset gets right;
    ``broken`` the reverse; ``p_vs_identity`` is the exact McNemar p-value of
    those two counts.
    """
    check_choice(merge, MERGES, "merge")
    check_choice(subsets, ("all", "families"), "subsets mode")
    for v in view_probs:
        check_choice(v, VIEW_NAMES, "TTA view")
    if "identity" not in view_probs:
        raise DocsortError("TTA ablation needs the identity view as its baseline")
    views = [v for v in VIEW_NAMES if v in view_probs]
    arrays = dict(zip(views, check_member_probs([view_probs[v] for v in views]), strict=True))
    y = np.asarray(targets, dtype=np.int64)
    if len(y) != arrays["identity"].shape[0]:
        raise DocsortError(f"{len(y)} targets for {arrays['identity'].shape[0]} rows")
    k = arrays["identity"].shape[1]
    base_ok = arrays["identity"].argmax(axis=1) == y
    families = named_families(views)

    rows = []
    for subset in _subsets(views, subsets):
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
            }
        )
    table = pd.DataFrame(rows)
    table["net"] = table["fixed"] - table["broken"]
    # Exact McNemar on fixed vs broken: is the subset different from identity, or is it noise?
    # (The best of 255 subsets is chosen on these same rows, so read its p-value as optimistic.)
    table["p_vs_identity"] = [
        mcnemar_p(int(f), int(b)) for f, b in zip(table["fixed"], table["broken"], strict=True)
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
    return Ablation(table=table, recommended=tuple(table.loc[0, "views"].split("+")), merge=merge)


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
    views: Mapping[str, mem.OOFViews], merge: str = "mean", subsets: str = "all"
) -> tuple[Ablation, int]:
    """Ablation on the members' pooled OOF rows (:func:`docsort.ensemble.members.pooled`)."""
    common = [v for v in VIEW_NAMES if all(v in ov.logits for ov in views.values())]
    per_view, targets, n = {}, None, 0
    probs = {name: ov.view_probs() for name, ov in views.items()}
    for v in common:
        ids, targets, p = mem.pooled(
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
    check_choice(merge, MERGES, "merge")
    views = member_views(models)
    abl, n = pooled_ablation(views, merge, subsets)
    per_member = (
        {name: pooled_ablation({name: ov}, merge, subsets)[0] for name, ov in views.items()}
        if len(views) > 1
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
