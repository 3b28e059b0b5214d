"""Training-time augmentation: dihedral views, Albumentations presets, Augraphy degradations.

Images arrive as uint8 arrays from the prepared cache and leave as normalised
float tensors (C, H, W). The test sets of document competitions are rotated by
multiples of 90 degrees and flipped, so the dihedral switch matters most.

Augraphy (ink bleed, dirty drum, low-ink lines, lighting shadows, folds,
photocopy noise, JPEG) is slow, so it runs either online on a fraction of the
samples or offline: ``prepare`` stores N degraded copies per training image
(:mod:`docsort.data.augraphy_copies`) and training draws from them.
"""

from __future__ import annotations

import os

import albumentations as A
import numpy as np
import torch
from omegaconf import DictConfig

from docsort.core.errors import ConfigError
from docsort.data.augraphy_copies import (
    AUGRAPHY_PIPELINES,
    augraphy_pipeline,
    degrade,
    seed_augraphy,
)

__all__ = [
    "AUGRAPHY_PIPELINES",
    "TrainTransform",
    "augraphy_pipeline",
    "degrade",
    "dihedral",
    "to_tensor",
    "worker_rng",
]

PRESETS = ("none", "light", "strong")


def worker_rng(owner: object, seed: int) -> np.random.Generator:
    """A generator kept on ``owner`` per process.

    DataLoader workers get copies of the dataset and transform; seeding from
    ``torch.initial_seed()`` (distinct per worker, set by ``seed_everything`` in
    the main process) gives each worker its own reproducible stream instead of
    the same stream N times.
    """
    pid = os.getpid()
    state = owner.__dict__
    if state.get("_rng_pid") != pid:
        state["_rng"] = np.random.default_rng([int(seed), torch.initial_seed() % 2**32])
        state["_rng_pid"] = pid
    return state["_rng"]


def dihedral(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One of the 8 rotations/flips of a square image, uniformly."""
    k = int(rng.integers(8))
    if k >= 4:
        img = img[:, ::-1]
    return np.rot90(img, k % 4)


def albumentations_preset(name: str, size: int) -> A.Compose | None:
    """Named photometric/geometric presets; ``None`` for ``none``."""
    if name not in PRESETS:
        raise ConfigError(f"aug.preset={name!r} is not valid; choose from: {', '.join(PRESETS)}")
    if name == "none":
        return None
    fill = 255
    light = [
        A.Affine(
            scale=(0.9, 1.1), translate_percent=(-0.05, 0.05), rotate=(-4, 4), fill=fill, p=0.7
        ),
        A.RandomBrightnessContrast(0.2, 0.2, p=0.5),
        A.GaussNoise(std_range=(0.01, 0.05), p=0.3),
        A.GaussianBlur(blur_limit=(3, 5), p=0.15),
    ]
    if name == "light":
        return A.Compose(light)
    strong = light + [
        A.Perspective(scale=(0.02, 0.06), fill=fill, p=0.3),
        A.ImageCompression(quality_range=(40, 90), p=0.3),
        A.CoarseDropout(
            num_holes_range=(1, 6),
            hole_height_range=(0.03, 0.1),
            hole_width_range=(0.03, 0.1),
            fill=fill,
            p=0.3,
        ),
        A.Downscale(scale_range=(0.5, 0.9), p=0.2),
    ]
    return A.Compose(strong)


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """uint8 HxW or HxWxC -> float (C, H, W) normalised to [-1, 1]."""
    a = np.ascontiguousarray(img)
    t = torch.from_numpy(a if a.flags.writeable else a.copy())  # rows of a read-only memory map
    t = t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1)
    return t.float().div_(127.5).sub_(1.0)


class TrainTransform:
    """Callable applied per training sample (picklable for DataLoader workers).

    Order: Augraphy (online mode, with ``aug.augraphy.probability``), then a
    dihedral view, then the Albumentations preset.
    """

    def __init__(self, aug: DictConfig, size: int, seed: int):
        self.dihedral = bool(aug.dihedral)
        self.preset_name = str(aug.preset)
        self.size = size
        a = aug.augraphy
        self.online_p = float(a.probability) if a.mode == "online" else 0.0
        self.pipeline_name = str(a.get("pipeline", "doc"))
        self.seed = seed
        self._preset = None
        self._augraphy = None

    def __call__(self, img: np.ndarray) -> torch.Tensor:
        rng = worker_rng(self, self.seed)
        if self._preset is None:
            self._preset = albumentations_preset(self.preset_name, self.size) or False
        if self.online_p and rng.random() < self.online_p:
            if self._augraphy is None:
                self._augraphy = augraphy_pipeline(self.pipeline_name)
            seed_augraphy(int(rng.integers(1, 2**31 - 1)))
            img = degrade(np.asarray(img), self._augraphy)
        if self.dihedral:
            img = dihedral(np.asarray(img), rng)
        if self._preset:
            img = self._preset(image=np.ascontiguousarray(img))["image"]
        return to_tensor(img)
