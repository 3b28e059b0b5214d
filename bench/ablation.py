"""Ablation grid: docsort's recipe options one at a time, at fixed epochs, beside the anchor.

    python bench/ablation.py DATA --epochs E --size S [--rows NAME,...] [--json OUT.json]
    python bench/ablation.py DATA --grid --sizes 128,160,224 --epochs-list 6,12 [--json OUT.json]

Every row trains one member of the ``cpu_fast`` recipe on all training pages
(``fold=none`` unless the row says otherwise), predicts the test set with
8-view TTA and scores it on ``DATA/test_labels.csv``. The epochs are fixed, not
fitted to a budget, so a row's macro F1 does not depend on what else the machine
ran meanwhile; its cost is the measured training time (``train_s``) and
images/s, which the planner (:mod:`docsort.train.plan`) turns into epochs per
budget. The TTA-views rows are read from the base row's per-view logits (no
retraining). The ``anchor`` row is the plain loop of ``bench/anchor.py`` at the
same size and epochs, measured in the same run.

``--grid`` instead crosses image size x epochs x (all pages, fold 0 = 80 %) for
the base recipe, plus the anchor at each size and epochs: the budget x image size
x full-data grid the planner's constants come from.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from docsort.core.choices import VIEW_NAMES

try:
    from bench.anchor import run_anchor
    from bench.quality import _cpu_name, scores, softmax
except ImportError:  # run as `python bench/ablation.py`: bench/ is on sys.path
    from anchor import run_anchor
    from quality import _cpu_name, scores, softmax

# the recipe the rows change: cpu_fast as it was measured (light photometric noise; the
# aug_none row is cpu_fast today), so the recorded table is what this command reproduces
BASE = ["experiment=cpu_fast", "aug.preset=light", "fold=none", "tracking.wandb=disabled"]

#: name -> overrides on top of the base recipe (one recipe choice each)
ROWS: dict[str, list[str]] = {
    "base": [],
    "ema": ["train.ema_decay=0.99"],
    "stretch": ["data.resize=stretch"],
    "aug_none": ["aug.preset=none"],
    "aug_strong": ["aug.preset=strong"],
    "augraphy": ["aug.augraphy.mode=online", "aug.augraphy.probability=0.3"],
    "mixup_cutmix": ["train.mixup_alpha=0.2", "train.cutmix_alpha=1.0"],
    "progressive": ["train.progressive_start=0.5", "train.progressive_until=0.5"],
    "fold0": ["fold=0"],  # 80 % of the pages, the rest validates
}

#: TTA rows read from the base row's views.npz
TTA_SETS = {"tta_1": ["identity"], "tta_4_rot": list(VIEW_NAMES[:4]), "tta_8": list(VIEW_NAMES)}


def log(msg: str) -> None:
    print(f"[ablation] {msg}", file=sys.stderr, flush=True)


def _key(row: dict) -> str:
    return json.dumps([row["row"], row["overrides"], row["image_size"], row["epochs"]])


def run_row(data: Path, work: Path, name: str, overrides: list[str], truth: pd.Series) -> dict:
    """Prepare (cached per image settings), train one member, predict with TTA, score."""
    from docsort.core.config import load_config
    from docsort.data.prepare import prepare
    from docsort.predict.predict import predict
    from docsort.train.train import train

    cfg = load_config([*BASE, *overrides])
    d = cfg.data
    key = f"prep_{d.image_size}_{d.resize}_{d.channels}"
    prepared = work / key
    if not prepared.is_dir():
        prepare(str(data), prepared, [*BASE, *overrides])
    out = work / name
    record = work / f"{name}.row.json"
    if record.is_file() and json.loads(record.read_text())["overrides"] == overrides:
        return json.loads(record.read_text())
    trained_before = (
        out / "metrics.json"
    ).is_file()  # train finds it complete: no timing to report
    t = time.perf_counter()
    with open(work / f"{name}.log", "w") as f, contextlib.redirect_stdout(f):
        train(prepared, out, [*BASE, *overrides])
    train_s = time.perf_counter() - t
    t = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):
        predict(prepared, out, work / f"{name}_pred", [*BASE, *overrides])
    predict_s = time.perf_counter() - t
    metrics = json.loads((out / "metrics.json").read_text())
    views = np.load(work / f"{name}_pred" / "views.npz", allow_pickle=False)
    ids = [str(i) for i in views["ids"]]
    y = truth.loc[ids].to_numpy()
    k = int(views["identity"].shape[1])
    row = {
        "row": name,
        "overrides": overrides,
        "image_size": int(d.image_size),
        "epochs": int(metrics["epochs"]),
        "train_images": int(metrics["train_images"]),
        "train_s": None if trained_before else round(train_s, 1),
        "predict_s": round(predict_s, 1),
        "train_images_per_s": None
        if trained_before
        else round(metrics["train_images"] * metrics["epochs"] / train_s, 2),
    }
    for tta, names in TTA_SETS.items():
        if all(v in views.files for v in names):
            probs = np.mean([softmax(views[v]) for v in names], axis=0)
            row[f"{tta}_macro_f1"] = scores(y, probs, k)["macro_f1"]
    row["macro_f1"] = row.get("tta_8_macro_f1", row["tta_1_macro_f1"])
    record.write_text(json.dumps(row, indent=2))
    return row


def anchor_row(data: Path, work: Path, size: int, epochs: int) -> dict:
    a = run_anchor(data, 0.0, epochs=epochs, size=size, keep_probs=True)
    ids, probs = a.pop("_ids"), a.pop("_probs")
    np.savez(work / f"anchor_{size}_{epochs}.npz", ids=np.asarray(ids), probs=probs)
    return {
        "row": "anchor",
        "overrides": [],
        "image_size": size,
        "epochs": epochs,
        "train_images": a["anchor_images"]["train"],
        "train_s": round(a["anchor_wall_s"] - a["anchor_decode_s"] - a["anchor_predict_s"], 1),
        "predict_s": a["anchor_predict_s"],
        "train_images_per_s": a["anchor_train_images_per_s"],
        "tta_1_macro_f1": a["anchor_single_macro_f1"],
        "tta_8_macro_f1": a["anchor_macro_f1"],
        "macro_f1": a["anchor_macro_f1"],
    }


def _correct(work: Path, row: dict, truth: pd.Series) -> pd.Series:
    """Per test image: did the row's TTA-8 prediction get it right (read back from the work folder)."""
    if row["row"] == "anchor":
        z = np.load(work / f"anchor_{row['image_size']}_{row['epochs']}.npz")
        ids, probs = [str(i) for i in z["ids"]], z["probs"]
    else:
        name = row.get("name", row["row"])
        views = np.load(work / f"{name}_pred" / "views.npz", allow_pickle=False)
        ids = [str(i) for i in views["ids"]]
        probs = np.mean([softmax(views[v]) for v in TTA_SETS["tta_8"]], axis=0)
    return pd.Series(probs.argmax(1) == truth.loc[ids].to_numpy(), index=ids)


def add_evidence(rows: list[dict], work: Path, truth: pd.Series, ref: str = "base") -> None:
    """Each row against ``ref`` on the same test images: wins, losses, exact McNemar p.

    With a few hundred test images a difference of a few points of macro F1 is
    within noise; ``separated`` says whether the paired test (p < 0.05) tells
    the row from the reference.
    """
    from docsort.core.stats import paired_compare

    base = next((r for r in rows if r["row"] == ref), None)
    if base is None:
        return
    b = _correct(work, base, truth)
    for r in rows:
        if r is base:
            continue
        c = _correct(work, r, truth).loc[b.index]
        pr = paired_compare(c.to_numpy(), b.to_numpy())
        r["vs_" + ref] = {"macro_f1": round(r["macro_f1"] - base["macro_f1"], 4), "wins": pr.wins,
                          "losses": pr.losses, "p_value": round(pr.p_value, 4), "separated": pr.p_value < 0.05}  # fmt: skip


def _machine() -> dict:
    from docsort.core.device import usable_cores

    return {"cpu": _cpu_name(), "cores": usable_cores(), "torch": torch.__version__}


def _num(v: float | None, width: int, digits: int) -> str:
    return f"{v:>{width}.{digits}f}" if v is not None else f"{'-':>{width}}"


def print_table(rows: list[dict], title: str) -> None:
    print(f"\n{title}")
    head = f"{'row':<14} {'px':>4} {'ep':>3} {'pages':>5} {'F1 TTA-8':>9} {'F1 x1':>7} {'vs base':>8} {'p':>6} {'img/s':>7} {'train s':>8}"
    print(head)
    for r in rows:
        f8, f1, vs = r.get("tta_8_macro_f1"), r.get("tta_1_macro_f1"), r.get("vs_base") or {}
        d = f"{vs['macro_f1']:+.3f}" if vs else ""
        p = f"{vs['p_value']:.3f}" if vs else ""
        print(f"{r['row']:<14} {r['image_size']:>4} {r['epochs']:>3} {r['train_images']:>5} "
              f"{f8 if f8 is None else f'{f8:.3f}':>9} {f1 if f1 is None else f'{f1:.3f}':>7} {d:>8} {p:>6} "
              f"{_num(r['train_images_per_s'], 7, 1)} {_num(r['train_s'], 8, 0)}")  # fmt: skip
    print("p: exact McNemar test against the base row on the same test images (p < 0.05: separated); "
          "timings are as measured, other work shared the CPU for some rows")  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("data", help="dataset root with test_labels.csv")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument(
        "--rows", default=None, help=f"comma-separated, default all: {','.join(ROWS)},anchor"
    )
    ap.add_argument(
        "--grid", action="store_true", help="size x epochs x full-data grid instead of rows"
    )
    ap.add_argument("--sizes", default="128,160,224")
    ap.add_argument("--epochs-list", default="6,12")
    ap.add_argument("--no-anchor", action="store_true")
    ap.add_argument("--json", dest="json_out", default=None)
    ap.add_argument("--work", default=None, help="keep prepared data and members here")
    args = ap.parse_args(argv)
    data = Path(args.data)
    labels = data / "test_labels.csv"
    if not labels.is_file():
        ap.error(f"{labels} not found: the ablation scores on test labels")
    truth = pd.read_csv(labels, dtype={"ID": str}).set_index("ID")["target"]
    t0 = time.perf_counter()
    rows: list[dict] = []
    done: dict[str, dict] = {}  # rows already measured into --json with this --work: reused
    if args.json_out and Path(args.json_out).is_file() and args.work:
        done = {_key(r): r for r in json.loads(Path(args.json_out).read_text()).get("rows", [])}

    def measured(row_name: str, overrides: list[str], size: int, epochs: int, fn) -> dict:
        key = _key({"row": row_name, "overrides": overrides, "image_size": size, "epochs": epochs})
        if key in done:
            log(f"{row_name}: measured before, reused")
            return done[key]
        return fn()

    with contextlib.ExitStack() as stack:
        work = Path(args.work) if args.work else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="docsort-ablation-")))  # fmt: skip
        work.mkdir(parents=True, exist_ok=True)
        if args.grid:
            sizes = [int(s) for s in args.sizes.split(",")]
            epochs_list = [int(e) for e in args.epochs_list.split(",")]
            for size in sizes:
                for ep in epochs_list:
                    common = [f"data.image_size={size}", f"train.epochs={ep}"]
                    for fold in ("none", "0"):
                        name = f"s{size}_e{ep}_f{fold}"
                        log(f"{name}")
                        ov = [*common, f"fold={fold}"]
                        r = measured(
                            name,
                            ov,
                            size,
                            ep,
                            lambda n=name, o=ov: run_row(data, work, n, o, truth),
                        )
                        r["fold"] = fold
                        rows.append(r)
                    if not args.no_anchor:
                        log(f"anchor {size} px x {ep} epochs")
                        a = measured(
                            "anchor",
                            [],
                            size,
                            ep,
                            lambda s=size, e=ep: anchor_row(data, work, s, e),
                        )
                        rows.append({**a, "fold": "none"})
                    log(f"{rows[-1]['row']}: {rows[-1]['macro_f1']:.3f}")
        else:
            names = (
                args.rows.split(",")
                if args.rows
                else [*ROWS, *([] if args.no_anchor else ["anchor"])]
            )
            unknown = [n for n in names if n not in ROWS and n != "anchor"]
            if unknown:
                ap.error(f"unknown rows: {', '.join(unknown)} (known: {', '.join(ROWS)}, anchor)")
            common = [f"data.image_size={args.size}", f"train.epochs={args.epochs}"]
            for name in names:
                log(f"row {name}")
                if name == "anchor":
                    rows.append(measured(name, [], args.size, args.epochs,
                                         lambda: anchor_row(data, work, args.size, args.epochs)))  # fmt: skip
                else:
                    ov = [*common, *ROWS[name]]
                    rows.append(
                        measured(
                            name,
                            ov,
                            args.size,
                            args.epochs,
                            lambda n=name, o=ov: run_row(data, work, n, o, truth),
                        )
                    )
                log(
                    f"{name}: macro F1 {rows[-1]['macro_f1']:.3f}, training {_num(rows[-1]['train_s'], 0, 0).strip()} s"
                )
        if not args.grid:
            add_evidence(rows, work, truth)
            add_evidence(rows, work, truth, ref="anchor")
    result = {
        "data": data.name,
        "mode": "grid" if args.grid else "rows",
        "base": BASE,
        "rows": rows,
        "wall_s": round(time.perf_counter() - t0, 1),
        "machine": _machine(),
    }
    title = f"{data.name}: {'grid' if args.grid else f'{args.size} px x {args.epochs} epochs'}, scored on test_labels.csv"
    print_table(rows, title)
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    from docsort.core.errors import DocsortError

    try:
        main()
    except (
        DocsortError
    ) as e:  # one line, as the CLI prints it (e.g. a --work folder of other settings)
        raise SystemExit(f"ablation: {e}") from None
