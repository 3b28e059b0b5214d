"""``docsort augment-preview``: a grid of augmented training samples, to see what the model sees.

Rows are training images (one class each, as many classes as fit), the first
column is the clean image at the model's resolution, the others are random
draws of the training transform (Augraphy, dihedral view, Albumentations
preset). The source may be a dataset root (local or s3://) or a prepared
folder; a prepared folder with Augraphy offline copies shows draws from those
copies exactly as training makes them, a dataset root runs Augraphy online
with the same probability instead.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from docsort.core.errors import ConfigError, DocsortError, plot_label
from docsort.core.outputs import stage


def aug_groups() -> list[str]:
    """Names of the ``aug`` config group (``conf/aug/*.yaml``)."""
    return sorted(
        p.name[:-5]
        for p in resources.files("docsort.conf").joinpath("aug").iterdir()
        if p.name.endswith(".yaml")
    )


def aug_override(name: str) -> str:
    """``--aug NAME``: an aug group (doc_light, doc_strong, ...) or an Albumentations preset name."""
    from docsort.data.augment import PRESETS

    if name in aug_groups():
        return f"aug={name}"
    if name in PRESETS:
        return f"aug.preset={name}"
    raise ConfigError(
        f"--aug {name!r} is not valid; choose from: {', '.join(aug_groups() + [p for p in PRESETS if p not in aug_groups()])}"
    )


def _pick(targets: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` rows, one per class while classes last, in class order."""
    rng = np.random.default_rng(seed)
    classes = np.unique(targets)
    chosen = [
        int(rng.choice(np.flatnonzero(targets == k))) for k in classes[: min(n, len(classes))]
    ]
    rest = np.setdiff1d(np.arange(len(targets)), chosen)
    extra = (
        rng.choice(rest, size=min(n - len(chosen), len(rest)), replace=False)
        if n > len(chosen)
        else []
    )
    return np.asarray([*chosen, *extra], dtype=np.int64)


def _from_prepared(root: Path, cfg: DictConfig, n: int, seed: int):
    from docsort.data.prepared import Prepared

    prep = Prepared(root)
    for key in ("image_size", "channels", "resize"):
        cfg.data[key] = prep.info[key]
    idx = prep.index
    rows = _pick(idx["target"].to_numpy(), n, seed)
    images = prep.images("train")
    clean = [np.asarray(images[r]) for r in rows]
    copies = None
    a = cfg.aug.augraphy
    if a.mode == "offline" and "augraphy" in prep.info.get("cache", {}):
        all_copies = prep.images("augraphy")
        copies = [np.asarray(all_copies[r]) for r in rows]
    names = [prep.class_names[t] for t in idx["target"].to_numpy()[rows]]
    ids = idx["ID"].to_numpy()[rows].tolist()
    return clean, copies, names, ids


def _from_root(data: str, cfg: DictConfig, n: int, seed: int, cache: Path):
    from docsort.core import storage
    from docsort.data.contract import decode_image, fit_square, image_path, read_labelled, read_meta

    root = storage.localize(data, cache)
    meta = read_meta(root / "meta.csv")
    group = cfg.data.group_column
    train = read_labelled(root / "train.csv", meta, optional=(group,) if group else ())
    rows = _pick(np.asarray(train.targets), n, seed)
    size, ch = int(cfg.data.image_size), int(cfg.data.channels)
    clean, names, ids = [], [], []
    for r in rows:
        i = train.ids[r]
        img = decode_image(
            image_path(root / "train", i).read_bytes(),
            channels=ch,
            max_pixels=int(cfg.data.max_pixels),
            name=f"train/{i}",
            draft=size * 2,
        )
        clean.append(fit_square(img, size, cfg.data.resize))
        names.append(meta.class_names[train.targets[r]])
        ids.append(i)
    return clean, None, names, ids


def _to_uint8(x) -> np.ndarray:
    a = ((x.float().numpy() + 1.0) * 127.5).clip(0, 255).astype(np.uint8)
    return a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)


@stage("augment-preview", inputs=("data",), files=("out",))
def augment_preview(
    data: str | os.PathLike,
    out: str | os.PathLike,
    overrides: Sequence[str] = (),
    *,
    images: int = 6,
    draws: int = 5,
    seed: int = 0,
) -> Path:
    """Write a PNG grid: ``images`` rows x (clean + ``draws``) augmented samples."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from docsort.core.atomic import atomic_path
    from docsort.core.config import load_config
    from docsort.data.augment import TrainTransform
    from docsort.data.datasets import ImageArrayDataset

    if images < 1 or draws < 1:
        raise DocsortError("--images and --draws must be >= 1")
    cfg = load_config(overrides)
    out = Path(out)
    src = Path(data)
    if (src / "prepared.json").is_file():
        clean, copies, names, ids = _from_prepared(src, cfg, images, seed)
    else:
        clean, copies, names, ids = _from_root(
            str(data), cfg, images, seed, out.parent / ".docsort-download"
        )
    a = cfg.aug.augraphy
    if a.mode == "offline" and copies is None and float(a.probability) > 0:
        a.mode = "online"  # no copies to draw from: make them on the fly, with the same probability
    transform = TrainTransform(cfg.aug, int(cfg.data.image_size), seed)
    stack = np.stack(clean)
    copy_stack = np.stack(copies) if copies is not None else None
    ds = ImageArrayDataset(
        stack, np.arange(len(stack)), None, transform, copy_stack, float(a.probability), seed
    )

    rows, cols = len(clean), draws + 1
    cell = 1.9
    width = max(cols * cell, 7.2)  # room for the one-line title on narrow grids
    side = width / cols  # images are square: rows grow with the columns' width
    fig, axes = plt.subplots(rows, cols, figsize=(width, rows * (side + 0.3) + 0.5), squeeze=False)
    cmap = "gray" if stack.ndim == 3 else None
    for r in range(rows):
        panels = [clean[r]] + [_to_uint8(ds[r]) for _ in range(draws)]
        for c, img in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(
                img,
                cmap=cmap,
                vmin=0,
                vmax=255,
                interpolation="nearest" if img.shape[0] <= 96 else "antialiased",
            )
            ax.set_xticks([])
            ax.set_yticks([])
            for s in ax.spines.values():
                s.set_color("#2b6cb0" if c == 0 else "#bbbbbb")
                s.set_linewidth(2 if c == 0 else 0.6)
            if c == 0:
                ax.set_title(plot_label(names[r], 26), fontsize=8.5, loc="left", fontweight="bold")
            elif r == 0:
                ax.set_title(f"draw {c}", fontsize=8.5, color="#555555")
    offline = f"offline copies x{copies[0].shape[0]}" if copies is not None else a.mode
    title = (f"aug: preset={cfg.aug.preset}  dihedral={bool(cfg.aug.dihedral)}  augraphy={offline}"
             f"{f' p={float(a.probability):g}' if a.mode != 'off' else ''}  |  {cfg.data.image_size} px, "
             f"{'gray' if int(cfg.data.channels) == 1 else 'RGB'}  |  left: clean")  # fmt: skip
    fig.suptitle(title, fontsize=9.5, x=0.01, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / fig.get_figheight()))
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return out
