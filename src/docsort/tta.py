"""The 8 dihedral views of a square image and batched test-time augmentation.

A view maps an NCHW batch to its rotated/flipped copy. All requested views are
stacked into one batch so the model runs once per batch, not once per view.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from docsort.config import VIEW_NAMES
from docsort.errors import ConfigError

View = Callable[[torch.Tensor], torch.Tensor]


def _rot(k: int) -> View:
    return lambda x: torch.rot90(x, k, dims=(-2, -1))


def _flip_rot(k: int) -> View:
    return lambda x: torch.rot90(torch.flip(x, dims=(-1,)), k, dims=(-2, -1))


VIEWS: dict[str, View] = {
    "identity": lambda x: x,
    "rot90": _rot(1),
    "rot180": _rot(2),
    "rot270": _rot(3),
    "flip": lambda x: torch.flip(x, dims=(-1,)),
    "flip_rot90": _flip_rot(1),
    "flip_rot180": _flip_rot(2),
    "flip_rot270": _flip_rot(3),
}
assert tuple(VIEWS) == VIEW_NAMES


def check_views(views: Sequence[str]) -> list[str]:
    """Validate view names, keeping their order."""
    bad = [v for v in views if v not in VIEWS]
    if bad or not views:
        raise ConfigError(f"unknown TTA view {bad[0] if bad else '(none)'}; choose from: {', '.join(VIEWS)}")
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


def tta_logits(model: torch.nn.Module, x: torch.Tensor, views: Sequence[str]) -> torch.Tensor:
    """Logits of every view in one forward pass: (V, B, K)."""
    out = model(stack_views(x, views).contiguous(memory_format=torch.channels_last))
    return out.reshape(len(views), x.shape[0], -1)
