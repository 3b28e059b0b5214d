"""Augraphy offline: N degraded copies of every training image, made once in ``prepare``.

Augraphy costs tens of milliseconds to a second per image, too slow to run on
every sample of every epoch on a CPU. ``prepare`` with
``aug.augraphy.mode=offline aug.augraphy.copies=N`` writes
``cache/<key>-augraphy.npy`` (uint8, N_images x N x S x S[x3]) beside the
clean cache; training then draws a copy instead of the clean image with
probability ``aug.augraphy.probability``. The key covers the clean cache's key,
the Augraphy settings, the seed and Augraphy's version, so a second ``prepare``
with the same settings reuses the file and any change rebuilds it.

Copies are made in a process pool (Augraphy seeds Python's, NumPy's and
OpenCV's global generators, so threads would race); copy ``c`` of image ``i``
is seeded from ``(seed, i, c)`` and is the same however many workers run.
"""

from __future__ import annotations

import functools
import hashlib
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from docsort.core import console
from docsort.core.atomic import atomic_path
from docsort.core.device import usable_cores
from docsort.core.errors import ConfigError

VERSION = 1
AUGRAPHY_PIPELINES = ("doc", "full")


def wanted(cfg: DictConfig) -> bool:
    """Whether ``prepare`` should make copies for this config."""
    a = cfg.aug.augraphy
    if a.mode != "offline":
        return False
    if int(a.copies) < 1:
        raise ConfigError("aug.augraphy.mode=offline needs aug.augraphy.copies >= 1")
    return True


def copies_key(train_key: str, cfg: DictConfig) -> str:
    """Key of the copies: the clean cache they degrade, the Augraphy settings and the seed."""
    import augraphy

    a = cfg.aug.augraphy
    spec = f"v{VERSION}|{train_key}|{a.get('pipeline', 'doc')}|{int(a.copies)}|{int(cfg.seed)}|{augraphy.__version__}"
    return hashlib.sha256(spec.encode()).hexdigest()[:16]


@functools.cache
def _redirect_augraphy_scratch() -> str:
    """Point Augraphy's scratch folder away from the working directory.

    Augraphy writes ``os.getcwd()/augraphy_cache/*.png`` on every call, which
    litters the user's folder and fails on a read-only root filesystem; its
    modules see a copy of ``os`` whose ``getcwd`` is a private temporary folder.
    """
    import tempfile
    import types

    import augraphy.augmentations.lib as lib_module
    import augraphy.base.augmentationpipeline as pipeline_module

    scratch = tempfile.mkdtemp(prefix="docsort-augraphy-")
    shim = types.SimpleNamespace(**{k: getattr(os, k) for k in dir(os) if not k.startswith("__")})
    shim.getcwd = lambda: scratch
    for module in (lib_module, pipeline_module):
        module.os = shim
    return scratch


def augraphy_pipeline(name: str = "doc", seed: int | None = None):
    """A document-degradation pipeline.

    ``doc`` (default) keeps to the augmentations that cost milliseconds on a
    cached image: ink bleed, low-ink lines, paper texture, dirty drum, lighting
    gradients (shadows), folds, photocopy noise and JPEG. ``full`` adds
    Augraphy's slow ShadowCast and the full BadPhotoCopy (about 1 s per image
    on a CPU core; for offline copies on a big machine).
    """
    import augraphy as ag

    _redirect_augraphy_scratch()
    if name not in AUGRAPHY_PIPELINES:
        raise ConfigError(
            f"aug.augraphy.pipeline={name!r} is not valid; choose from: {', '.join(AUGRAPHY_PIPELINES)}"
        )
    ink = [
        ag.InkBleed(intensity_range=(0.3, 0.6), kernel_size=(3, 3), severity=(0.2, 0.4), p=0.4),
        ag.LowInkRandomLines(count_range=(3, 8), p=0.3),
        ag.LowInkPeriodicLines(count_range=(2, 4), period_range=(8, 24), p=0.2),
    ]
    paper = [ag.NoiseTexturize(sigma_range=(2, 6), turbulence_range=(2, 4), p=0.3)]
    post = [
        ag.DirtyDrum(line_width_range=(1, 2), noise_intensity=0.3, p=0.3),
        ag.LightingGradient(min_brightness=60, p=0.3),
        ag.Folding(
            fold_count=1, fold_noise=0.0, gradient_width=(0.05, 0.1), p=0.2
        ),  # its noise uses numba RNG: not seedable
        ag.Jpeg(quality_range=(30, 90), p=0.4),
        ag.SubtleNoise(p=0.3),
    ]
    if name == "full":
        post += [ag.ShadowCast(p=0.3), ag.BadPhotoCopy(p=0.3)]
    else:
        post.append(ag.BadPhotoCopy(noise_iteration=(1, 1), noise_size=(1, 2), p=0.2))
    # darken: the page keeps its own tones (grey forms, photos); the default ink_to_paper
    # overlay re-draws it as ink on white paper and washes out mid-tones
    return ag.AugraphyPipeline(
        ink_phase=ink, paper_phase=paper, post_phase=post, overlay_type="darken", random_seed=seed
    )


def seed_augraphy(seed: int) -> None:
    """Seed the global RNGs Augraphy draws from (``random``, NumPy's legacy one, OpenCV's).

    Augraphy takes no generator; seeding per draw ties a copy or an online sample
    to its seed rather than to whatever ran before it. Not every stage is reached:
    a fresh process can still draw differently (numba's own RNG, for one).
    """
    import random

    import cv2

    random.seed(seed)
    np.random.seed(seed)
    cv2.setRNGSeed(seed)


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


# --- worker side: one pipeline per process, the clean cache memory-mapped ------------------

_STATE: dict = {}


def _init(src: str, pipeline: str) -> None:
    import warnings

    warnings.filterwarnings("ignore")
    _STATE["images"] = np.load(src, mmap_mode="r")
    _STATE["pipeline"] = augraphy_pipeline(pipeline)


def _degrade_row(job: tuple[int, int, int]) -> tuple[int, np.ndarray, float]:
    i, copies, seed = job
    img = np.asarray(_STATE["images"][i])
    out = np.empty((copies, *img.shape), np.uint8)
    t = time.perf_counter()
    for c in range(copies):
        s = (
            int.from_bytes(hashlib.sha256(f"{seed}|{i}|{c}".encode()).digest()[:4], "little")
            % (2**31 - 1)
            or 1
        )
        seed_augraphy(s)
        try:
            out[c] = degrade(img, _STATE["pipeline"])
        except Exception:  # noqa: BLE001 - an Augraphy bug on one draw must not sink prepare
            out[c] = img
    return i, out, time.perf_counter() - t


def build_copies(
    train_cache: Path, out: Path, cfg: DictConfig, *, workers: int | None = None
) -> dict:
    """Write ``out`` (atomically) with ``aug.augraphy.copies`` degraded copies per row of ``train_cache``.

    Returns timing info: images, copies, wall seconds and CPU seconds per copy.
    """
    a = cfg.aug.augraphy
    n_copies, seed = int(a.copies), int(cfg.seed)
    src = np.load(train_cache, mmap_mode="r")
    n = len(src)
    shape = (n, n_copies, *src.shape[1:])
    del src
    workers = max(1, min(workers or usable_cores(), n))
    t0 = time.perf_counter()
    busy = 0.0
    with atomic_path(out) as tmp:
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        # spawn, not fork: the parent may hold torch/OpenMP threads that a forked child would deadlock on
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(
            workers,
            mp_context=ctx,
            initializer=_init,
            initargs=(str(train_cache), str(a.get("pipeline", "doc"))),
        ) as pool:
            jobs = [(i, n_copies, seed) for i in range(n)]
            bar = console.track(
                pool.map(_degrade_row, jobs, chunksize=8), f"augraphy x{n_copies}", n, "img"
            )
            for i, imgs, dt in bar:
                arr[i] = imgs
                busy += dt
        arr.flush()
        del arr
    wall = time.perf_counter() - t0
    return {"images": n, "copies": n_copies, "workers": workers, "wall_s": round(wall, 2),
            "seconds_per_copy": round(busy / max(1, n * n_copies), 4)}  # fmt: skip


def ensure(old_cache: Path, new_cache: Path, train_name: str, cfg: DictConfig) -> tuple[str, dict]:
    """Copies for the clean cache ``new_cache/train_name``: linked from ``old_cache`` when the key matches, else built.

    Returns the file name and its info (timing of the run that made it, and whether it was reused).
    """
    import json
    import shutil

    name = f"{copies_key(train_name.split('-')[0], cfg)}-augraphy.npy"
    sidecar = name.replace(".npy", ".json")
    if (old_cache / name).is_file() and (old_cache / sidecar).is_file():
        for f in (name, sidecar):
            try:
                os.link(old_cache / f, new_cache / f)
            except OSError:
                shutil.copyfile(old_cache / f, new_cache / f)
        return name, {**json.loads((new_cache / sidecar).read_text()), "reused": True}
    info = build_copies(new_cache / train_name, new_cache / name, cfg)
    info["pipeline"] = str(cfg.aug.augraphy.get("pipeline", "doc"))
    (new_cache / sidecar).write_text(json.dumps(info, indent=2))
    return name, {**info, "reused": False}
