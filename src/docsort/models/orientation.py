"""Page orientation learned without labels: which of the 8 dihedral views a page was given.

Test pages of document competitions come rotated by multiples of 90 degrees and
flipped, training pages upright. Instead of teaching the classifier every view
(``aug.dihedral`` + 8-view TTA), a small model learns to name the view a page
was given, from training pages turned into all 8 views (labels for free: the
pages are upright). At prediction each page is turned upright first and the
classifier needs one view.

View ``v`` is ``models.tta.VIEWS[VIEW_NAMES[v]]`` applied to the upright page;
:data:`INVERSE` undoes it, so ``undo(VIEWS[v](x), v) == x`` for every view.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from docsort.core import console, identity, storage
from docsort.core.atomic import write_text_atomic
from docsort.core.choices import VIEW_NAMES
from docsort.core.config import load_config
from docsort.core.device import autocast, resolve_device, resolve_precision, set_threads
from docsort.core.errors import ConfigError, DocsortError
from docsort.core.outputs import stage
from docsort.models.factory import Member, load_member, save_member
from docsort.models.tta import VIEWS, fuse_batchnorm, normalize


def _compose_table() -> tuple[np.ndarray, np.ndarray]:
    """``COMPOSE[w, v]``: the view of ``VIEWS[w](VIEWS[v](x))``; ``INVERSE[v]``: the view undoing ``v``.

    Computed on an array whose 8 views all differ, so the tables follow the
    view functions themselves, whatever their definitions.
    """
    base = torch.arange(16).reshape(1, 1, 4, 4)
    views = [VIEWS[n](base) for n in VIEW_NAMES]
    compose = np.zeros((8, 8), dtype=np.int64)
    for w, vw in enumerate(VIEWS[n] for n in VIEW_NAMES):
        for v, xv in enumerate(views):
            y = vw(xv)
            compose[w, v] = next(i for i, z in enumerate(views) if torch.equal(y, z))
    inverse = np.array([int(np.flatnonzero(compose[:, v] == 0)[0]) for v in range(8)])
    return compose, inverse


COMPOSE, INVERSE = _compose_table()
#: What ``orientation`` writes in its output folder (what ``--overwrite`` removes).
OUTPUTS = ("model.safetensors", "model.yaml", "metrics.json")
KIND = "orientation"


# --- the labels ------------------------------------------------------------------------------


def orientation_labels(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Upright (B, C, H, W) pages -> their 8 views (8B, C, H, W), view-major, and labels 0..7."""
    views = torch.cat([VIEWS[n](x) for n in VIEW_NAMES], dim=0)
    labels = torch.arange(8).repeat_interleave(x.shape[0])
    return views, labels


def apply_views(x: torch.Tensor, views: np.ndarray | Sequence[int]) -> torch.Tensor:
    """Image ``i`` of a square (B, C, H, W) batch in view ``views[i]``."""
    views = np.asarray(views, dtype=np.int64)
    out = torch.empty_like(x)
    for v in np.unique(views):
        idx = torch.from_numpy(np.flatnonzero(views == v))
        out[idx] = VIEWS[VIEW_NAMES[int(v)]](x[idx])
    return out


def undo(x: torch.Tensor, views: np.ndarray | Sequence[int]) -> torch.Tensor:
    """Turn image ``i`` of ``x``, seen in view ``views[i]``, back upright."""
    return apply_views(x, INVERSE[np.asarray(views, dtype=np.int64)])


# --- images ----------------------------------------------------------------------------------


def to_model_input(x: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float (B, 1, size, size) in [-1, 1]: grayscale, antialiased resize."""
    x = x.float()
    if x.shape[1] != 1:
        x = x.mean(dim=1, keepdim=True)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(
            x, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
    return x.div_(127.5).sub_(1.0)


def _small_pages(images: np.ndarray, size: int, chunk: int = 512) -> torch.Tensor:
    """The prepared cache rows (N, S, S[, 3]) as uint8 (N, 1, size, size) grayscale."""
    parts = []
    for a in range(0, len(images), chunk):
        t = torch.from_numpy(np.array(images[a : a + chunk]))  # a copy: the cache is read-only
        t = t.unsqueeze(1) if t.ndim == 3 else t.permute(0, 3, 1, 2)
        small = to_model_input(t, size).add_(1.0).mul_(127.5)
        parts.append(small.round_().clamp_(0, 255).to(torch.uint8))
    return torch.cat(parts)


def _jitter(x: torch.Tensor, gen: torch.Generator, shift: int) -> torch.Tensor:
    """Random shifts (white fill) and contrast/brightness per page.

    The shifts hide where the prepared cache's padding sits (it is centred
    before the page is turned, off by a pixel when the margin is odd), so the
    model must read the page, not its border.
    """
    b, _, h, w = x.shape
    pad = F.pad(x.float(), (shift, shift, shift, shift), value=255.0)
    dx = torch.randint(0, 2 * shift + 1, (b,), generator=gen)
    dy = torch.randint(0, 2 * shift + 1, (b,), generator=gen)
    out = torch.stack([pad[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(b)])
    gain = torch.empty(b, 1, 1, 1).uniform_(0.7, 1.3, generator=gen)
    bias = torch.empty(b, 1, 1, 1).uniform_(-25.0, 25.0, generator=gen)
    return ((out - 128.0) * gain + 128.0 + bias).clamp_(0, 255)


# --- training --------------------------------------------------------------------------------


def _member_cfg(cfg: DictConfig) -> DictConfig:
    """What ``load_member`` needs to rebuild the model, plus the orientation settings used."""
    o = cfg.orientation
    return OmegaConf.create({
        "model": {"name": str(o.model), "pretrained": None, "drop_rate": 0.0, "drop_path_rate": 0.0},
        "data": {"image_size": int(o.image_size), "channels": 1, "resize": "stretch"},
        "orientation": OmegaConf.to_container(o, resolve=True),
        "seed": int(cfg.seed),
    })  # fmt: skip


def _new_model(cfg: DictConfig) -> torch.nn.Module:
    import timm

    return timm.create_model(
        str(cfg.orientation.model), pretrained=False, num_classes=8, in_chans=1
    )


@torch.inference_mode()
def view_log_probs(
    model: torch.nn.Module,
    x: torch.Tensor,
    *,
    size: int,
    device: torch.device,
    precision: str = "fp32",
    tta: bool = False,
) -> torch.Tensor:
    """Log-probabilities (B, 8) of the view each uint8 (B, C, H, W) page was given.

    With ``tta`` the page is also seen in its 8 views: if the page is in view
    ``v``, its view ``w`` is in ``COMPOSE[w, v]``, so each of the 8 answers
    votes for ``v`` (summed log-probabilities).
    """
    inp = to_model_input(x, size).to(device)
    if not tta:
        with autocast(device, precision):
            out = model(inp.contiguous(memory_format=torch.channels_last))
        return out.float().log_softmax(-1).cpu()
    batch, _ = orientation_labels(inp)
    with autocast(device, precision):
        out = model(batch.contiguous(memory_format=torch.channels_last))
    lp = out.float().log_softmax(-1).cpu().reshape(8, x.shape[0], 8)  # (w, B, label)
    idx = torch.from_numpy(COMPOSE)  # (w, v) -> label
    return torch.stack([lp[w][:, idx[w]] for w in range(8)]).sum(0).log_softmax(-1)


def _score(model, pages, *, size, device, precision, tta, batch=256) -> dict:
    """View accuracy on ``pages`` (upright, uint8 N x 1 x S x S) shown in all 8 views."""
    model.eval()
    right = np.zeros(8)
    for a in range(0, len(pages), batch):
        views, labels = orientation_labels(pages[a : a + batch])
        pred = view_log_probs(
            model, views, size=size, device=device, precision=precision, tta=tta
        ).argmax(-1)
        ok = (pred == labels).numpy()
        right += np.bincount(labels.numpy()[ok], minlength=8)
    per_view = right / max(1, len(pages))
    return {
        "view_accuracy": round(float(per_view.mean()), 4),
        "per_view_accuracy": {
            n: round(float(a), 4) for n, a in zip(VIEW_NAMES, per_view, strict=True)
        },
    }


def run_identity(cfg: DictConfig, prep) -> dict[str, str]:
    """What decides an orientation model: its settings, the seed and the prepared pages."""
    o = OmegaConf.to_container(cfg.orientation, resolve=True)
    return {
        **{f"orientation.{k}": str(v) for k, v in o.items() if k != "tta"},
        "seed": str(cfg.seed),
        "data": str(prep.info.get("fingerprint", "")),
        "data.image_size": str(prep.info.get("image_size")),
    }


@stage(KIND, inputs=("prepared",), folder="out")
def train_orientation(
    prepared: str | os.PathLike,
    out: str | os.PathLike,
    overrides: Sequence[str] = (),
    *,
    overwrite: bool = False,
) -> Path:
    """Train the orientation model on the prepared training pages; write it to ``out``.

    Writes ``model.safetensors`` + ``model.yaml`` (a model folder whose classes
    are the 8 view names) and ``metrics.json`` (view accuracy on the pages of
    fold ``orientation.holdout_fold``, which are then not trained on).
    """
    from docsort.data.prepared import Prepared

    cfg = load_config(overrides)
    o = cfg.orientation
    prep = Prepared(storage.localize(prepared, Path(out).parent / ".docsort-download"))
    folds = int(prep.info.get("num_folds", cfg.data.num_folds))
    hold = o.holdout_fold
    if hold is not None and int(hold) >= folds:
        raise ConfigError(
            f"orientation.holdout_fold={hold} is not valid; the prepared data has folds "
            f"0..{folds - 1} (or null: train on all pages)"
        )
    out = Path(out)
    record = identity.claim(out, KIND, run_identity(cfg, prep), verb="trained", outputs=OUTPUTS,
                            overwrite=overwrite)  # fmt: skip
    if record["complete"] and all((out / f).is_file() for f in OUTPUTS):
        console.say(f"orientation: {out} is already complete for these pages and settings")
        return out

    device = resolve_device(str(cfg.device))
    precision = resolve_precision(str(cfg.precision), device)
    threads = set_threads(cfg.threads)
    torch.manual_seed(int(cfg.seed))
    gen = torch.Generator().manual_seed(int(cfg.seed))
    size = int(o.image_size)
    pages = _small_pages(prep.images("train"), size)
    fold = prep.index["fold"].to_numpy()
    held = fold == int(hold) if hold is not None else np.zeros(len(pages), dtype=bool)
    train_pages, test_pages = pages[torch.from_numpy(~held)], pages[torch.from_numpy(held)]
    if len(train_pages) == 0:
        raise DocsortError("no training pages left after holding out a fold", file=str(prepared))

    model = _new_model(cfg).to(device).to(memory_format=torch.channels_last)
    n_pairs = len(train_pages) * 8
    bs = int(o.batch_size)
    steps_per_epoch = math.ceil(n_pairs / bs)
    total = steps_per_epoch * int(o.epochs)
    opt = torch.optim.AdamW(model.parameters(), lr=float(o.lr), weight_decay=float(o.weight_decay))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=float(o.lr), total_steps=total,
                                                pct_start=min(0.3, 1.0 / int(o.epochs)))  # fmt: skip
    console.header(
        f"orientation: {o.model}, {size} px, {o.epochs} epochs, {len(train_pages)} pages x 8 views"
        + (f", fold {hold} held out ({len(test_pages)} pages)" if hold is not None else "")
    )
    shift = max(1, size // 24)
    t0 = time.perf_counter()
    loss_avg = None
    with console.Progress(total, "orientation", unit="batches") as bar:
        for epoch in range(int(o.epochs)):
            model.train()
            order = torch.randperm(n_pairs, generator=gen)
            for a in range(0, n_pairs, bs):
                pick = order[a : a + bs]
                page, view = pick // 8, (pick % 8).numpy()
                x = apply_views(train_pages[page], view)
                x = normalize(_jitter(x, gen, shift)).to(device)
                y = torch.from_numpy(view).to(device)
                with autocast(device, precision):
                    logits = model(x.contiguous(memory_format=torch.channels_last))
                loss = F.cross_entropy(logits.float(), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                value = float(loss.detach())
                loss_avg = value if loss_avg is None else 0.9 * loss_avg + 0.1 * value
                bar.update(1, postfix=f"epoch {epoch + 1}/{o.epochs} loss {loss_avg:.3f}")
    seconds = time.perf_counter() - t0

    metrics: dict = {
        "model": str(o.model), "image_size": size, "epochs": int(o.epochs), "precision": precision,
        "threads": threads, "device": str(device), "train_pages": len(train_pages),
        "held_out_fold": hold, "held_out_pages": len(test_pages), "train_seconds": round(seconds, 2),
        "train_views_per_s": round(n_pairs * int(o.epochs) / seconds, 1) if seconds else None,
    }  # fmt: skip
    if len(test_pages):
        for tta in (False, True):
            s = _score(model, test_pages, size=size, device=device, precision=precision, tta=tta)
            metrics["held_out_tta" if tta else "held_out"] = s
    member_cfg = _member_cfg(cfg)
    save_member(out, model, member_cfg, list(VIEW_NAMES), kind=KIND)
    write_text_atomic(out / "metrics.json", json.dumps(metrics, indent=2))
    identity.complete(out)
    rows: list[tuple[str, object]] = [("orientation model", out)]
    if len(test_pages):
        rows += [
            ("held-out view accuracy", f"{metrics['held_out']['view_accuracy']:.4f}"),
            ("with 8-view voting", f"{metrics['held_out_tta']['view_accuracy']:.4f}"),
        ]
    rows.append(("training", console.fmt_seconds(seconds)))
    console.summary("orientation: done", rows)
    return out


# --- inference -------------------------------------------------------------------------------


class Orienter:
    """A trained orientation model ready to turn uint8 (B, C, H, W) pages upright."""

    def __init__(
        self,
        member: Member,
        device: torch.device,
        precision: str = "fp32",
        *,
        tta: bool = False,
        digest: str = "",
    ):
        self.model = fuse_batchnorm(member.model.eval()).to(device)
        self.model = self.model.to(memory_format=torch.channels_last)
        self.member, self.device, self.precision, self.tta = member, device, precision, tta
        self.size = int(member.cfg.data.image_size)
        self.digest = digest

    def views(self, x: torch.Tensor) -> np.ndarray:
        """The predicted view (index into ``VIEW_NAMES``) of each page."""
        lp = view_log_probs(self.model, x, size=self.size, device=self.device,
                            precision=self.precision, tta=self.tta)  # fmt: skip
        return lp.argmax(-1).numpy()

    def describe(self) -> dict:
        return {
            "model": str(self.member.path),
            "weights": self.digest[:16],
            "arch": str(self.member.cfg.model.name),
            "image_size": self.size,
            "tta": self.tta,
            "precision": self.precision,
        }


def upright(orienter: Orienter, images: torch.Tensor) -> tuple[np.ndarray, torch.Tensor]:
    """The predicted view of each uint8 (B, C, H, W) page and the pages turned upright."""
    views = orienter.views(images)
    return views, undo(images, views)


def load_orientation(
    folder: str | os.PathLike,
    device: torch.device | None = None,
    precision: str = "fp32",
    *,
    tta: bool = False,
) -> Orienter:
    """The orientation model of a folder written by ``docsort orientation`` (refused in one line otherwise)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DocsortError("orientation model folder not found", file=str(folder))
    member = load_member(folder)
    if member.class_names != list(VIEW_NAMES):
        raise DocsortError(
            "not an orientation model (its classes are not the 8 view names); "
            "write one with `docsort orientation`",
            file=str(folder),
        )
    from docsort.models.onnx_export import weights_digest

    return Orienter(member, device or torch.device("cpu"), precision, tta=tta,
                    digest=weights_digest(folder))  # fmt: skip


class UprightRunner:
    """A TTA runner that first turns each page upright; it keeps the views it found per shard."""

    def __init__(self, runner, orienter: Orienter):
        self.runner, self.orienter = runner, orienter
        self._pending: list[np.ndarray] = []

    def __call__(self, x: torch.Tensor, views: Sequence[str]) -> np.ndarray:
        found, x = upright(self.orienter, x)
        self._pending.append(found)
        return self.runner(x, views)

    def commit(self, path: Path) -> None:
        """Save the views found since the last commit (one shard's) to ``path``."""
        found = np.concatenate(self._pending) if self._pending else np.zeros(0, dtype=np.int64)
        from docsort.core.atomic import atomic_path

        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.save(f, found.astype(np.int8))
        self._pending = []

    def describe(self) -> dict:
        return {**self.runner.describe(), "orientation": self.orienter.describe()}
