"""Torch datasets over the prepared image cache (training, validation, previews)."""

from __future__ import annotations

import numpy as np
from torch.utils.data import Dataset

from docsort.data.augment import to_tensor, worker_rng


class ImageArrayDataset(Dataset):
    """Rows ``rows`` of a cached uint8 image array, with targets.

    ``copies`` (N x C x S x S[x3], from ``prepare`` with Augraphy offline) are
    pre-degraded versions of every image: with probability ``copy_p`` a sample
    is drawn from one of its copies instead of the clean image.
    """

    def __init__(self, images: np.ndarray, rows: np.ndarray, targets: np.ndarray | None, transform=None,
                 copies: np.ndarray | None = None, copy_p: float = 0.0, seed: int = 0):  # fmt: skip
        self.images, self.rows, self.targets, self.transform = images, rows, targets, transform
        self.copies, self.copy_p, self.seed = (
            copies,
            float(copy_p) if copies is not None else 0.0,
            seed,
        )

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        row = self.rows[i]
        if self.copy_p > 0 and (rng := worker_rng(self, self.seed + 1)).random() < self.copy_p:
            img = np.asarray(self.copies[row, int(rng.integers(self.copies.shape[1]))])
        else:
            img = np.asarray(self.images[row])
        x = self.transform(img) if self.transform else to_tensor(img)
        return (x, int(self.targets[i])) if self.targets is not None else x
