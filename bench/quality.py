"""Quality benchmark: a recipe end to end within a wall-clock budget, scored on held-out labels.

    python bench/quality.py DATA --minutes M [--recipe NAME] [--json OUT.json] [hydra overrides ...]

Runs ``prepare``, a short measured throughput probe, K fold members (as many
folds and epochs as fit the budget), 8-view TTA prediction of the test set per
member and a soft (probability-mean) ensemble; prints a table of macro F1 and
accuracy per member with and without TTA and of the ensemble, plus wall time
and images/second, and writes the numbers as JSON.

Scoring: against ``DATA/test_labels.csv`` when it exists, else on the
out-of-fold (OOF) predictions of the training images (the ensemble row is then
the pooled OOF of all members, each image scored by the member that did not
train on it).

The budget: after ``prepare`` the probe times a few real training steps (the
recipe's model, loader, augmentation and precision) and the TTA forward pass;
the epochs per member follow from the time left, and the number of members is
lowered until each gets at least ``--min-epochs``. Before each further member
the time the previous one really took is checked, so the run ends near the
budget whether the probe was optimistic (fewer members) or pessimistic (more
members, up to the number of folds). DATA defaults to $DOCSORT_REAL_DATA.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
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


def probe(prepared: Path, overrides: list[str], work: Path, seconds: float) -> dict:
    """Training images/s (real loader, augmentation, model, precision) and TTA forward images/s."""
    from docsort.core.config import load_config
    from docsort.core.device import autocast
    from docsort.data.datasets import ImageArrayDataset
    from docsort.data.prepared import Prepared
    from docsort.train.train import Run, predict_views

    cfg = load_config([*overrides, "fold=0", "tracking.wandb=disabled"])
    run = Run(Prepared(prepared), cfg, 0, work / "probe")
    module, device, precision = run.module.to(run.device), run.device, run.precision
    opt = module.configure_optimizers()["optimizer"]
    module.train()
    n, t0, steps = 0, None, 0
    while t0 is None or (time.perf_counter() - t0 < seconds and steps < 30) or steps < 3:
        for x, y in run.train_loader:
            x, y = x.to(device), y.to(device)
            with autocast(device, precision):
                loss = torch.nn.functional.cross_entropy(module(x).float(), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if t0 is None:  # the first step warms up (allocations, kernels)
                t0 = time.perf_counter()
                continue
            n += len(y)
            steps += 1
            if steps >= 3 and (time.perf_counter() - t0 >= seconds or steps >= 30):
                break
    train_ips = n / (time.perf_counter() - t0)
    rows = run.va_rows[: max(16, min(len(run.va_rows), 64))]
    ds = ImageArrayDataset(run.images, rows, None)
    model = module.eval_model.eval()
    views = list(cfg.tta.views)
    predict_views(
        model,
        ImageArrayDataset(run.images, rows[:8], None),
        views,
        device,
        precision,
        cfg.tta.batch_size,
    )  # warm-up
    t = time.perf_counter()
    predict_views(model, ds, views, device, precision, cfg.tta.batch_size)
    tta_ips = len(rows) / (time.perf_counter() - t)
    t = time.perf_counter()
    predict_views(model, ds, ["identity"], device, precision, cfg.tta.batch_size)
    val_ips = len(rows) / (time.perf_counter() - t)
    return {
        "train_images_per_s": train_ips,
        "tta_images_per_s": tta_ips,
        "val_images_per_s": val_ips,
        "precision": precision,
        "device": str(device),
    }


def plan(
    budget_s: float,
    n_train: int,
    n_test: int,
    folds: int,
    members: int,
    speed: dict,
    *,
    min_epochs: int,
    max_epochs: int,
    overhead_s: float,
) -> tuple[int, int]:
    """(members, epochs per member) that fit ``budget_s`` seconds."""
    n_val = n_train / folds
    fit_n = n_train - n_val
    epoch_s = fit_n / speed["train_images_per_s"] + n_val / speed["val_images_per_s"]
    fixed_s = (n_val + n_test) / speed["tta_images_per_s"] + overhead_s
    for k in range(members, 0, -1):
        epochs = math.floor((budget_s / k - fixed_s) / epoch_s)
        if epochs >= min_epochs or k == 1:
            return k, int(max(1, min(epochs, max_epochs)))
    raise AssertionError("unreachable")


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
        "--members",
        type=int,
        default=None,
        help="at most this many fold members (default: the recipe's data.num_folds)",
    )
    ap.add_argument(
        "--min-epochs",
        type=int,
        default=16,
        help="fewer members rather than fewer epochs than this (default 16: from scratch, one "
        "15-epoch member beat three 8-epoch members given twice the time on RVL-CDIP pages)",
    )
    ap.add_argument("--max-epochs", type=int, default=60)
    ap.add_argument("--probe-seconds", type=float, default=15.0)
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


def run(args, work: Path, t_start: float, budget: float) -> dict:
    from docsort.core.config import load_config
    from docsort.core.device import usable_cores
    from docsort.data.prepare import prepare
    from docsort.data.prepared import Prepared
    from docsort.predict.predict import predict
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
    speed = probe(prepared, [*overrides, *tracking], work, args.probe_seconds)
    log(f"probe: train {speed['train_images_per_s']:.1f} img/s, TTA {speed['tta_images_per_s']:.1f} img/s "
        f"(x{len(cfg.tta.views)} views), {speed['precision']} on {speed['device']}")  # fmt: skip
    left = budget - (time.perf_counter() - t_start) - 0.03 * budget - 5  # keep a margin for scoring
    members, epochs = plan(left, n_train, n_test, folds, min(args.members or folds, folds), speed,
                           min_epochs=args.min_epochs, max_epochs=args.max_epochs, overhead_s=8.0)  # fmt: skip
    log(f"plan: {members} member(s) x {epochs} epochs in {left / 60:.1f} min left")

    rows, member_dirs = [], []
    most = min(args.members or folds, folds)
    for k in range(most):
        last_cost = rows[-1]["train_s"] + rows[-1]["predict_s"] if rows else 0.0
        if k and not another_member_fits(time.perf_counter() - t_start, last_cost, budget):
            log(f"stopping at {k} member(s): the next one would pass the budget")
            break
        if k >= members:  # the probe was pessimistic: the measured member cost leaves room
            log(f"member {k + 1}: the measured cost of a member still fits the budget")
        mdir = work / f"fold{k}"
        t = time.perf_counter()
        with open(work / f"fold{k}.log", "w") as f, contextlib.redirect_stdout(f):
            train(prepared, mdir, [*overrides, *tracking, f"fold={k}", f"train.epochs={epochs}"])
        train_s = time.perf_counter() - t
        t = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):
            predict(prepared, mdir, work / f"pred{k}", overrides)
        predict_s = time.perf_counter() - t
        metrics = json.loads((mdir / "metrics.json").read_text())
        rows.append({"member": f"fold{k}", "epochs": int(metrics["epochs"]), "train_s": train_s, "predict_s": predict_s,
                     "val_macro_f1": metrics.get("val_macro_f1"), "train_images": metrics["train_images"]})  # fmt: skip
        member_dirs.append(k)
        log(
            f"fold{k}: {metrics['epochs']} epochs in {train_s:.0f} s, val_macro_f1={metrics.get('val_macro_f1', float('nan')):.4f}"
        )

    k_classes = prep.num_classes
    labels_csv = prep.file("test_labels.csv")
    scored_on = "test_labels" if labels_csv else "oof"
    if labels_csv:
        truth = pd.read_csv(labels_csv, dtype={"ID": str}).set_index("ID")["target"]
        members_probs = []
        for row, k in zip(rows, member_dirs, strict=True):
            views = np.load(work / f"pred{k}" / "views.npz", allow_pickle=False)
            ids = [str(i) for i in views["ids"]]
            y = truth.loc[ids].to_numpy()
            probs = (
                pd.read_csv(work / f"pred{k}" / "probs.csv", dtype={"ID": str})
                .set_index("ID")
                .loc[ids]
            )
            tta = probs[[f"p{c}" for c in range(k_classes)]].to_numpy()
            single = softmax(views["identity"])
            row.update({f"single_{m}": v for m, v in scores(y, single, k_classes).items()})
            row.update({f"tta_{m}": v for m, v in scores(y, tta, k_classes).items()})
            members_probs.append(tta)
        ens = scores(y, np.mean(members_probs, axis=0), k_classes)
        n_scored = len(y)
    else:
        pooled_y, pooled_p = [], []
        for row, k in zip(rows, member_dirs, strict=True):
            oof = np.load(work / f"fold{k}" / "oof_views.npz", allow_pickle=False)
            y = oof["targets"]
            from docsort.core.probs import read_probs

            _, tta, _ = read_probs(work / f"fold{k}" / "oof.csv")
            row.update(
                {
                    f"single_{m}": v
                    for m, v in scores(y, softmax(oof["identity"]), k_classes).items()
                }
            )
            row.update({f"tta_{m}": v for m, v in scores(y, tta, k_classes).items()})
            pooled_y.append(y)
            pooled_p.append(tta)
        ens = scores(np.concatenate(pooled_y), np.concatenate(pooled_p), k_classes)
        n_scored = int(sum(len(y) for y in pooled_y))

    wall = time.perf_counter() - t_start
    train_imgs = sum(r["train_images"] * r["epochs"] for r in rows)
    train_time = sum(r["train_s"] for r in rows)
    pred_time = sum(r["predict_s"] for r in rows)
    multi = len(rows) > 1 and scored_on == "test_labels"
    final = (
        ens
        if multi or scored_on == "oof"
        else {"macro_f1": rows[0]["tta_macro_f1"], "accuracy": rows[0]["tta_accuracy"]}
    )
    result = {
        "macro_f1": final["macro_f1"],
        "accuracy": final["accuracy"],
        "single_macro_f1": float(np.mean([r["single_macro_f1"] for r in rows])),
        "single_accuracy": float(np.mean([r["single_accuracy"] for r in rows])),
        "tta_macro_f1": float(np.mean([r["tta_macro_f1"] for r in rows])),
        "tta_accuracy": float(np.mean([r["tta_accuracy"] for r in rows])),
        "ensemble_macro_f1": ens["macro_f1"],
        "ensemble_accuracy": ens["accuracy"],
        "wall_s": round(wall, 1),
        "budget_s": round(budget, 1),
        "prepare_s": round(prepare_s, 1),
        "train_images_per_s": round(train_imgs / max(train_time, 1e-9), 2),
        "predict_images_per_s": round(len(rows) * n_test / max(pred_time, 1e-9), 2),
        "probe": {k: (round(v, 2) if isinstance(v, float) else v) for k, v in speed.items()},
        "recipe": args.recipe,
        "overrides": list(args.overrides),
        "members": rows,
        "epochs": rows[0]["epochs"] if rows else 0,
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
    for m in r["members"]:
        print(f"{m['member']:<22}{m['epochs']:>7}{m['single_macro_f1']:>10.4f}{m['single_accuracy']:>10.4f}"
              f"{m['tta_macro_f1']:>10.4f}{m['tta_accuracy']:>10.4f}{m['train_s']:>9.0f}")  # fmt: skip
    label = (
        f"soft ensemble ({len(r['members'])})" if r["scored_on"] == "test_labels" else "pooled OOF"
    )
    print(
        f"{label:<22}{'':>7}{'':>10}{'':>10}{r['ensemble_macro_f1']:>10.4f}{r['ensemble_accuracy']:>10.4f}"
    )
    print("-" * len(head))
    print(f"final (submission) macro F1 {r['macro_f1']:.4f}, accuracy {r['accuracy']:.4f}")
    p = r["probe"]
    print(f"wall {r['wall_s'] / 60:.1f} min (prepare {r['prepare_s']:.0f} s); training {r['train_images_per_s']:.1f} img/s; "
          f"TTA predict {r['predict_images_per_s']:.1f} img/s ({len(r['tta_views'])} views); {p['precision']} on {p['device']}, "
          f"{r['machine']['cores']} cores ({r['machine']['cpu']})")  # fmt: skip


def print_anchor(r: dict) -> None:
    """docsort's final score beside the plain loop's, measured in the same run."""
    if r.get("anchor_macro_f1") is None:
        print(f"anchor: not measured ({r.get('skipped', 'no test labels')})")
        return
    print(f"anchor (plain loop, 224 px, {r['anchor_epochs']} epochs, all pages, 8-view TTA): macro F1 "
          f"{r['anchor_macro_f1']:.4f} in {r['anchor_wall_s'] / 60:.1f} min; docsort - anchor = {r['vs_anchor']:+.4f}")  # fmt: skip


if __name__ == "__main__":
    main()
