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

``--grid`` instead measures what the planner (:mod:`docsort.train.plan`) trades
against each other, for the recipe as it is today (``GRID_BASE``): image size x
epochs on all pages (``fold=none``), the same cells on 80 % of the pages
(``--folds none,0``), members at equal compute (``--members-at SIZE``: 2 x E/2
and 4 x E/4 epochs, one seed each, soft-voted, beside 1 x E for the largest E),
and the anchor at ``--anchor-at SIZE:EPOCHS`` cells. Each row carries its paired
test against the anchor and against the same cell at half the epochs.
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
#: the grid measures the recipe as it is now (cpu_fast: dihedral augmentation only)
GRID_BASE = ["experiment=cpu_fast", "tracking.wandb=disabled"]

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


def run_row(
    data: Path,
    work: Path,
    name: str,
    overrides: list[str],
    truth: pd.Series,
    base: list[str] = BASE,
) -> dict:
    """Prepare (cached per image settings), train one member, predict with TTA, score."""
    from docsort.core.config import load_config
    from docsort.data.prepare import prepare
    from docsort.predict.predict import predict
    from docsort.train.train import train

    cfg = load_config([*base, *overrides])
    d = cfg.data
    key = f"prep_{d.image_size}_{d.resize}_{d.channels}"
    prepared = work / key
    if not prepared.is_dir():
        prepare(str(data), prepared, [*base, *overrides])
    out = work / name
    record = work / f"{name}.row.json"
    if record.is_file() and json.loads(record.read_text())["overrides"] == overrides:
        return json.loads(record.read_text())
    trained_before = (
        out / "metrics.json"
    ).is_file()  # train finds it complete: no timing to report
    t = time.perf_counter()
    with open(work / f"{name}.log", "w") as f, contextlib.redirect_stdout(f):
        train(prepared, out, [*base, *overrides])
    train_s = time.perf_counter() - t
    t = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):
        predict(prepared, out, work / f"{name}_pred", [*base, *overrides])
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
    voted = work / f"{row.get('name', row['row'])}.probs.npz"
    if row["row"] == "anchor" or voted.is_file():
        path = (
            voted if voted.is_file() else work / f"anchor_{row['image_size']}_{row['epochs']}.npz"
        )
        z = np.load(path)
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


def tta8_probs(work: Path, name: str) -> tuple[list[str], np.ndarray]:
    """A trained row's TTA-8 probabilities (mean of softmax over the 8 views), read back."""
    views = np.load(work / f"{name}_pred" / "views.npz", allow_pickle=False)
    return [str(i) for i in views["ids"]], np.mean(
        [softmax(views[v]) for v in TTA_SETS["tta_8"]], axis=0
    )


def members_row(work: Path, name: str, rows: list[dict], truth: pd.Series) -> dict:
    """The soft vote of already-measured single-member ``rows`` (one seed each), as one row."""
    parts = [tta8_probs(work, r["name"]) for r in rows]
    ids = parts[0][0]
    if any(i != ids for i, _ in parts):
        raise SystemExit(f"ablation: {name}: the members predicted different test images")
    probs = np.mean([p for _, p in parts], axis=0)
    np.savez(work / f"{name}.probs.npz", ids=np.asarray(ids), probs=probs)
    k = probs.shape[1]
    train_s = [r["train_s"] for r in rows]
    return {
        "row": name,
        "name": name,
        "overrides": [o for r in rows for o in r["overrides"]],
        "image_size": rows[0]["image_size"],
        "epochs": rows[0]["epochs"],
        "members": len(rows),
        "fold": "none",
        "train_images": rows[0]["train_images"],
        "train_s": None if None in train_s else round(sum(train_s), 1),
        "predict_s": round(sum(r["predict_s"] for r in rows), 1),
        "train_images_per_s": None,
        "tta_8_macro_f1": scores(truth.loc[ids].to_numpy(), probs, k)["macro_f1"],
        "macro_f1": scores(truth.loc[ids].to_numpy(), probs, k)["macro_f1"],
    }


def run_grid(
    data: Path, work: Path, truth: pd.Series, args: argparse.Namespace, measured
) -> list[dict]:
    """The planner's grid (see the module docstring): single cells, members at equal compute, anchors."""
    sizes = [int(s) for s in args.sizes.split(",")]
    epochs_list = sorted(int(e) for e in args.epochs_list.split(","))
    folds = args.folds.split(",")
    rows: list[dict] = []

    def cell(size: int, ep: int, fold: str = "none", seed: int | None = None) -> dict:
        name = f"s{size}_e{ep}_f{fold}" + (f"_seed{seed}" if seed is not None else "")
        ov = [f"data.image_size={size}", f"train.epochs={ep}", f"fold={fold}"]
        ov += [f"seed={seed}"] if seed is not None else []
        r = measured(name, ov, size, ep, lambda: run_row(data, work, name, ov, truth, GRID_BASE))
        r.update(name=name, fold=fold, members=1)
        log(f"{name}: macro F1 {r['macro_f1']:.3f}, training {_num(r['train_s'], 0, 0).strip()} s")
        return r

    skip = set(filter(None, (args.skip or "").split(",")))
    for size in sizes:
        for ep in epochs_list:
            for fold in folds:
                if f"{size}:{ep}" not in skip:
                    rows.append(cell(size, ep, fold))
    if args.members_at:
        size, total = int(args.members_at), epochs_list[-1]
        for m in (2, 4):
            if total % m or total // m < epochs_list[0]:
                continue
            ep = total // m
            first = next((r for r in rows if r["name"] == f"s{size}_e{ep}_fnone"), None) or cell(
                size, ep
            )
            singles = [first, *(cell(size, ep, seed=43 + j) for j in range(m - 1))]
            rows.extend(singles[1:])
            rows.append(members_row(work, f"s{size}_m{m}x{ep}", singles, truth))
            log(f"{rows[-1]['name']}: macro F1 {rows[-1]['macro_f1']:.3f}")
    anchor_at = args.anchor_at or f"{sizes[-1]}:{epochs_list[len(epochs_list) // 2]}"
    for spec in [] if args.no_anchor else anchor_at.split(","):
        size, ep = (int(v) for v in spec.split(":"))
        log(f"anchor {size} px x {ep} epochs")
        a = measured("anchor", [], size, ep, lambda s=size, e=ep: anchor_row(data, work, s, e))
        rows.append({**a, "name": f"anchor_{size}_{ep}", "fold": "none", "members": 1})
        log(f"anchor {size} px x {ep}: macro F1 {a['macro_f1']:.3f}")
    return rows


def grid_evidence(rows: list[dict], work: Path, truth: pd.Series) -> None:
    """Paired tests on the same test images: each row against the anchor nearest in epochs, and each
    single cell against the same size and pages at half the epochs (does doubling pay?)."""
    from docsort.core.stats import paired_compare

    def pair(r: dict, ref: dict) -> dict:
        b = _correct(work, ref, truth)
        pr = paired_compare(_correct(work, r, truth).loc[b.index].to_numpy(), b.to_numpy())
        return {"ref": ref["name"], "macro_f1": round(r["macro_f1"] - ref["macro_f1"], 4), "wins": pr.wins,
                "losses": pr.losses, "p_value": round(pr.p_value, 4), "separated": pr.p_value < 0.05}  # fmt: skip

    anchors = [r for r in rows if r["row"] == "anchor"]
    by_name = {r["name"]: r for r in rows}
    for r in rows:
        if r["row"] == "anchor":
            continue
        if anchors:
            r["vs_anchor"] = pair(
                r, min(anchors, key=lambda a: abs(a["epochs"] - r["epochs"] * r.get("members", 1)))
            )
        half = by_name.get(f"s{r['image_size']}_e{r['epochs'] // 2}_f{r['fold']}")
        if (
            r.get("members", 1) == 1
            and "seed" not in r["name"]
            and half is not None
            and r["epochs"] % 2 == 0
        ):
            r["vs_half_epochs"] = pair(r, half)
        if r.get("fold", "none") != "none":
            full = by_name.get(f"s{r['image_size']}_e{r['epochs']}_fnone")
            if full is not None:
                r["vs_all_pages"] = pair(r, full)
        if r.get("members", 1) > 1:
            single = by_name.get(f"s{r['image_size']}_e{r['epochs'] * r['members']}_fnone")
            if single is not None:
                r["vs_one_member"] = pair(r, single)


def print_grid(rows: list[dict], title: str) -> None:
    print(f"\n{title}")
    print(f"{'row':<20} {'px':>4} {'ep':>3} {'mem':>3} {'pages':>5} {'F1 TTA-8':>9} {'vs half ep':>10} {'p':>6} "
          f"{'vs anchor':>9} {'p':>6} {'train s':>8}")  # fmt: skip
    for r in rows:
        h = r.get("vs_all_pages") or r.get("vs_half_epochs") or r.get("vs_one_member") or {}
        a = r.get("vs_anchor") or {}
        hd, hp = (f"{h['macro_f1']:+.3f}", f"{h['p_value']:.3f}") if h else ("", "")
        ad, ap = (f"{a['macro_f1']:+.3f}", f"{a['p_value']:.3f}") if a else ("", "")
        print(f"{r.get('name', r['row']):<20} {r['image_size']:>4} {r['epochs']:>3} {r.get('members', 1):>3} "
              f"{r['train_images']:>5} {r['macro_f1']:>9.3f} {hd:>10} {hp:>6} {ad:>9} {ap:>6} "
              f"{_num(r['train_s'], 8, 0)}")  # fmt: skip
    print("vs half ep: against the same size and pages at half the epochs (members rows: against one member "
          "of the same total epochs; fold rows: against all pages); p: exact McNemar test on the same test images (p < 0.05: separated)")  # fmt: skip


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
    ap.add_argument("--sizes", default="96,160,224", help="grid: image sizes")
    ap.add_argument("--epochs-list", default="8,16,32", help="grid: epochs per member")
    ap.add_argument("--skip", default=None, help="grid: SIZE:EPOCHS cells not to train (cost)")
    ap.add_argument("--folds", default="none", help="grid: none (all pages) and/or 0 (80 %%)")
    ap.add_argument(
        "--members-at", default=None, help="grid: size for the members-at-equal-compute rows"
    )
    ap.add_argument(
        "--anchor-at",
        default=None,
        help="grid: anchor cells SIZE:EPOCHS,... (default: the largest size at the middle epochs)",
    )
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
            rows = run_grid(data, work, truth, args, measured)
            grid_evidence(rows, work, truth)
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
        "base": GRID_BASE if args.grid else BASE,
        "rows": rows,
        "wall_s": round(time.perf_counter() - t0, 1),
        "machine": _machine(),
    }
    title = f"{data.name}: {'grid' if args.grid else f'{args.size} px x {args.epochs} epochs'}, scored on test_labels.csv"
    (print_grid if args.grid else print_table)(rows, title)
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
