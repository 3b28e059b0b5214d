"""The budget planner: how to spend a wall-clock budget, from measured throughput and data size.

From scratch on a small host, the measurements in ``bench/results/`` say that
epochs of one member move macro F1 more than members do (one 15-epoch member
beat three 8-epoch members; a plain loop on all pages for 24 epochs beat three
fold members of 16 epochs on 80 % of them). So the rule, in order:

1. **Image size**: the largest of ``sizes`` at which one member on *all* pages
   gets at least ``min_epochs`` (cost scales with pixels: images/s measured at
   the probe's size times ``(probe_size / size) ** 2``).
2. **Members**: one member on all pages (``fold=none``) until it would get
   more than ``enough_epochs`` (past which more epochs stop paying); beyond
   that the budget buys members of ``enough_epochs`` each: K fold members (an
   ensemble whose OOF comes from the folds) when all K fit, else as many
   all-pages members as fit, each with its own seed.
3. **OOF for the review workflow**: from the folds when they were planned;
   else from a cheap proxy (``proxy_folds`` folds at ``proxy_size`` for
   ``proxy_epochs``) when it costs at most ``oof_share`` of the budget, taken
   from the main members' time; else none, and the plan says so.

A pure function of its inputs: ``bench/quality.py`` feeds it the probe.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Throughput:
    """What the probe measured at ``image_size`` (images per second, forward+backward for train)."""

    train_images_per_s: float
    tta_images_per_s: float
    image_size: int

    def at(self, size: int) -> Throughput:
        """The same machine at another image size (cost proportional to pixels)."""
        scale = (self.image_size / size) ** 2
        return Throughput(self.train_images_per_s * scale, self.tta_images_per_s * scale, size)


@dataclass(frozen=True)
class Rules:
    """The planner's constants, and where each comes from.

    ``min_epochs``: on RVL pages one 15-epoch member beat three 8-epoch ones
    (``bench/results/quality_rvlcdip_1member.json``); in the grid
    (``bench/results/ablation_*_grid.json``) doubling 8 to 16 epochs paid at
    every size on both datasets (+0.02 to +0.11 macro F1). ``enough_epochs``:
    the grid's last doubling, 16 to 32, still paid at 224 px on the sample
    (+0.042, p = 0.04) but no longer separated from noise at 96 or 160 px
    (+0.012, +0.018), so past 32 epochs the budget buys members. One member
    beat members at equal compute (sample: 1 x 32 epochs 0.947, 2 x 16 0.935,
    4 x 8 0.911; RVL: 1 x 16 0.542, 2 x 8 0.494), and all pages beat fold 0 in
    every grid cell.
    """

    sizes: tuple[int, ...] = (224, 192, 160, 128, 96)
    min_epochs: int = 16
    enough_epochs: int = 32
    max_epochs: int = 60
    folds: int = 5
    oof_share: float = 0.2
    proxy_size: int = 96
    proxy_epochs: int = 6
    proxy_folds: int = 2
    overhead_s: float = 10.0  # per member: start-up, checkpoint, safetensors
    # real epochs (Lightning loop, logging, progress) run at this share of the probe's bare-step
    # images/s: 33.5 against 36.1 img/s (0.93) for cpu_fast at 96 px on the sample data, 2-core
    # EPYC; 0.9 keeps a margin
    fit_efficiency: float = 0.9


@dataclass(frozen=True)
class Plan:
    image_size: int
    epochs: int
    fold: str  # "none" (members on all pages, one seed each) | "all" (one member per fold)
    members: int
    oof: str  # "folds" | "proxy" | "none"
    proxy: dict | None = None  # {"image_size", "epochs", "folds"} when oof == "proxy"
    estimated_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        if self.fold == "all":
            who = f"{self.members} fold members"
        else:
            who = "1 member" if self.members == 1 else f"{self.members} members (one seed each)"
            who += " on all pages"
        oof = {
            "folds": "OOF from the folds",
            "proxy": f"OOF from a proxy ({self.proxy['folds']} folds x {self.proxy['epochs']} epochs at {self.proxy['image_size']} px)"
            if self.proxy
            else "",
            "none": "no OOF (the budget leaves no room for a proxy)",
        }[self.oof]
        return f"{who} x {self.epochs} epochs at {self.image_size} px; {oof}; ~{self.estimated_s / 60:.1f} min"


def member_seconds(
    n_fit: int, n_predict: int, epochs: int, speed: Throughput, overhead_s: float
) -> float:
    """One member: ``epochs`` over ``n_fit`` pages, then TTA over ``n_predict`` pages."""
    return (
        epochs * n_fit / speed.train_images_per_s + n_predict / speed.tta_images_per_s + overhead_s
    )


def _epochs(
    budget_s: float, n_fit: int, n_predict: int, speed: Throughput, overhead_s: float
) -> int:
    fixed = n_predict / speed.tta_images_per_s + overhead_s
    return math.floor((budget_s - fixed) / (n_fit / speed.train_images_per_s))


def plan(
    budget_s: float,
    n_train: int,
    n_test: int,
    speed: Throughput,
    rules: Rules = Rules(),
    *,
    cost_factor: float = 1.0,
) -> Plan:
    """The plan for ``budget_s`` seconds of training and prediction (see the module docstring).

    ``cost_factor``: the recipe's mean epoch cost relative to a full-size epoch
    (progressive resizing makes it < 1).
    """
    if budget_s <= 0 or n_train <= 0:
        raise ValueError("the budget and the number of training pages must be positive")
    k = rules.folds
    n_val = math.ceil(n_train / k)
    enough = min(rules.enough_epochs, rules.max_epochs)
    notes: list[str] = []

    def at(size: int) -> Throughput:
        s = speed.at(size)
        return Throughput(
            s.train_images_per_s * rules.fit_efficiency / cost_factor, s.tta_images_per_s, size
        )

    # the proxy for OOF (its cost does not depend on the main members' size) is reserved first
    q = rules.proxy_folds
    n_q = math.ceil(n_train / q)
    proxy_s = q * member_seconds(
        n_train - n_q, n_q, rules.proxy_epochs, at(rules.proxy_size), rules.overhead_s
    )
    proxy = None
    if proxy_s <= rules.oof_share * budget_s:
        proxy = {"image_size": rules.proxy_size, "epochs": rules.proxy_epochs, "folds": q}
    left = budget_s - (proxy_s if proxy else 0.0)
    # 1. the largest size where one all-pages member reaches min_epochs
    sizes = sorted(rules.sizes, reverse=True)
    size = next(
        (
            s
            for s in sizes
            if _epochs(left, n_train, n_test, at(s), rules.overhead_s) >= rules.min_epochs
        ),
        sizes[-1],
    )
    if _epochs(left, n_train, n_test, at(size), rules.overhead_s) < rules.min_epochs:
        notes.append(f"even at {size} px one member gets fewer than {rules.min_epochs} epochs")
    s = at(size)
    # 2. K fold members when each gets enough epochs: an ensemble with OOF from the folds
    fold_epochs = _epochs(budget_s / k, n_train - n_val, n_test + n_val, s, rules.overhead_s)
    if fold_epochs >= enough:
        epochs = enough
        est = k * member_seconds(n_train - n_val, n_test + n_val, epochs, s, rules.overhead_s)
        return Plan(size, epochs, "all", k, "folds", None, round(est, 1), notes)
    # 3. members on all pages, OOF from the proxy when it fitted
    if proxy is None:
        notes.append(
            f"a proxy for OOF would take {proxy_s / 60:.1f} min, over {rules.oof_share:.0%} of the budget"
        )
    oof = "proxy" if proxy else "none"
    epochs = max(1, _epochs(left, n_train, n_test, s, rules.overhead_s))
    members = 1
    if epochs > enough:  # one member is saturated: the rest buys seeds
        one = member_seconds(n_train, n_test, enough, s, rules.overhead_s)
        members = max(1, min(k, math.floor(left / one)))
        epochs = enough if members > 1 else min(epochs, rules.max_epochs)
    est = members * member_seconds(n_train, n_test, epochs, s, rules.overhead_s) + (
        proxy_s if proxy else 0.0
    )
    return Plan(size, epochs, "none", members, oof, proxy, round(est, 1), notes)


def progressive_cost(start: float, until: float) -> float:
    """Mean epoch cost (relative to full size) of progressive resizing from ``start`` to 1 over ``until``."""
    if start >= 1:
        return 1.0
    # the side grows linearly over the ramp: mean of side^2 over it, then full size
    ramp = (start**2 + start + 1) / 3
    return until * ramp + (1 - until)


def probe(prepared: Path, overrides: list[str], work: Path, seconds: float = 15.0) -> dict:
    """Measured training images/s (the recipe's loader, augmentation, model, precision) and TTA images/s.

    A few real optimizer steps on fold 0 of ``prepared`` (the first warms up and
    is not counted), then the TTA forward pass over some validation pages.
    """
    import torch

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
    warm = ImageArrayDataset(run.images, rows[:8], None)
    predict_views(model, warm, views, device, precision, cfg.tta.batch_size)
    t = time.perf_counter()
    predict_views(model, ds, views, device, precision, cfg.tta.batch_size)
    tta_ips = len(rows) / (time.perf_counter() - t)
    return {
        "train_images_per_s": train_ips,
        "tta_images_per_s": tta_ips,
        "image_size": int(cfg.data.image_size),
        "precision": precision,
        "device": str(device),
    }
