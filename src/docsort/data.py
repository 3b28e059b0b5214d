"""The data contract: read and validate a dataset root, decode images safely.

Every reader here fails with one :class:`DocsortError` line that names the
file, the row and the problem, so a broken dataset is refused before any work.
Row numbers are 1-based data rows (the header is row 0), as a spreadsheet shows
them minus one.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from docsort.errors import DocsortError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")


def _decode_csv(path: Path) -> str:
    if not path.is_file():
        raise DocsortError("file not found", file=str(path))
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")  # accepts a UTF-8 BOM
    except UnicodeDecodeError as err:
        raise DocsortError(
            f"not UTF-8 (byte 0x{raw[err.start]:02x} at offset {err.start}); re-save it as UTF-8",
            file=str(path),
        ) from None


def read_csv(path: str | Path, columns: tuple[str, ...], *, optional: tuple[str, ...] = ()) -> pd.DataFrame:
    """Read a CSV as strings and check it has exactly ``columns`` (plus ``optional`` ones)."""
    path = Path(path)
    text = _decode_csv(path)
    try:
        df = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise DocsortError(f"cannot parse CSV: {str(err).splitlines()[0]}", file=str(path)) from None
    got = [c.strip() for c in df.columns]
    df.columns = got
    missing = [c for c in columns if c not in got]
    if missing:
        raise DocsortError(f"missing column(s) {', '.join(missing)}; has {', '.join(got)}", file=str(path))
    extra = [c for c in got if c not in columns and c not in optional]
    if extra:
        raise DocsortError(
            f"unexpected column(s) {', '.join(extra)}; expected {', '.join(columns + optional)}",
            file=str(path),
        )
    return df


def check_id(value: str, *, file: str, row: int) -> str:
    """An image ID must be a plain relative file name that cannot escape its folder."""
    v = value.strip()
    if not v:
        raise DocsortError("empty ID", file=file, row=row)
    p = PurePosixPath(v.replace("\\", "/"))
    if p.is_absolute() or v.startswith(("/", "\\")) or (len(v) > 1 and v[1] == ":"):
        raise DocsortError(f"ID {v!r} is an absolute path", file=file, row=row)
    if ".." in p.parts:
        raise DocsortError(f"ID {v!r} contains '..'", file=file, row=row)
    if any(ord(ch) < 32 for ch in v):
        raise DocsortError(f"ID {v!r} contains control characters", file=file, row=row)
    return v


def parse_ids(df: pd.DataFrame, *, file: str) -> list[str]:
    """Validated IDs of ``df`` (column ``ID``), unique."""
    ids: list[str] = []
    seen: dict[str, int] = {}
    for row, value in enumerate(df["ID"].tolist(), start=1):
        v = check_id(value, file=file, row=row)
        if v in seen:
            raise DocsortError(f"duplicate ID {v!r} (first at row {seen[v]})", file=file, row=row)
        seen[v] = row
        ids.append(v)
    return ids


def parse_targets(df: pd.DataFrame, valid: set[int] | None, *, file: str, column: str = "target") -> list[int]:
    """Integer targets; each must be a class of meta.csv when ``valid`` is given."""
    out: list[int] = []
    for row, value in enumerate(df[column].tolist(), start=1):
        v = value.strip()
        if not v:
            raise DocsortError(f"empty {column}", file=file, row=row)
        try:
            t = int(v)
        except ValueError:
            try:
                f = float(v)
            except ValueError:
                f = float("nan")
            if not f.is_integer():
                raise DocsortError(f"{column} {v!r} is not an integer", file=file, row=row) from None
            t = int(f)
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


def read_meta(path: str | Path) -> Meta:
    """meta.csv: ``target,class_name`` with targets exactly 0..K-1."""
    path = Path(path)
    df = read_csv(path, ("target", "class_name"))
    targets = parse_targets(df, None, file=str(path))
    if not targets:
        raise DocsortError("no classes", file=str(path))
    names = [n.strip() for n in df["class_name"].tolist()]
    for row, (t, n) in enumerate(zip(targets, names, strict=True), start=1):
        if not n:
            raise DocsortError(f"empty class_name for target {t}", file=str(path), row=row)
    if sorted(targets) != list(range(len(targets))):
        dup = next((t for t in targets if targets.count(t) > 1), None)
        problem = f"duplicate target {dup}" if dup is not None else "targets must be 0..K-1"
        raise DocsortError(problem, file=str(path))
    by_target = dict(zip(targets, names, strict=True))
    return Meta(tuple(by_target[k] for k in range(len(targets))))


@dataclass(frozen=True)
class Labelled:
    """IDs with targets read from a CSV such as train.csv."""

    ids: list[str]
    targets: list[int]
    frame: pd.DataFrame


def read_labelled(path: str | Path, meta: Meta | None, *, optional: tuple[str, ...] = ()) -> Labelled:
    """Read ``ID,target`` (plus ``optional`` columns) and validate IDs and labels."""
    path = Path(path)
    df = read_csv(path, ("ID", "target"), optional=optional)
    ids = parse_ids(df, file=str(path))
    valid = set(range(meta.num_classes)) if meta else None
    targets = parse_targets(df, valid, file=str(path))
    return Labelled(ids, targets, df)


def read_hardcases(path: str | Path, meta: Meta) -> pd.DataFrame:
    """hardcases.csv: ``ID,target,note,kind`` (hand-reviewed images and verdicts)."""
    path = Path(path)
    lab = read_labelled(path, meta, optional=("note", "kind"))
    df = lab.frame.copy()
    df["ID"] = lab.ids
    df["target"] = lab.targets
    for col in ("note", "kind"):
        if col not in df.columns:
            df[col] = ""
    kinds = {"", "hard", "model_error", "label_error", "ambiguous"}
    for row, k in enumerate(df["kind"].tolist(), start=1):
        if k not in kinds:
            raise DocsortError(f"kind {k!r} is not one of {sorted(kinds - {''})}", file=str(path), row=row)
    return df[["ID", "target", "note", "kind"]]


def image_path(folder: Path, image_id: str) -> Path:
    """Path of ``image_id`` inside ``folder``, refusing anything that resolves outside it."""
    p = (folder / image_id).resolve()
    if not p.is_relative_to(folder.resolve()):
        raise DocsortError(f"ID {image_id!r} escapes the folder {folder}")
    return p


def decode_image(data: bytes, *, channels: int, max_pixels: int, name: str, draft: int | None = None) -> np.ndarray:
    """Decode bytes to uint8 HxW (channels=1) or HxWx3, refusing bombs and broken files.

    16-bit, palette and alpha images are accepted: 16-bit is scaled to 8 bits,
    transparency is composited over white paper.
    """
    if not data:
        raise DocsortError("empty file (0 bytes)", file=name)
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise DocsortError(
                    f"image is {w}x{h} = {w * h} pixels, above data.max_pixels={max_pixels}", file=name
                )
            if draft and im.format == "JPEG":
                im.draft("L" if channels == 1 else "RGB", (draft, draft))
            im.load()
            return _to_uint8(im, channels)
    except DocsortError:
        raise
    except UnidentifiedImageError:
        raise DocsortError("not an image (unrecognised format)", file=name) from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DocsortError(f"unreadable image ({err})", file=name) from None


def _to_uint8(im: Image.Image, channels: int) -> np.ndarray:
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
        a = np.clip(a / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        im = Image.fromarray(a, mode="L")
    if im.mode in ("P", "PA", "LA", "RGBA") or (im.mode == "P" and "transparency" in im.info):
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
