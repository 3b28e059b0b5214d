"""Throughput of 8-view TTA inference and of training epochs, side by side on one machine (issue 7).

    python bench/throughput.py --json throughput.json

On the same model, images and threads, in one run:

* images/second with 8 dihedral views for (a) a naive loop (one image, one view
  at a time), (b) ttach's D4 wrapper, (c) docsort torch fp32 and bf16,
  (d) docsort onnxruntime; and single-view throughput of each engine at the
  same forward batch, whose eighth is the compute limit of 8-view TTA;
* epoch time of a training loop reading the prepared cache vs decoding the
  JPEGs every epoch;
* macro F1 of the same trained model predicted in fp32, bf16 and onnxruntime.

Engines take turns in many short slices (one batch each) and each engine's
fastest slice counts, which keeps a shared machine's noise out of the ratios
(medians are in the JSON too). Defaults: resnet18, 1 channel, 160 px (the CPU
experiment ``cpu_fast``), trained for 8 epochs on generated sample data.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from docsort.core.config import load_config
from docsort.core.device import autocast, default_workers, resolve_precision, usable_cores
from docsort.data.augment import TrainTransform, to_tensor
from docsort.data.contract import decode_image, fit_square, image_path
from docsort.data.prepared import Prepared
from docsort.models.factory import create_model, load_member
from docsort.models.tta import VIEWS, TorchTTA, auto_batch_size, auto_workers
from docsort.predict.predict import CacheImages, iter_batches, predict


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- setup -------------------------------------------------------------------------------------


def make_data(work: Path, args) -> tuple[Path, Path]:
    from docsort.data.prepare import prepare
    from docsort.data.sample import generate_sample_data

    data = Path(args.data) if args.data else work / "data"
    if not args.data:
        log(
            f"generating sample data ({args.per_class}/class train, {args.test_per_class}/class test)"
        )
        generate_sample_data(
            data, per_class=args.per_class, test_per_class=args.test_per_class, seed=0
        )
    log(f"preparing at {args.image_size} px")
    prep = prepare(str(data), work / "prepared", spec_overrides(args))
    return data, prep


def spec_overrides(args) -> list[str]:
    return [f"model={args.model}", f"data.image_size={args.image_size}", f"data.channels={args.channels}", "data.num_folds=2",
            "tracking.wandb=disabled"]  # fmt: skip


def train_model(prep: Path, work: Path, args) -> Path:
    from docsort.train.train import train

    out = work / "model"
    log(f"training {args.model} for {args.train_epochs} epochs on all training images")
    with contextlib.redirect_stdout(io.StringIO()):
        train(prep, out, [*spec_overrides(args), "fold=none", f"train.epochs={args.train_epochs}", "train.batch_size=32",
                          "train.lr=0.003", "train.scheduler=onecycle", f"threads={args.threads}"])  # fmt: skip
    return out


def bench_cache(prep: Path, work: Path, rows: int) -> Path:
    """A cache of ``rows`` test images (repeated if the test set is smaller), in the prepared format."""
    src = Prepared(prep).images("test")
    idx = np.arange(rows) % len(src)
    path = work / "bench-images.npy"
    np.save(path, np.asarray(src[idx]))
    return path


# --- TTA throughput ----------------------------------------------------------------------------


def tta_throughput(model_dir: Path, prep: Path, work: Path, args, threads: int) -> dict:
    """Best rate of each engine over many short interleaved slices (one batch each).

    Short slices back to back give every engine the same chances of a quiet
    moment on a shared machine; the fastest slice is the engine's speed (as timeit does).
    """
    from docsort.models.onnx_export import export_onnx
    from docsort.models.onnx_runtime import OrtTTA

    views = list(VIEWS)
    cpu = torch.device("cpu")
    bs = auto_batch_size(args.batch_size, cpu, len(views), args.image_size)
    n = bs * len(views)  # rows: one single-view forward batch
    workers = auto_workers("auto", cpu, decode=False)
    cache = CacheImages(bench_cache(prep, work, n))
    plain = load_member(model_dir).model.eval()  # naive code and ttach: default layout, no fusion
    import ttach

    d4 = ttach.ClassificationTTAWrapper(plain, ttach.aliases.d4_transform(), merge_mode="mean")
    imgs = cache.read(0, n)
    x_all = torch.stack([to_tensor(im) for im in imgs])
    onnx_path = export_onnx(model_dir, work / "model.onnx")
    engines = {
        "torch_fp32": TorchTTA(load_member(model_dir).model, cpu, "fp32"),
        "torch_bf16": TorchTTA(load_member(model_dir).model, cpu, "bf16"),
        "onnx": OrtTTA(onnx_path, threads=threads, device="cpu"),
    }

    def naive(r: int) -> int:  # one image, one view at a time
        x = to_tensor(imgs[r % n])[None]
        for v in views:
            plain(VIEWS[v](x)).softmax(-1)
        return 1

    def ttach_d4(r: int) -> int:  # a batch of bs images, the views one after another
        a = (r * bs) % (n - bs + 1)
        d4(x_all[a : a + bs])
        return bs

    def docsort(engine, tta_views: list[str], batch: int) -> Callable[[int], int]:
        def run(r: int) -> int:  # one batch through the loader, as predict reads it
            a = (r * batch) % (n - batch + 1)
            for x in iter_batches(cache, [(a, a + batch)], workers=workers):
                engine(x, tta_views)
            return batch

        return run

    cases: dict[str, Callable[[int], int]] = {"naive loop": naive, "ttach D4": ttach_d4}
    for name, engine in engines.items():
        cases[f"docsort {name}"] = docsort(engine, views, bs)
        # single view at the same forward batch (views x images)
        cases[f"single-view {name}"] = docsort(engine, ["identity"], bs * len(views))
    log(f"TTA throughput: batch {bs} images x {len(views)} views ({bs * len(views)} per forward pass), "
        f"{threads} threads, best of {args.rounds} interleaved slices")  # fmt: skip
    rates: dict[str, list[float]] = {k: [] for k in cases}
    with torch.no_grad():
        for fn in (
            cases.values()
        ):  # warm-up: oneDNN / onnxruntime build their kernels for these shapes once
            fn(0)
        for r in range(args.rounds):
            for name, fn in cases.items():
                t = time.perf_counter()
                done = fn(r)
                rates[name].append(done / (time.perf_counter() - t))
            if (r + 1) % 10 == 0 or r + 1 == args.rounds:
                log(
                    f"{r + 1} slices, best so far: "
                    + ", ".join(f"{k} {max(v):.1f}" for k, v in rates.items())
                )
    best = {k: max(v) for k, v in rates.items()}
    median = {k: float(np.median(v)) for k, v in rates.items()}
    return {"views": len(views), "batch_images": bs, "forward_batch": bs * len(views), "loader_workers": workers,
            "slices": args.rounds, "best_images_per_s": best, "median_images_per_s": median}  # fmt: skip


# --- epoch time: prepared cache vs decoding every epoch ------------------------------------------


class DecodeDataset(torch.utils.data.Dataset):
    """What training without the cache does: read, decode and resize every image, every epoch."""

    def __init__(
        self,
        folder: Path,
        ids: list[str],
        targets: np.ndarray,
        size: int,
        channels: int,
        resize: str,
        transform,
    ):
        self.folder, self.ids, self.targets = folder, ids, targets
        self.size, self.channels, self.resize, self.transform = size, channels, resize, transform

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int):
        raw = image_path(self.folder, self.ids[i]).read_bytes()
        img = decode_image(
            raw, channels=self.channels, max_pixels=10**9, name=self.ids[i], draft=self.size * 2
        )
        return self.transform(fit_square(img, self.size, self.resize)), int(self.targets[i])


class CachedDataset(torch.utils.data.Dataset):
    def __init__(self, images: np.ndarray, targets: np.ndarray, transform):
        self.images, self.targets, self.transform = images, targets, transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        return self.transform(np.asarray(self.images[i])), int(self.targets[i])


def epoch_times(work: Path, args, side: int) -> dict:
    from torch.utils.data import DataLoader

    from docsort.data.prepare import prepare
    from docsort.data.sample import generate_sample_data

    per_class = max(2, math.ceil(args.epoch_images / 17))
    data = work / f"epoch-data-{side}"
    log(
        f"epoch time: {17 * per_class} images of up to {side} px, {args.image_size} px training input"
    )
    generate_sample_data(data, per_class=per_class, test_per_class=1, seed=1, max_side=side)
    prep = Prepared(prepare(str(data), work / f"epoch-prepared-{side}", spec_overrides(args)))
    cfg = load_config(spec_overrides(args))
    cpu = torch.device("cpu")
    precision = resolve_precision(str(cfg.precision), cpu)
    targets = prep.index["target"].to_numpy()
    ids = prep.index["ID"].tolist()
    transform = TrainTransform(cfg.aug, args.image_size, 0)
    datasets = {
        "cache": CachedDataset(prep.images("train"), targets, transform),
        "decode": DecodeDataset(
            data / "train",
            ids,
            targets,
            args.image_size,
            args.channels,
            str(cfg.data.resize),
            transform,
        ),
    }
    workers = default_workers(
        cpu
    )  # what `docsort train` uses here (num_workers=auto); both variants alike
    torch.manual_seed(0)
    model = create_model(cfg, prep.num_classes).to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def epoch(ds) -> float:
        t = time.perf_counter()
        for x, y in DataLoader(
            ds, batch_size=32, shuffle=True, num_workers=workers, drop_last=False
        ):
            with autocast(cpu, precision):
                loss = torch.nn.functional.cross_entropy(
                    model(x.contiguous(memory_format=torch.channels_last)).float(), y
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return time.perf_counter() - t

    def data_only(ds) -> float:
        t = time.perf_counter()
        for _ in DataLoader(ds, batch_size=32, num_workers=workers):
            pass
        return time.perf_counter() - t

    epoch(datasets["cache"])  # warm-up
    times: dict[str, list[float]] = {"cache": [], "decode": []}
    loading: dict[str, list[float]] = {"cache": [], "decode": []}
    for _ in range(args.epoch_rounds):
        for k, ds in datasets.items():
            times[k].append(epoch(ds))
            loading[k].append(data_only(ds))
    best = {k: min(v) for k, v in times.items()}
    load = {k: min(v) for k, v in loading.items()}
    n = len(ids)
    step_ms = (best["cache"] - load["cache"]) / n * 1000
    return {
        "max_side": side, "images": n, "precision": precision, "loader_workers": workers,
        "epoch_s": best, "data_ms_per_image": {k: v / n * 1000 for k, v in load.items()},
        "train_step_ms_per_image": step_ms, "speedup": best["decode"] / best["cache"],
        "data_speedup": load["decode"] / load["cache"],  # the loader alone, no model
        # what caching can save at most: the decode time, over a step that costs step_ms regardless
        "speedup_limit": (step_ms + load["decode"] / n * 1000) / (step_ms + load["cache"] / n * 1000),
    }  # fmt: skip


# --- macro F1 in each precision ---------------------------------------------------------------


def f1_by_precision(model_dir: Path, prep: Path, work: Path, args) -> dict:
    import pandas as pd
    from sklearn.metrics import f1_score

    from docsort.core.probs import align, read_probs

    labels = pd.read_csv(prep / "test_labels.csv", dtype={"ID": str})
    out = {}
    for name, extra in (
        ("fp32", ["precision=fp32"]),
        ("bf16", ["precision=bf16"]),
        ("onnx", ["precision=fp32", "runtime=onnx"]),
    ):
        log(f"macro F1 on {len(labels)} test images: {name}")
        pred = predict(
            prep,
            model_dir,
            work / f"pred-{name}",
            [*spec_overrides(args), f"threads={args.threads}", *extra],
        )
        ids, probs, _ = read_probs(pred / "probs.csv")
        p = align(ids, probs, labels["ID"].tolist(), source=str(pred))
        out[name] = float(f1_score(labels["target"], p.argmax(1), average="macro"))
    out["bf16_minus_fp32"] = out["bf16"] - out["fp32"]
    out["onnx_minus_fp32"] = out["onnx"] - out["fp32"]
    return out


# --- report ------------------------------------------------------------------------------------


def summarize(
    tta: dict,
    epochs: list[dict],
    f1: dict,
    args,
    threads: int,
    default_precision: str,
    seconds: float,
) -> dict:
    b = tta["best_images_per_s"]
    limit = {e: b[f"single-view {e}"] / tta["views"] for e in ("torch_fp32", "torch_bf16", "onnx")}
    vs_limit = {
        "naive loop": b["naive loop"] / limit["torch_fp32"],
        "ttach D4": b["ttach D4"] / limit["torch_fp32"],
        **{f"docsort {e}": b[f"docsort {e}"] / limit[e] for e in limit},
    }
    default_engine = f"torch_{default_precision}"
    main_epoch = next(e for e in epochs if e["max_side"] == args.epoch_sides[-1])
    result = {
        "model": args.model, "image_size": args.image_size, "channels": args.channels, "threads": threads,
        "default_precision": default_precision,
        "tta8_vs_limit": vs_limit[f"docsort {default_engine}"],
        "torch_vs_ttach": b["docsort torch_fp32"] / b["ttach D4"],
        "bf16_vs_ttach": b["docsort torch_bf16"] / b["ttach D4"],
        "onnx_vs_torch": b["docsort onnx"] / b["docsort torch_fp32"],
        "onnx_vs_torch_bf16": b["docsort onnx"] / b["docsort torch_bf16"],
        # the most each ratio could be: docsort at its engine's compute limit (single-view / 8)
        "ceilings": {
            "tta8_vs_limit": 1.0,
            "torch_vs_ttach": limit["torch_fp32"] / b["ttach D4"],
            "bf16_vs_ttach": limit["torch_bf16"] / b["ttach D4"],
            "onnx_vs_torch": limit["onnx"] / limit["torch_fp32"],
            "onnx_vs_torch_bf16": limit["onnx"] / limit["torch_bf16"],
            "cache_speedup": main_epoch["speedup_limit"],
        },
        "cache_speedup": main_epoch["speedup"],
        "cache_speedup_limit": main_epoch["speedup_limit"],
        "cache_data_speedup": main_epoch["data_speedup"],
        "tta8_vs_limit_by_engine": vs_limit,
        "images_per_s": b, "single_view_limit_per_8": limit, "tta": tta, "epochs": epochs, "macro_f1": f1,
        "machine": {"cpu": _cpu_name(), "cores": os.cpu_count(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                    "torch": torch.__version__, "onnxruntime": __import__("onnxruntime").__version__,
                    "python": platform.python_version(), "loadavg_end": os.getloadavg()},
        "seconds": round(seconds, 1),
    }  # fmt: skip
    result["targets"] = {
        "tta8_vs_limit >= 0.95": result["tta8_vs_limit"] >= 0.95,
        "torch_vs_ttach >= 1.5": result["torch_vs_ttach"] >= 1.5,
        "bf16_vs_ttach >= 3": result["bf16_vs_ttach"] >= 3,
        "onnx_vs_torch >= 1.3": result["onnx_vs_torch"] >= 1.3,
        "cache_speedup >= 2": result["cache_speedup"] >= 2,
        "|bf16 - fp32 macro F1| <= 0.005": abs(f1["bf16_minus_fp32"]) <= 0.005,
    }
    return result


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def print_table(r: dict) -> None:
    t = r["tta"]
    b = r["images_per_s"]
    print(f"\nTTA-8 throughput: {r['model']}, {r['channels']} channel(s), {r['image_size']} px, {r['threads']} threads, "
          f"batch {t['batch_images']} images x {t['views']} views; best of {t['slices']} interleaved one-batch slices")  # fmt: skip
    print("| engine | 8-view images/s | single-view images/s | TTA-8 / (single-view / 8) |")
    print("|---|---:|---:|---:|")
    rows = [("naive loop (fp32, 1 image x 1 view)", "naive loop", "torch_fp32"), ("ttach D4 wrapper (fp32)", "ttach D4", "torch_fp32"),
            ("docsort torch fp32", "docsort torch_fp32", "torch_fp32"), ("docsort torch bf16", "docsort torch_bf16", "torch_bf16"),
            ("docsort onnxruntime fp32", "docsort onnx", "onnx")]  # fmt: skip
    for label, key, eng in rows:
        single = b[f"single-view {eng}"]
        print(
            f"| {label} | {b[key]:.1f} | {single:.1f} | {r['tta8_vs_limit_by_engine'][key]:.2f} |"
        )
    print("\n| ratio | measured | ceiling on this machine | target |")
    print("|---|---:|---:|---:|")
    for key, target in (("tta8_vs_limit", ">= 0.95"), ("torch_vs_ttach", ">= 1.5"), ("bf16_vs_ttach", ">= 3"),
                        ("onnx_vs_torch", ">= 1.3"), ("onnx_vs_torch_bf16", "-"), ("cache_speedup", ">= 2")):  # fmt: skip
        print(f"| {key} | {r[key]:.2f} | {r['ceilings'][key]:.2f} | {target} |")
    print("ceiling: the ratio if docsort ran exactly at its compute limit (single-view / 8); for cache_speedup,"
          " (model step + decode) / (model step + cache read) per image")  # fmt: skip
    print("\nEpoch time (training loop, batch 32, same model and transform; min of rounds)")
    print(
        "| images (max side) | epoch s, cache | epoch s, decode JPEGs | epoch speedup | loader-only speedup | loader ms/img cache / decode | model step ms/img | epoch speedup limit |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for e in r["epochs"]:
        d = e["data_ms_per_image"]
        print(f"| {e['images']} ({e['max_side']} px) | {e['epoch_s']['cache']:.2f} | {e['epoch_s']['decode']:.2f} | {e['speedup']:.2f} | "
              f"{e['data_speedup']:.2f} | {d['cache']:.2f} / {d['decode']:.2f} | {e['train_step_ms_per_image']:.1f} | {e['speedup_limit']:.2f} |")  # fmt: skip
    f = r["macro_f1"]
    print(f"\nmacro F1 on the sample test set: fp32 {f['fp32']:.4f}, bf16 {f['bf16']:.4f} (diff {f['bf16_minus_fp32']:+.4f}), "
          f"onnxruntime {f['onnx']:.4f}")  # fmt: skip
    print(
        f"load average at the end: {' '.join(f'{x:.2f}' for x in r['machine']['loadavg_end'])}; {r['seconds']:.0f} s in total"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--image-size", type=int, default=160)
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch and onnxruntime intra-op threads (default: all cores)",
    )
    ap.add_argument(
        "--batch-size",
        default="auto",
        help="images per TTA batch (default auto: 8 at 160 px on CPU)",
    )
    ap.add_argument(
        "--rounds", type=int, default=30, help="interleaved slices (one batch per engine each)"
    )
    ap.add_argument(
        "--data", default=None, help="a dataset root to use instead of generated sample data"
    )
    ap.add_argument("--per-class", type=int, default=20)
    ap.add_argument("--test-per-class", type=int, default=20)
    ap.add_argument("--train-epochs", type=int, default=8)
    ap.add_argument(
        "--model-dir", default=None, help="a trained model folder to use instead of training one"
    )
    ap.add_argument("--epoch-images", type=int, default=96)
    ap.add_argument(
        "--epoch-sides",
        default="320,1024",
        help="longest sides of the images for the epoch test; the last one gives cache_speedup",
    )
    ap.add_argument("--epoch-rounds", type=int, default=3)
    ap.add_argument("--workdir", default=None, help="keep the generated data and models here")
    args = ap.parse_args(argv)
    args.epoch_sides = [int(s) for s in str(args.epoch_sides).split(",")]
    threads = int(args.threads or usable_cores())
    args.threads = threads
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="docsort-bench-") as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        _, prep = make_data(work, args)
        model_dir = Path(args.model_dir) if args.model_dir else train_model(prep, work, args)
        torch.set_num_threads(threads)
        tta = tta_throughput(model_dir, prep, work, args, threads)
        epochs = [epoch_times(work, args, side) for side in args.epoch_sides]
        f1 = f1_by_precision(model_dir, prep, work, args)
    default_precision = resolve_precision("auto", torch.device("cpu"))
    result = summarize(tta, epochs, f1, args, threads, default_precision, time.perf_counter() - t0)
    print_table(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
