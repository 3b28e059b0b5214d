"""Stage ``predict``: class probabilities per image with batched dihedral TTA.

One pass per member over the images: every batch carries all requested views,
so the model runs ``views x images`` forward passes and nothing more. A
DataLoader reads the next batches (rows of the prepared cache, or JPEGs decoded
by workers) while the model runs.

Results are committed in shards of ``tta.shard_size`` images under
``OUT/partial/`` with a ``progress.json`` record, so memory stays flat however
large the test set is, an interrupted run keeps every finished shard, and
running the same command again continues where it stopped. The final
``probs.csv`` and ``views.npz`` are streamed from the shards.

``--model`` is a model folder or a fold bundle (``docsort train fold=all``): a
bundle predicts each fold into ``OUT/fold*/`` and its ``probs.csv`` is the mean
of the folds' TTA probabilities.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset

from docsort.core import console, identity, storage
from docsort.core.atomic import atomic_path, write_text_atomic
from docsort.core.config import load_config
from docsort.core.device import resolve_device, resolve_precision, set_threads
from docsort.core.errors import ConfigError, DocsortError
from docsort.core.outputs import stage
from docsort.core.probs import probs_frame, read_probs, write_probs
from docsort.data.contract import IMAGE_SUFFIXES, decode_image, fit_square, image_path
from docsort.data.prepared import Prepared
from docsort.models.factory import Member, load_member
from docsort.models.folders import model_folders
from docsort.models.onnx_export import weights_digest
from docsort.models.tta import TorchTTA, auto_batch_size, auto_workers, check_views, merge

RUNTIMES = ("torch", "onnx")


# --- image sources -------------------------------------------------------------------------


class CacheImages:
    """Rows of a prepared uint8 cache (``.npy``) read by offset.

    Plain reads instead of a memory map: mapped pages that were touched count
    towards the process's resident memory, reads go through the page cache and
    leave nothing behind.
    """

    decodes = False

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        with open(self.path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = read_header(f)
            self.offset = f.tell()
        if fortran or dtype != np.uint8 or len(shape) not in (3, 4):
            raise DocsortError(
                "not a prepared image cache (uint8 N x S x S [x 3])", file=str(self.path)
            )
        self.shape = tuple(shape)
        self.row_bytes = int(np.prod(shape[1:]))
        self._file = None

    def __len__(self) -> int:
        return self.shape[0]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_file": None}  # each worker opens its own handle

    def read(self, start: int, stop: int) -> np.ndarray:
        if self._file is None:
            self._file = open(self.path, "rb", buffering=0)  # noqa: SIM115 (kept open across reads)
        out = np.empty((stop - start, *self.shape[1:]), dtype=np.uint8)
        view = memoryview(out).cast("B")
        self._file.seek(self.offset + start * self.row_bytes)
        got = 0
        while got < len(view):
            n = self._file.readinto(view[got:])
            if not n:
                raise DocsortError(
                    f"image cache is truncated at row {start + got // self.row_bytes}; prepare again",
                    file=str(self.path),
                )
            got += n
        return out


class FolderImages:
    """Images decoded from files and fitted to the model's square input, batch by batch."""

    decodes = True

    def __init__(
        self,
        folder: Path,
        ids: Sequence[str],
        *,
        size: int,
        resize: str,
        channels: int,
        max_pixels: int,
    ):
        self.folder, self.ids = Path(folder), list(ids)
        self.size, self.resize, self.channels, self.max_pixels = size, resize, channels, max_pixels

    def __len__(self) -> int:
        return len(self.ids)

    def read(self, start: int, stop: int) -> np.ndarray:
        imgs = []
        for i in self.ids[start:stop]:
            p = image_path(self.folder, i)
            try:
                data = p.read_bytes()
            except OSError as err:
                raise DocsortError(
                    f"cannot read image ({err.strerror})", file=f"{self.folder.name}/{i}"
                ) from None
            img = decode_image(
                data,
                channels=self.channels,
                max_pixels=self.max_pixels,
                name=f"{self.folder.name}/{i}",
                draft=self.size * 2,
            )
            imgs.append(fit_square(img, self.size, self.resize))
        return np.stack(imgs)


def list_images(folder: Path) -> list[str]:
    """Image file names in ``folder``, sorted (the order of the output)."""
    names = sorted(
        p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )
    if not names:
        raise DocsortError(
            f"no images ({', '.join(IMAGE_SUFFIXES)}) in the folder", file=str(folder)
        )
    return names


def to_nchw(batch: np.ndarray) -> torch.Tensor:
    """uint8 (B, H, W) or (B, H, W, C) -> uint8 (B, C, H, W)."""
    t = torch.from_numpy(batch)
    return t.unsqueeze(1) if t.ndim == 3 else t.permute(0, 3, 1, 2).contiguous()


class _Batches(Dataset):
    """Batch ``i`` is rows ``spans[i]`` of the source; bad input comes back as the error, raised in the main process."""

    def __init__(self, source, spans: Sequence[tuple[int, int]]):
        self.source, self.spans = source, list(spans)

    def __len__(self) -> int:
        return len(self.spans)

    def __getitem__(self, i: int):
        try:
            return to_nchw(self.source.read(*self.spans[i]))
        except DocsortError as err:  # pickles to the main process with its one-line message
            return DocsortError(str(err))


def iter_batches(
    source, spans: Sequence[tuple[int, int]], *, workers: int, pin_memory: bool = False
):
    """uint8 NCHW batches of ``spans``, in order, read ahead by ``workers`` processes."""
    dl = DataLoader(_Batches(source, spans), batch_size=None, shuffle=False, num_workers=workers,
                    pin_memory=pin_memory, prefetch_factor=2 if workers else None)  # fmt: skip
    for x in dl:
        if isinstance(x, DocsortError):
            raise x
        yield x


def open_images(
    src: Path, split: str, member: Member, max_pixels: int
) -> tuple[list[str], CacheImages | FolderImages, str]:
    """IDs, a source and a cheap identity of the images (for resuming) of a prepared folder or an image folder."""
    d = member.cfg.data
    if (src / "prepared.json").is_file():
        prep = Prepared(src)
        if member.class_names != prep.class_names:
            raise DocsortError(
                "model classes differ from the prepared data's meta.csv", file=str(member.path)
            )
        for key in ("image_size", "channels", "resize"):
            if str(d[key]) != str(prep.info[key]):
                raise DocsortError(
                    f"model was trained with data.{key}={d[key]}, data prepared with {prep.info[key]}",
                    file=str(member.path),
                )
        if split not in ("test", "train"):
            raise DocsortError(f"split {split!r} must be test or train")
        ids = prep.test_ids if split == "test" else prep.index["ID"].tolist()
        name = prep.info["cache"][split]  # keyed by content hash + resize spec
        source = CacheImages(src / "cache" / name)
        if len(source) != len(ids):
            raise DocsortError(
                f"image cache has {len(source)} rows for {len(ids)} IDs; prepare again",
                file=str(source.path),
            )
        return ids, source, name
    if src.is_dir():
        ids = list_images(src)
        h = hashlib.sha256()
        for i in ids:
            st = (src / i).stat()
            h.update(f"{i}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        source = FolderImages(
            src,
            ids,
            size=int(d.image_size),
            resize=str(d.resize),
            channels=int(d.channels),
            max_pixels=max_pixels,
        )
        return ids, source, h.hexdigest()
    raise DocsortError("not a prepared folder (prepared.json) or a folder of images", file=str(src))


# --- settings ------------------------------------------------------------------------------


def predict_settings(
    cfg: DictConfig,
    device: torch.device,
    *,
    decode: bool,
    image_size: int,
    onnx_precision: str | None = None,
) -> dict:
    """Validated runtime, batch size, workers and shard size (fails before any work starts).

    ``onnx_precision``: that of the exported file ``runtime=onnx`` will run
    (``precision=auto`` takes it; an explicit other precision exports afresh).
    """
    tta = cfg.tta
    views = check_views(list(tta.views))
    runtime = str(cfg.get("runtime", "torch"))
    if runtime not in RUNTIMES:
        raise ConfigError(f"runtime={runtime!r} is not valid; choose from: {', '.join(RUNTIMES)}")
    shard = tta.get("shard_size", 1024)
    if not isinstance(shard, int) or shard < 1:
        raise ConfigError(f"tta.shard_size={shard!r} must be an integer >= 1")
    if runtime == "onnx":
        if cfg.precision == "bf16":
            raise ConfigError(
                "precision=bf16 is not available with runtime=onnx; choose from: auto, fp32, fp16 (GPU)"
            )
        if cfg.precision == "auto" and onnx_precision is not None:
            precision = onnx_precision
        else:
            precision = "fp16" if cfg.precision == "fp16" else "fp32"
    else:
        precision = resolve_precision(str(cfg.precision), device)
    return {
        "views": views,
        "merge": str(tta.merge),
        "runtime": runtime,
        "precision": precision,
        "batch_size": auto_batch_size(
            tta.get("batch_size", "auto"), device, len(views), image_size
        ),
        "workers": auto_workers(tta.get("workers", "auto"), device, decode=decode),
        "shard_size": int(shard),
    }


# --- the stage -------------------------------------------------------------------------------


@stage("predict", inputs=("prepared", "model", "onnx", "orientation"), folder="out")
def predict(
    prepared: str | os.PathLike,
    model: str | os.PathLike,
    out: str | os.PathLike,
    overrides: Sequence[str] = (),
    *,
    split: str = "test",
    on_shard: Callable[[int, int], None] | None = None,
    overwrite: bool = False,
    onnx: str | os.PathLike | None = None,
    orientation: str | os.PathLike | None = None,
) -> Path:
    """Write ``probs.csv`` (merged over ``tta.views``), ``views.npz`` (logits per view) and ``predict.json`` into ``out``.

    ``prepared`` is a prepared folder (``split``: ``test`` or ``train`` images,
    read from the cache) or any folder of images (decoded with the model's image
    spec; rows in file-name order). ``model`` is a model folder or a fold bundle
    (each fold predicted into ``out/fold*/``, ``probs.csv`` their mean).
    ``runtime=onnx`` runs onnxruntime instead of torch, on ``onnx`` (a file
    written by ``docsort export``) or the model folder's ``model.onnx`` when
    there, else a fresh export. ``on_shard(done, total)`` is called after each
    committed shard. ``orientation`` (a folder written by ``docsort orientation``)
    turns each page upright before the TTA views; the view it found per image
    goes to ``orientation.csv``.

    ``out`` records the run's identity (``run.json``: weights, images, views,
    merge, runtime, precision): a re-run continues the same work, does nothing
    when it is complete, and is refused for other work unless ``overwrite``.
    """
    cfg = load_config(overrides)
    folders = model_folders(model)
    if onnx is not None and str(cfg.get("runtime", "torch")) != "onnx":
        raise ConfigError(f"--onnx {onnx} runs with runtime=onnx; add runtime=onnx")
    src = storage.localize(prepared, Path(out).parent / ".docsort-download")
    if len(folders) > 1:
        if onnx is not None:
            raise DocsortError(
                "--onnx names one file, a fold bundle has one model per fold; "
                f"`docsort export {model}` writes each fold's model.onnx, which predict picks up",
                file=str(onnx),
            )
        return _predict_bundle(src, Path(model), folders, Path(out), cfg, split=split,
                               on_shard=on_shard, overwrite=overwrite, orientation=orientation)  # fmt: skip
    return _predict_folder(src, folders[0], Path(out), cfg, split=split, on_shard=on_shard,
                           overwrite=overwrite, onnx=onnx, orientation=orientation)  # fmt: skip


def _predict_folder(
    src: Path,
    model: Path,
    out: Path,
    cfg: DictConfig,
    *,
    split: str,
    on_shard: Callable[[int, int], None] | None,
    overwrite: bool,
    onnx: str | os.PathLike | None,
    label: str | None = None,
    orientation: str | os.PathLike | None = None,
) -> Path:
    """:func:`predict` for one model folder; ``label`` names it in the progress display."""
    member = load_member(model)
    ids, source, images_key = open_images(src, split, member, int(cfg.data.max_pixels))
    device = resolve_device(str(cfg.device))
    orienter = _orienter(orientation, cfg, device)
    onnx_file, onnx_meta = None, {}
    if str(cfg.get("runtime", "torch")) == "onnx":
        from docsort.models.onnx_runtime import exported_onnx

        onnx_file, onnx_meta = exported_onnx(model, onnx, precision=str(cfg.precision))
    s = predict_settings(cfg, device, decode=source.decodes, image_size=int(member.cfg.data.image_size),
                         onnx_precision=onnx_meta.get("docsort.precision"))  # fmt: skip
    threads = set_threads(cfg.threads)
    ident = {"model weights": weights_digest(model)[:16], "images": f"{images_key[:24]} ({len(ids)})",
             "tta.views": f"[{','.join(s['views'])}]", "tta.merge": s["merge"], "runtime": s["runtime"],
             "precision": str(cfg.precision), "orientation": _orientation_key(orienter)}  # fmt: skip
    record = identity.claim(out, "predict", ident, verb="predicted", outputs=PREDICT_OUTPUTS,
                            overwrite=overwrite,
                            settings={"shard_size": s["shard_size"], "precision": s["precision"]},
                            shown={"model weights": f"{ident['model weights']} ({model})"})  # fmt: skip
    done_info = out / "predict.json"
    if record["complete"] and all(
        (out / f).is_file() for f in ("probs.csv", "views.npz", "predict.json")
    ):
        console.say(f"predict: {out} is already complete for this model, images and settings")
        return out
    # a resumed run continues as it began: same shards, same resolved precision
    s.update(
        {k: record["settings"][k] for k in ("shard_size", "precision") if k in record["settings"]}
    )
    if onnx_file is not None and onnx_meta.get("docsort.precision") != s["precision"]:
        onnx_file = None  # resumed with the precision it began with: export that afresh
    key = hashlib.sha256(
        json.dumps({**ident, "shard_size": s["shard_size"]}, sort_keys=True).encode()
    ).hexdigest()
    work = out / "partial"
    layout = work / "layout.json"  # what the shards under partial/ are
    if layout.is_file() and json.loads(layout.read_text()).get("key") != key:
        shutil.rmtree(work)  # shards of an earlier start of this very run with another layout
    work.mkdir(parents=True, exist_ok=True)
    if not layout.is_file():
        run = {"key": key, "images": len(ids), "shard_size": s["shard_size"], "views": s["views"]}
        write_text_atomic(layout, json.dumps(run, indent=2))

    if s["runtime"] == "onnx":
        from docsort.models.onnx_runtime import runner_for

        runner = runner_for(member, model, work, device=str(cfg.device), threads=threads,
                            precision=s["precision"], onnx=onnx_file)  # fmt: skip
    else:
        runner = TorchTTA(member.model, device, s["precision"])
    if orienter is not None:
        from docsort.models.orientation import UprightRunner

        runner = UprightRunner(runner, orienter)

    n, shard = len(ids), s["shard_size"]
    shards = [(a, min(a + shard, n)) for a in range(0, n, shard)]
    pending = [k for k in range(len(shards)) if not _shard_path(work, k).is_file()]
    resumed = len(shards) - len(pending)
    bs = s["batch_size"]
    spans = [
        (a, min(a + bs, shards[k][1]))
        for k in pending
        for a in range(shards[k][0], shards[k][1], bs)
    ]
    t0 = time.perf_counter()
    desc = f"predict {label or model.name}"
    _run_shards(runner, source, spans, shards, pending, work, s, device, on_shard, desc)
    seconds = time.perf_counter() - t0
    computed = sum(shards[k][1] - shards[k][0] for k in pending)

    _write_outputs(out, work, ids, shards, s["views"], s["merge"], member.class_names)
    extra = {}
    if orienter is not None:
        extra["orientation"] = _write_orientation(out, work, ids, shards, orienter)
    info = {
        "model": str(model), "images": n, "split": split, "source": type(source).__name__, **s,
        "threads": threads, "engine": runner.describe(), "shards": len(shards), "resumed_shards": resumed,
        "seconds": round(seconds, 3), "images_per_s": round(computed / seconds, 2) if computed and seconds else None,
        "key": key, **extra,
    }  # fmt: skip
    write_text_atomic(done_info, json.dumps(info, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    identity.complete(out)
    return out


def _predict_bundle(
    src: Path,
    model: Path,
    folders: Sequence[Path],
    out: Path,
    cfg: DictConfig,
    *,
    split: str,
    on_shard: Callable[[int, int], None] | None,
    overwrite: bool,
    orientation: str | os.PathLike | None = None,
) -> Path:
    """:func:`predict` for a fold bundle: each fold into ``out/fold*/``, ``probs.csv`` their mean.

    The bundle's identity is its folds' weights with the fold runs' other keys,
    so a re-run resumes the fold that was interrupted and skips finished ones.
    """
    member = load_member(folders[0])
    _, _, images_key = open_images(src, split, member, int(cfg.data.max_pixels))
    digests = hashlib.sha256(
        "".join(f"{f.name}\0{weights_digest(f)}\n" for f in folders).encode()
    ).hexdigest()
    views = check_views(list(cfg.tta.views))
    ident = {"model weights": digests[:16], "images": images_key[:24],
             "tta.views": f"[{','.join(views)}]", "tta.merge": str(cfg.tta.merge),
             "runtime": str(cfg.get("runtime", "torch")), "precision": str(cfg.precision),
             "orientation": _orientation_key(_orienter(orientation, cfg, torch.device("cpu")))}  # fmt: skip
    record = identity.claim(out, "predict", ident, verb="predicted", outputs=BUNDLE_OUTPUTS,
                            overwrite=overwrite,
                            shown={"model weights": f"{ident['model weights']} ({model})"})  # fmt: skip
    if record["complete"] and all((out / f).is_file() for f in ("probs.csv", "predict.json")):
        console.say(f"predict: {out} is already complete for this model, images and settings")
        return out
    t0 = time.perf_counter()
    tables = []
    for f in folders:
        fold_out = _predict_folder(src, f, out / f.name, cfg, split=split, on_shard=on_shard,
                                   overwrite=False, onnx=None, label=f"{model.name}/{f.name}",
                                   orientation=orientation)  # fmt: skip
        tables.append(read_probs(fold_out / "probs.csv"))
    ids = tables[0][0]
    if any(t[0] != ids for t in tables):
        raise DocsortError("fold models predicted different rows", file=str(model))
    write_probs(out / "probs.csv", ids, np.mean([t[1] for t in tables], axis=0),
                class_names=member.class_names)  # fmt: skip
    folds = [json.loads((out / f.name / "predict.json").read_text()) for f in folders]
    info = {"model": str(model), "folds": [f.name for f in folders], "views": views,
            "merge": str(cfg.tta.merge), "images": len(ids), "split": split,
            "runtime": folds[0]["runtime"], "precision": folds[0]["precision"],
            "seconds": round(time.perf_counter() - t0, 3)}  # fmt: skip
    if "orientation" in folds[0]:
        info["orientation"] = folds[0]["orientation"]
        shutil.copyfile(out / folders[0].name / "orientation.csv", out / "orientation.csv")
    write_text_atomic(out / "predict.json", json.dumps(info, indent=2))
    identity.complete(out)
    return out


#: What ``predict`` writes in its output folder: all that ``--overwrite`` removes.
PREDICT_OUTPUTS = ("probs.csv", "views.npz", "predict.json", "partial", "orientation.csv")
#: What ``predict`` writes for a fold bundle.
BUNDLE_OUTPUTS = ("probs.csv", "predict.json", "fold*", "orientation.csv")


def _orienter(orientation: str | os.PathLike | None, cfg: DictConfig, device: torch.device):
    """The orientation model of ``--orientation`` (None when not given), checked before any work."""
    if orientation is None:
        return None
    from docsort.models.orientation import load_orientation

    precision = resolve_precision("fp32" if cfg.precision == "fp16" else str(cfg.precision), device)
    return load_orientation(orientation, device, precision, tta=bool(cfg.orientation.tta))


def _orientation_key(orienter) -> str:
    """The orientation step in a run's identity: its weights (and voting), or none."""
    if orienter is None:
        return "none"
    return orienter.digest[:16] + (" tta" if orienter.tta else "")


def _write_orientation(out: Path, work: Path, ids: Sequence[str], shards, orienter) -> dict:
    """``orientation.csv`` (ID, the view each page was found in) from the shards; returns a summary."""
    import csv

    from docsort.core.choices import VIEW_NAMES

    found = np.concatenate(
        [np.load(_shard_path(work, k).with_suffix(".views.npy")) for k in range(len(shards))]
    )
    with (
        atomic_path(out / "orientation.csv") as tmp,
        open(tmp, "w", newline="", encoding="utf-8") as f,
    ):
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["ID", "view"])
        w.writerows([i, VIEW_NAMES[int(v)]] for i, v in zip(ids, found, strict=True))
    counts = np.bincount(found.astype(np.int64), minlength=len(VIEW_NAMES))
    return {**orienter.describe(), "file": "orientation.csv",
            "found": {n: int(c) for n, c in zip(VIEW_NAMES, counts, strict=True) if c}}  # fmt: skip


def _shard_path(work: Path, k: int) -> Path:
    return work / f"shard-{k:05d}.npy"


def _run_shards(
    runner, source, spans, shards, pending, work: Path, s: dict, device: torch.device, on_shard,
    desc: str = "predict",
) -> None:  # fmt: skip
    """Run every pending shard's batches through ``runner``; commit each shard as soon as it is complete.

    One progress display (``desc``), a step per batch: nothing else is printed.
    """
    batches = iter_batches(source, spans, workers=s["workers"], pin_memory=device.type == "cuda")
    done = len(shards) - len(pending)
    rows_done = sum(b - a for k, (a, b) in enumerate(shards) if k not in set(pending))
    with console.Progress(len(spans), desc, unit="batches") as bar:
        for k in pending:
            a, b = shards[k]
            parts, row = [], a
            while row < b:
                x = next(batches)
                parts.append(runner(x, s["views"]))
                row += x.shape[0]
                bar.update(1)
            if hasattr(runner, "commit"):  # the views the orientation step found, before the shard
                runner.commit(_shard_path(work, k).with_suffix(".views.npy"))
            with atomic_path(_shard_path(work, k)) as tmp, open(tmp, "wb") as f:
                np.save(f, np.concatenate(parts, axis=1))  # (V, rows, K) float32 logits
            done, rows_done = done + 1, rows_done + b - a
            progress = {"shards_done": done, "shards": len(shards), "images_done": rows_done, "images": shards[-1][1],
                        "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")}  # fmt: skip
            write_text_atomic(work / "progress.json", json.dumps(progress, indent=2))
            if on_shard is not None:
                on_shard(done, len(shards))


def _write_outputs(
    out: Path,
    work: Path,
    ids: Sequence[str],
    shards,
    views: Sequence[str],
    how: str,
    class_names: Sequence[str] | None = None,
) -> None:
    """Stream the shards into ``probs.csv`` and ``views.npz`` (one shard in memory at a time)."""
    k = None
    with atomic_path(out / "probs.csv") as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        for n, (a, b) in enumerate(shards):
            logits = np.load(_shard_path(work, n))
            k = logits.shape[-1]
            probs = merge(torch.from_numpy(logits), how).numpy().astype(np.float64)
            df = probs_frame(list(ids[a:b]), probs, class_names=class_names)
            df.to_csv(f, index=False, header=n == 0, float_format="%.6g")
    width = max((len(i) for i in ids), default=1)
    with (
        atomic_path(out / "views.npz") as tmp,
        zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, allowZip64=True) as zf,
    ):
        with zf.open("ids.npy", "w", force_zip64=True) as f:
            dtype = np.dtype(f"<U{width}")
            np.lib.format.write_array_header_2_0(
                f, {"descr": dtype.str, "fortran_order": False, "shape": (len(ids),)}
            )
            for a in range(0, len(ids), 4096):
                f.write(np.asarray(ids[a : a + 4096], dtype=dtype).tobytes())
        for v, name in enumerate(views):
            with zf.open(f"{name}.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array_header_2_0(
                    f, {"descr": "<f4", "fortran_order": False, "shape": (len(ids), k)}
                )
                for n in range(len(shards)):
                    f.write(
                        np.ascontiguousarray(
                            np.load(_shard_path(work, n), mmap_mode="r")[v], dtype="<f4"
                        ).tobytes()
                    )
