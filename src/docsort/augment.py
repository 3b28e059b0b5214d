"""Training-time augmentation: dihedral views, Albumentations presets, Augraphy degradations.

Images arrive as uint8 arrays from the prepared cache and leave as normalised
float tensors (C, H, W). The test sets of document competitions are rotated by
multiples of 90 degrees and flipped, so the dihedral switch matters most.
"""

from __future__ import annotations

import albumentations as A
import numpy as np
import torch
from omegaconf import DictConfig


def dihedral(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One of the 8 rotations/flips of a square image, uniformly."""
    k = int(rng.integers(8))
    if k >= 4:
        img = img[:, ::-1]
    return np.rot90(img, k % 4)


def albumentations_preset(name: str, size: int) -> A.Compose | None:
    """Named photometric/geometric presets; ``None`` for ``none``."""
    if name == "none":
        return None
    fill = 255
    light = [
        A.Affine(scale=(0.9, 1.1), translate_percent=(-0.05, 0.05), rotate=(-4, 4), fill=fill, p=0.7),
        A.RandomBrightnessContrast(0.2, 0.2, p=0.5),
        A.GaussNoise(std_range=(0.01, 0.05), p=0.3),
        A.GaussianBlur(blur_limit=(3, 5), p=0.15),
    ]
    if name == "light":
        return A.Compose(light)
    strong = light + [
        A.Perspective(scale=(0.02, 0.06), fill=fill, p=0.3),
        A.ImageCompression(quality_range=(40, 90), p=0.3),
        A.CoarseDropout(num_holes_range=(1, 6), hole_height_range=(0.03, 0.1), hole_width_range=(0.03, 0.1), fill=fill, p=0.3),
        A.Downscale(scale_range=(0.5, 0.9), p=0.2),
    ]
    return A.Compose(strong)


def augraphy_pipeline(seed: int | None = None):
    """A document-degradation pipeline: ink bleed, dirty drum, low ink, shadows, folds, scan noise."""
    import augraphy as ag

    ink = [
        ag.InkBleed(p=0.4),
        ag.LowInkRandomLines(p=0.3),
        ag.LowInkPeriodicLines(p=0.2),
    ]
    paper = [ag.NoiseTexturize(p=0.3), ag.ColorPaper(p=0.2)]
    post = [
        ag.DirtyDrum(p=0.3),
        ag.ShadowCast(p=0.2),
        ag.Folding(p=0.2),
        ag.BadPhotoCopy(p=0.2),
        ag.Jpeg(p=0.4),
    ]
    return ag.AugraphyPipeline(ink_phase=ink, paper_phase=paper, post_phase=post, random_seed=seed)


def degrade(img: np.ndarray, pipeline) -> np.ndarray:
    """Run an Augraphy pipeline on a grayscale or RGB uint8 image, keeping shape and channels."""
    import cv2

    gray = img.ndim == 2
    src = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR) if gray else img
    out = pipeline(src)
    if out.ndim == 3 and gray:
        out = cv2.cvtColor(out, cv2.COLOR_BGR2GRAY)
    elif out.ndim == 2 and not gray:
        out = cv2.cvtColor(out, cv2.COLOR_GRAY2BGR)
    if out.shape[:2] != img.shape[:2]:
        out = cv2.resize(out, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(out.astype(np.uint8))


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """uint8 HxW or HxWxC -> float (C, H, W) normalised to [-1, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(img))
    t = t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1)
    return t.float().div_(127.5).sub_(1.0)


class TrainTransform:
    """Callable applied per training sample (picklable for DataLoader workers)."""

    def __init__(self, aug: DictConfig, size: int, seed: int):
        self.dihedral = bool(aug.dihedral)
        self.preset_name = str(aug.preset)
        self.size = size
        self.online_p = float(aug.augraphy.probability) if aug.augraphy.mode == "online" else 0.0
        self.seed = seed
        self._preset = None
        self._augraphy = None
        self.rng = np.random.default_rng(seed)

    def __call__(self, img: np.ndarray) -> torch.Tensor:
        if self._preset is None:
            self._preset = albumentations_preset(self.preset_name, self.size) or False
        if self.online_p and self.rng.random() < self.online_p:
            if self._augraphy is None:
                self._augraphy = augraphy_pipeline()
            img = degrade(np.asarray(img), self._augraphy)
        if self.dihedral:
            img = dihedral(np.asarray(img), self.rng)
        if self._preset:
            img = self._preset(image=np.ascontiguousarray(img))["image"]
        return to_tensor(img)
