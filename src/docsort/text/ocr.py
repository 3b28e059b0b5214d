"""The ``ocr`` stage: text and per-word confidence of each page, with tesseract.

Classes that image models confuse often differ in a few printed words, so a
text member and keyword rules need the words. Tesseract costs about a second
per page per core, so the stage is built to pay it once:

- every result is cached by the image's content hash and the engine settings
  (language, page segmentation, engine mode, orientation step, tesseract's
  version): a re-run, another ``--out`` or another shard reads it back, and a
  killed run resumes where it stopped;
- pages are read in parallel, one single-threaded tesseract process per core;
- ``ocr.select=ambiguous`` reads only the pages whose image-model top-2 classes
  fall inside one confusable group (``ocr.groups``), where text can decide;
- ``shard``/``shards`` split the pages into contiguous blocks for a KFP
  ParallelFor, and :func:`merge_ocr` joins the blocks into what one run writes.

Orientation comes first: tesseract's OSD turns a page by a multiple of 90
degrees when it finds enough script to judge; ``orientation=views`` instead
applies, per page, the dihedral view in which the image model was most
confident (a ``docsort predict`` folder's ``views.npz``), which also undoes
flips that OSD cannot see.

Output folder: ``ocr.jsonl`` (one JSON object per page, in input order:
``ID``, ``split``, ``text``, ``words`` as ``[word, confidence]``, ``confidence``
(mean word confidence, 0-100), ``rotate``, ``view``) and ``ocr.json`` (the
settings, counts and timings).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from docsort.core import storage
from docsort.core.atomic import atomic_path, write_text_atomic
from docsort.core.config import load_config
from docsort.core.console import Progress, fmt_seconds, say
from docsort.core.device import usable_cores
from docsort.core.errors import ConfigError, DocsortError
from docsort.core.outputs import stage
from docsort.core.probs import read_probs

RESULTS = "ocr.jsonl"
INFO = "ocr.json"
SPLITS = ("train", "test")
_INSTALL = (
    "apt-get install tesseract-ocr (scripts/system-deps.sh installs it with its language data)"
)


@dataclass(frozen=True)
class Engine:
    """The settings a result depends on; :meth:`key` names its cache folder."""

    languages: str
    psm: int
    oem: int
    orientation: str
    version: str

    @classmethod
    def from_config(cls, cfg: DictConfig) -> Engine:
        o = cfg.ocr
        return cls(
            str(o.languages),
            int(o.psm),
            int(o.oem),
            str(o.orientation),
            check_engine(str(o.languages), str(o.orientation)),
        )

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]

    @property
    def config(self) -> str:
        return f"--psm {self.psm} --oem {self.oem}"


@lru_cache(maxsize=1)
def _tesseract() -> tuple[str, tuple[str, ...]]:
    """Tesseract's version line and installed languages (one look per process)."""
    exe = shutil.which("tesseract")
    if exe is None:
        raise DocsortError(f"tesseract is not installed (not on PATH); {_INSTALL}")
    try:
        version = subprocess.run(
            [exe, "--version"], capture_output=True, text=True, timeout=30, check=True
        )
        langs = subprocess.run(
            [exe, "--list-langs"], capture_output=True, text=True, timeout=30, check=True
        )
    except (OSError, subprocess.SubprocessError) as err:
        raise DocsortError(
            f"tesseract does not run ({type(err).__name__}: {err}); {_INSTALL}"
        ) from None
    first = (version.stdout or version.stderr).splitlines()[0].strip()
    names = tuple(line.strip() for line in langs.stdout.splitlines()[1:] if line.strip())
    return first, names


def check_engine(languages: str, orientation: str = "none") -> str:
    """Tesseract's version, after checking that it runs and has every language asked for."""
    version, installed = _tesseract()
    wanted = [x for x in languages.split("+") if x]
    if not wanted:
        raise ConfigError("ocr.languages is empty; e.g. ocr.languages=eng or ocr.languages=kor+eng")
    if orientation == "osd":
        wanted.append("osd")
    for lang in wanted:
        if lang not in installed:
            raise DocsortError(
                f"tesseract has no language data {lang!r} (installed: {', '.join(installed) or 'none'}); "
                f"apt-get install tesseract-ocr-{lang}"
                + (" or set ocr.orientation=none" if lang == "osd" else "")
            )
    return version


# ---------------------------------------------------------------- one page


def _gray(data: bytes, name: str, max_pixels: int):
    from PIL import Image

    from docsort.data.contract import decode_image

    return Image.fromarray(decode_image(data, channels=1, max_pixels=max_pixels, name=name))


def _apply_view(image, view: str):
    """The page as ``models.tta.VIEWS[view]`` shows it to the image model."""
    import torch
    from PIL import Image

    from docsort.models.tta import VIEWS

    x = torch.from_numpy(np.asarray(image))[None, None]
    return Image.fromarray(VIEWS[view](x)[0, 0].contiguous().numpy())


def read_page(image, engine: Engine) -> dict:
    """OCR one grayscale PIL page: orientation first, then words with their confidence."""
    import pytesseract

    rotate, osd_conf = 0, None
    if engine.orientation == "osd":
        try:
            osd = pytesseract.image_to_osd(
                image, config="--psm 0", output_type=pytesseract.Output.DICT
            )
            rotate, osd_conf = int(osd["rotate"]) % 360, float(osd["orientation_conf"])
        except pytesseract.TesseractError:  # too few characters to judge: read it as it is
            pass
        if rotate:
            image = image.rotate(-rotate, expand=True, fillcolor=255)
    data = pytesseract.image_to_data(
        image, lang=engine.languages, config=engine.config, output_type=pytesseract.Output.DICT
    )
    words, lines, line_key = [], [], None
    for w, c, *key in zip(
        data["text"],
        data["conf"],
        data["block_num"],
        data["par_num"],
        data["line_num"],
        strict=True,
    ):
        w = w.strip()
        if not w:
            continue
        if tuple(key) != line_key:
            lines.append([])
            line_key = tuple(key)
        lines[-1].append(w)
        words.append([w, round(float(c), 1)])
    conf = float(np.mean([c for _, c in words])) if words else 0.0
    return {
        "text": "\n".join(" ".join(line) for line in lines),
        "words": words,
        "confidence": round(conf, 1),
        "rotate": rotate,
        "orientation_conf": osd_conf,
    }


# ---------------------------------------------------------------- the cache


def cache_root(cfg: DictConfig) -> Path | None:
    """``ocr.cache``: a folder, ``auto`` ($XDG_CACHE_HOME or ~/.cache, then docsort/ocr) or null."""
    value = cfg.ocr.cache
    if value is None:
        return None
    if str(value) == "auto":
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        return Path(base) / "docsort" / "ocr"
    if storage.is_s3(value):
        raise ConfigError("ocr.cache must be a local folder (results go to s3:// through --out)")
    return Path(str(value))


class Cache:
    """Per-page results under ``root/<engine key>/<hash[:2]>/<hash>.json`` (written atomically)."""

    def __init__(self, root: Path | None, engine: Engine):
        self.folder = None if root is None else root / engine.key()
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            info = self.folder / "engine.json"
            if not info.is_file():
                write_text_atomic(info, json.dumps(asdict(engine), indent=2))

    def _path(self, digest: str) -> Path:
        assert self.folder is not None
        return self.folder / digest[:2] / f"{digest}.json"

    def get(self, digest: str) -> dict | None:
        if self.folder is None:
            return None
        try:
            return json.loads(self._path(digest).read_text(encoding="utf-8"))
        except (OSError, ValueError):  # absent, or torn by a crash before the rename: read again
            return None

    def put(self, digest: str, result: dict) -> None:
        if self.folder is not None:
            self._path(digest).parent.mkdir(exist_ok=True)
            write_text_atomic(self._path(digest), json.dumps(result, ensure_ascii=False))


# ---------------------------------------------------------------- which pages


@dataclass(frozen=True)
class Page:
    id: str
    split: str
    path: Path
    view: str | None = None  # orientation=views: the view applied before reading


def list_pages(
    root: Path, data: str, cfg: DictConfig, splits: Sequence[str]
) -> tuple[list[Page], list[str] | None]:
    """The pages of a dataset root (``splits`` of train/test, in table order) or of an image folder."""
    from docsort.data.contract import IMAGE_SUFFIXES, image_path

    if (root / "train.csv").is_file() or (root / "sample_submission.csv").is_file():
        from docsort.data.prepare import validate_root

        meta, train, test_ids, _, _ = validate_root(root, data, cfg)
        pages = []
        for split, ids in (("train", train.ids), ("test", test_ids)):
            if split in splits:
                pages += [Page(i, split, image_path(root / split, i)) for i in ids]
        return pages, list(meta.class_names)
    if not root.is_dir():
        raise DocsortError("dataset root or image folder not found", file=data)
    files = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DocsortError("no dataset tables (train.csv) and no images in this folder", file=data)
    return [Page(p.name, "images", p) for p in files], None


def ambiguous(
    probs: Sequence[str | os.PathLike],
    class_names: Sequence[str] | None,
    groups: Sequence[Sequence[str]],
    margin: float,
) -> set[str]:
    """IDs whose top-2 classes in any of the ``probs`` tables both fall inside one group, within ``margin``."""
    if not groups:
        raise ConfigError(
            "ocr.select=ambiguous needs ocr.groups, e.g. ocr.groups=[[receipt,invoice]]"
        )
    if class_names is None:
        raise ConfigError(
            "ocr.select=ambiguous needs a dataset root (its meta.csv names the classes)"
        )
    index = {n: k for k, n in enumerate(class_names)}
    group_of: dict[int, int] = {}
    for g, names in enumerate(groups):
        for n in names:
            if n not in index:
                raise ConfigError(
                    f"ocr.groups names {n!r}, not a class; classes: {', '.join(class_names)}"
                )
            group_of[index[n]] = g
    chosen: set[str] = set()
    for table in probs:
        ids, p, _ = read_probs(table, len(class_names))
        top = np.argsort(-p, axis=1)[:, :2]
        gap = p[np.arange(len(p)), top[:, 0]] - p[np.arange(len(p)), top[:, 1]]
        for i, (a, b), d in zip(ids, top, gap, strict=True):
            if a in group_of and group_of[a] == group_of.get(b) and d <= margin:
                chosen.add(i)
    return chosen


def most_confident_views(predictions: str | os.PathLike) -> dict[str, str]:
    """Per image of a ``docsort predict`` folder: the TTA view with the highest top probability."""
    path = Path(predictions) / "views.npz"
    if not path.is_file():
        raise DocsortError(
            "no views.npz: give a `docsort predict` output folder", file=str(predictions)
        )
    z = np.load(path, allow_pickle=False)
    names = [v for v in z.files if v != "ids"]
    conf = np.stack([np.max(_softmax(z[v]), axis=1) for v in names], axis=1)
    return {str(i): names[int(k)] for i, k in zip(z["ids"], conf.argmax(1), strict=True)}


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def shard_numbers(shards: int) -> list[int]:
    """``[0, ..., shards-1]``, the blocks of a sharded run."""
    if shards < 1:
        raise ConfigError(f"shards={shards} must be at least 1")
    return list(range(shards))


def shard_of(pages: Sequence[Page], shard: int, shards: int) -> list[Page]:
    """Block ``shard`` of ``shards`` contiguous, near-equal blocks (merged back in order)."""
    if shards < 1 or not 0 <= shard < shards:
        raise ConfigError(f"shard {shard} of {shards}: need 0 <= shard < shards")
    bounds = np.linspace(0, len(pages), shards + 1).round().astype(int)
    return list(pages[bounds[shard] : bounds[shard + 1]])


# ---------------------------------------------------------------- the stage


def _workers(cfg: DictConfig) -> int:
    w = cfg.ocr.workers
    return usable_cores() if str(w) == "auto" else int(w)


@contextlib.contextmanager
def _one_thread_each() -> Iterator[None]:
    """One core per tesseract process (parallelism comes from the workers), while reading only.

    pytesseract's processes inherit this process's environment; the limit is put
    back afterwards, since OpenMP's thread limit would also throttle torch in
    later work and in every process started from here (kfp.local's tasks).
    """
    old = os.environ.get("OMP_THREAD_LIMIT")
    os.environ["OMP_THREAD_LIMIT"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("OMP_THREAD_LIMIT", None)
        else:
            os.environ["OMP_THREAD_LIMIT"] = old


def _read_all(
    pages: Sequence[Page], engine: Engine, cache: Cache, workers: int, max_pixels: int
) -> tuple[list[dict], int]:
    """Each page's result (from the cache or read now), in order; and how many came from the cache."""

    def one(page: Page) -> tuple[dict, bool]:
        data = page.path.read_bytes()
        digest = hashlib.sha256(data).hexdigest() + (f"-{page.view}" if page.view else "")
        hit = cache.get(digest)
        if hit is not None:
            return hit, True
        image = _gray(data, str(page.path), max_pixels)
        if page.view:
            image = _apply_view(image, page.view)
        result = read_page(image, engine)
        cache.put(digest, result)
        return result, False

    results: list[dict] = []
    hits = 0
    with (
        _one_thread_each(),
        Progress(len(pages), "ocr", "pages") as bar,
        ThreadPoolExecutor(max_workers=workers) as pool,
    ):
        for result, cached in pool.map(one, pages):
            results.append(result)
            hits += cached
            bar.update(1)
    return results, hits


def _record(page: Page, result: dict) -> str:
    return json.dumps(
        {"ID": page.id, "split": page.split, **result, "view": page.view}, ensure_ascii=False
    )


@stage("ocr", inputs=("data", "probs", "predictions"), folder="out")
def ocr(
    data: str | os.PathLike,
    out: str | os.PathLike,
    overrides: Sequence[str] = (),
    *,
    splits: Sequence[str] = SPLITS,
    probs: Sequence[str | os.PathLike] = (),
    predictions: str | os.PathLike | None = None,
    shard: int = 0,
    shards: int = 1,
) -> Path | str:
    """Read the pages of ``data`` (a dataset root or an image folder, local or s3://) into ``out``.

    ``probs`` (``probs.csv``/``oof.csv`` tables of the image model) choose the
    pages when ``ocr.select=ambiguous``; ``predictions`` (a ``docsort predict``
    folder) gives each page's view when ``ocr.orientation=views``.
    """
    cfg = load_config(overrides)
    o = cfg.ocr
    bad = [s for s in splits if s not in SPLITS]
    if bad or not splits:
        raise ConfigError(
            f"split {bad[0] if bad else '(none)'} is not valid; choose from: {', '.join(SPLITS)}"
        )
    if o.orientation == "views" and predictions is None:
        raise ConfigError("ocr.orientation=views needs --predictions (a `docsort predict` folder)")
    engine = Engine.from_config(cfg)
    # an s3:// dataset is mirrored beside a local --out (as prepare does), else in the temp folder
    staging = (
        Path(tempfile.gettempdir()) if storage.is_s3(out) else Path(out).parent
    ) / ".docsort-download"
    root = storage.localize(str(data), staging)
    pages, class_names = list_pages(root, str(data), cfg, splits)
    total = len(pages)
    if o.select == "ambiguous":
        if not probs:
            raise ConfigError(
                "ocr.select=ambiguous needs --probs (the image model's probs.csv or oof.csv)"
            )
        keep = ambiguous(probs, class_names, [list(g) for g in o.groups], float(o.margin))
        pages = [p for p in pages if p.id in keep]
    elif o.select == "all" and probs:
        raise ConfigError("--probs chooses pages with ocr.select=ambiguous; add it or drop --probs")
    if o.orientation == "views":
        views = most_confident_views(predictions)
        missing = [p.id for p in pages if p.id not in views]
        if missing:
            raise DocsortError(
                f"{len(missing)} pages have no prediction there, e.g. {missing[0]}",
                file=str(predictions),
            )
        pages = [Page(p.id, p.split, p.path, views[p.id]) for p in pages]
    selected = len(pages)
    found_splits = [s for s in (*SPLITS, "images") if any(p.split == s for p in pages)]
    pages = shard_of(pages, shard, shards)
    t0 = time.perf_counter()
    results, hits = _read_all(
        pages, engine, Cache(cache_root(cfg), engine), _workers(cfg), int(cfg.data.max_pixels)
    )
    seconds = time.perf_counter() - t0
    read = len(pages) - hits
    info = {
        "engine": asdict(engine),
        "select": str(o.select),
        "groups": [list(g) for g in o.groups],
        "margin": float(o.margin),
        "source": str(data),
        "splits": found_splits,
        "images": total,
        "selected": selected,
        "shard": shard,
        "shards": shards,
        "pages": len(pages),
        "read": read,
        "cached": hits,
        "seconds": round(seconds, 2),
        "seconds_per_page": round(seconds / read, 3) if read else None,
        "workers": _workers(cfg),
    }
    body = "".join(_record(p, r) + "\n" for p, r in zip(pages, results, strict=True))
    _write(out, body, info)
    rate = f", {read / seconds:.2f} pages/s" if read and seconds > 0 else ""
    say(
        f"ocr: {len(pages)} pages ({read} read, {hits} from the cache) in {fmt_seconds(seconds)}{rate}"
    )
    return out


def _write(out: str | os.PathLike, body: str, info: dict) -> None:
    if storage.is_s3(out):
        storage.write_text_atomic(storage.join(out, RESULTS), body)
        storage.write_text_atomic(storage.join(out, INFO), json.dumps(info, indent=2))
        return
    with atomic_path(Path(out), is_dir=True) as tmp:
        (tmp / RESULTS).write_text(body, encoding="utf-8")
        (tmp / INFO).write_text(json.dumps(info, indent=2), encoding="utf-8")


# ---------------------------------------------------------------- reading results back


def read_ocr(folder: str | os.PathLike) -> list[dict]:
    """The records of an ``ocr`` output folder (local or s3://), in order."""
    path = storage.join(folder, RESULTS)
    if not storage.exists(path):
        raise DocsortError(f"no {RESULTS}: give a `docsort ocr` output folder", file=str(folder))
    records = []
    for n, line in enumerate(storage.read_text(path).splitlines(), start=1):
        try:
            records.append(json.loads(line))
        except ValueError:
            raise DocsortError("not a JSON line", file=path, row=n) from None
    return records


@stage("ocr", inputs=("shards",), folder="out")
def merge_ocr(shards: Sequence[str | os.PathLike], out: str | os.PathLike) -> Path | str:
    """Join sharded ``ocr`` outputs into one, after checking they are the blocks of one run.

    Every shard must come from the same source, settings and selection, the
    shard numbers must be exactly ``0..shards-1``, and every page must appear once.
    """
    infos = [json.loads(storage.read_text(storage.join(s, INFO))) for s in shards]
    same = (
        "engine",
        "select",
        "groups",
        "margin",
        "source",
        "splits",
        "images",
        "selected",
        "shards",
    )
    for s, i in zip(shards, infos, strict=True):
        for k in same:
            if i.get(k) != infos[0].get(k):
                raise DocsortError(
                    f"shard has {k}={i.get(k)!r}, the first has {infos[0].get(k)!r}", file=str(s)
                )
    n = int(infos[0]["shards"])
    found = sorted(int(i["shard"]) for i in infos)
    if found != list(range(n)):
        raise DocsortError(
            f"shards {found} given; a run of {n} shards needs each of 0..{n - 1} once"
        )
    order = sorted(range(len(shards)), key=lambda k: int(infos[k]["shard"]))
    lines: list[str] = []
    for k in order:
        lines += storage.read_text(storage.join(shards[k], RESULTS)).splitlines()
    ids = [(r["split"], r["ID"]) for r in map(json.loads, lines)]
    if len(ids) != infos[0]["selected"] or len(set(ids)) != len(ids):
        dup = next((i for i in ids if ids.count(i) > 1), None)
        raise DocsortError(
            f"the shards hold {len(ids)} pages ({len(set(ids))} distinct), the run selected {infos[0]['selected']}"
            + (f"; {dup[1]} appears twice" if dup else "")
        )
    seconds = sum(float(i["seconds"]) for i in infos)
    read = sum(int(i["read"]) for i in infos)
    info = {**infos[0], "shard": 0, "shards": 1, "merged_from": n, "pages": len(ids), "read": read,
            "cached": sum(int(i["cached"]) for i in infos), "seconds": round(seconds, 2),
            "seconds_per_page": round(seconds / read, 3) if read else None}  # fmt: skip
    _write(out, "".join(line + "\n" for line in lines), info)
    return out
