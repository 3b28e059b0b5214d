"""Stage ``train``: a timm model trained with Lightning on one fold, all folds, or all data.

Outputs per member folder: ``model.safetensors`` + ``model.yaml`` (best
epoch), ``checkpoints/last.ckpt`` + ``best.ckpt`` (resume), ``oof.csv`` (TTA
probabilities of the held-out fold), ``oof_views.npz`` (per-view OOF, for the TTA
ablation), ``metrics.json`` (with the history of every epoch, across resumes),
``history.csv``, the raw CSV logs under ``logs/`` and, unless disabled, a W&B
run (offline by default, under ``wandb/``). One ``name=value`` line per metric
and epoch goes to stdout, the format Katib's StdOut metrics collector parses.

A folder that already holds ``checkpoints/last.ckpt`` is resumed from it, so a
killed job (preemption, SIGKILL) started again with the same ``--out`` ends
with the same number of epochs. Only the same work is resumed: ``run.json``
records the run's identity (:mod:`docsort.core.identity`) and a re-run asking for
other work (another fold, learning rate, model, prepared data) is refused.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from timm.data import Mixup
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from docsort.core import console
from docsort.core.atomic import remove_stale_temps, temp_name, write_text_atomic
from docsort.core.config import COMPILE_BACKENDS, load_config, save_config
from docsort.core.device import (
    default_workers,
    lightning_precision,
    resolve_device,
    resolve_precision,
    set_threads,
)
from docsort.core.errors import ConfigError
from docsort.core.outputs import stage
from docsort.core.probs import write_probs
from docsort.core.stats import macro_f1
from docsort.data.augment import TrainTransform
from docsort.data.datasets import ImageArrayDataset
from docsort.data.prepared import Prepared
from docsort.models.factory import check_checkpoint, create_model, read_checkpoint, save_member
from docsort.models.tta import VIEWS, merge, tta_logits


def _mix(mixer: Mixup, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """timm's Mixup/CutMix (in place) with smoothed soft targets, for a batch of any size.

    timm pairs image i with image n-1-i (the loader has shuffled already) and
    refuses an odd batch; an odd batch's last image is left unmixed here, with
    its smoothed one-hot target.
    """
    from timm.data.mixup import mixup_target

    n = len(x) - len(x) % 2
    _, soft = mixer(x[:n], y[:n])  # a view: mixes x itself
    if n < len(x):
        rest = mixup_target(y[n:], mixer.num_classes, 1.0, mixer.label_smoothing)
        soft = torch.cat([soft, rest])
    return x, soft


def progressive_size(size: int, epoch: int, epochs: int, start: float, until: float) -> int:
    """The side of the training batches in ``epoch`` (0-based) under progressive resizing.

    Linear from ``start * size`` in the first epoch to ``size`` at ``until`` of the
    epochs, then full size; a multiple of 16 (strided backbones keep whole feature maps).
    ``start=1`` is off.
    """
    if start >= 1 or epochs <= 1:
        return size
    ramp = max(1.0, until * epochs - 1)
    frac = min(1.0, epoch / ramp)
    side = start * size + (size - start * size) * frac
    return int(min(size, max(16, round(side / 16) * 16)))


def lr_scheduler(
    opt: torch.optim.Optimizer, kind: str, total: int, warm: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-step LR schedule: one-cycle, cosine or constant, each with warm-up.

    ``cosine``/``constant``: a linear warm-up from lr/warm to lr over ``warm``
    steps (``LinearLR``), then ``CosineAnnealingLR`` down towards 0 at ``total``
    or the constant lr. ``onecycle`` follows ``OneCycleLR``'s shape (cosine from
    lr/25 up to lr over the warm-up, at least 5% of the steps, then cosine down
    to lr/25e4 at the last step) but as a ``LambdaLR``: ``OneCycleLR`` divides by
    zero for one or two steps and raises past its end. ``total`` is the number of
    optimizer steps the run takes; past it the cosine would rise again (onecycle
    holds its last value). All states are plain numbers, so checkpoints load
    with ``weights_only=True``.
    """
    from torch.optim.lr_scheduler import CosineAnnealingLR, LambdaLR, LinearLR, SequentialLR

    total, warm = max(1, int(total)), max(0, int(warm))
    if kind == "onecycle":
        up = min(max(warm, round(0.05 * total)), total - 1)

        def onecycle(step: int) -> float:
            step = min(max(step, 0), total - 1)
            if step < up:
                return 0.04 + 0.96 * (1 - math.cos(math.pi * step / up)) / 2
            p = (step - up) / max(1, total - 1 - up)
            return 4e-6 + (1 - 4e-6) * (1 + math.cos(math.pi * p)) / 2

        return LambdaLR(opt, onecycle)
    if kind == "cosine" and warm == 0:
        return CosineAnnealingLR(opt, T_max=total)
    # (step + 1) / warm for the first ``warm`` steps, then 1
    warmup = LinearLR(
        opt, start_factor=1 / max(warm, 1), end_factor=1.0, total_iters=max(warm - 1, 0)
    )
    if kind != "cosine" or warm >= total:
        return warmup
    cosine = CosineAnnealingLR(opt, T_max=total - warm)
    return SequentialLR(opt, [warmup, cosine], milestones=[warm])


class Classifier(L.LightningModule):
    """Cross-entropy classifier with the recipe's optimizer, schedule, mixing and EMA."""

    def __init__(
        self,
        cfg: DictConfig,
        num_classes: int,
        class_weights: torch.Tensor | None,
        steps_per_epoch: int,
    ):
        super().__init__()
        self.cfg, self.num_classes, self.steps_per_epoch = cfg, num_classes, steps_per_epoch
        t = cfg.train
        self.model = create_model(cfg, num_classes)
        if t.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.register_buffer(
            "class_weights", class_weights if class_weights is not None else torch.ones(num_classes)
        )
        self.mixup = None
        if float(t.mixup_alpha) > 0 or float(t.cutmix_alpha) > 0:
            # one draw per batch: mixup or cutmix (even odds when both are on), every batch mixed.
            # Unlike the hand-written version it replaced, timm mixes image i with image n-1-i
            # (not a random permutation: the loader shuffles) and cuts a box of exactly
            # sqrt(1 - lam) of each side; lam is corrected for the clipped box in both.
            self.mixup = Mixup(mixup_alpha=float(t.mixup_alpha), cutmix_alpha=float(t.cutmix_alpha), prob=1.0,
                               switch_prob=0.5, mode="batch", label_smoothing=float(t.label_smoothing),
                               num_classes=num_classes)  # fmt: skip
        self.ema = None
        if float(t.ema_decay) > 0:
            from timm.utils import ModelEmaV3

            # warm-up: the effective decay grows with the step, so short CPU runs average sensibly
            self.ema = ModelEmaV3(self.model, decay=float(t.ema_decay), use_warmup=True)
        backend = compile_backend(t.compile)
        if backend:
            # in place: parameter names (checkpoints, safetensors) stay those of the plain model
            self.model.compile(backend=backend)
        # (epochs, start, until) of progressive resizing, read once rather than on every step
        self._progressive = (
            (int(t.epochs), float(t.progressive_start), float(t.progressive_until))
            if float(t.progressive_start) < 1
            else None
        )
        self._val: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.history: list[dict] = []

    @property
    def eval_model(self) -> torch.nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        return (
            x.contiguous(memory_format=torch.channels_last) if self.cfg.train.channels_last else x
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self._layout(x))

    def training_step(self, batch, _):
        x, y = batch
        if self._progressive:
            side = progressive_size(x.shape[-1], self.current_epoch, *self._progressive)
            if side != x.shape[-1]:
                x = F.interpolate(x, size=(side, side), mode="bilinear", antialias=True)
        if self.mixup is not None:  # soft targets: the batch mean of -sum(w * soft * log p)
            x, soft = _mix(self.mixup, x, y)
            loss = F.cross_entropy(self(x).float(), soft, weight=self.class_weights)
        else:
            loss = F.cross_entropy(
                self(x).float(),
                y,
                weight=self.class_weights,
                label_smoothing=float(self.cfg.train.label_smoothing),
            )
        self.log(
            "train_loss", loss, on_step=False, on_epoch=True, batch_size=len(y), sync_dist=True
        )
        return loss

    def on_train_batch_end(self, *_):
        if self.ema is not None:
            self.ema.update(self.model, step=self.global_step)

    def validation_step(self, batch, _):
        x, y = batch
        logits = self.eval_model(self._layout(x)).float()
        self._val.append((logits.detach(), y.detach()))

    def on_validation_epoch_end(self):
        if not self._val:
            return
        logits = torch.cat([v[0] for v in self._val])
        y = torch.cat([v[1] for v in self._val])
        self._val.clear()
        if self.trainer.world_size > 1:  # every rank scores the whole validation set
            logits, y = self.all_gather(logits).flatten(0, 1), self.all_gather(y).flatten(0, 1)
        logits, y = logits.cpu(), y.cpu()
        loss = float(F.cross_entropy(logits, y))
        f1 = macro_f1(y.numpy(), logits.argmax(-1).numpy(), range(self.num_classes))
        self.log("val_macro_f1", f1, prog_bar=True)
        self.log("val_loss", loss)
        if self.trainer.sanity_checking:
            return
        epoch = self.current_epoch + 1
        lr = (
            self.trainer.optimizers[0].param_groups[0]["lr"]
            if self.trainer.optimizers
            else float("nan")
        )
        self.history = [h for h in self.history if h["epoch"] < epoch]
        self.history.append({"epoch": epoch, "val_macro_f1": f1, "val_loss": loss, "lr": float(lr)})
        if self.trainer.is_global_zero and console.metric_lines():
            # for Katib's collector (on a terminal the progress display shows the score).
            # One write, newline included: nothing can land inside a line.
            print(
                f"epoch={epoch}\nval_macro_f1={f1:.4f}\nval_loss={loss:.4f}\n", end="", flush=True
            )

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["docsort_history"] = [
            dict(h) for h in self.history
        ]  # plain floats: weights_only-safe

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.history = [dict(h) for h in checkpoint.get("docsort_history", [])]

    def configure_optimizers(self):
        t = self.cfg.train
        decay, no_decay = [], []
        for n, p in self.model.named_parameters():
            (no_decay if p.ndim <= 1 or n.endswith(".bias") else decay).append(p)
        groups = [
            {"params": decay, "weight_decay": float(t.weight_decay)},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        if t.optimizer == "sgd":
            opt = torch.optim.SGD(groups, lr=float(t.lr), momentum=float(t.momentum), nesterov=True)
        else:
            opt = torch.optim.AdamW(groups, lr=float(t.lr))
        total = max(1, int(t.epochs) * self.steps_per_epoch)
        warm = int(float(t.warmup_epochs) * self.steps_per_epoch)
        sched = lr_scheduler(opt, str(t.scheduler), total, warm)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def compile_backend(value: object) -> str | None:
    """``train.compile``: false/null (off), true (inductor) or a torch.compile backend name."""
    if value in (None, False, "false", "off", "none"):
        return None
    if value is True or value == "true":
        return "inductor"
    if str(value) not in COMPILE_BACKENDS:
        raise ConfigError(
            f"train.compile={value!r} is not valid; choose from: false, true, {', '.join(COMPILE_BACKENDS)}"
        )
    return str(value)


class _FitProgress(L.Callback):
    """One progress display for the whole fit (all epochs' batches), with the epoch and val F1.

    A bar on a terminal, a plain line every few seconds elsewhere (stderr: stdout
    is for Katib's metric lines).
    """

    def __init__(self, desc: str):
        self.desc, self.bar = desc, None

    def on_train_start(self, trainer, pm):
        if not trainer.is_global_zero:
            return
        per_epoch = int(trainer.num_training_batches)
        remaining = trainer.max_epochs - trainer.current_epoch
        self.bar = console.Progress(per_epoch * remaining, self.desc, "batch")

    def on_train_batch_end(self, trainer, pm, *_):
        if self.bar:
            self.bar.update(1, self._postfix(trainer, pm))

    def on_validation_end(self, trainer, pm):
        if self.bar and pm.history:
            self.bar.update(0, self._postfix(trainer, pm))

    @staticmethod
    def _postfix(trainer, pm) -> str:
        text = f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}"
        if pm.history:
            text += f", val F1 {pm.history[-1]['val_macro_f1']:.3f}"
        return text

    def on_train_end(self, *_):
        if self.bar:
            self.bar.close()
            self.bar = None


class _LastCheckpoint(L.Callback):
    """Write ``last.ckpt`` atomically at every epoch end, so a kill never leaves a torn file.

    Lightning's own ``save_last`` writes in place; a SIGKILL during that write
    would leave a checkpoint that cannot be resumed.
    """

    def __init__(self, path: Path):
        self.path = path

    def on_train_epoch_end(self, trainer, pm):
        remove_stale_temps(self.path)  # a killed run's torn checkpoint must not fill the disk
        self.path.with_suffix(".ckpt.tmp").unlink(missing_ok=True)  # the name older versions used
        tmp = temp_name(self.path)
        try:
            trainer.save_checkpoint(
                str(tmp), weights_only=False
            )  # full state; every rank calls, rank 0 writes
            if trainer.is_global_zero:
                os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)


def _class_weights(targets: np.ndarray, k: int) -> torch.Tensor:
    counts = np.bincount(targets, minlength=k).astype(np.float64)
    w = counts.sum() / (k * np.maximum(counts, 1))
    return torch.tensor(w / w.mean(), dtype=torch.float32)


def cluster_layout(env: Mapping[str, str] | None = None) -> tuple[int, int]:
    """``(num_nodes, devices per node)`` from torchrun's environment (PyTorchJob), else ``(1, 1)``.

    Under torchrun every process sees ``WORLD_SIZE`` and ``LOCAL_WORLD_SIZE``;
    a PyTorchJob without torchrun runs one process per pod (``WORLD_SIZE`` only).
    """
    env = os.environ if env is None else env
    world = int(env.get("WORLD_SIZE", 1) or 1)
    local = int(env.get("LOCAL_WORLD_SIZE", 1) or 1)
    if world <= 1:
        return 1, 1
    if world % local:
        raise ConfigError(f"WORLD_SIZE={world} is not a multiple of LOCAL_WORLD_SIZE={local}")
    return world // local, local


def wandb_mode(cfg: DictConfig, env: Mapping[str, str] | None = None) -> str:
    """``tracking.wandb`` resolved: ``auto`` is online with ``WANDB_API_KEY`` set, else offline.

    ``WANDB_MODE=offline`` (or ``disabled``) in the environment always wins,
    so tests and air-gapped jobs never reach the network.
    """
    env = os.environ if env is None else env
    mode = str(cfg.tracking.wandb)
    forced = env.get("WANDB_MODE", "").lower()
    if mode == "disabled" or forced == "disabled":
        return "disabled"
    if forced in ("offline", "dryrun"):
        return "offline"
    if mode == "auto":
        return "online" if env.get("WANDB_API_KEY") else "offline"
    if mode == "online" and not env.get("WANDB_API_KEY"):
        raise ConfigError(
            "tracking.wandb=online needs WANDB_API_KEY in the environment (or use tracking.wandb=offline)"
        )
    return mode


def wandb_group(cfg: DictConfig, out: Path) -> str:
    """The W&B group a member's run joins: ``tracking.group``, else ``$WANDB_RUN_GROUP``, else the
    training run's folder (a fold=all bundle for its folds), so one experiment's folds sit together."""
    given = cfg.tracking.get("group") or os.environ.get("WANDB_RUN_GROUP")
    if given:
        return str(given)
    return out.parent.name if out.name.startswith("fold") and out.name[4:].isdigit() else out.name


def _loggers(cfg: DictConfig, out: Path, name: str) -> list:
    """A CSV logger always (a new version per start: Lightning empties a reused one), W&B unless disabled."""
    from lightning.pytorch.loggers import CSVLogger

    runs = sorted(p.name for p in (out / "logs").glob("run*")) if (out / "logs").is_dir() else []
    loggers: list = [CSVLogger(str(out), name="logs", version=f"run{len(runs)}")]
    mode = wandb_mode(cfg)
    if mode != "disabled":
        from lightning.pytorch.loggers import WandbLogger

        if mode == "offline":
            os.environ["WANDB_MODE"] = "offline"
        # console="off": stdout stays exactly the metric lines Katib parses; silent: W&B's
        # banners and sync notes stay out of the terminal (docsort -v shows them)
        settings = {"console": "off", "silent": not console.verbose()}
        if mode == "offline":
            settings["x_disable_stats"] = True
        group = wandb_group(cfg, out)
        loggers.append(WandbLogger(project=str(cfg.tracking.project), group=group, job_type="train",
                                   name=os.environ.get("WANDB_NAME") or f"{group}/{name}",
                                   save_dir=str(out), offline=mode == "offline", log_model=False,
                                   settings=settings))  # fmt: skip
        # Lightning 2.x always passes anonymous=None, which wandb >= 0.22 warns about on the
        # terminal (lightning/pytorch/loggers/wandb.py, WandbLogger.__init__); it has no effect
        loggers[-1]._wandb_init.pop("anonymous", None)
    config = OmegaConf.to_container(cfg, resolve=True)
    for lg in loggers:
        lg.log_hyperparams(config)
    return loggers


def _trainer(
    cfg: DictConfig, device: torch.device, precision: str, out: Path, callbacks: list
) -> L.Trainer:
    t = cfg.train
    nodes, devices = cluster_layout()
    accelerator = "gpu" if device.type == "cuda" else device.type
    strategy = "ddp" if nodes * devices > 1 else "auto"
    return L.Trainer(
        max_epochs=int(t.epochs), accelerator=accelerator, devices=devices, num_nodes=nodes, strategy=strategy,
        precision=lightning_precision(precision), logger=_loggers(cfg, out, out.name), callbacks=callbacks,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, deterministic=False,
        gradient_clip_val=float(t.grad_clip) or None, gradient_clip_algorithm="norm",
        limit_train_batches=t.limit_batches, default_root_dir=str(out), check_val_every_n_epoch=1,
    )  # fmt: skip


class Run:
    """Everything one member's ``fit`` needs, built but not started (tests inspect or extend it)."""

    def __init__(self, prep: Prepared, cfg: DictConfig, fold: int | None, out: Path):
        out.mkdir(parents=True, exist_ok=True)
        L.seed_everything(int(cfg.seed) + (fold or 0), workers=True, verbose=False)
        self.prep, self.cfg, self.fold, self.out = prep, cfg, fold, out
        self.device = resolve_device(cfg.device)
        self.precision = resolve_precision(cfg.precision, self.device)
        set_threads(cfg.threads)
        index = prep.index
        self.images = prep.images("train")
        self.folds = index["fold"].to_numpy()
        self.targets = index["target"].to_numpy()
        is_val = self.folds == fold if fold is not None else np.zeros(len(index), bool)
        self.tr_rows, self.va_rows = np.flatnonzero(~is_val), np.flatnonzero(is_val)
        t = cfg.train
        workers = default_workers(self.device) if t.num_workers == "auto" else int(t.num_workers)
        a = cfg.aug.augraphy
        copies = (
            prep.images("augraphy") if a.mode == "offline" and float(a.probability) > 0 else None
        )
        transform = TrainTransform(cfg.aug, int(cfg.data.image_size), int(cfg.seed))
        ytr = self.targets[self.tr_rows]
        ds = ImageArrayDataset(
            self.images, self.tr_rows, ytr, transform, copies, float(a.probability), int(cfg.seed)
        )
        sampler = None
        if t.balance == "sampler":
            w = 1.0 / np.bincount(ytr, minlength=prep.num_classes)[ytr]
            sampler = WeightedRandomSampler(
                torch.tensor(w, dtype=torch.double), len(self.tr_rows), replacement=True
            )
        bs = min(int(t.batch_size), len(self.tr_rows))
        self.train_loader = DataLoader(ds, batch_size=bs, shuffle=sampler is None, sampler=sampler, num_workers=workers,
                                       drop_last=len(self.tr_rows) > bs, persistent_workers=workers > 0,
                                       pin_memory=self.device.type == "cuda")  # fmt: skip
        self.val_loader = None
        if len(self.va_rows):
            val_ds = ImageArrayDataset(self.images, self.va_rows, self.targets[self.va_rows])
            self.val_loader = DataLoader(val_ds, batch_size=max(bs, 64), num_workers=workers)
        cw = _class_weights(ytr, prep.num_classes) if t.balance == "loss" else None
        nodes, devices = cluster_layout()
        steps = math.ceil(len(self.train_loader) / (nodes * devices))
        steps = steps if t.limit_batches is None else min(steps, int(t.limit_batches))
        self.module = Classifier(cfg, prep.num_classes, cw, steps)

        from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

        ckpt_dir = out / "checkpoints"
        self.last = ckpt_dir / "last.ckpt"
        callbacks: list = [_FitProgress(member_label(fold))]
        self.best_cb = None
        if self.val_loader is not None:
            self.best_cb = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor="val_macro_f1", mode="max",
                                           save_last=False, enable_version_counter=False)  # fmt: skip
            callbacks.append(self.best_cb)
            if int(t.early_stop_patience) > 0:
                callbacks.append(
                    EarlyStopping(
                        monitor="val_macro_f1", mode="max", patience=int(t.early_stop_patience)
                    )
                )
        callbacks.append(_LastCheckpoint(self.last))
        if self.last.is_file():
            # an unsafe, torn or foreign checkpoint: one line, before Lightning says anything
            check_checkpoint(self.last, self.module)
        self.trainer = _trainer(cfg, self.device, self.precision, out, callbacks)

    def fit(self) -> None:
        """Train, resuming from ``last.ckpt`` when the folder has one (loaded with weights_only=True)."""
        resume = str(self.last) if self.last.is_file() else None
        if resume and self.trainer.is_global_zero:
            console.say(f"{member_label(self.fold)}: resuming from {resume}")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", ".*does not have many workers.*")
            warnings.filterwarnings("ignore", ".*The number of training batches.*")
            warnings.filterwarnings("ignore", ".*exists and is not empty.*")
            warnings.filterwarnings(
                "ignore", ".*module\\(s\\) in eval mode.*"
            )  # the EMA copy is eval-only
            self.trainer.fit(
                self.module, self.train_loader, self.val_loader, ckpt_path=resume, weights_only=True
            )


def member_label(fold: int | None) -> str:
    """How output names a member: ``fold 2`` or ``all data`` (fold=none)."""
    return "all data" if fold is None else f"fold {fold}"


def train_member(prep: Prepared, cfg: DictConfig, fold: int | None, out: Path) -> dict:
    """Train one member on ``fold``'s training rows (all rows when ``fold`` is None)."""
    import time

    from docsort.models.feature_probe import NAME as FEATURE_PROBE

    if cfg.model.name == FEATURE_PROBE:  # features once and a linear model: no epochs
        from docsort.train.feature_probe import fit_feature_probe

        return fit_feature_probe(prep, cfg, fold, out)
    t0 = time.monotonic()
    run = Run(prep, cfg, fold, out)
    if run.trainer.is_global_zero:
        of = f"/{int(prep.info['num_folds'])}" if fold is not None else ""
        console.header(
            f"{member_label(fold)}{of}: {cfg.model.name}, {int(cfg.data.image_size)} px, "
            f"{console.plural(int(cfg.train.epochs), 'epoch')}, {len(run.tr_rows)} train / "
            f"{len(run.va_rows)} val images"
        )
    run.fit()
    trainer, module = run.trainer, run.module
    if not trainer.is_global_zero:  # other DDP ranks only helped to train
        return {}
    if run.best_cb is not None and run.best_cb.best_model_path:
        # this folder's best.ckpt: a resumed checkpoint records the path of the folder it was
        # written in, which is another one when the run folder was moved or copied
        best = run.last.parent / Path(run.best_cb.best_model_path).name
        module.load_state_dict(read_checkpoint(best)["state_dict"])
    model = module.eval_model.eval()
    history = module.history
    _write_history(out / "history.csv", history)
    va_rows, targets = run.va_rows, run.targets
    result = {"fold": fold, "epochs": int(trainer.current_epoch), "precision": run.precision,
              "train_images": len(run.tr_rows), "val_images": len(va_rows), "history": history}  # fmt: skip
    if len(va_rows):
        ids, probs, oof_scores = write_oof(
            out, model, prep, cfg, run.images, va_rows, run.device, run.precision
        )
        best = max(history, key=lambda h: h["val_macro_f1"]) if history else {}
        result.update(
            val_macro_f1=float(best.get("val_macro_f1", float("nan"))),
            val_loss=float(best.get("val_loss", float("nan"))),
            best_epoch=int(best.get("epoch", 0)),
            **oof_scores,
        )
        _log_wandb_summary(
            trainer, prep.class_names, ids, targets[va_rows], probs, result, run.images, va_rows
        )
    save_member(out, model, cfg, prep.class_names, fold=fold, epochs=result["epochs"])
    save_config(cfg, out / "config.yaml")
    write_text_atomic(out / "metrics.json", json.dumps(result, indent=2))
    console.say(_member_result(fold, result, time.monotonic() - t0))
    for lg in trainer.loggers:
        if type(lg).__name__ == "WandbLogger":
            import wandb

            wandb.finish()
    return result


def write_oof(
    out: Path,
    model: torch.nn.Module,
    prep: Prepared,
    cfg: DictConfig,
    images: np.ndarray,
    va_rows: np.ndarray,
    device: torch.device,
    precision: str,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Every view's logits on the held-out rows (``oof_views.npz``), their TTA merge (``oof.csv``).

    Returns the IDs, the merged probabilities and the single-view and TTA macro F1.
    """
    index = prep.index
    targets, folds = index["target"].to_numpy(), index["fold"].to_numpy()
    per_view = predict_views(
        model,
        ImageArrayDataset(images, va_rows, None),
        list(VIEWS),
        device,
        precision,
        cfg.tta.batch_size,
    )
    ids = index["ID"].to_numpy()[va_rows]
    np.savez_compressed(
        out / "oof_views.npz", ids=np.asarray(ids, dtype=str), targets=targets[va_rows], **per_view
    )
    logits = torch.stack([torch.from_numpy(per_view[v]) for v in cfg.tta.views])
    probs = merge(logits, str(cfg.tta.merge)).numpy()
    write_probs(out / "oof.csv", ids, probs, {"target": targets[va_rows], "fold": folds[va_rows]})
    single = torch.from_numpy(per_view["identity"]).softmax(-1).numpy()
    labels = range(prep.num_classes)
    return (
        ids,
        probs,
        {
            "oof_macro_f1": macro_f1(targets[va_rows], single.argmax(1), labels),
            "oof_tta_macro_f1": macro_f1(targets[va_rows], probs.argmax(1), labels),
        },
    )


def _member_result(fold: int | None, result: dict, seconds: float) -> str:
    """The line that closes a member: its scores and time."""
    text = f"{member_label(fold)}: {console.plural(result['epochs'], 'epoch')} in {console.fmt_seconds(seconds)}"
    if "val_macro_f1" in result:
        text += (
            f"; val macro F1 {result['val_macro_f1']:.4f} (best epoch {result['best_epoch']}), "
            f"with 8-view TTA {result['oof_tta_macro_f1']:.4f}"
        )
    return text


def _write_history(path: Path, history: list[dict]) -> None:
    import pandas as pd

    write_text_atomic(
        path,
        pd.DataFrame(history, columns=["epoch", "val_macro_f1", "val_loss", "lr"]).to_csv(
            index=False
        ),
    )


def _log_wandb_summary(
    trainer, class_names, ids, targets, probs, result: dict, images=None, rows=None
) -> None:
    """Confusion matrix, a table of the worst OOF predictions (with the images) and the scores."""
    for lg in trainer.loggers:
        if type(lg).__name__ != "WandbLogger":
            continue
        import wandb

        pred = probs.argmax(1)
        run = lg.experiment
        run.log(
            {
                "confusion_matrix": wandb.plot.confusion_matrix(
                    y_true=[int(t) for t in targets],
                    preds=[int(p) for p in pred],
                    class_names=list(class_names),
                )
            }
        )
        order = np.argsort(probs[np.arange(len(targets)), targets])[:50]
        table = wandb.Table(columns=["ID", "image", "truth", "predicted", "p_truth", "p_pred"])
        for i in order:
            image = None
            if images is not None and rows is not None:
                image = wandb.Image(np.asarray(images[int(rows[i])]).squeeze())
            table.add_data(
                str(ids[i]),
                image,
                class_names[targets[i]],
                class_names[pred[i]],
                float(probs[i, targets[i]]),
                float(probs[i, pred[i]]),
            )
        run.log({"worst_predictions": table})
        for key in ("val_macro_f1", "oof_macro_f1", "oof_tta_macro_f1", "best_epoch"):
            if key in result:
                run.summary[key] = result[key]


@torch.inference_mode()
def predict_views(
    model: torch.nn.Module,
    ds: Dataset,
    views: Sequence[str],
    device: torch.device,
    precision: str,
    batch_size: int | str,
) -> dict[str, np.ndarray]:
    """Logits per view (each N x K), all views of a batch in one forward pass.

    ``batch_size`` may be ``auto`` (sized for the device and image size, as ``predict`` does).
    """
    from docsort.core.device import autocast
    from docsort.models.tta import auto_batch_size

    if len(ds) == 0:
        return {v: np.zeros((0, 0), np.float32) for v in views}
    first = ds[0]
    batch_size = auto_batch_size(batch_size, device, len(views), int(first.shape[-1]))

    model = model.to(device).eval().to(memory_format=torch.channels_last)
    out: list[torch.Tensor] = []
    for x in DataLoader(ds, batch_size=batch_size, num_workers=0):
        with autocast(device, precision):
            out.append(tta_logits(model, x.to(device), views).float().cpu())
    logits = torch.cat(out, dim=1)
    return {v: logits[k].numpy() for k, v in enumerate(views)}


@stage("train", inputs=("prepared",), folder="out")
def train(
    prepared: str | os.PathLike,
    out: str | os.PathLike,
    overrides: Sequence[str] = (),
    *,
    overwrite: bool = False,
) -> Path | str:
    """Train per ``fold`` (an index, ``all`` or ``none``) and write members under ``out``.

    ``prepared`` may be an ``s3://`` prefix (a Katib trial's input); it is mirrored beside ``out``.
    ``out`` records the run's identity (``run.json``): a re-run continues the same work,
    does nothing when it is complete, and is refused for other work unless ``overwrite``.
    """
    from docsort.core import identity, storage

    if storage.is_s3(out):
        raise ConfigError(
            "train writes a local folder; `docsort train --out s3://...` (a Katib trial) "
            "keeps the member on S3 through docsort.sweep.results.train_to_s3"
        )
    cfg = load_config(overrides)
    out = Path(out)
    local = (
        storage.localize(prepared, out.parent / ".docsort-download")
        if storage.is_s3(prepared)
        else prepared
    )
    prep = Prepared(Path(local))
    _check_prepared(prep, cfg)
    ident = run_identity(cfg, prep)
    record = identity.claim(
        out, "train", ident, verb="trained", outputs=TRAIN_OUTPUTS, overwrite=overwrite
    )
    if record["complete"] and _finished(out, str(cfg.fold) == "all"):
        console.say(
            f"train: {out} is already complete for this config and data; nothing to do "
            "(--overwrite starts again)"
        )
        return out
    fold = cfg.fold
    if str(fold) == "all":
        import pandas as pd

        from docsort.core.csv_tables import read_table

        results = []
        for k in range(int(prep.info["num_folds"])):
            sub = out / f"fold{k}"
            rec = identity.claim(
                sub, "train", {**ident, "fold": str(k)}, verb="trained", outputs=TRAIN_OUTPUTS
            )
            if rec["complete"] and _finished(sub):  # finished before the other folds stopped
                results.append(json.loads((sub / "metrics.json").read_text()))
                continue
            results.append(train_member(prep, cfg, k, sub))
            if results[-1]:
                identity.complete(sub)
        if not all(results):  # a DDP rank other than 0
            return out
        frames = [
            read_table(out / f"fold{k}" / "oof.csv", required=("target", "fold"))
            for k in range(len(results))
        ]
        oof = pd.concat(frames).set_index("ID").loc[prep.index["ID"]].reset_index()
        pcols = [c for c in oof.columns if c.startswith("p") and c[1:].isdigit()]
        write_probs(
            out / "oof.csv",
            oof["ID"],
            oof[pcols].to_numpy(),
            {"target": oof["target"], "fold": oof["fold"]},
        )
        labels = range(prep.num_classes)
        pooled = macro_f1(oof["target"], oof[pcols].to_numpy().argmax(1), labels)
        summary = {"folds": results, "val_macro_f1": float(np.mean([r["val_macro_f1"] for r in results])),
                   "oof_tta_macro_f1": pooled, "epochs": int(max(r["epochs"] for r in results))}  # fmt: skip
        write_text_atomic(out / "metrics.json", json.dumps(summary, indent=2))
        identity.complete(out)
        console.say(
            f"all {len(results)} folds: pooled OOF macro F1 {pooled:.4f} (TTA), "
            f"mean of the folds' best val {summary['val_macro_f1']:.4f}"
        )
        return out
    if train_member(prep, cfg, None if str(fold) == "none" else int(fold), out):
        identity.complete(out)
    return out


#: What ``train`` writes in its output folder (names or patterns): all that ``--overwrite`` removes.
TRAIN_OUTPUTS = ("model.safetensors", "model.yaml", "backbone.onnx", ".backbone", "config.yaml", "metrics.json", "history.csv",
                 "oof.csv", "oof_views.npz", "checkpoints", "logs", "wandb", "fold[0-9]*")  # fmt: skip


def _finished(out: Path, bundle: bool = False) -> bool:
    """The outputs of a complete run are all there (a user may have removed one: then redo it)."""
    member = ("metrics.json", "model.safetensors", "model.yaml")
    return all((out / n).is_file() for n in (("metrics.json", "oof.csv") if bundle else member))


def data_fingerprint(prep: Prepared) -> str:
    """What a member is trained on: the prepared images and the rows, targets and folds of index.csv."""
    import hashlib

    h = hashlib.sha256(str(prep.info.get("fingerprint", "")).encode())
    h.update((prep.root / "index.csv").read_bytes())
    return h.hexdigest()[:16]


def run_identity(cfg: DictConfig, prep: Prepared) -> dict[str, str]:
    """The identity of a ``train`` run: the config's identity keys and the prepared data."""
    from docsort.core.config import identity_of

    return {**identity_of(cfg), "prepared data": data_fingerprint(prep)}


def _check_prepared(prep: Prepared, cfg: DictConfig) -> None:
    """Fail before any work when the recipe and the prepared folder disagree."""
    for key in ("image_size", "channels", "resize"):
        have, want = prep.info[key], cfg.data[key]
        if str(have) != str(want):
            raise ConfigError(
                f"data.{key}={want} but {prep.root} was prepared with {have}; prepare again or set data.{key}={have}"
            )
    if str(cfg.fold) not in ("all", "none") and int(cfg.fold) >= int(prep.info["num_folds"]):
        raise ConfigError(
            f"fold={cfg.fold} but {prep.root} has {prep.info['num_folds']} folds (0..{int(prep.info['num_folds']) - 1})"
        )
    a = cfg.aug.augraphy
    if (
        a.mode == "offline"
        and float(a.probability) > 0
        and "augraphy" not in prep.info.get("cache", {})
    ):
        raise ConfigError(
            f"aug.augraphy.mode=offline but {prep.root} has no Augraphy copies; "
            "run `docsort prepare` with the same aug settings (aug.augraphy.copies > 0) or set aug.augraphy.mode=online"
        )
    compile_backend(cfg.train.compile)
