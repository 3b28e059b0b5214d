"""Label-noise benchmark: does `hardcases mine` find wrong training labels, and does excluding them pay?

    python bench/label_noise.py [DATA] [--rates 0.05,0.10] [--epochs 10] [--json OUT.json] [overrides ...]

On a copy of DATA (never DATA itself) a seeded share of the training labels is
flipped to another class, uniformly at random (images already in
hardcases.csv are never picked). For each noise rate:

1. ``prepare`` the noisy copy and train a fold bundle (``fold=all``, 2 folds by
   default), whose pooled ``oof.csv`` is what `hardcases mine` reads;
2. rank every training image (``review.hardcases.oof_ranking``, the ranking
   `hardcases mine` proposes from) and score the injected errors among the
   top N (N = the number injected: precision = recall there) and among the
   ``label_error`` suggestions (score above the margin threshold);
3. accept every ``label_error`` suggestion unreviewed (`hardcases accept`,
   i.e. the worst case of a person who agrees with all of them), prepare
   again with ``data.exclude_label_errors=true`` and train the same bundle.

A bundle trained on the clean data is the reference. All bundles have equal
epochs and recipe; each predicts the test set (the folds' mean, identity view)
and is scored by macro F1 against ``DATA/test_labels.csv``. Prints a table
and writes the numbers as JSON. DATA defaults to /tmp/docsort-sample.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd


def log(msg: str) -> None:
    print(f"[label-noise] {msg}", file=sys.stderr, flush=True)


def inject_noise(data: Path, out: Path, rate: float, seed: int) -> dict[str, tuple[int, int]]:
    """Copy ``data`` to ``out`` with ``rate`` of the train.csv labels flipped; ``{ID: (true, noisy)}``."""
    from docsort.core.csv_tables import read_csv

    shutil.copytree(data, out)
    train = pd.read_csv(out / "train.csv", dtype=str, keep_default_na=False)
    k = len(read_csv(out / "meta.csv", ("target", "class_name")))
    reviewed = set()
    if (out / "hardcases.csv").is_file():
        reviewed = set(pd.read_csv(out / "hardcases.csv", dtype=str)["ID"])
    pool = np.flatnonzero(~train["ID"].isin(reviewed).to_numpy())
    rng = np.random.default_rng(seed)
    n = round(rate * len(train))
    picked = rng.choice(pool, size=n, replace=False)
    flips = {}
    for row in picked:
        true = int(train.at[row, "target"])
        noisy = int((true + rng.integers(1, k)) % k)  # uniform over the other classes
        train.at[row, "target"] = str(noisy)
        flips[train.at[row, "ID"]] = (true, noisy)
    train.to_csv(out / "train.csv", index=False)
    return flips


def test_macro_f1(data: Path, probs_csv: Path, k: int) -> float:
    from sklearn.metrics import f1_score

    from docsort.core.probs import read_probs

    truth = pd.read_csv(data / "test_labels.csv", dtype={"ID": str}).set_index("ID")["target"]
    ids, probs, _ = read_probs(probs_csv, k)
    y = truth.loc[ids].to_numpy(dtype=int)
    return float(f1_score(y, probs.argmax(1), average="macro", labels=range(k), zero_division=0))


class Bench:
    def __init__(self, data: Path, work: Path, overrides: list[str], epochs: int) -> None:
        self.data, self.work, self.epochs = data, work, epochs
        self.overrides = overrides
        self.seconds: dict[str, float] = {}

    def member(self, name: str, root: Path, extra: tuple[str, ...] = ()) -> dict:
        """Prepare ``root``, train a fold bundle and score it on the test labels."""
        from docsort.data.prepare import prepare
        from docsort.data.prepared import Prepared
        from docsort.predict.predict import predict
        from docsort.train.train import train

        t = time.perf_counter()
        prep = prepare(str(root), self.work / f"prep-{name}", [*self.overrides, *extra])
        bundle = self.work / f"member-{name}"
        log(f"{name}: train {len(Prepared(prep).index)} images, {self.epochs} epochs")
        with contextlib.redirect_stdout(io.StringIO()):  # the trainer's metric lines
            train(prep, bundle, [*self.overrides, *extra, "fold=all", "tracking.wandb=disabled",
                                 f"train.epochs={self.epochs}"])  # fmt: skip
            pred = predict(prep, bundle, self.work / f"pred-{name}",
                           [*self.overrides, "tta.views=[identity]"])  # fmt: skip
        k = Prepared(prep).num_classes
        f1 = test_macro_f1(self.data, pred / "probs.csv", k)
        oof = json.loads((bundle / "metrics.json").read_text())["oof_tta_macro_f1"]
        self.seconds[name] = round(time.perf_counter() - t, 1)
        log(f"{name}: test macro F1 {f1:.4f} ({self.seconds[name]:.0f} s)")
        return {"prepared": prep, "bundle": bundle, "test_macro_f1": f1,
                "train_images": len(Prepared(prep).index), "oof_macro_f1_vs_own_labels": oof}  # fmt: skip


def noise_level(b: Bench, rate: float, seed: int, min_score: float | None) -> dict:
    from docsort.review.hardcases import accept, mine, oof_ranking, write_proposals

    name = f"noisy{round(rate * 100)}"
    root = b.work / f"data-{name}"
    flips = inject_noise(b.data, root, rate, seed)
    n = len(flips)
    noisy = b.member(name, root)
    margin = {} if min_score is None else {"min_score": min_score}
    skip = set(pd.read_csv(root / "hardcases.csv", dtype=str)["ID"])
    ranked = oof_ranking(noisy["prepared"], [noisy["bundle"] / "oof.csv"], skip=skip, **margin)
    hit = ranked["ID"].isin(set(flips)).to_numpy()
    rank_of = {i: r for r, i in enumerate(ranked["ID"])}
    suggested = ranked[ranked["label_error"]]
    s_hit = suggested["ID"].isin(set(flips)).to_numpy()
    fixed = sum(flips[i][0] == int(o) for i, o in zip(suggested["ID"], suggested["other"], strict=True) if i in flips)  # fmt: skip
    # What a person would do: mine, accept the label_error suggestions, prepare excluding them.
    proposals = b.work / f"proposals-{name}.csv"
    write_proposals(
        mine(noisy["prepared"], models=[noisy["bundle"]], top=len(ranked), **margin), proposals
    )
    added, _ = accept(root / "hardcases.csv", proposals, kind="label_error")
    assert len(added) == len(suggested), (len(added), len(suggested))
    excluded = b.member(f"{name}-excluded", root, ("data.exclude_label_errors=true",))
    return {
        "rate": rate,
        "injected": n,
        "precision_at_n": float(hit[:n].mean()),  # = recall at N
        "recall_at_2n": float(hit[: 2 * n].sum() / n),
        "median_rank_of_injected": float(np.median([rank_of[i] for i in flips])),
        "suggested": len(suggested),
        "suggested_precision": float(s_hit.mean()) if len(s_hit) else 0.0,
        "suggested_recall": float(s_hit.sum() / n),
        "suggested_true_class": int(fixed),
        "noisy_test_macro_f1": noisy["test_macro_f1"],
        "excluded_test_macro_f1": excluded["test_macro_f1"],
        "excluded_train_images": excluded["train_images"],
        "noisy_oof_macro_f1_vs_noisy_labels": noisy["oof_macro_f1_vs_own_labels"],
    }


def table(clean: dict, levels: list[dict]) -> str:
    head = ["noise", "injected", "P@N (=R@N)", "R@2N", "suggested", "sugg. prec", "sugg. rec",
            "test F1 noisy", "test F1 excluded", "test F1 clean"]  # fmt: skip
    rows = [
        [f"{r['rate']:.0%}", str(r["injected"]), f"{r['precision_at_n']:.3f}",
         f"{r['recall_at_2n']:.3f}", str(r["suggested"]), f"{r['suggested_precision']:.3f}",
         f"{r['suggested_recall']:.3f}", f"{r['noisy_test_macro_f1']:.4f}",
         f"{r['excluded_test_macro_f1']:.4f}", f"{clean['test_macro_f1']:.4f}"]
        for r in levels
    ]  # fmt: skip
    from docsort.core.tables import text_table

    return text_table(head, rows)


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("data", nargs="?", default="/tmp/docsort-sample", help="dataset root")
    ap.add_argument("--rates", default="0.05,0.10", help="noise rates, comma separated")
    ap.add_argument("--epochs", type=int, default=10, help="epochs of every bundle (default 10)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the injected noise")
    ap.add_argument(
        "--min-score", type=float, default=None, help="label_error margin (default: mine's)"
    )
    ap.add_argument("--recipe", default="cpu_fast", help="experiment config (default cpu_fast)")
    ap.add_argument("--json", dest="json_out", default="bench/results/label_noise_sample.json")
    ap.add_argument(
        "--work", default=None, help="keep the copies and members here (default: a temp folder)"
    )
    ap.epilog = "NAME=VALUE arguments are Hydra overrides for every stage (default: data.image_size=112 data.num_folds=2)"
    args, extra = ap.parse_known_args(argv)
    if "=" in args.data and not Path(args.data).exists():  # an override, not DATA
        extra, args.data = [args.data, *extra], "/tmp/docsort-sample"
    bad = [e for e in extra if e.startswith("-") or "=" not in e]
    if bad:
        ap.error(f"unrecognized arguments: {' '.join(bad)}")
    overrides = [f"experiment={args.recipe}", "data.image_size=112", "data.num_folds=2", *extra]
    os.environ.setdefault("WANDB_MODE", "offline")
    data = Path(args.data).resolve()
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        work = Path(args.work) if args.work else Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="docsort-label-noise-")))  # fmt: skip
        work.mkdir(parents=True, exist_ok=True)
        b = Bench(data, work, overrides, args.epochs)
        clean = b.member("clean", data)
        levels: list[dict] = []
        rates = [float(r) for r in args.rates.split(",")]
        for rate in rates:
            levels.append(noise_level(b, rate, args.seed, args.min_score))
            result = results(args, data, overrides, clean, levels, b, t0)
            result["complete"] = len(levels) == len(rates)
            if args.json_out:  # after every level, so a stopped run keeps what it measured
                Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
                Path(args.json_out).write_text(json.dumps(result, indent=2) + "\n")
    print(table(clean, levels))
    if args.json_out:
        log(f"written to {args.json_out}")
    return result


def results(
    args: argparse.Namespace,
    data: Path,
    overrides: list[str],
    clean: dict,
    levels: list[dict],
    b: Bench,
    t0: float,
) -> dict:
    import torch

    return {
        "data": str(data),
        "overrides": overrides,
        "epochs": args.epochs,
        "seed": args.seed,
        "clean_test_macro_f1": clean["test_macro_f1"],
        "clean_train_images": clean["train_images"],
        "levels": levels,
        "seconds": b.seconds,
        "wall_s": round(time.perf_counter() - t0, 1),
        "machine": {
            "cpu": cpu_name(),
            "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "gpu": torch.cuda.is_available(),
            "load_average": os.getloadavg(),
        },
    }


if __name__ == "__main__":
    main()
