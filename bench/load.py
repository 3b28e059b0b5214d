"""Peak memory of ``predict`` against the number of test images (issue 8, load).

    python bench/load.py --json load.json            # 2 000, 5 000 and 20 000 images
    python bench/load.py --sizes 500,2000 --json ...  # quicker

Generates N tiny images (32 px), then runs ``predict`` with 8-view TTA in a
fresh process per run, (a) from the prepared cache and (b) decoding the image
folder with a loader worker, and records the peak resident memory (main
process and loader workers) and the resident memory after every committed
shard. Memory must stay flat as N grows: images are read batch by batch,
results are committed per shard (``tta.shard_size``) and the final tables are
streamed from the shards. The largest run is also killed (SIGKILL) half way
and re-run, to show it resumes from its committed shards.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CLASSES = ["invoice", "letter", "form", "receipt"]
TINY = [
    "data.image_size=32",
    "data.num_folds=2",
    "model.name=mobilenetv3_small_050",
    "tracking.wandb=disabled",
]

CHILD = r"""
import json, os, signal, sys, time
from docsort.predict.predict import predict

src, model, out, kill_at = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
overrides = sys.argv[5:]

def rss_mb(pid="self", field="VmRSS:"):
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0

def workers_mb():
    pids = []
    for task in os.listdir("/proc/self/task"):
        try:
            pids += open(f"/proc/self/task/{task}/children").read().split()
        except OSError:
            pass
    return max([rss_mb(p) for p in pids] or [0.0])

samples = []
def on_shard(done, total):
    samples.append([done, total, round(rss_mb(), 1), round(workers_mb(), 1)])
    if done == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)

t = time.perf_counter()
predict(src, model, out, overrides, on_shard=on_shard)
seconds = time.perf_counter() - t
print(json.dumps({
    "seconds": seconds,
    # VmHWM: this process image's high-water mark (ru_maxrss would carry over the forking parent's)
    "peak_rss_mb": rss_mb(field="VmHWM:"),
    "peak_worker_rss_mb": max([x[3] for x in samples] or [0.0]),  # sampled at each shard commit
    "end_rss_mb": rss_mb(),
    "shard_rss_mb": samples,
}))
"""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def make_images(folder: Path, n: int, seed: int) -> list[str]:
    """``n`` 32 px grayscale 'pages' (random text-line bars) as PNG files."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = []
    for i in range(n):
        img = np.full((40, 32), 255, np.uint8)
        for y in range(3, 37, 4):
            w = int(rng.integers(8, 28))
            img[y : y + 2, 2 : 2 + w] = int(rng.integers(0, 120))
        name = f"img_{i:06d}.png"
        cv2.imwrite(str(folder / name), img)
        names.append(name)
    return names


def make_dataset(root: Path, n: int) -> Path:
    """A dataset root with a few training images and ``n`` test images."""
    test = make_images(root / "test", n, seed=n)
    train = make_images(root / "train", 2 * len(CLASSES), seed=1)
    (root / "meta.csv").write_text(
        "target,class_name\n" + "".join(f"{k},{c}\n" for k, c in enumerate(CLASSES))
    )
    (root / "train.csv").write_text(
        "ID,target\n" + "".join(f"{i},{k % len(CLASSES)}\n" for k, i in enumerate(train))
    )
    (root / "sample_submission.csv").write_text("ID,target\n" + "".join(f"{i},0\n" for i in test))
    return root


def make_member(prepared: Path, out: Path) -> Path:
    import torch

    from docsort.core.config import load_config
    from docsort.data.prepared import Prepared
    from docsort.models.factory import create_model, save_member

    cfg = load_config(TINY)
    torch.manual_seed(0)
    return save_member(out, create_model(cfg, len(CLASSES)), cfg, Prepared(prepared).class_names)


def run_child(src: Path, model: Path, out: Path, overrides: list[str], kill_at: int = 0) -> dict:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(src), str(model), str(out), str(kill_at), *overrides],
                          capture_output=True, text=True, env=env)  # fmt: skip
    if kill_at and proc.returncode == -signal.SIGKILL:
        return {"killed": True}
    if proc.returncode != 0:
        raise SystemExit(f"predict failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="2000,5000,20000", help="numbers of test images")
    ap.add_argument("--shard-size", type=int, default=1024)
    ap.add_argument(
        "--sources",
        default="cache,folder",
        help="cache (prepared) and/or folder (decoded by a loader worker)",
    )
    ap.add_argument(
        "--no-resume-demo",
        action="store_true",
        help="skip the kill-and-resume run of the largest size",
    )
    ap.add_argument("--json", default=None)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    sources = args.sources.split(",")
    from docsort.data.prepare import prepare

    rows = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="docsort-load-") as tmp:
        work = Path(args.workdir or tmp)
        for n in sizes:
            log(f"{n} images: generating, preparing")
            data = make_dataset(work / f"data-{n}", n)
            prep = prepare(str(data), work / f"prepared-{n}", TINY)
            model = make_member(prep, work / f"model-{n}")
            for source in sources:
                src = prep if source == "cache" else data / "test"
                workers = "0" if source == "cache" else "1"
                overrides = [
                    *TINY,
                    f"tta.shard_size={args.shard_size}",
                    f"tta.workers={workers}",
                    "precision=auto",
                ]
                log(f"{n} images from the {source}: predict (8 views)")
                r = run_child(src, model, work / f"pred-{n}-{source}", overrides)
                shard_rss = [s[2] for s in r["shard_rss_mb"]]
                rows.append({"images": n, "source": source, "loader_workers": int(workers), **r,
                             "first_shard_rss_mb": shard_rss[0], "last_shard_rss_mb": shard_rss[-1]})  # fmt: skip
        if not args.no_resume_demo:
            n = sizes[-1]
            src = work / f"prepared-{n}"
            overrides = [
                *TINY,
                f"tta.shard_size={args.shard_size}",
                "tta.workers=0",
                "precision=auto",
            ]
            shards = -(-n // args.shard_size)
            out = work / f"pred-{n}-resume"
            log(f"{n} images: SIGKILL after shard {shards // 2} of {shards}, then run again")
            run_child(src, work / f"model-{n}", out, overrides, kill_at=max(1, shards // 2))
            r = run_child(src, work / f"model-{n}", out, overrides)
            info = json.loads((out / "predict.json").read_text())
            ref = (work / f"pred-{n}-cache" / "probs.csv").read_bytes()
            resume = {"images": n, "shards": shards, "resumed_shards": info["resumed_shards"], "seconds_after_restart": r["seconds"],
                      "identical_to_uninterrupted": (out / "probs.csv").read_bytes() == ref}  # fmt: skip
        else:
            resume = None

    print(
        "\npredict, 8-view TTA, mobilenetv3_small_050 at 32 px, shards of",
        args.shard_size,
        "images",
    )
    print(
        "| images | source | seconds | images/s | peak RSS main MB | peak RSS loader worker MB | RSS after 1st shard MB | RSS after last shard MB |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['images']} | {r['source']} | {r['seconds']:.1f} | {r['images'] / r['seconds']:.0f} | {r['peak_rss_mb']:.0f} | "
              f"{r['peak_worker_rss_mb']:.0f} | {r['first_shard_rss_mb']:.0f} | {r['last_shard_rss_mb']:.0f} |")  # fmt: skip
    growth = {}
    for source in sources:
        sel = [r for r in rows if r["source"] == source]
        if len(sel) > 1:
            a, b = sel[0], sel[-1]
            growth[source] = (b["peak_rss_mb"] - a["peak_rss_mb"]) / (
                (b["images"] - a["images"]) / 1000
            )
            print(
                f"{source}: peak RSS grows {growth[source]:+.2f} MB per 1000 images from {a['images']} to {b['images']} images"
            )
    if resume:
        print(f"resume: killed after {resume['shards'] // 2} of {resume['shards']} shards; the re-run reused {resume['resumed_shards']} shards, "
              f"finished in {resume['seconds_after_restart']:.1f} s, identical probs.csv: {resume['identical_to_uninterrupted']}")  # fmt: skip
    result = {"runs": rows, "rss_growth_mb_per_1000_images": growth, "resume": resume, "seconds": time.perf_counter() - t0,
              "loadavg_end": os.getloadavg()}  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
