"""Bad input: every command that reads data refuses it with ONE line naming file, row and problem,
exits 2 and leaves no output behind.

The cases are data (``PREPARE_CASES``, ``SUBMISSION_CASES``, ``CONFIG_CASES``) so that
``bench/bad_inputs.py`` can print the table of messages from the same definitions.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import struct
import subprocess
import sys
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from docsort.core.csv_tables import read_csv
from docsort.core.errors import DocsortError
from docsort.data.contract import check_id, image_path, parse_ids, parse_targets, read_labelled
from tests.conftest import TINY
from tests.scenario import one_line, run_cli

HYPOTHESIS = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


# ---------------------------------------------------------------- editing a copy of the sample data


def read_rows(path: Path) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def write_rows(path: Path, rows: list[list[str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f, lineterminator="\n").writerows(rows)


def set_cell(root: Path, file: str, row: int, column: str, value: str) -> None:
    """Set data row ``row`` (1-based; the header is row 0) of ``file``."""
    rows = read_rows(root / file)
    rows[row][rows[0].index(column)] = value
    write_rows(root / file, rows)


def train_id(root: Path, row: int) -> str:
    return read_rows(root / "train.csv")[row][0]


def put_image(root: Path, row: int, data: bytes) -> None:
    (root / "train" / train_id(root, row)).write_bytes(data)


def png_claiming(width: int, height: int) -> bytes:
    """A ~100-byte PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def image_bytes(im: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _drop_class_to_one(root: Path) -> None:
    rows = read_rows(root / "train.csv")
    keep = [rows[0]]
    seen = False
    for r in rows[1:]:
        if r[1] == "0":
            if seen:
                continue
            seen = True
        keep.append(r)
    write_rows(root / "train.csv", keep)


def _empty_test_folder(root: Path) -> None:
    for p in (root / "test").iterdir():
        p.unlink()


def _symlink_out(root: Path) -> None:
    target = root.parent / "outside.jpg"
    shutil.copyfile(root / "train" / train_id(root, 2), target)
    link = root / "train" / train_id(root, 2)
    link.unlink()
    link.symlink_to(target)


def _encode(root: Path, file: str, encoding: str) -> None:
    text = (root / file).read_text(encoding="utf-8")
    if file == "meta.csv":
        text = text.replace("account_number", "numéro_de_compte")
    (root / file).write_bytes(text.encode(encoding))


def _edit_line(root: Path, file: str, row: int, fn: Callable[[str], str]) -> None:
    lines = (root / file).read_text(encoding="utf-8").splitlines()
    lines[row] = fn(lines[row])
    (root / file).write_text("\n".join(lines) + "\n", encoding="utf-8")


def _append(root: Path, file: str, line: str) -> None:
    with (root / file).open("a", encoding="utf-8") as f:
        f.write(line + "\n")


@dataclass(frozen=True)
class Case:
    """One kind of bad input: how to break a copy of the data, and what the message must say."""

    label: str
    expect: tuple[str, ...]  # substrings of the one-line message: file, row, problem
    breaks: Callable[[Path], None] | None = None
    overrides: tuple[str, ...] = ()
    command: str = "prepare"
    extra: dict = field(default_factory=dict)


PREPARE_CASES: list[Case] = [
    Case("train.csv: a required column missing (`ID,label`)", ("train.csv:", "missing column(s) target"),
         lambda r: set_cell(r, "train.csv", 0, "target", "label")),
    Case("train.csv: an extra column", ("train.csv:", "unexpected column(s) notes"),
         lambda r: write_rows(r / "train.csv", [row + (["notes"] if n == 0 else ["x"]) for n, row in enumerate(read_rows(r / "train.csv"))])),
    Case("train.csv: trailing comma on every line", ("train.csv:", "unnamed: trailing comma?"),
         lambda r: (r / "train.csv").write_text("".join(ln + ",\n" for ln in (r / "train.csv").read_text().splitlines()))),
    Case("train.csv: a row with three fields", ("train.csv row 4:", "has 3 fields, the header has 2"),
         lambda r: _edit_line(r, "train.csv", 4, lambda ln: ln + ",7")),
    Case("train.csv: header only", ("train.csv:", "no training rows"),
         lambda r: (r / "train.csv").write_text("ID,target\n")),
    Case("train.csv: empty file", ("train.csv:", "empty file (no header)"),
         lambda r: (r / "train.csv").write_text("")),
    Case("train.csv: duplicate ID", ("train.csv row 5:", "duplicate ID", "first at row 2"),
         lambda r: set_cell(r, "train.csv", 5, "ID", train_id(r, 2))),
    Case("train.csv: empty target", ("train.csv row 3:", "empty target"),
         lambda r: set_cell(r, "train.csv", 3, "target", "")),
    Case("train.csv: non-numeric target", ("train.csv row 3:", "target 'seven' is not an integer"),
         lambda r: set_cell(r, "train.csv", 3, "target", "seven")),
    Case("train.csv: fractional target `2.5`", ("train.csv row 3:", "target '2.5' is not an integer"),
         lambda r: set_cell(r, "train.csv", 3, "target", "2.5")),
    Case("train.csv: label absent from meta.csv", ("train.csv row 2:", "label 17 is not in meta.csv"),
         lambda r: set_cell(r, "train.csv", 2, "target", "17")),
    Case("train.csv: blank lines before a bad row (rows counted as a spreadsheet shows them)", ("train.csv row 8:", "target 'x' is not an integer"),
         lambda r: (set_cell(r, "train.csv", 6, "target", "x"),
                    (r / "train.csv").write_text((r / "train.csv").read_text().replace("\n", "\n\n", 2)))),
    Case("train.csv: ID is an absolute path", ("train.csv row 2:", "'/etc/passwd' is an absolute path"),
         lambda r: set_cell(r, "train.csv", 2, "ID", "/etc/passwd")),
    Case("train.csv: ID is a Windows absolute path", ("train.csv row 2:", "is an absolute path"),
         lambda r: set_cell(r, "train.csv", 2, "ID", "C:\\Windows\\win.ini")),
    Case("train.csv: ID contains `..`", ("train.csv row 2:", "contains '..'"),
         lambda r: set_cell(r, "train.csv", 2, "ID", "../test/" + train_id(r, 2))),
    Case("train.csv: ID contains `..\\` (Windows separator)", ("train.csv row 2:", "contains '..'"),
         lambda r: set_cell(r, "train.csv", 2, "ID", "..\\secret.jpg")),
    Case("train.csv: ID with a control character (tab)", ("train.csv row 2:", "contains control characters"),
         lambda r: set_cell(r, "train.csv", 2, "ID", "a\tb.jpg")),
    Case("train/: image is a symlink to a file outside the folder", ("train.csv row 2:", "resolves outside train/"), _symlink_out),
    Case("train/: missing image", ("train.csv row 4:", "not found in train/"),
         lambda r: (r / "train" / train_id(r, 4)).unlink()),
    Case("train/: zero-byte JPEG", ("train.csv row 4:", "empty file (0 bytes)"),
         lambda r: put_image(r, 4, b"")),
    Case("train/: truncated JPEG (first half only)", ("train.csv row 4:", "unreadable image (Truncated File Read)"),
         lambda r: put_image(r, 4, (r / "train" / train_id(r, 4)).read_bytes()[:600])),
    Case("train/: a text file named .jpg", ("train.csv row 4:", "not an image (unrecognised format)"),
         lambda r: put_image(r, 4, b"this is a text file, not a picture\n" * 20)),
    Case("train/: decompression bomb (100-byte PNG claiming 50000x50000)", ("train.csv row 4:", "2500000000 pixels, above data.max_pixels=89478485"),
         lambda r: put_image(r, 4, png_claiming(50_000, 50_000))),
    Case("train/: image above a lowered data.max_pixels=10000", ("train.csv row 1:", "pixels, above data.max_pixels=10000"),
         None, overrides=("data.max_pixels=10000",)),
    Case("meta.csv: Windows-1252 encoded", ("meta.csv row 1:", "not UTF-8 (byte 0xe9)", "re-save it as UTF-8"),
         lambda r: _encode(r, "meta.csv", "cp1252")),
    Case("train.csv: UTF-16 encoded", ("train.csv:", "UTF-16"),
         lambda r: _encode(r, "train.csv", "utf-16")),
    Case("meta.csv: duplicate target", ("meta.csv row 3:", "duplicate target 1 (first at row 2)"),
         lambda r: set_cell(r, "meta.csv", 3, "target", "1")),
    Case("meta.csv: duplicate class name", ("meta.csv row 3:", "used twice"),
         lambda r: set_cell(r, "meta.csv", 3, "class_name", read_rows(r / "meta.csv")[2][1])),
    Case("meta.csv: targets with a gap", ("meta.csv:", "0..16 without gaps; 16 is missing"),
         lambda r: set_cell(r, "meta.csv", 17, "target", "40")),
    Case("a class with fewer images than folds", ("train.csv:", "class 0 (account_number) has 1 images, fewer than data.num_folds=2"),
         _drop_class_to_one),
    Case("test/: empty folder", ("test:", "folder is empty or missing"), _empty_test_folder),
    Case("sample_submission.csv lists an image test/ lacks", ("sample_submission.csv row 3:", "not found in test/ (1 missing)"),
         lambda r: (r / "test" / read_rows(r / "sample_submission.csv")[3][0]).unlink()),
    Case("test/ has an image sample_submission.csv lacks", ("sample_submission.csv:", "test/zz_extra.jpg is not listed"),
         lambda r: shutil.copyfile(r / "test" / read_rows(r / "sample_submission.csv")[1][0], r / "test" / "zz_extra.jpg")),
    Case("sample_submission.csv: duplicate ID", ("sample_submission.csv row 4:", "duplicate ID"),
         lambda r: set_cell(r, "sample_submission.csv", 4, "ID", read_rows(r / "sample_submission.csv")[1][0])),
    Case("hardcases.csv: ID that is neither a test nor a train image", ("hardcases.csv row ", "'ghost.jpg' is neither a test image nor in train.csv"),
         lambda r: _append(r, "hardcases.csv", "ghost.jpg,1,,hard")),
    Case("hardcases.csv: unknown kind", ("hardcases.csv row ", "kind 'oops' is not one of"),
         lambda r: _append(r, "hardcases.csv", f"{read_rows(r / 'sample_submission.csv')[1][0]},1,,oops")),
    Case("train.csv: data.group_column names a missing column", ("train.csv:", "data.group_column=writer is not a column"), None,
         overrides=("data.group_column=writer",)),
]  # fmt: skip


def _probs(prepared: Path, *, edit: Callable[[pd.DataFrame], pd.DataFrame]) -> pd.DataFrame:
    ids = pd.read_csv(prepared / "test.csv", dtype=str)["ID"].tolist()
    k = len(pd.read_csv(prepared / "meta.csv"))
    p = np.full((len(ids), k), 1.0 / k)
    df = pd.DataFrame(p, columns=[f"p{j}" for j in range(k)])
    df.insert(0, "ID", ids)
    return edit(df)


def _set(df: pd.DataFrame, row: int, col: str, value) -> pd.DataFrame:
    df = df.astype({col: object})
    df.loc[row - 1, col] = value
    return df


SUBMISSION_CASES: list[Case] = [
    Case("probs.csv: a test ID missing", ("probs.csv:", "1 IDs missing"), extra={"edit": lambda d: d.iloc[1:]}),
    Case("probs.csv: duplicate ID", ("probs.csv row 3:", "duplicate ID", "first at row 1"),
         extra={"edit": lambda d: _set(d, 3, "ID", d["ID"][0])}),
    Case("probs.csv: an ID not in sample_submission.csv", ("probs.csv row 35:", "'stray.jpg' is not in sample_submission.csv"),
         extra={"edit": lambda d: pd.concat([d, d.iloc[:1].assign(ID="stray.jpg")], ignore_index=True)}),
    Case("probs.csv: NaN probability", ("probs.csv row 2:", "p4=nan is not a probability"),
         extra={"edit": lambda d: _set(d, 2, "p4", float("nan"))}),
    Case("probs.csv: negative probability", ("probs.csv row 2:", "p0=-0.5 is not a probability"),
         extra={"edit": lambda d: _set(d, 2, "p0", -0.5)}),
    Case("probs.csv: non-numeric probability", ("probs.csv row 2:", "p1='high' is not a number"),
         extra={"edit": lambda d: _set(d, 2, "p1", "high")}),
    Case("probs.csv: one class too few", ("probs.csv:", "has 16 probability columns, the data has 17 classes"),
         extra={"edit": lambda d: d.drop(columns=["p16"])}),
    Case("probs.csv: a class column missing in the middle", ("probs.csv:", "p3 is missing"),
         extra={"edit": lambda d: d.drop(columns=["p3"])}),
    Case("probs.csv: all zeros", ("probs.csv row 1:", "sum to 0, not 1 (tolerance 0.001; 34 such rows)"),
         extra={"edit": lambda d: d.assign(**{c: 0.0 for c in d.columns[1:]})}),
    Case("probs.csv: rows summing to 15.3", ("probs.csv row 1:", "sum to 15.3, not 1"),
         extra={"edit": lambda d: d.assign(**{c: d[c] * 15.3 for c in d.columns[1:]})}),
    Case("probs.csv: one row not summing to 1", ("probs.csv row 5:", "sum to 1.1, not 1", "1 such rows"),
         extra={"edit": lambda d: _set(d, 5, "p0", d["p0"][4] + 0.1)}),
    Case("probs.csv: infinite probability", ("probs.csv row 2:", "p1=inf is not a probability"),
         extra={"edit": lambda d: _set(d, 2, "p1", float("inf"))}),
    Case("probs.csv: a blank ID", ("probs.csv row 2:", "empty ID"),
         extra={"edit": lambda d: _set(d, 2, "ID", "")}),
    Case("probs.csv: not a probability table", ("probs.csv:", "needs ID and p0..pK"),
         extra={"edit": lambda d: d.rename(columns={"ID": "image"}).iloc[:, :1]}),
    Case("--candidate with a path in it", ("candidate name '../x'",), extra={"edit": lambda d: d, "candidate": "../x"}),
]  # fmt: skip

CONFIG_CASES: list[Case] = [
    Case("config: unknown model name (`model.name=resnet1`)", ("model.name='resnet1' is not valid; choose from: resnet18", "presets: model="),
         overrides=("model.name=resnet1",), command="train"),
    Case("config: unknown model preset (`model=convnxt_nano`)", ("model='convnxt_nano' is not valid; choose from: convnext_nano",),
         overrides=("model=convnxt_nano",), command="train"),
    Case("config: negative epochs", ("train.epochs=-3 must be >= 1",), overrides=("train.epochs=-3",), command="train"),
    Case("config: epochs not a number", ("train.epochs='many' must be an integer",), overrides=("train.epochs=many",), command="train"),
    Case("config: unknown TTA view", ("tta.views='rot45' is not valid; choose from: identity, rot90",),
         overrides=("tta.views=[identity,rot45]",), command="predict"),
    Case("config: TTA views not a list", ("must be a list, e.g. tta.views=[rot90]",), overrides=("tta.views=rot90",), command="predict"),
    Case("config: unknown key", ("epochs is not a docsort setting; did you mean train.epochs",), overrides=("epochs=3",), command="prepare"),
    Case("config: unknown key added with +", ("train.foo is not a docsort setting",), overrides=("+train.foo=1",), command="train"),
    Case("config: data.max_pixels=0", ("data.max_pixels=0 must be >= 1",), overrides=("data.max_pixels=0",), command="prepare"),
    Case("config: label smoothing out of range", ("train.label_smoothing=5 must be in [0, 1)",),
         overrides=("train.label_smoothing=5",), command="train"),
    Case("config: EMA decay out of range", ("train.ema_decay=2 must be in [0, 1)",), overrides=("train.ema_decay=2",), command="train"),
    Case("config: threads not a number", ("threads='abc' must be an integer >= 1 or null",), overrides=("threads=abc",), command="train"),
    Case("config: DataLoader workers not a number", ("train.num_workers='abc' must be an integer >= 0 or auto",),
         overrides=("train.num_workers=abc",), command="train"),
    Case("config: TTA batch size not a number", ("tta.batch_size='abc' must be an integer >= 1 or auto",),
         overrides=("tta.batch_size=abc",), command="predict"),
    Case("config: fold outside the folds", ("fold=7 is not valid; choose from: 0, 1, 2, 3, 4, all, none",), overrides=("fold=7",), command="train"),
    Case("config: a switch that is not true/false", ("train.channels_last='yes' must be true or false",),
         overrides=("train.channels_last=yes",), command="train"),
]  # fmt: skip


def prepare_argv(root: Path, out: Path, case: Case) -> list[str]:
    return ["prepare", str(root), "--out", str(out), *TINY, *case.overrides]


def submission_argv(prepared: Path, work: Path, case: Case) -> list[str]:
    probs = work / "probs.csv"
    _probs(prepared, edit=case.extra["edit"]).to_csv(probs, index=False)
    return [
        "submission",
        "--prepared",
        str(prepared),
        "--probs",
        str(probs),
        "--out",
        str(work / "out"),
        "--candidate",
        case.extra.get("candidate", "c1"),
    ]


def config_argv(root: Path, prepared: Path, work: Path, case: Case) -> list[str]:
    out = str(work / "out")
    if case.command == "train":
        return ["train", "--prepared", str(prepared), "--out", out, *case.overrides]
    if case.command == "predict":
        return [
            "predict",
            "--prepared",
            str(prepared),
            "--model",
            str(root),
            "--out",
            out,
            *case.overrides,
        ]
    return ["prepare", str(root), "--out", out, *TINY, *case.overrides]


def _ids(cases: list[Case]) -> list[str]:
    return [
        "".join(ch if ch.isalnum() else "-" for ch in c.label.lower()).strip("-")[:60]
        for c in cases
    ]


# ---------------------------------------------------------------- the tests


@pytest.fixture
def data_copy(sample_root: Path, tmp_path: Path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(sample_root, root)
    return root


def assert_refused(
    rc: int, stderr: str, expect: tuple[str, ...], work: Path, before: set[str]
) -> str:
    msg = one_line(stderr)
    assert rc == 2, msg
    for part in expect:
        assert part in msg, f"{part!r} not in {msg!r}"
    assert {p.name for p in work.iterdir()} == before, "output (or a temporary) left behind"
    return msg


@pytest.mark.parametrize("case", PREPARE_CASES, ids=_ids(PREPARE_CASES))
def test_prepare_refuses(case: Case, data_copy: Path, tmp_path: Path):
    if case.breaks:
        case.breaks(data_copy)
    work = tmp_path / "work"
    work.mkdir()
    rc, _, err = run_cli(*prepare_argv(data_copy, work / "prepared", case))
    assert_refused(rc, err, case.expect, work, set())


@pytest.mark.parametrize("case", SUBMISSION_CASES, ids=_ids(SUBMISSION_CASES))
def test_submission_refuses(case: Case, prepared_root: Path, tmp_path: Path):
    argv = submission_argv(prepared_root, tmp_path, case)
    rc, _, err = run_cli(*argv)
    assert_refused(rc, err, case.expect, tmp_path, {"probs.csv"})


@pytest.mark.parametrize("case", CONFIG_CASES, ids=_ids(CONFIG_CASES))
def test_invalid_config_fails_before_any_work(
    case: Case, sample_root: Path, prepared_root: Path, tmp_path: Path
):
    # predict is pointed at a model folder that does not exist: the config must be refused first.
    rc, _, err = run_cli(*config_argv(sample_root, prepared_root, tmp_path, case))
    assert_refused(rc, err, case.expect, tmp_path, set())


def test_other_commands_refuse_wrong_folders_in_one_line(
    sample_root: Path, prepared_root: Path, tmp_path: Path
):
    """train/predict/ensemble/hardcases given the wrong kind of folder: one line, exit 2, nothing written."""
    out = tmp_path / "out"
    cases = [
        (["train", "--prepared", str(sample_root), "--out", str(out)], "not a prepared folder"),
        (
            [
                "predict",
                "--prepared",
                str(prepared_root),
                "--model",
                str(sample_root),
                "--out",
                str(out),
            ],
            "not a model folder",
        ),
        (["ensemble", str(sample_root), "--out", str(out)], "not found"),
        (
            [
                "hardcases",
                "compare",
                str(sample_root),
                "--prepared",
                str(prepared_root),
                "--out",
                str(out),
            ],
            str(sample_root),
        ),
    ]
    for argv, expect in cases:
        rc, _, err = run_cli(*argv)
        assert_refused(rc, err, (expect,), tmp_path, set())


def test_bom_crlf_and_blank_lines_are_accepted(data_copy: Path, tmp_path: Path):
    """A UTF-8 BOM (Excel's "CSV UTF-8"), CRLF line ends and blank lines are not errors."""
    for name in ("train.csv", "meta.csv", "sample_submission.csv"):
        text = (data_copy / name).read_text(encoding="utf-8")
        (data_copy / name).write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n\r\n").encode())
    rc, out, err = run_cli(*prepare_argv(data_copy, tmp_path / "prep", Case("", ())))
    assert rc == 0, err
    index = pd.read_csv(tmp_path / "prep" / "index.csv", dtype=str)
    assert len(index) == len([r for r in read_rows(data_copy / "train.csv") if r]) - 1


def test_16bit_palette_and_alpha_images_are_converted(data_copy: Path, tmp_path: Path):
    """Accepted and converted: 16-bit gray, palette (with a transparent index), RGBA, LA, CMYK and 1-bit."""
    side = 64
    gray16 = Image.fromarray(np.full((side, side), 40000, dtype=np.uint16))
    pal = Image.new("P", (side, side), 1)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.info["transparency"] = 1  # every pixel transparent -> white paper
    rgba = Image.new("RGBA", (side, side), (0, 0, 0, 128))  # half-transparent black -> mid grey
    la = Image.new("LA", (side, side), (0, 0))  # fully transparent -> white
    cmyk = Image.new("CMYK", (side, side), (0, 0, 0, 255))  # black ink
    bilevel = Image.new("1", (side, side), 0)  # black
    images = {
        2: (image_bytes(gray16), 156),
        3: (image_bytes(pal, transparency=1), 255),
        4: (image_bytes(rgba), 127),
        5: (image_bytes(la), 255),
        6: (image_bytes(cmyk, "JPEG"), 0),
        7: (image_bytes(bilevel, "TIFF"), 0),
    }
    assert Image.open(io.BytesIO(images[2][0])).mode.startswith("I")
    for row, (data, _) in images.items():
        put_image(data_copy, row, data)
    rc, _, err = run_cli(*prepare_argv(data_copy, tmp_path / "prep", Case("", ())))
    assert rc == 0, err
    from docsort.data.prepared import Prepared

    prep = Prepared(tmp_path / "prep")
    cache = prep.images("train")
    index = prep.index["ID"].tolist()
    for row, (_, expected) in images.items():
        img = np.asarray(cache[index.index(train_id(data_copy, row))])
        assert img.dtype == np.uint8 and img.shape == (48, 48)
        assert abs(float(img.mean()) - expected) <= 3, (row, img.mean(), expected)


def test_our_pixel_limit_decides_not_pils(
    data_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """PIL's own bomb guard (a warning above MAX_IMAGE_PIXELS, an error above twice that) must not
    refuse images data.max_pixels allows, nor print a warning for the ones it refuses."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # far below the sample images (~50 000 px)
    rc, _, err = run_cli(
        *prepare_argv(
            data_copy, tmp_path / "prep", Case("", (), overrides=("data.max_pixels=1000000",))
        )
    )
    assert rc == 0, err
    assert Image.MAX_IMAGE_PIXELS == 1_000_000  # PIL's guard now follows ours, as a backstop

    put_image(
        data_copy, 4, image_bytes(Image.new("L", (1500, 1000), 255))
    )  # 1.5 Mpx: between 1x and 2x our limit
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        rc, _, err = run_cli(
            *prepare_argv(
                data_copy, tmp_path / "prep2", Case("", (), overrides=("data.max_pixels=1000000",))
            )
        )
    assert "1500x1000 = 1500000 pixels, above data.max_pixels=1000000" in one_line(err)
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]


def test_failed_prepare_keeps_the_previous_complete_output(data_copy: Path, tmp_path: Path):
    out = tmp_path / "prep"
    assert run_cli(*prepare_argv(data_copy, out, Case("", ())))[0] == 0
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    put_image(data_copy, 4, b"")
    rc, _, err = run_cli(*prepare_argv(data_copy, out, Case("", ())))
    assert rc == 2 and "empty file" in one_line(err)
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "prep"]


@pytest.mark.slow  # `make test-slow`
def test_s3_dataset_messages_name_the_s3_uri(s3_server, sample_root: Path, tmp_path: Path):
    from docsort.core import storage

    root = tmp_path / "data"
    shutil.copytree(sample_root, root)
    set_cell(root, "train.csv", 3, "target", "seven")
    storage.upload_dir(root, f"s3://{s3_server.bucket}/ds")
    rc, _, err = run_cli(
        "prepare", f"s3://{s3_server.bucket}/ds", "--out", str(tmp_path / "work" / "prep"), *TINY
    )
    msg = one_line(err)
    assert rc == 2 and msg.startswith(
        f"s3://{s3_server.bucket}/ds/train.csv row 3: target 'seven'"
    ), msg
    assert not (tmp_path / "work" / "prep").exists()


@pytest.mark.slow  # `make test-slow`
@pytest.mark.parametrize(
    "argv_tail, expect",
    [
        (("data.max_pixels=100000",), "pixels, above data.max_pixels=100000"),
        (("model.name=resnet1",), "model.name='resnet1' is not valid; choose from: resnet18"),
    ],
    ids=["bomb", "config"],
)
def test_cli_process_prints_one_line_and_exits_2(
    argv_tail, expect, data_copy: Path, tmp_path: Path
):
    """The real console entry point in its own process: nothing but one line on stderr (no warnings)."""
    put_image(data_copy, 4, png_claiming(400, 400))
    env = {**os.environ, "PYTHONWARNINGS": "default"}
    proc = subprocess.run(
        [sys.executable, "-m", "docsort.cli.main", "prepare", str(data_copy), "--out", str(tmp_path / "prep"), *TINY, *argv_tail],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert expect in one_line(proc.stderr)
    assert not (tmp_path / "prep").exists()


# ---------------------------------------------------------------- property-based: CSV and ID parsing


def _inside(base: str, rel: str) -> bool:
    import posixpath

    joined = posixpath.normpath(posixpath.join(base, rel))
    return joined.startswith(base.rstrip("/") + "/")


@HYPOTHESIS
@given(value=st.text(max_size=60))
def test_check_id_never_escapes_the_folder(value: str, tmp_path: Path):
    try:
        v = check_id(value, file="train.csv", row=1)
    except DocsortError as err:
        assert str(err).startswith("train.csv row 1: ")
        return
    assert v and v == v.strip()
    assert _inside("/data/train", v)
    assert _inside("/data/train", v.replace("\\", "/"))  # the same ID read on Windows
    folder = tmp_path / "train"
    folder.mkdir(exist_ok=True)
    assert image_path(folder, v).is_relative_to(folder.resolve())


_SEP_HEAVY = st.text(alphabet=st.sampled_from(list("./\\:~a_ \x00")), max_size=20)


@HYPOTHESIS
@given(_SEP_HEAVY)
def test_check_id_on_separator_soup(value: str):
    """Strings made of separators and dots, where escapes hide."""
    try:
        v = check_id(value, file="f", row=1)
    except DocsortError as err:
        assert str(err).startswith("f row 1: ") and "\n" not in str(err)
        return
    assert v == value.strip() and "\x00" not in v
    assert _inside("/data/train", v.replace("\\", "/"))


@HYPOTHESIS
@given(st.lists(st.tuples(st.text(max_size=20), st.text(max_size=8)), max_size=8))
def test_parse_ids_and_targets_only_raise_docsort_error(rows):
    """Either a one-line refusal naming a row, or exactly the rows' values, validated."""
    df = (
        pd.DataFrame(rows, columns=["ID", "target"])
        if rows
        else pd.DataFrame({"ID": [], "target": []})
    )
    try:
        ids = parse_ids(df, file="t.csv")
    except DocsortError as err:
        _assert_names_a_row(err, len(rows))
    else:
        assert ids == [check_id(i, file="t.csv", row=1) for i, _ in rows]
        assert len(set(ids)) == len(ids)
    try:
        targets = parse_targets(df, set(range(5)), file="t.csv")
    except DocsortError as err:
        _assert_names_a_row(err, len(rows))
    else:
        assert targets == [int(t.strip().split(".")[0]) for _, t in rows]
        assert set(targets) <= set(range(5))


def _assert_names_a_row(err: DocsortError, n_rows: int) -> None:
    msg = str(err)
    assert "\n" not in msg and msg.startswith("t.csv row "), msg
    assert 1 <= int(msg.removeprefix("t.csv row ").split(":")[0]) <= n_rows, msg


@HYPOTHESIS
@given(data=st.binary(max_size=300))
def test_read_csv_on_arbitrary_bytes_only_raises_docsort_error(data: bytes, tmp_path: Path):
    path = tmp_path / "any.csv"
    path.write_bytes(data)
    try:
        df = read_csv(path, ("ID", "target"), name="any.csv")
        ids = parse_ids(df, file="any.csv")
        targets = parse_targets(df, None, file="any.csv")
    except DocsortError as err:
        assert "\n" not in str(err) and str(err).startswith("any.csv")
        return
    assert list(df.columns) == ["ID", "target"]
    assert len(ids) == len(set(ids)) == len(targets) == len(df)
    assert all(isinstance(t, int) for t in targets)


@HYPOTHESIS
@given(
    lines=st.lists(
        st.text(alphabet=st.characters(categories=["L", "N", "P", "S", "Zs"]), max_size=30),
        max_size=12,
    )
)
def test_read_csv_on_arbitrary_text_rows_only_raises_docsort_error(
    lines: list[str], tmp_path: Path
):
    path = tmp_path / "any.csv"
    path.write_text("ID,target\n" + "\n".join(lines), encoding="utf-8")
    try:
        lab = read_labelled(path, None, name="any.csv")
    except DocsortError as err:
        assert "\n" not in str(err) and str(err).startswith("any.csv")
        return
    assert len(lab.ids) == len(set(lab.ids)) == len(lab.targets) <= len(lines)
    assert all(check_id(i, file="any.csv", row=1) == i for i in lab.ids)
    assert all(isinstance(t, int) for t in lab.targets)


_VALID_ID = st.text(
    alphabet=st.characters(categories=["L", "N", "P", "S", "Zs"], exclude_characters="/\\"),
    min_size=1,
    max_size=40,
).filter(lambda s: s == s.strip() and s not in (".", "..") and not (len(s) > 1 and s[1] == ":"))


@HYPOTHESIS
@given(
    rows=st.lists(
        st.tuples(_VALID_ID, st.integers(-(10**6), 10**6)), max_size=15, unique_by=lambda t: t[0]
    ),
    by_pandas=st.booleans(),
)
def test_valid_ids_and_targets_round_trip(rows, by_pandas: bool, tmp_path: Path):
    """Any ID check_id accepts survives a CSV written by pandas or the csv module, with its target."""
    rows = [(i, t) for i, t in rows if _accepted(i)]
    path = tmp_path / "rt.csv"
    if by_pandas:
        pd.DataFrame(rows, columns=["ID", "target"]).to_csv(path, index=False)
    else:
        write_rows(path, [["ID", "target"], *[[i, str(t)] for i, t in rows]])
    lab = read_labelled(path, None)
    assert lab.ids == [i for i, _ in rows]
    assert lab.targets == [t for _, t in rows]


def _accepted(v: str) -> bool:
    try:
        check_id(v, file="f", row=1)
        return True
    except DocsortError:
        return False


@HYPOTHESIS
@given(st.text(max_size=12))
def test_targets_are_plain_integers_or_refused(value: str):
    df = pd.DataFrame({"ID": ["a.jpg"], "target": [value]})
    try:
        (t,) = parse_targets(df, None, file="t.csv")
    except DocsortError as err:
        assert str(err).startswith("t.csv row 1: ") and "\n" not in str(err)
        return
    v = value.strip()
    assert v.isascii() and float(v) == t
