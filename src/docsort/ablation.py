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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations

import numpy as np
import pandas as pd

from docsort.ensemble import MERGES, VIEW_NAMES, check_choice, check_member_probs, merge_probs
from docsort.errors import DocsortError
from docsort.stats import accuracy, fast_macro_f1, mcnemar_p

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
