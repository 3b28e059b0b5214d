"""Stage ``prepare``: validate a dataset root, make folds, cache resized images, write stats.

The prepared folder is what every later stage reads::

    prepared.json          classes, image spec, fingerprint, counts
    index.csv              ID, target, fold (training images)
    test.csv               ID (sample_submission order)
    meta.csv, sample_submission.csv, hardcases.csv?, test_labels.csv?
    cache/<key>-train.npy  uint8 N x S x S (x 3) memory map, keyed by content hash + resize spec
    cache/<key>-test.npy
    stats.json, eda.png    class counts, image sizes

Decoding JPEGs once here, not every epoch, is what keeps training fed.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from docsort.core import console, storage
from docsort.core.atomic import atomic_path
from docsort.core.config import load_config, save_config
from docsort.core.csv_tables import read_csv
from docsort.core.errors import DocsortError, plot_label
from docsort.core.outputs import stage
from docsort.data import augraphy_copies as augcopies
from docsort.data.contract import (
    IMAGE_SUFFIXES,
    ImageError,
    Labelled,
    Meta,
    decode_image,
    fit_square,
    image_path,
    parse_ids,
    read_hardcases,
    read_labelled,
    read_meta,
)

# 2: images are decoded upright (EXIF orientation applied), so caches of version 1 differ.
CACHE_VERSION = 2


def make_folds(
    targets: Sequence[int],
    num_folds: int,
    seed: int,
    groups: Sequence[str] | None = None,
    *,
    file: str = "train.csv",
    class_names: Sequence[str] | None = None,
) -> np.ndarray:
    """Seeded stratified fold index per row (grouped rows stay together)."""
    y = np.asarray(targets)
    counts = np.bincount(y)
    small = [(k, int(c)) for k, c in enumerate(counts) if 0 < c < num_folds]
    if small:
        k, c = small[0]
        name = f" ({class_names[k]})" if class_names is not None and k < len(class_names) else ""
        raise DocsortError(
            f"class {k}{name} has {c} images, fewer than data.num_folds={num_folds} "
            f"({len(small)} such classes); lower data.num_folds or add images",
            file=file,
        )
    folds = np.full(len(y), -1, dtype=np.int64)
    x = np.zeros(len(y))
    if groups is not None:
        splitter = StratifiedGroupKFold(n_splits=num_folds, shuffle=True, random_state=seed)
        splits = splitter.split(x, y, groups=np.asarray(groups))
    else:
        splits = StratifiedKFold(n_splits=num_folds, shuffle=True, random_state=seed).split(x, y)
    for k, (_, val) in enumerate(splits):
        folds[val] = k
    return folds


def _file_digest(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def fingerprint(folder: Path, ids: Sequence[str], *, desc: str) -> str:
    """Content hash of the images ``ids`` in ``folder`` (missing files fail here, by row)."""
    h = hashlib.sha256()
    paths = []
    for row, i in enumerate(ids, start=1):
        p = image_path(folder, i, file=desc, row=row)
        if not p.is_file():
            raise DocsortError(f"image {i!r} not found in {folder.name}/", file=desc, row=row)
        paths.append(p)
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 2) * 2)) as pool:
        digests = list(pool.map(_file_digest, paths, chunksize=64))
    for i, d in zip(ids, digests, strict=True):
        h.update(f"{i}\0{d}\n".encode())
    return h.hexdigest()


def cache_key(fp: str, cfg: DictConfig) -> str:
    """Key of an image cache: what the images are and how they were resized."""
    spec = f"v{CACHE_VERSION}|{fp}|{cfg.data.image_size}|{cfg.data.resize}|{cfg.data.channels}"
    return hashlib.sha256(spec.encode()).hexdigest()[:16]


def build_cache(folder: Path, ids: Sequence[str], out: Path, cfg: DictConfig, *, desc: str) -> Path:
    """Decode and resize every image into one uint8 memory map, written atomically."""
    size, ch = int(cfg.data.image_size), int(cfg.data.channels)
    shape = (len(ids), size, size) + ((3,) if ch == 3 else ())
    max_pixels = int(cfg.data.max_pixels)

    def load(item: tuple[int, str]) -> tuple[int, np.ndarray]:
        row, i = item
        p = image_path(folder, i, file=desc, row=row)
        try:
            img = decode_image(
                p.read_bytes(),
                channels=ch,
                max_pixels=max_pixels,
                name=f"{folder.name}/{i}",
                draft=size * 2,
            )
        except ImageError as err:
            raise DocsortError(
                f"image {folder.name}/{i}: {err.problem}", file=desc, row=row
            ) from None
        return row - 1, fit_square(img, size, cfg.data.resize)

    with atomic_path(out) as tmp:
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        _reserve(tmp)
        pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 2)
        try:
            items = list(enumerate(ids, start=1))
            for n, img in console.track(
                pool.map(load, items, chunksize=16), f"cache {desc}", len(items), "img"
            ):
                arr[n] = img
        finally:
            pool.shutdown(wait=True, cancel_futures=True)  # a bad image stops the rest at once
        arr.flush()
        del arr
    return out


def cache_is_complete(path: Path, n: int, cfg: DictConfig) -> bool:
    """True if ``path`` holds exactly the N x S x S (x 3) uint8 array a cache must: a torn or
    truncated copy from an earlier run is rebuilt, never reused as if complete."""
    size, ch = int(cfg.data.image_size), int(cfg.data.channels)
    shape = (n, size, size) + ((3,) if ch == 3 else ())
    try:
        arr = np.load(path, mmap_mode="r")
    except (OSError, ValueError, EOFError):
        return False
    return (
        arr.shape == shape
        and arr.dtype == np.uint8
        and path.stat().st_size == arr.offset + arr.nbytes
    )


def _reserve(path: Path) -> None:
    """Allocate the whole memory-mapped file now: a full disk then fails here with ENOSPC
    instead of killing the process with SIGBUS when a page of the map is first written."""
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as err:
        if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # file systems without fallocate
            raise
    finally:
        os.close(fd)


def _read_sizes(folder: Path, ids: Sequence[str]) -> np.ndarray:
    from PIL import Image

    sizes = []
    for i in ids[:2000]:
        with Image.open(image_path(folder, i)) as im:
            w, h = im.size
            turned = im.getexif().get(0x0112) in (5, 6, 7, 8)  # EXIF orientation: a quarter turn
            sizes.append((h, w) if turned else (w, h))
    return np.asarray(sizes)


def _examples(folder: Path, ids: Sequence[str], targets: Sequence[int], k: int) -> list:
    """The first training image of each class, upright, as a small RGB/gray array (None if unreadable)."""
    from PIL import Image

    from docsort.data.contract import upright

    first: dict[int, str] = {}
    for i, t in zip(ids, targets, strict=True):
        first.setdefault(int(t), i)
    out = []
    for c in range(k):
        image = None
        if c in first:
            with (
                contextlib.suppress(OSError, ValueError, DocsortError),
                Image.open(image_path(folder, first[c])) as im,
            ):
                im.draft(im.mode, (400, 400))
                im = upright(im)
                im.thumbnail((240, 240))
                image = np.asarray(im.convert("RGB") if im.mode not in ("L", "RGB") else im)
        out.append(image)
    return out


def _orientation(sizes: np.ndarray) -> np.ndarray:
    """Shares of portrait, landscape and square images among ``(width, height)`` rows."""
    if not len(sizes):
        return np.zeros(3)
    w, h = sizes[:, 0], sizes[:, 1]
    return np.array([(h > w).mean(), (w > h).mean(), (w == h).mean()])


def _eda_plot(
    path: Path,
    meta: Meta,
    counts: np.ndarray,
    sizes: np.ndarray,
    test_sizes: np.ndarray | None = None,
    examples: Sequence | None = None,
) -> None:
    """One picture of the data: class balance, sizes, orientation and aspect ratio (train vs test), one example per class.

    Train against test because a test set shot differently (more landscape
    phone photos, other aspect ratios) is what TTA and resizing have to cover.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    test_sizes = np.zeros((0, 2)) if test_sizes is None else test_sizes
    examples = list(examples or [])
    k = meta.num_classes
    cols = min(max(k, 1), 9)
    ex_rows = -(-len(examples) // cols) if examples else 0
    top_h = max(4.5, 0.24 * k + 1.5)
    fig = Figure(figsize=(18, top_h + 2.3 * ex_rows), dpi=90, layout="constrained")
    FigureCanvasAgg(fig)
    if ex_rows:
        upper, lower = fig.subfigures(2, 1, height_ratios=[top_h, 2.3 * ex_rows], hspace=0.04)
    else:
        upper, lower = fig, None
    a, b, c, d = upper.subplots(1, 4, width_ratios=[1.6, 1, 1, 0.8])
    train_c, test_c = "#4878a8", "#d9822b"
    a.barh(range(k), counts, color=train_c)
    a.set_yticks(range(k), [f"{n} {plot_label(name)}" for n, name in enumerate(meta.class_names)],
                 fontsize=9 if k <= 20 else 7)  # fmt: skip
    a.invert_yaxis()
    a.set_xlabel("training images")
    a.set_title(f"Class balance ({int(counts.sum())} training images)")
    for data, colour, label in ((sizes, train_c, "train"), (test_sizes, test_c, "test")):
        if len(data):
            b.scatter(data[:, 0], data[:, 1], s=6, alpha=0.5, color=colour, label=label)
    b.set_xlabel("width (px)")
    b.set_ylabel("height (px)")
    b.set_title("Image sizes")
    aspects = [s[:, 1] / np.maximum(s[:, 0], 1) for s in (sizes, test_sizes)]
    both = np.concatenate(aspects) if any(len(x) for x in aspects) else np.ones(1)
    lo, hi = float(np.percentile(both, 1)), float(np.percentile(both, 99))
    bins = np.linspace(min(lo, 0.9) * 0.95, max(hi, 1.1) * 1.05, 30)
    for data, colour, label in ((aspects[0], train_c, "train"), (aspects[1], test_c, "test")):
        if len(data):
            c.hist(np.clip(data, bins[0], bins[-1]), bins=bins, density=True, histtype="step",
                   linewidth=2, color=colour, label=f"{label} (median {np.median(data):.2f})")  # fmt: skip
    c.axvline(1.0, color="#888", linestyle=":", linewidth=1)
    c.set_xlabel("aspect ratio (height / width)")
    c.set_ylabel("density")
    c.set_title("Aspect ratio: >1 portrait, <1 landscape")
    c.legend(fontsize=9)
    x = np.arange(3)
    for off, data, colour, label in (
        (-0.2, sizes, train_c, "train"),
        (0.2, test_sizes, test_c, "test"),
    ):
        share = _orientation(data)
        d.bar(x + off, share, width=0.4, color=colour, label=f"{label} ({len(data)})")
        for xi, v in zip(x + off, share, strict=True):
            d.text(xi, v + 0.01, f"{v:.0%}", ha="center", va="bottom", fontsize=8)
    d.set_xticks(x, ["portrait", "landscape", "square"])
    d.set_ylim(0, 1.3)
    d.set_ylabel("share of images")
    d.set_title("Orientation")
    d.legend(fontsize=9, loc="upper center", ncol=2)
    if len(sizes) or len(test_sizes):
        b.legend(fontsize=9)
    if lower is not None:
        lower.suptitle(
            "One training example per class", fontsize=12, weight="bold", x=0.01, ha="left"
        )
        axes = lower.subplots(ex_rows, cols, squeeze=False)
        for n, ax in enumerate(axes.flat):
            ax.set_axis_off()
            if n >= len(examples):
                continue
            image = examples[n]
            ax.set_title(f"{n} {plot_label(meta.class_names[n], 22)}", fontsize=9)
            if image is None:
                ax.text(0.5, 0.5, "no image", ha="center", va="center", color="#888", fontsize=9)
            else:
                ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=255)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


@stage("prepare", inputs=("data",), folder="out")
def prepare(data: str, out: str | os.PathLike, overrides: Sequence[str] = ()) -> Path:
    """Validate the dataset at ``data`` (local or s3://) and write the prepared folder ``out``."""
    cfg = load_config(overrides)
    out = Path(out)
    root = storage.localize(data, out.parent / ".docsort-download")
    meta, train, test_ids, hard, where = validate_root(root, data, cfg)
    test_dir = root / "test"

    targets = list(train.targets)
    ids = list(train.ids)
    if hard is not None and (cfg.data.exclude_label_errors or cfg.data.correct_label_errors):
        ids, targets = apply_label_errors(
            ids, targets, hard, correct=bool(cfg.data.correct_label_errors)
        )
    group_col = cfg.data.group_column
    group_of = (
        dict(zip(train.ids, train.frame[group_col].str.strip(), strict=True)) if group_col else None
    )
    groups = [group_of[i] for i in ids] if group_of else None
    folds = make_folds(
        targets,
        int(cfg.data.num_folds),
        int(cfg.seed),
        groups,
        file=where("train.csv"),
        class_names=meta.class_names,
    )

    train_fp = fingerprint(root / "train", ids, desc=where("train.csv"))
    test_fp = fingerprint(test_dir, test_ids, desc=where("sample_submission.csv"))
    # Everything is built in a temporary folder beside ``out`` and swapped in at the end;
    # caches of a previous run whose key still matches are hard-linked, not rebuilt.
    with _disk_full_is_one_line(out), atomic_path(out, is_dir=True) as tmp:
        cache_dir = tmp / "cache"
        cache_dir.mkdir()
        caches = {}
        for split, folder, split_ids, fp, desc in (
            ("train", root / "train", ids, train_fp, "train.csv"),
            ("test", test_dir, test_ids, test_fp, "sample_submission.csv"),
        ):
            name = f"{cache_key(fp, cfg)}-{split}.npy"
            old = out / "cache" / name
            if (out / "prepared.json").is_file() and cache_is_complete(old, len(split_ids), cfg):
                _link_or_copy(old, cache_dir / name)
            else:
                build_cache(folder, split_ids, cache_dir / name, cfg, desc=where(desc))
            caches[split] = name
        extra = {}
        if augcopies.wanted(
            cfg
        ):  # Augraphy offline: degraded copies of the training images, cached by key
            caches["augraphy"], extra["augraphy"] = augcopies.ensure(
                out / "cache", cache_dir, caches["train"], cfg
            )
        _write_tables(tmp, root, ids, targets, folds, test_ids, meta, hard, cfg)
        info = {
            "class_names": list(meta.class_names),
            "num_classes": meta.num_classes,
            "image_size": int(cfg.data.image_size),
            "resize": str(cfg.data.resize),
            "channels": int(cfg.data.channels),
            "num_folds": int(cfg.data.num_folds),
            "seed": int(cfg.seed),
            "fingerprint": hashlib.sha256(f"{train_fp}|{test_fp}".encode()).hexdigest(),
            "cache": caches,
            # absolute, so later stages find the data root (and its current hardcases.csv)
            "source": data if storage.is_s3(data) else str(Path(data).resolve()),
            **extra,
        }
        (tmp / "prepared.json").write_text(json.dumps(info, indent=2))
    return out


def validate_root(
    root: Path, data: str, cfg: DictConfig
) -> tuple[Meta, Labelled, list[str], pd.DataFrame | None, Callable[[str], str]]:
    """Check every table of a dataset root and its test/ folder before any work.

    Returns meta, train rows, test IDs, hard cases (or None) and the function
    that names a dataset file in messages (as the user gave the root: a path
    or an s3:// URI).
    """

    def name(file: str) -> str:
        return storage.join(data, file)

    meta = read_meta(root / "meta.csv", name=name("meta.csv"))
    group_col = cfg.data.group_column
    train = read_labelled(
        root / "train.csv", meta, optional=(group_col,) if group_col else (), name=name("train.csv")
    )
    if not train.ids:
        raise DocsortError("no training rows", file=name("train.csv"))
    if group_col:
        if group_col not in train.frame.columns:
            raise DocsortError(
                f"data.group_column={group_col} is not a column", file=name("train.csv")
            )
        for row, g in zip(train.frame.index + 1, train.frame[group_col], strict=True):
            if not str(g).strip():
                raise DocsortError(f"empty {group_col}", file=name("train.csv"), row=int(row))
    sub = read_csv(
        root / "sample_submission.csv", ("ID", "target"), name=name("sample_submission.csv")
    )
    test_ids = parse_ids(sub, file=name("sample_submission.csv"))
    test_dir = root / "test"
    if not test_ids:
        raise DocsortError("no test rows", file=name("sample_submission.csv"))
    on_disk = (
        sorted(p.name for p in test_dir.iterdir() if p.is_file() and not p.name.startswith("."))
        if test_dir.is_dir()
        else []
    )
    if not on_disk:
        raise DocsortError(
            "folder is empty or missing; sample_submission.csv lists test images", file=name("test")
        )
    missing = [
        (row, i)
        for row, i in enumerate(test_ids, start=1)
        if not image_path(test_dir, i, file=name("sample_submission.csv"), row=row).is_file()
    ]
    if missing:
        row, first = missing[0]
        raise DocsortError(
            f"image {first!r} not found in test/ ({len(missing)} missing)",
            file=name("sample_submission.csv"),
            row=row,
        )
    listed = set(test_ids)
    unlisted = [u for u in on_disk if u not in listed and u.lower().endswith(IMAGE_SUFFIXES)]
    if unlisted:
        raise DocsortError(
            f"test/{unlisted[0]} is not listed ({len(unlisted)} test images missing from the CSV)",
            file=name("sample_submission.csv"),
        )
    hard = None
    if (root / "hardcases.csv").is_file():
        hard = read_hardcases(root / "hardcases.csv", meta, name=name("hardcases.csv"))
        known = listed | set(train.ids)
        for row, i in zip(hard.index + 1, hard["ID"], strict=True):
            if i not in known:
                raise DocsortError(
                    f"ID {i!r} is neither a test image nor in train.csv",
                    file=name("hardcases.csv"),
                    row=int(row),
                )
    return meta, train, test_ids, hard, name


@contextlib.contextmanager
def _disk_full_is_one_line(out: Path) -> Iterator[None]:
    """A full disk (or file-size limit) ends ``prepare`` with one line; atomic_path has removed the partial folder."""
    try:
        yield
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            raise
        raise DocsortError(
            f"out of disk space ({err.strerror}); nothing was kept, free space and run again",
            file=str(out),
        ) from None


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _write_tables(
    tmp: Path, root: Path, ids, targets, folds, test_ids, meta: Meta, hard, cfg: DictConfig
) -> None:
    pd.DataFrame({"ID": ids, "target": targets, "fold": folds}).to_csv(
        tmp / "index.csv", index=False
    )
    pd.DataFrame({"ID": test_ids}).to_csv(tmp / "test.csv", index=False)
    for name in ("meta.csv", "sample_submission.csv", "hardcases.csv", "test_labels.csv"):
        if (root / name).is_file():
            shutil.copyfile(root / name, tmp / name)
    counts = np.bincount(np.asarray(targets), minlength=meta.num_classes)
    sizes = _read_sizes(root / "train", ids)
    test_sizes = _read_sizes(root / "test", test_ids)
    stats = {
        "train_images": len(ids),
        "test_images": len(test_ids),
        "class_counts": {meta.class_names[k]: int(c) for k, c in enumerate(counts)},
        "imbalance_ratio": float(counts.max() / max(1, counts.min())),
        "median_size": [int(v) for v in np.median(sizes, axis=0)] if len(sizes) else None,
        "test_median_size": (
            [int(v) for v in np.median(test_sizes, axis=0)] if len(test_sizes) else None
        ),
        "portrait_share": {
            "train": float(_orientation(sizes)[0]),
            "test": float(_orientation(test_sizes)[0]),
        },
        "hardcases": 0 if hard is None else len(hard),
    }
    (tmp / "stats.json").write_text(json.dumps(stats, indent=2))
    examples = _examples(root / "train", ids, targets, meta.num_classes)
    _eda_plot(tmp / "eda.png", meta, counts, sizes, test_sizes, examples)
    save_config(cfg, tmp / "config.yaml")


def apply_label_errors(
    ids: list[str], targets: list[int], hard: pd.DataFrame, *, correct: bool
) -> tuple[list[str], list[int]]:
    """Drop (or relabel, when ``correct``) training rows a person marked ``kind=label_error``."""
    errors = hard[hard["kind"] == "label_error"]
    verdict = dict(zip(errors["ID"], errors["target"], strict=True))
    out_ids, out_t = [], []
    for i, t in zip(ids, targets, strict=True):
        if i in verdict:
            if not correct:
                continue
            t = int(verdict[i])
        out_ids.append(i)
        out_t.append(t)
    return out_ids, out_t
