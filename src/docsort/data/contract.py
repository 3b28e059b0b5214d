"""The data contract: read and validate a dataset root, decode images safely.

Every reader here fails with one :class:`DocsortError` line that names the
file, the row and the problem, so a broken dataset is refused before any work.
Row numbers are 1-based data rows (the header is row 0), as a spreadsheet shows
them minus one; blank lines are skipped without shifting the numbers after them.
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
from PIL import Image, ImageOps, UnidentifiedImageError

from docsort.core.csv_tables import read_csv, row_numbers
from docsort.core.errors import DocsortError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")
# Longest file-name component (in UTF-8 bytes) that common file systems accept.
MAX_NAME_BYTES = 255
# A target is a plain ASCII integer; "3.0" (a float column written by pandas) is accepted too.
_INTEGER = re.compile(r"[+-]?[0-9]+(?:\.0*)?", re.ASCII)


def check_id(value: str, *, file: str, row: int) -> str:
    """An image ID must be a plain relative file name that cannot escape its folder.

    Backslashes count as separators too, so an ID that would escape on Windows
    is refused everywhere.
    """
    v = value.strip()
    if not v:
        raise DocsortError("empty ID", file=file, row=row)
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in v):
        raise DocsortError(f"ID {v!r} contains control characters", file=file, row=row)
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        raise DocsortError(f"ID {v!r} is not valid Unicode", file=file, row=row) from None
    p = PurePosixPath(v.replace("\\", "/"))
    if p.is_absolute() or v.startswith(("/", "\\")) or (len(v) > 1 and v[1] == ":"):
        raise DocsortError(f"ID {v!r} is an absolute path", file=file, row=row)
    if ".." in p.parts:
        raise DocsortError(f"ID {v!r} contains '..'", file=file, row=row)
    if not p.parts or p.parts == (".",):
        raise DocsortError(f"ID {v!r} is not a file name", file=file, row=row)
    if any(len(part.encode("utf-8")) > MAX_NAME_BYTES for part in p.parts):
        raise DocsortError(
            f"ID {v[:40]!r}... has a name longer than {MAX_NAME_BYTES} bytes", file=file, row=row
        )
    return v


def parse_ids(df: pd.DataFrame, *, file: str) -> list[str]:
    """Validated IDs of ``df`` (column ``ID``), unique."""
    ids: list[str] = []
    seen: dict[str, int] = {}
    for row, value in zip(row_numbers(df), df["ID"].tolist(), strict=True):
        v = check_id(str(value), file=file, row=row)
        if v in seen:
            raise DocsortError(f"duplicate ID {v!r} (first at row {seen[v]})", file=file, row=row)
        seen[v] = row
        ids.append(v)
    return ids


def parse_targets(
    df: pd.DataFrame, valid: set[int] | None, *, file: str, column: str = "target"
) -> list[int]:
    """Integer targets; each must be a class of meta.csv when ``valid`` is given."""
    out: list[int] = []
    for row, value in zip(row_numbers(df), df[column].tolist(), strict=True):
        v = str(value).strip()
        if not v:
            raise DocsortError(f"empty {column}", file=file, row=row)
        if not _INTEGER.fullmatch(v):
            raise DocsortError(f"{column} {v[:40]!r} is not an integer", file=file, row=row)
        t = int(v.split(".")[0])
        if valid is not None and t not in valid:
            raise DocsortError(f"label {t} is not in meta.csv", file=file, row=row)
        out.append(t)
    return out


@dataclass(frozen=True)
class Meta:
    """Classes of a dataset: targets 0..K-1 and their names."""

    class_names: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def read_meta(path: str | Path, *, name: str | None = None) -> Meta:
    """meta.csv: ``target,class_name`` with targets exactly 0..K-1 and distinct names."""
    path = Path(path)
    name = name or str(path)
    df = read_csv(path, ("target", "class_name"), name=name)
    targets = parse_targets(df, None, file=name)
    if not targets:
        raise DocsortError("no classes", file=name)
    names = [n.strip() for n in df["class_name"].tolist()]
    first: dict[str, int] = {}
    for row, t, n in zip(row_numbers(df), targets, names, strict=True):
        if not n:
            raise DocsortError(f"empty class_name for target {t}", file=name, row=row)
        if n in first:
            raise DocsortError(
                f"class_name {n!r} is used twice (first at row {first[n]})", file=name, row=row
            )
        first[n] = row
    seen: dict[int, int] = {}
    for row, t in zip(row_numbers(df), targets, strict=True):
        if t in seen:
            raise DocsortError(f"duplicate target {t} (first at row {seen[t]})", file=name, row=row)
        seen[t] = row
    if sorted(targets) != list(range(len(targets))):
        gap = min(set(range(len(targets))) - set(targets))
        raise DocsortError(
            f"targets must be 0..{len(targets) - 1} without gaps; {gap} is missing", file=name
        )
    by_target = dict(zip(targets, names, strict=True))
    return Meta(tuple(by_target[k] for k in range(len(targets))))


@dataclass(frozen=True)
class Labelled:
    """IDs with targets read from a CSV such as train.csv."""

    ids: list[str]
    targets: list[int]
    frame: pd.DataFrame


def read_labelled(
    path: str | Path, meta: Meta | None, *, optional: tuple[str, ...] = (), name: str | None = None
) -> Labelled:
    """Read ``ID,target`` (plus ``optional`` columns) and validate IDs and labels."""
    path = Path(path)
    name = name or str(path)
    df = read_csv(path, ("ID", "target"), optional=optional, name=name)
    ids = parse_ids(df, file=name)
    valid = set(range(meta.num_classes)) if meta else None
    targets = parse_targets(df, valid, file=name)
    return Labelled(ids, targets, df)


def read_hardcases(path: str | Path, meta: Meta, *, name: str | None = None) -> pd.DataFrame:
    """hardcases.csv: ``ID,target,note,kind`` (hand-reviewed images and verdicts)."""
    path = Path(path)
    name = name or str(path)
    lab = read_labelled(path, meta, optional=("note", "kind"), name=name)
    df = lab.frame.copy()
    df["ID"] = lab.ids
    df["target"] = lab.targets
    for col in ("note", "kind"):
        if col not in df.columns:
            df[col] = ""
    kinds = {"", "hard", "model_error", "label_error", "ambiguous"}
    for row, k in zip(row_numbers(df), df["kind"].tolist(), strict=True):
        if k.strip() not in kinds:
            raise DocsortError(
                f"kind {k!r} is not one of {sorted(kinds - {''})}", file=name, row=row
            )
    df["kind"] = df["kind"].str.strip()
    return df[["ID", "target", "note", "kind"]]  # index = row - 1, as read_csv keeps it


def image_path(
    folder: Path, image_id: str, *, file: str | None = None, row: int | None = None
) -> Path:
    """Path of ``image_id`` inside ``folder``, refusing anything that resolves outside it (symlinks too)."""
    p = (folder / image_id).resolve()
    if not p.is_relative_to(folder.resolve()):
        raise DocsortError(
            f"ID {image_id!r} resolves outside {folder.name}/ (symlink?)", file=file, row=row
        )
    return p


class ImageError(DocsortError):
    """A refused image; ``problem`` is the message without the file name, for callers that add a row."""

    def __init__(self, problem: str, *, file: str):
        super().__init__(problem, file=file)
        self.problem = problem


def _let_max_pixels_decide(max_pixels: int) -> None:
    """Make ``data.max_pixels`` the limit, not PIL's default.

    PIL warns above ``Image.MAX_IMAGE_PIXELS`` and raises above twice that,
    both while opening. Pinning it to our limit keeps PIL's hard stop as a
    backstop for any other reader in the process, and its warning (which would
    be a second output line for an image we refuse anyway) is silenced.
    """
    Image.MAX_IMAGE_PIXELS = max_pixels
    bomb = Image.DecompressionBombWarning
    first = next((f for f in warnings.filters if issubclass(bomb, f[2])), None)
    if first is None or first[0] != "ignore" or first[2] is not bomb:
        warnings.filterwarnings("ignore", category=bomb)


def decode_image(
    data: bytes, *, channels: int, max_pixels: int, name: str, draft: int | None = None
) -> np.ndarray:
    """Decode bytes to uint8 HxW (channels=1) or HxWx3, refusing bombs and broken files.

    The size is checked from the header, before any pixel is decoded. 16-bit,
    palette and alpha images are accepted: 16-bit is scaled to 8 bits,
    transparency is composited over white paper. EXIF orientation is applied
    (:func:`upright`).
    """
    if not data:
        raise ImageError("empty file (0 bytes)", file=name)
    _let_max_pixels_decide(max_pixels)
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise ImageError(
                    f"image is {w}x{h} = {w * h} pixels, above data.max_pixels={max_pixels}",
                    file=name,
                )
            if draft and im.format == "JPEG":
                im.draft("L" if channels == 1 else "RGB", (draft, draft))
            im.load()
            return _to_uint8(upright(im), channels)
    except DocsortError:
        raise
    except Image.DecompressionBombError as err:
        px = re.search(r"\((\d+) pixels\)", str(err))
        size = f"{px[1]} pixels" if px else "too many pixels"
        raise ImageError(
            f"image is {size}, above data.max_pixels={max_pixels}", file=name
        ) from None
    except UnidentifiedImageError:
        raise ImageError("not an image (unrecognised format)", file=name) from None
    except Exception as err:  # noqa: BLE001 - any decoder failure on untrusted bytes is bad input
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ImageError(f"unreadable image ({detail})", file=name) from None


def upright(im: Image.Image) -> Image.Image:
    """The image as it is meant to be seen: EXIF ``Orientation`` applied.

    Phone photos and scanner apps store the pixels as the sensor saw them and
    say in EXIF how to turn them; every viewer honours that, so a person
    labels the turned page. A broken EXIF block is ignored (the pixels as stored).
    """
    try:
        return ImageOps.exif_transpose(im)
    except Exception:  # noqa: BLE001 - untrusted metadata must not refuse a readable image
        return im


def _to_uint8(im: Image.Image, channels: int) -> np.ndarray:
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
        a = np.clip(a / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        im = Image.fromarray(a, mode="L")
    if im.mode in ("PA", "LA", "La", "RGBA", "RGBa") or (
        im.mode == "P" and "transparency" in im.info
    ):
        rgba = im.convert("RGBA")
        paper = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(paper, rgba)
    target = "L" if channels == 1 else "RGB"
    if im.mode != target:
        im = im.convert(target)
    return np.asarray(im, dtype=np.uint8)


def fit_square(img: np.ndarray, size: int, mode: str) -> np.ndarray:
    """Resize to ``size`` x ``size``: ``pad`` keeps the aspect ratio on white paper, ``stretch`` does not."""
    import cv2

    h, w = img.shape[:2]
    if mode == "pad":
        scale = size / max(h, w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        small = cv2.resize(img, (nw, nh), interpolation=interp)
        out = np.full((size, size) + img.shape[2:], 255, dtype=np.uint8)
        top, left = (size - nh) // 2, (size - nw) // 2
        out[top : top + nh, left : left + nw] = small
        return out
    interp = cv2.INTER_AREA if max(h, w) > size else cv2.INTER_LINEAR
    return cv2.resize(img, (size, size), interpolation=interp)
