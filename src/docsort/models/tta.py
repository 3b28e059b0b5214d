"""The 8 dihedral views of a square image and batched test-time augmentation.

A view maps an NCHW batch to its rotated/flipped copy. All requested views are
stacked into one batch so the model runs once per batch, not once per view:
one large matmul-friendly batch beats V small ones (and beats the
view-at-a-time loops of naive code and of ``ttach``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from docsort.core.choices import VIEW_NAMES
from docsort.core.errors import ConfigError

View = Callable[[torch.Tensor], torch.Tensor]


def _rot(k: int) -> View:
    return lambda x: torch.rot90(x, k, dims=(-2, -1))


def _flip_rot(k: int) -> View:
    return lambda x: torch.rot90(torch.flip(x, dims=(-1,)), k, dims=(-2, -1))


#: View name -> the function making it; the names and their order are core.choices.VIEW_NAMES.
VIEWS: dict[str, View] = dict(
    zip(
        VIEW_NAMES,
        (
            lambda x: x,
            _rot(1),
            _rot(2),
            _rot(3),
            lambda x: torch.flip(x, dims=(-1,)),
            _flip_rot(1),
            _flip_rot(2),
            _flip_rot(3),
        ),
        strict=True,
    )
)

# Forward-pass batch (views x images) that keeps a CPU's cores busy without spilling
# activations out of cache, in "images of 160 px" (scaled by image area); GPUs want more.
CPU_FORWARD_PX = 64 * 160 * 160
GPU_FORWARD_PX = 512 * 224 * 224


def check_views(views: Sequence[str]) -> list[str]:
    """Validate view names, keeping their order."""
    bad = [v for v in views if v not in VIEWS]
    if bad or not views:
        raise ConfigError(
            f"unknown TTA view {bad[0] if bad else '(none)'}; choose from: {', '.join(VIEWS)}"
        )
    return list(views)


def stack_views(x: torch.Tensor, views: Sequence[str]) -> torch.Tensor:
    """(B, C, H, W) -> (V*B, C, H, W), view-major."""
    return torch.cat([VIEWS[v](x) for v in views], dim=0)


def merge(logits: torch.Tensor, how: str = "mean") -> torch.Tensor:
    """Merge (V, B, K) logits into (B, K) probabilities.

    ``mean`` averages probabilities (soft voting over views), ``geomean`` takes
    the normalised geometric mean, ``logits`` averages logits before softmax.
    """
    logits = logits.float()
    if how == "mean":
        return logits.softmax(-1).mean(0)
    if how == "geomean":
        return logits.log_softmax(-1).mean(0).softmax(-1)
    if how == "logits":
        return logits.mean(0).softmax(-1)
    raise ConfigError(f"unknown TTA merge {how!r}; choose from: mean, geomean, logits")


def normalize(x: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float in [-1, 1], exactly as ``augment.to_tensor`` does per image."""
    return x.float().div_(127.5).sub_(1.0)


def tta_logits(model: torch.nn.Module, x: torch.Tensor, views: Sequence[str]) -> torch.Tensor:
    """Logits of every view in one forward pass: (V, B, K)."""
    out = model(stack_views(x, views).contiguous(memory_format=torch.channels_last))
    return out.reshape(len(views), x.shape[0], -1)


def auto_batch_size(
    value: int | str | None, device: torch.device, n_views: int, image_size: int
) -> int:
    """Images per batch: ``value`` if given, else sized so ``n_views x images`` fits the device.

    On CPU about 64 views of 160 px per forward pass (8 images x 8 views); on a
    GPU about 512 views of 224 px, both scaled by image area.
    """
    if value not in (None, "auto"):
        n = int(value)
        if n < 1:
            raise ConfigError(f"tta.batch_size={value} must be >= 1 or auto")
        return n
    budget = GPU_FORWARD_PX if device.type == "cuda" else CPU_FORWARD_PX
    return int(np.clip(round(budget / (image_size * image_size) / max(1, n_views)), 1, 1024))


def auto_workers(value: int | str | None, device: torch.device, *, decode: bool) -> int:
    """DataLoader workers: ``value`` if given, else by what the loader does and the host's cores.

    Reading rows of the prepared cache costs microseconds, so on a CPU host no
    worker is worth a core taken from the model; decoding JPEGs costs
    milliseconds, so at least one worker decodes while the model runs.
    """
    if value not in (None, "auto"):
        n = int(value)
        if n < 0:
            raise ConfigError(f"tta.workers={value} must be >= 0 or auto")
        return n
    from docsort.core.device import usable_cores

    cores = usable_cores()
    if device.type == "cuda":
        return min(8, max(2, cores - 1)) if decode else 2
    if not decode:
        return 0
    return 1 if cores <= 4 else min(4, cores // 4)


def fuse_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """An inference copy with each BatchNorm folded into the conv before it (one memory pass less per layer).

    Models that torch.fx cannot trace are returned unchanged.
    """
    try:
        from torch.fx.experimental.optimization import fuse

        return fuse(model.eval())
    except Exception:  # noqa: BLE001 (tracing is best effort; the unfused model is correct too)
        return model


class TorchTTA:
    """A member ready for batched TTA: eval, BatchNorm folded, inference mode, channels_last, autocast at ``precision``.

    Called with a uint8 (B, C, H, W) batch, returns float32 logits (V, B, K);
    normalisation happens on the device, so only uint8 crosses the bus.
    """

    runtime = "torch"

    def __init__(
        self,
        model: torch.nn.Module,
        device: torch.device,
        precision: str = "fp32",
        *,
        fuse: bool = True,
    ):
        model = fuse_batchnorm(model.eval()) if fuse else model.eval()
        self.model = model.to(device).to(memory_format=torch.channels_last)
        self.device, self.precision, self.fused = device, precision, fuse

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor, views: Sequence[str]) -> np.ndarray:
        from docsort.core.device import autocast

        x = x.to(self.device, non_blocking=True)
        # views are cut from the uint8 batch (4x less memory traffic than float), then normalised once
        batch = normalize(stack_views(x, views)).contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.precision):
            out = self.model(batch)
        return out.float().reshape(len(views), x.shape[0], -1).cpu().numpy()

    def describe(self) -> dict:
        return {
            "runtime": self.runtime,
            "device": str(self.device),
            "precision": self.precision,
            "fused_batchnorm": self.fused,
        }
