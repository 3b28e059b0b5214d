"""The anchor: the plain training loop a practitioner writes first, run beside docsort's recipe.

    python bench/anchor.py DATA --minutes M [--json OUT.json]

Grayscale, resize to 224x224 (stretch), (x/255 - 0.5) / 0.25, timm resnet18 with
one input channel, channels_last, bf16 autocast (where this CPU runs it faster:
docsort's own precision probe; an AVX2-only CPU runs bf16 about 10x slower than
fp32, so there it trains in fp32), AdamW (lr 3e-3, weight decay
0.05), OneCycleLR (pct_start 0.15) over all steps, batch 32, label smoothing
0.1, every batch rotated by a random multiple of 90 degrees and flipped with
probability 0.5, an EMA of the weights (timm ``ModelEmaV3``, decay 0.99, with
its warm-up so that short runs are not held back by the initial weights) used
for evaluation, every training page (no validation split), 8-view TTA by mean
of softmax. Images are decoded once into memory. The epochs are fitted to the
budget from a short timed probe, as docsort's benchmark fits its own.

It is the bar docsort's recipe must clear, not a design: ``bench/quality.py``
runs it on the same data, machine and budget and reports ``anchor_macro_f1``
and ``vs_anchor``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

SIZE = 224
BATCH = 32


def log(msg: str) -> None:
    print(f"[anchor] {msg}", file=sys.stderr, flush=True)


def load_split(root: Path, ids: list[str], folder: str, size: int = SIZE) -> torch.Tensor:
    """uint8 (N, 1, size, size): every image decoded once, grayscale, stretched to a square."""
    from PIL import Image

    out = np.empty((len(ids), 1, size, size), np.uint8)
    names = {p.stem: p for p in (root / folder).iterdir()}
    for i, image_id in enumerate(ids):
        path = root / folder / image_id
        path = path if path.is_file() else names[Path(image_id).stem]
        with Image.open(path) as im:
            out[i, 0] = np.asarray(im.convert("L").resize((size, size), Image.BILINEAR))
    return torch.from_numpy(out)


def normalize(x: torch.Tensor) -> torch.Tensor:
    return (x.float() / 255 - 0.5) / 0.25


def dihedral_views(x: torch.Tensor) -> list[torch.Tensor]:
    """The 8 rotations/flips of a batch of square images."""
    flipped = x.flip(-1)
    return [torch.rot90(v, k, (-2, -1)) for v in (x, flipped) for k in range(4)]


def fast_bf16() -> bool:
    """Whether bf16 autocast is faster than fp32 here (docsort's probe, the same rule as ``precision=auto``)."""
    from docsort.core.device import resolve_precision

    return resolve_precision("auto", torch.device("cpu")) == "bf16"


def new_model(num_classes: int) -> torch.nn.Module:
    import timm

    model = timm.create_model("resnet18", in_chans=1, num_classes=num_classes)
    return model.to(memory_format=torch.channels_last)


def _step(model, opt, sched, ema, x, y, dtype, step: int = 0) -> None:
    x = torch.rot90(normalize(x), int(torch.randint(4, (1,))), (-2, -1))
    if torch.rand(1).item() < 0.5:
        x = x.flip(-1)
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
        loss = F.cross_entropy(model(x).float(), y, label_smoothing=0.1)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if sched is not None:
        sched.step()
    if ema is not None:
        ema.update(model, step=step)


@torch.no_grad()
def predict(model: torch.nn.Module, x: torch.Tensor, dtype, views: int = 8) -> np.ndarray:
    """Mean of softmax over the first ``views`` dihedral views, (N, K)."""
    model.eval()
    out = []
    for i in range(0, len(x), 64):
        batch = normalize(x[i : i + 64])
        probs = 0
        for v in dihedral_views(batch)[:views]:
            with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
                logits = model(v.contiguous(memory_format=torch.channels_last)).float()
            probs = probs + logits.softmax(-1)
        out.append((probs / views).numpy())
    return np.concatenate(out)


def fit_epochs(budget_s: float, epoch_s: float, predict_s: float, *, most: int = 200) -> int:
    """Epochs that end inside ``budget_s`` once prediction (``predict_s``) is paid for."""
    return int(max(1, min(most, math.floor((budget_s - predict_s) / max(epoch_s, 1e-9)))))


def train_anchor(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    *,
    budget_s: float,
    n_predict: int,
    epochs: int | None = None,
    seed: int = 0,
    bf16: bool | None = None,
    probe_steps: int = 6,
) -> tuple[torch.nn.Module, dict]:
    """Train on every page; the epochs fit ``budget_s`` unless given. Returns the EMA model and facts."""
    from timm.utils import ModelEmaV3

    bf16 = fast_bf16() if bf16 is None else bf16
    dtype = torch.bfloat16 if bf16 else None
    steps_per_epoch = max(1, len(x) // BATCH)
    facts: dict = {}
    if epochs is None:  # a throwaway model times a few real steps and a TTA batch
        torch.manual_seed(seed)
        m = new_model(num_classes)
        opt = torch.optim.AdamW(m.parameters(), lr=3e-3, weight_decay=0.05)
        m.train()
        times = []
        for i in range(probe_steps + 1):
            idx = torch.randint(len(x), (min(BATCH, len(x)),))
            t = time.perf_counter()
            _step(m, opt, None, None, x[idx], y[idx], dtype)
            if i:  # the first step warms up
                times.append(time.perf_counter() - t)
        t = time.perf_counter()
        predict(m, x[: min(64, len(x))], dtype)
        per_image = (time.perf_counter() - t) / min(64, len(x))
        epoch_s = float(np.median(times)) * steps_per_epoch
        predict_s = per_image * n_predict * 1.1
        epochs = fit_epochs(budget_s, epoch_s, predict_s)
        facts.update(probe_epoch_s=round(epoch_s, 2), probe_predict_s=round(predict_s, 1))
    torch.manual_seed(seed)
    model = new_model(num_classes)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=3e-3, total_steps=epochs * steps_per_epoch, pct_start=0.15
    )
    # with timm's warm-up (decay grows with the step towards 0.99): without it a run of a few
    # hundred steps keeps a share of the random initial weights (0.99**168 = 18 % after 8
    # epochs of 680 pages; macro F1 0.27 against 0.87 for the raw weights on the sample data)
    ema = ModelEmaV3(model, decay=0.99, use_warmup=True)
    step = 0
    t0 = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x))
        for s in range(steps_per_epoch):
            idx = order[s * BATCH : (s + 1) * BATCH]
            _step(model, opt, sched, ema, x[idx], y[idx], dtype, step)
            step += 1
        log(f"epoch {epoch + 1}/{epochs} ({time.perf_counter() - t0:.0f} s)")
    train_s = time.perf_counter() - t0
    facts.update(epochs=epochs, bf16=bf16, train_s=round(train_s, 1),
                 train_images_per_s=round(epochs * steps_per_epoch * BATCH / train_s, 2))  # fmt: skip
    return ema.module, facts


def run_anchor(
    data: str | Path,
    budget_s: float,
    *,
    seed: int = 0,
    epochs: int | None = None,
    size: int = SIZE,
    keep_probs: bool = False,
) -> dict:
    """The anchor end to end on a dataset root in docsort's layout, scored on ``test_labels.csv``.

    ``size`` stays 224 in ``bench/quality.py``; the ablation grid and tests vary it.
    ``keep_probs`` adds ``_ids`` and ``_probs`` (the TTA probabilities) for paired comparisons.
    """
    from sklearn.metrics import accuracy_score, f1_score

    t_start = time.perf_counter()
    root = Path(data)
    train_csv = pd.read_csv(root / "train.csv", dtype={"ID": str})
    labels = root / "test_labels.csv"
    if not labels.is_file():
        return {
            "anchor_macro_f1": None,
            "skipped": f"{labels} not found: the anchor needs test labels",
        }
    test_csv = pd.read_csv(labels, dtype={"ID": str})
    k = int(max(train_csv["target"].max(), test_csv["target"].max())) + 1
    x = load_split(root, list(train_csv["ID"]), "train", size)
    xt = load_split(root, list(test_csv["ID"]), "test", size)
    y = torch.tensor(train_csv["target"].to_numpy(), dtype=torch.long)
    decode_s = time.perf_counter() - t_start
    left = budget_s - decode_s
    model, facts = train_anchor(x, y, k, budget_s=left, n_predict=len(xt), epochs=epochs, seed=seed)
    t = time.perf_counter()
    dtype = torch.bfloat16 if facts["bf16"] else None
    probs = predict(model, xt, dtype)
    single = predict(model, xt, dtype, views=1)
    predict_s = time.perf_counter() - t
    truth = test_csv["target"].to_numpy()

    def f1(p: np.ndarray) -> float:
        return float(
            f1_score(truth, p.argmax(1), average="macro", labels=range(k), zero_division=0)
        )

    return {
        "anchor_macro_f1": f1(probs),
        "anchor_accuracy": float(accuracy_score(truth, probs.argmax(1))),
        "anchor_single_macro_f1": f1(single),
        "anchor_epochs": facts["epochs"],
        "anchor_precision": "bf16" if facts["bf16"] else "fp32",
        "anchor_wall_s": round(time.perf_counter() - t_start, 1),
        "anchor_decode_s": round(decode_s, 1),
        "anchor_predict_s": round(predict_s, 1),
        "anchor_train_images_per_s": facts["train_images_per_s"],
        "anchor_budget_s": round(budget_s, 1),
        "anchor_images": {"train": len(x), "test": len(xt), "size": size},
        **({"_ids": list(test_csv["ID"]), "_probs": probs} if keep_probs else {}),
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", help="dataset root (train.csv, train/, test/, test_labels.csv)")
    ap.add_argument("--minutes", type=float, required=True, help="wall-clock budget")
    ap.add_argument(
        "--epochs", type=int, default=None, help="fixed epochs instead of fitting the budget"
    )
    ap.add_argument("--json", dest="json_out", default=None, help="write the results here")
    args = ap.parse_args(argv)
    result = run_anchor(args.data, args.minutes * 60, epochs=args.epochs)
    print(json.dumps(result, indent=2))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
