"""Stage ``train``: a timm model trained with Lightning on one fold, all folds, or all data.

Outputs per member folder: ``model.safetensors`` + ``model.yaml`` (best
epoch), ``checkpoints/last.ckpt`` + ``best.ckpt`` (resume), ``oof.csv`` (TTA
probabilities of the held-out fold), ``oof_views.npz`` (per-view OOF, for the TTA
ablation), ``metrics.json``, ``metrics.csv`` and, unless disabled, an offline
W&B run. One ``name=value`` line per metric and epoch goes to stdout, the
format Katib's StdOut metrics collector parses.
"""

from __future__ import annotations

import json
import math
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from sklearn.metrics import f1_score
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from docsort.atomic import write_text_atomic
from docsort.augment import TrainTransform, to_tensor
from docsort.config import load_config, save_config
from docsort.device import (
    default_workers,
    lightning_precision,
    resolve_device,
    resolve_precision,
    set_threads,
)
from docsort.models import create_model, save_member
from docsort.prepared import Prepared
from docsort.probs import write_probs
from docsort.tta import VIEWS, merge, tta_logits


class ImageArrayDataset(Dataset):
    """Rows ``rows`` of a cached uint8 image array, with targets."""

    def __init__(self, images: np.ndarray, rows: np.ndarray, targets: np.ndarray | None, transform=None):
        self.images, self.rows, self.targets, self.transform = images, rows, targets, transform

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        img = np.asarray(self.images[self.rows[i]])
        x = self.transform(img) if self.transform else to_tensor(img)
        return (x, int(self.targets[i])) if self.targets is not None else x


def _mix(x: torch.Tensor, y: torch.Tensor, num_classes: int, mixup: float, cutmix: float, smoothing: float):
    """Mixup or CutMix (chosen per batch) with smoothed soft targets."""
    soft = F.one_hot(y, num_classes).float() * (1 - smoothing) + smoothing / num_classes
    use_cutmix = cutmix > 0 and (mixup <= 0 or np.random.rand() < 0.5)
    alpha = cutmix if use_cutmix else mixup
    lam = float(np.random.beta(alpha, alpha))
    perm = torch.randperm(x.shape[0])
    if use_cutmix:
        h, w = x.shape[-2:]
        rh, rw = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
        cy, cx = np.random.randint(h), np.random.randint(w)
        y0, y1, x0, x1 = max(cy - rh // 2, 0), min(cy + rh // 2, h), max(cx - rw // 2, 0), min(cx + rw // 2, w)
        x = x.clone()
        x[..., y0:y1, x0:x1] = x[perm][..., y0:y1, x0:x1]
        lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)
    else:
        x = lam * x + (1 - lam) * x[perm]
    return x, lam * soft + (1 - lam) * soft[perm]


class Classifier(L.LightningModule):
    """Cross-entropy classifier with the recipe's optimizer, schedule, mixing and EMA."""

    def __init__(self, cfg: DictConfig, num_classes: int, class_weights: torch.Tensor | None, steps_per_epoch: int):
        super().__init__()
        self.cfg, self.num_classes, self.steps_per_epoch = cfg, num_classes, steps_per_epoch
        self.model = create_model(cfg, num_classes)
        if cfg.train.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.register_buffer("class_weights", class_weights if class_weights is not None else torch.ones(num_classes))
        self.ema = None
        if float(cfg.train.ema_decay) > 0:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(self.model, decay=float(cfg.train.ema_decay))
        self._val: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.history: list[dict] = []

    @property
    def eval_model(self) -> torch.nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.contiguous(memory_format=torch.channels_last))

    def training_step(self, batch, _):
        x, y = batch
        t = self.cfg.train
        if float(t.mixup_alpha) > 0 or float(t.cutmix_alpha) > 0:
            x, soft = _mix(x, y, self.num_classes, float(t.mixup_alpha), float(t.cutmix_alpha), float(t.label_smoothing))
            logp = self(x).float().log_softmax(-1)
            loss = -(soft * logp * self.class_weights).sum(-1).mean()
        else:
            loss = F.cross_entropy(self(x).float(), y, weight=self.class_weights, label_smoothing=float(t.label_smoothing))
        self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=len(y))
        return loss

    def on_train_batch_end(self, *_):
        if self.ema is not None:
            self.ema.update(self.model)

    def validation_step(self, batch, _):
        x, y = batch
        logits = self.eval_model(x.contiguous(memory_format=torch.channels_last)).float()
        self._val.append((logits.detach().cpu(), y.detach().cpu()))

    def on_validation_epoch_end(self):
        if not self._val:
            return
        logits = torch.cat([v[0] for v in self._val])
        y = torch.cat([v[1] for v in self._val])
        self._val.clear()
        loss = float(F.cross_entropy(logits, y))
        f1 = float(f1_score(y.numpy(), logits.argmax(-1).numpy(), average="macro", labels=range(self.num_classes), zero_division=0))
        self.log("val_macro_f1", f1, prog_bar=True)
        self.log("val_loss", loss)
        if self.trainer.sanity_checking:
            return
        epoch = self.current_epoch + 1
        self.history.append({"epoch": epoch, "val_macro_f1": f1, "val_loss": loss})
        print(f"epoch={epoch}\nval_macro_f1={f1:.4f}\nval_loss={loss:.4f}", flush=True)

    def configure_optimizers(self):
        t = self.cfg.train
        decay, no_decay = [], []
        for n, p in self.model.named_parameters():
            (no_decay if p.ndim <= 1 or n.endswith(".bias") else decay).append(p)
        groups = [{"params": decay, "weight_decay": float(t.weight_decay)}, {"params": no_decay, "weight_decay": 0.0}]
        if t.optimizer == "sgd":
            opt = torch.optim.SGD(groups, lr=float(t.lr), momentum=float(t.momentum), nesterov=True)
        else:
            opt = torch.optim.AdamW(groups, lr=float(t.lr))
        total = max(1, int(t.epochs) * self.steps_per_epoch)
        warm = min(total - 1, int(float(t.warmup_epochs) * self.steps_per_epoch))
        if t.scheduler == "onecycle":
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=float(t.lr), total_steps=total, pct_start=max(0.05, warm / total))
        elif t.scheduler == "cosine":
            def f(step: int) -> float:
                if step < warm:
                    return (step + 1) / max(1, warm)
                return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

            sched = torch.optim.lr_scheduler.LambdaLR(opt, f)
        else:
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, warm)))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class _StderrProgress(L.Callback):
    """One progress line per epoch on stderr (stdout stays clean for metric lines)."""

    def __init__(self, desc: str):
        self.desc, self.bar = desc, None

    def on_train_epoch_start(self, trainer, pm):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=trainer.num_training_batches, desc=f"{self.desc} epoch {trainer.current_epoch + 1}/{trainer.max_epochs}",
                        unit="batch", file=sys.stderr, leave=False, mininterval=2.0, disable=None)  # fmt: skip

    def on_train_batch_end(self, trainer, *_):
        if self.bar:
            self.bar.update(1)

    def on_train_epoch_end(self, *_):
        if self.bar:
            self.bar.close()


def _class_weights(targets: np.ndarray, k: int) -> torch.Tensor:
    counts = np.bincount(targets, minlength=k).astype(np.float64)
    w = counts.sum() / (k * np.maximum(counts, 1))
    return torch.tensor(w / w.mean(), dtype=torch.float32)


def _loggers(cfg: DictConfig, out: Path, name: str) -> list:
    from lightning.pytorch.loggers import CSVLogger

    loggers: list = [CSVLogger(str(out), name="logs", version="")]
    mode = cfg.tracking.wandb
    if mode != "disabled":
        from lightning.pytorch.loggers import WandbLogger

        online = mode == "online" and bool(os.environ.get("WANDB_API_KEY"))
        loggers.append(WandbLogger(project=str(cfg.tracking.project), name=name, save_dir=str(out),
                                   offline=not online, config=None, log_model=False))  # fmt: skip
    return loggers


def train_member(prep: Prepared, cfg: DictConfig, fold: int | None, out: Path) -> dict:
    """Train one member on ``fold``'s training rows (all rows when ``fold`` is None)."""
    out.mkdir(parents=True, exist_ok=True)
    L.seed_everything(int(cfg.seed) + (fold or 0), workers=True, verbose=False)
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    set_threads(cfg.threads)
    index = prep.index
    images = prep.images("train")
    folds = index["fold"].to_numpy()
    targets = index["target"].to_numpy()
    is_val = folds == fold if fold is not None else np.zeros(len(index), bool)
    tr_rows, va_rows = np.flatnonzero(~is_val), np.flatnonzero(is_val)
    t = cfg.train
    workers = default_workers(device) if t.num_workers == "auto" else int(t.num_workers)
    ds = ImageArrayDataset(images, tr_rows, targets[tr_rows], TrainTransform(cfg.aug, int(cfg.data.image_size), int(cfg.seed)))
    sampler = None
    if t.balance == "sampler":
        w = 1.0 / np.bincount(targets[tr_rows], minlength=prep.num_classes)[targets[tr_rows]]
        sampler = WeightedRandomSampler(torch.tensor(w, dtype=torch.double), len(tr_rows), replacement=True)
    bs = min(int(t.batch_size), len(tr_rows))
    dl = DataLoader(ds, batch_size=bs, shuffle=sampler is None, sampler=sampler, num_workers=workers,
                    drop_last=len(tr_rows) > bs, persistent_workers=workers > 0, pin_memory=device.type == "cuda")  # fmt: skip
    val_dl = None
    if len(va_rows):
        val_dl = DataLoader(ImageArrayDataset(images, va_rows, targets[va_rows]), batch_size=max(bs, 64), num_workers=workers)
    cw = _class_weights(targets[tr_rows], prep.num_classes) if t.balance == "loss" else None
    steps = len(dl) if t.limit_batches is None else min(len(dl), int(t.limit_batches))
    module = Classifier(cfg, prep.num_classes, cw, steps)
    if t.compile:
        module.model = torch.compile(module.model)

    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    ckpt_dir = out / "checkpoints"
    callbacks: list = [_StderrProgress(out.name)]
    best_cb = None
    if val_dl is not None:
        best_cb = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor="val_macro_f1", mode="max", save_last=False, enable_version_counter=False)
        callbacks.append(best_cb)
        if int(t.early_stop_patience) > 0:
            callbacks.append(EarlyStopping(monitor="val_macro_f1", mode="max", patience=int(t.early_stop_patience)))
    callbacks.append(_LastCheckpoint(ckpt_dir / "last.ckpt"))
    trainer = L.Trainer(
        max_epochs=int(t.epochs), accelerator=device.type if device.type != "cuda" else "gpu", devices=1,
        precision=lightning_precision(precision), logger=_loggers(cfg, out, out.name), callbacks=callbacks,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, deterministic=False,
        gradient_clip_val=float(t.grad_clip) or None, limit_train_batches=t.limit_batches, default_root_dir=str(out),
        check_val_every_n_epoch=1,
    )  # fmt: skip
    last = ckpt_dir / "last.ckpt"
    resume = str(last) if last.is_file() else None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*The number of training batches.*")
        trainer.fit(module, dl, val_dl, ckpt_path=resume)
    if best_cb is not None and best_cb.best_model_path:
        state = torch.load(best_cb.best_model_path, map_location="cpu", weights_only=True)["state_dict"]
        module.load_state_dict(state)
    model = module.eval_model.eval()
    history = _read_history(out, module.history)
    result = {"fold": fold, "epochs": int(trainer.current_epoch), "precision": precision,
              "train_images": len(tr_rows), "val_images": len(va_rows), "history": history}  # fmt: skip
    if len(va_rows):
        views = list(VIEWS)
        per_view = predict_views(model, ImageArrayDataset(images, va_rows, None), views, device, precision, int(cfg.tta.batch_size))
        ids = index["ID"].to_numpy()[va_rows]
        np.savez_compressed(out / "oof_views.npz", ids=ids, targets=targets[va_rows], **per_view)
        logits = torch.stack([torch.from_numpy(per_view[v]) for v in cfg.tta.views])
        probs = merge(logits, str(cfg.tta.merge)).numpy()
        write_probs(out / "oof.csv", ids, probs, {"target": targets[va_rows], "fold": folds[va_rows]})
        single = torch.from_numpy(per_view["identity"]).softmax(-1).numpy()
        labels = range(prep.num_classes)
        best = max(history, key=lambda h: h["val_macro_f1"]) if history else {}
        result.update(
            val_macro_f1=float(best.get("val_macro_f1", float("nan"))),
            val_loss=float(best.get("val_loss", float("nan"))),
            oof_macro_f1=float(f1_score(targets[va_rows], single.argmax(1), average="macro", labels=labels, zero_division=0)),
            oof_tta_macro_f1=float(f1_score(targets[va_rows], probs.argmax(1), average="macro", labels=labels, zero_division=0)),
        )
        _log_wandb_summary(trainer, prep.class_names, ids, targets[va_rows], probs)
    save_member(out, model, cfg, prep.class_names, fold=fold, epochs=result["epochs"])
    save_config(cfg, out / "config.yaml")
    write_text_atomic(out / "metrics.json", json.dumps(result, indent=2))
    for lg in trainer.loggers:
        if type(lg).__name__ == "WandbLogger":
            import wandb

            wandb.finish()
    return result


class _LastCheckpoint(L.Callback):
    """Write ``last.ckpt`` atomically at every epoch end, so a kill never leaves a torn file."""

    def __init__(self, path: Path):
        self.path = path

    def on_train_epoch_end(self, trainer, pm):
        tmp = self.path.with_suffix(".ckpt.tmp")
        trainer.save_checkpoint(str(tmp))
        os.replace(tmp, self.path)


def _read_history(out: Path, history: list[dict]) -> list[dict]:
    """Per-epoch metrics, including epochs run before a resume (from the CSV log)."""
    import pandas as pd

    csv = out / "logs" / "metrics.csv"
    if csv.is_file():
        df = pd.read_csv(csv)
        if {"val_macro_f1", "epoch"} <= set(df.columns):
            df = df.dropna(subset=["val_macro_f1"]).drop_duplicates("epoch", keep="last")
            return [{"epoch": int(r.epoch) + 1, "val_macro_f1": float(r.val_macro_f1), "val_loss": float(r.val_loss)} for r in df.itertuples()]
    return history


def _log_wandb_summary(trainer, class_names, ids, targets, probs) -> None:
    for lg in trainer.loggers:
        if type(lg).__name__ != "WandbLogger":
            continue
        import wandb

        pred = probs.argmax(1)
        lg.experiment.log({"confusion_matrix": wandb.plot.confusion_matrix(y_true=list(targets), preds=list(pred), class_names=class_names)})
        order = np.argsort(probs[np.arange(len(targets)), targets])[:50]
        table = wandb.Table(columns=["ID", "truth", "predicted", "p_truth", "p_pred"])
        for i in order:
            table.add_data(ids[i], class_names[targets[i]], class_names[pred[i]], float(probs[i, targets[i]]), float(probs[i, pred[i]]))
        lg.experiment.log({"worst_predictions": table})


@torch.inference_mode()
def predict_views(model: torch.nn.Module, ds: Dataset, views: Sequence[str], device: torch.device, precision: str, batch_size: int) -> dict[str, np.ndarray]:
    """Logits per view (each N x K), all views of a batch in one forward pass."""
    from docsort.device import autocast

    model = model.to(device).eval().to(memory_format=torch.channels_last)
    out: list[torch.Tensor] = []
    for x in DataLoader(ds, batch_size=batch_size, num_workers=0):
        with autocast(device, precision):
            out.append(tta_logits(model, x.to(device), views).float().cpu())
    logits = torch.cat(out, dim=1)
    return {v: logits[k].numpy() for k, v in enumerate(views)}


def train(prepared: str | os.PathLike, out: str | os.PathLike, overrides: Sequence[str] = ()) -> Path:
    """Train per ``fold`` (an index, ``all`` or ``none``) and write members under ``out``."""
    cfg = load_config(overrides)
    prep = Prepared(Path(prepared))
    _check_prepared(prep, cfg)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fold = cfg.fold
    if str(fold) == "all":
        import pandas as pd

        results = [train_member(prep, cfg, k, out / f"fold{k}") for k in range(int(prep.info["num_folds"]))]
        frames = [pd.read_csv(out / f"fold{k}" / "oof.csv", dtype={"ID": str}) for k in range(len(results))]
        oof = pd.concat(frames).set_index("ID").loc[prep.index["ID"]].reset_index()
        pcols = [c for c in oof.columns if c.startswith("p") and c[1:].isdigit()]
        write_probs(out / "oof.csv", oof["ID"], oof[pcols].to_numpy(), {"target": oof["target"], "fold": oof["fold"]})
        summary = {"folds": results, "val_macro_f1": float(np.mean([r["val_macro_f1"] for r in results]))}
        write_text_atomic(out / "metrics.json", json.dumps(summary, indent=2))
        return out
    train_member(prep, cfg, None if str(fold) == "none" else int(fold), out)
    return out


def _check_prepared(prep: Prepared, cfg: DictConfig) -> None:
    from docsort.errors import ConfigError

    for key in ("image_size", "channels", "resize"):
        have, want = prep.info[key], cfg.data[key]
        if str(have) != str(want):
            raise ConfigError(f"data.{key}={want} but {prep.root} was prepared with {have}; prepare again or set data.{key}={have}")
    if str(cfg.fold) not in ("all", "none") and int(cfg.fold) >= int(prep.info["num_folds"]):
        raise ConfigError(f"fold={cfg.fold} but {prep.root} has {prep.info['num_folds']} folds (0..{int(prep.info['num_folds']) - 1})")
