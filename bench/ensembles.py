"""Single model vs soft vs weighted vs stacked (vs hard) voting, with and without TTA.

Reads the trained members under RUN_DIR (model folders or ``fold=all``
bundles, each with ``oof.csv`` + ``oof_views.npz``), runs the TTA ablation on
their OOF logits, and scores every combination method three ways: identity
only (no TTA), the ablation's recommended views, and all 8 views.

* OOF columns: on the rows every member holds out; fitted methods (weighted,
  stacked) are cross-fitted, so no row is scored by weights fitted on it.
* Test columns (when ``--prepared`` has ``test_labels.csv``): members'
  per-view test logits from ``views.npz`` of prediction folders under RUN_DIR
  (``docsort predict`` with all 8 views), or predicted here with
  ``--predict``; fitted methods are fitted on all shared OOF rows.

    python bench/ensembles.py RUN_DIR [--prepared PREPARED [--predict]] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from docsort.core.choices import MERGES, VIEW_NAMES
from docsort.core.stats import macro_f1
from docsort.ensemble import combiners as ens
from docsort.ensemble import members as mem
from docsort.ensemble.ensemble import MIN_SHARED_ROWS
from docsort.ensemble.tta_ablation import pooled_ablation
from docsort.models.tta import merge

ALL = list(VIEW_NAMES)
METHODS = ("soft", "weighted", "stacked", "hard")


def find_members(run_dir: Path) -> list[Path]:
    """Model folders and fold bundles with OOF logits; a bundle's fold folders are not listed again."""
    found = []
    for oof in sorted(run_dir.rglob("oof.csv")):
        d = oof.parent
        if (d / "candidate.json").is_file() or (d / "report.json").is_file():
            continue
        try:
            mem.model_folders(d)
        except Exception:  # noqa: BLE001 - not a member folder
            continue
        found.append(d)
    return [d for d in found if not any(p in found for p in d.parents)]


def test_views(
    member: Path, run_dir: Path, prepared: Path | None, predict: bool
) -> tuple[list[str], list[dict[str, np.ndarray]]] | None:
    """Test IDs and per-fold-model per-view logits of ``member`` (from views.npz), or None."""
    folders = [f.resolve() for f in mem.model_folders(member)]
    by_model: dict[Path, Path] = {}
    for pj in run_dir.rglob("predict.json"):
        info = json.loads(pj.read_text())
        if info.get("model") and (pj.parent / "views.npz").is_file():
            by_model[Path(info["model"]).resolve()] = pj.parent
    if predict and prepared is not None and any(f not in by_model for f in folders):
        out = run_dir / "bench-predictions" / member.name
        mem.predict_member(prepared, member, out, ALL)
        return test_views(member, run_dir, prepared, False)
    if any(f not in by_model for f in folders):
        return None
    ids, per_fold = None, []
    for f in folders:
        with np.load(by_model[f] / "views.npz", allow_pickle=False) as z:
            ids_f = [str(i) for i in z["ids"]]
            if ids is not None and ids_f != ids:
                return None
            ids = ids_f
            if not all(v in z.files for v in ALL):
                return None
            per_fold.append({v: np.asarray(z[v], dtype=np.float32) for v in ALL})
    return ids, per_fold


def merged(per_fold: list[dict[str, np.ndarray]], views: list[str], how: str) -> np.ndarray:
    """Views merged per fold model as `docsort predict` does, then the fold models averaged."""
    return np.mean(
        [
            merge(torch.stack([torch.from_numpy(f[v]) for v in views]), how).numpy()
            for f in per_fold
        ],
        axis=0,
    ).astype(np.float64)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("run_dir", type=Path)
    ap.add_argument(
        "--prepared",
        type=Path,
        default=None,
        help="prepared folder with test_labels.csv (for test scores)",
    )
    ap.add_argument(
        "--predict",
        action="store_true",
        help="predict members' test views that are missing (all 8 views)",
    )
    ap.add_argument("--merge", choices=MERGES, default="mean")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    t0 = time.time()

    members = find_members(args.run_dir)
    if not members:
        print(f"no members with oof.csv under {args.run_dir}", file=sys.stderr)
        return 2
    by_name = dict(
        zip(mem.unique_names([mem.member_name(m) for m in members]), members, strict=True)
    )
    views = {n: mem.oof_views(m) for n, m in by_name.items()}
    names = [n for n, v in views.items() if v is not None and all(view in v.logits for view in ALL)]
    members = [by_name[n] for n in names]
    if not names:
        print("no member stores OOF logits of all 8 views (oof_views.npz)", file=sys.stderr)
        return 2
    abl, n_pooled = pooled_ablation({n: views[n] for n in names}, args.merge, "all")
    settings = {"no TTA": ["identity"], "recommended": list(abl.recommended), "all 8": ALL}

    labels = None
    if args.prepared is not None and (args.prepared / "test_labels.csv").is_file():
        import pandas as pd

        df = pd.read_csv(args.prepared / "test_labels.csv", dtype={"ID": str})
        labels = dict(zip(df["ID"], df["target"], strict=True))
    tests = (
        {
            n: test_views(m, args.run_dir, args.prepared, args.predict)
            for n, m in zip(names, members, strict=True)
        }
        if labels
        else {}
    )

    rows = []
    for setting, vs in settings.items():
        oofs = [
            mem.OOF(views[n].ids, views[n].targets, views[n].folds, views[n].probs(vs, args.merge))
            for n in names
        ]
        tables = [(o.ids, o.targets, o.probs) for o in oofs]
        shared = mem.shared_rows(tables)
        pos = [{i: k for k, i in enumerate(o.ids)} for o in oofs]
        p_sh = [o.probs[[p[i] for i in shared]] for o, p in zip(oofs, pos, strict=True)]
        y = oofs[0].targets[[pos[0][i] for i in shared]] if shared else np.zeros(0, np.int64)
        folds = ens.cv_folds(y) if shared else None
        have_test = labels is not None and all(tests.get(n) for n in names)
        if have_test:
            t_ids = tests[names[0]][0]
            t_probs = [merged(tests[n][1], vs, args.merge) for n in names]
            t_y = np.array([labels[i] for i in t_ids])
        for n, o, ps in zip(names, oofs, p_sh, strict=True):
            row = {"tta": setting, "views": "+".join(vs), "candidate": n,
                   "oof_macro_f1": macro_f1(y, ps.argmax(1)) if len(shared) else macro_f1(o.targets, o.probs.argmax(1))}  # fmt: skip
            if have_test:
                row["test_macro_f1"] = macro_f1(t_y, t_probs[names.index(n)].argmax(1))
            rows.append(row)
        if len(names) > 1 and len(shared) >= MIN_SHARED_ROWS:
            specs = [ens.MemberSpec(name=n, model="-") for n in names]
            for method in METHODS:
                honest = ens.cross_fit_oof(p_sh, y, method=method, merge="mean", folds=folds)
                row = {
                    "tta": setting,
                    "views": "+".join(vs),
                    "candidate": method,
                    "oof_macro_f1": macro_f1(y, honest.argmax(1)),
                }
                if have_test:
                    spec = ens.fit_candidate(method, specs, p_sh, y, method=method)
                    row["test_macro_f1"] = macro_f1(t_y, ens.combine(spec, t_probs).argmax(1))
                rows.append(row)

    import pandas as pd

    df = pd.DataFrame(rows)
    metrics = ["oof_macro_f1"] + (["test_macro_f1"] if "test_macro_f1" in df.columns else [])
    table = df.pivot_table(index="candidate", columns="tta", values=metrics, sort=False)
    table = table.reindex(columns=[(m, s) for m in metrics for s in settings])
    table = table.reindex([*names, *[m for m in METHODS if m in table.index]])
    heads = [f"{'OOF' if m.startswith('oof') else 'test'} {s}" for m, s in table.columns]
    print(f"members: {', '.join(names)}; OOF rows pooled for the ablation: {n_pooled}")
    print(f"TTA ablation recommends: {'+'.join(abl.recommended)} (merge {args.merge}); "
          f"OOF rows shared by all members: {len(shared)}\n")  # fmt: skip
    print("| candidate | " + " | ".join(heads) + " |")
    print("|---|" + "---:|" * len(heads))
    for cand, vals in table.iterrows():
        print(f"| {cand} | " + " | ".join("" if math.isnan(v) else f"{v:.4f}" for v in vals) + " |")
    print(
        "\nOOF: macro F1 on the rows every member holds out (weighted/stacked cross-fitted); "
        "test: fitted on all those rows, scored on test_labels.csv."
    )
    print(f"\n({time.time() - t0:.0f} s)")
    if args.json:
        best = abl.table.iloc[0]
        doc = {"run_dir": str(args.run_dir), "members": names, "merge": args.merge,
               "ablation": {"recommended": list(abl.recommended), "macro_f1": float(best["macro_f1"]),
                            "identity_macro_f1": float(abl.table.loc[abl.table["views"] == "identity", "macro_f1"].iloc[0]), "rows": n_pooled},
               "rows": [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in rows]}  # fmt: skip
        args.json.write_text(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
