"""`docsort ocr` with the real tesseract on pages rendered with known text.

What a user does: read a folder or a dataset root, read it again (free: the
cache), read it in shards and merge, choose the ambiguous pages only, and get
one line when the engine or a language is missing.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from tests.scenario import one_line, run_cli

pytestmark = pytest.mark.skipif(
    shutil.which("tesseract") is None, reason="tesseract is not installed (scripts/system-deps.sh)"
)

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
BOLD = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"
TITLES = ("ADMISSION CONFIRMATION", "OUTPATIENT CERTIFICATE", "PAYMENT RECEIPT")


def _page(title: str, rotate: int = 0):
    from PIL import Image, ImageDraw, ImageFont

    im = Image.new("L", (640, 480), 255)
    d = ImageDraw.Draw(im)
    d.text((30, 20), title, font=ImageFont.truetype(BOLD, 32), fill=0)
    body = ImageFont.truetype(FONT, 22)
    word = title.split()[0].lower()
    for i in range(7):  # enough script for tesseract's orientation detection
        d.text(
            (30, 90 + 50 * i), f"Line {i} of the {word} record is printed here.", font=body, fill=20
        )
    return im.rotate(rotate, expand=True, fillcolor=255)


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pages")
    for n, (title, rot) in enumerate(zip(TITLES, (0, 90, 180), strict=True)):
        _page(title, rot).save(folder / f"page{n}.png")
    return folder


def _records(folder):
    return [json.loads(line) for line in (folder / "ocr.jsonl").read_text().splitlines()]


def test_ocr_turns_pages_upright_and_reads_their_titles_then_a_rerun_reads_nothing(pages, tmp_path):
    cache = tmp_path / "cache"
    code, out, err = run_cli("ocr", pages, "--out", tmp_path / "a", f"ocr.cache={cache}")
    assert code == 0, err
    recs = _records(tmp_path / "a")
    assert [r["ID"] for r in recs] == ["page0.png", "page1.png", "page2.png"]
    for r, title, rot in zip(recs, TITLES, (0, 90, 180), strict=True):
        assert title in r["text"], r["text"]
        assert r["rotate"] == rot and r["confidence"] > 60
        assert all(len(w) == 2 and 0 <= w[1] <= 100 for w in r["words"])
    info = json.loads((tmp_path / "a" / "ocr.json").read_text())
    assert (info["read"], info["cached"], info["engine"]["languages"]) == (3, 0, "eng")
    assert "3 read, 0 from the cache" in err
    # the same pages again, into another folder: everything from the cache, the same bytes
    code, _, err = run_cli("ocr", pages, "--out", tmp_path / "b", f"ocr.cache={cache}")
    assert code == 0, err
    assert json.loads((tmp_path / "b" / "ocr.json").read_text())["cached"] == 3
    assert (tmp_path / "a" / "ocr.jsonl").read_bytes() == (
        tmp_path / "b" / "ocr.jsonl"
    ).read_bytes()
    # other engine settings are another cache entry, never a stale hit
    code, _, err = run_cli(
        "ocr", pages, "--out", tmp_path / "c", f"ocr.cache={cache}", "ocr.orientation=none"
    )
    assert code == 0, err
    info = json.loads((tmp_path / "c" / "ocr.json").read_text())
    assert info["read"] == 3 and all(r["rotate"] == 0 for r in _records(tmp_path / "c"))
    assert "OUTPATIENT CERTIFICATE" not in _records(tmp_path / "c")[1]["text"]  # read sideways


def test_sharded_ocr_merged_equals_one_run_byte_for_byte(pages, tmp_path):
    cache = f"ocr.cache={tmp_path / 'cache'}"
    assert run_cli("ocr", pages, "--out", tmp_path / "one", cache)[0] == 0
    for k in range(2):
        code, _, err = run_cli(
            "ocr", pages, "--out", tmp_path / f"s{k}", "--shard", k, "--shards", 2, "ocr.cache=null"
        )
        assert code == 0, err
    assert [len(_records(tmp_path / f"s{k}")) for k in range(2)] == [2, 1]
    code, _, err = run_cli(
        "ocr", "--merge", tmp_path / "s1", tmp_path / "s0", "--out", tmp_path / "m"
    )
    assert code == 0, err
    assert (tmp_path / "m" / "ocr.jsonl").read_bytes() == (
        tmp_path / "one" / "ocr.jsonl"
    ).read_bytes()
    assert json.loads((tmp_path / "m" / "ocr.json").read_text())["merged_from"] == 2
    # a missing shard or one from other settings is refused, and nothing is written
    code, _, err = run_cli("ocr", "--merge", tmp_path / "s0", "--out", tmp_path / "m2")
    assert code == 2 and "needs each of 0..1 once" in one_line(err)
    assert (
        run_cli(
            "ocr",
            pages,
            "--out",
            tmp_path / "x1",
            "--shard",
            1,
            "--shards",
            2,
            "ocr.cache=null",
            "ocr.psm=6",
        )[0]
        == 0
    )
    code, _, err = run_cli(
        "ocr", "--merge", tmp_path / "s0", tmp_path / "x1", "--out", tmp_path / "m3"
    )
    assert code == 2 and "engine=" in one_line(err)
    assert not (tmp_path / "m2").exists() and not (tmp_path / "m3").exists()


def _dataset(root, tmp_path):
    """A dataset root of the rendered pages: 3 classes, pages 0-1 train, page 2 test."""
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()
    for n, title in enumerate(TITLES):
        _page(title).save(root / ("test" if n == 2 else "train") / f"p{n}.png")
    pd.DataFrame(
        {"target": [0, 1, 2], "class_name": ["admission", "outpatient", "receipt"]}
    ).to_csv(root / "meta.csv", index=False)
    pd.DataFrame({"ID": ["p0.png", "p1.png"], "target": [0, 1]}).to_csv(
        root / "train.csv", index=False
    )
    pd.DataFrame({"ID": ["p2.png"], "target": [0]}).to_csv(
        root / "sample_submission.csv", index=False
    )
    return root


def test_only_the_pages_the_image_model_finds_ambiguous_are_read(tmp_path):
    root = _dataset(tmp_path / "data", tmp_path)
    probs = tmp_path / "probs.csv"
    # p0: admission vs outpatient, close (in the group); p1: confident; p2: receipt vs admission (not a group)
    p = np.array([[0.5, 0.45, 0.05], [0.05, 0.9, 0.05], [0.4, 0.05, 0.55]])
    pd.DataFrame(
        {"ID": ["p0.png", "p1.png", "p2.png"], **{f"p{k}": p[:, k] for k in range(3)}}
    ).to_csv(probs, index=False)
    args = ["ocr", root, "--out", tmp_path / "o", "--probs", probs, "ocr.select=ambiguous",
            "ocr.groups=[[admission,outpatient]]", "ocr.margin=0.2", "ocr.cache=null"]  # fmt: skip
    code, _, err = run_cli(*args)
    assert code == 0, err
    recs = _records(tmp_path / "o")
    assert [(r["ID"], r["split"]) for r in recs] == [("p0.png", "train")]
    assert "ADMISSION" in recs[0]["text"]
    info = json.loads((tmp_path / "o" / "ocr.json").read_text())
    assert (info["images"], info["selected"]) == (3, 1)
    code, _, err = run_cli(*args[:-3], "ocr.groups=[[admission,invoice]]", "ocr.cache=null")
    assert code == 2 and "'invoice', not a class" in one_line(err)


def test_orientation_from_the_image_models_most_confident_view(tmp_path):
    """ocr.orientation=views: the page is read as the view in which the image model was surest."""
    root = tmp_path / "imgs"
    root.mkdir()
    from PIL import ImageOps

    ImageOps.mirror(_page(TITLES[0])).save(root / "a.png")  # flipped: OSD cannot undo it
    logits = {v: np.zeros((1, 3)) for v in ("identity", "rot90", "flip")}
    logits["flip"][0, 0] = 6.0
    pred = tmp_path / "pred"
    pred.mkdir()
    np.savez(pred / "views.npz", ids=np.array(["a.png"]), **logits)
    code, _, err = run_cli(
        "ocr",
        root,
        "--out",
        tmp_path / "o",
        "--predictions",
        pred,
        "ocr.orientation=views",
        "ocr.cache=null",
    )
    assert code == 0, err
    (rec,) = _records(tmp_path / "o")
    assert rec["view"] == "flip" and TITLES[0] in rec["text"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ocr.languages=xyz"], "no language data 'xyz'"),
        (["ocr.select=ambiguous"], "needs --probs"),
        (["ocr.orientation=views"], "needs --predictions"),
        (["--shard", "2", "--shards", "2"], "need 0 <= shard < shards"),
    ],
)
def test_bad_ocr_settings_get_one_line_and_write_nothing(pages, tmp_path, args, message):
    code, _, err = run_cli("ocr", pages, "--out", tmp_path / "o", "ocr.cache=null", *args)
    assert code == 2 and message in one_line(err)
    assert not (tmp_path / "o").exists()


def test_a_missing_engine_is_one_line_naming_the_package(pages, tmp_path, monkeypatch):
    from docsort.text import ocr

    ocr._tesseract.cache_clear()
    monkeypatch.setenv("PATH", str(tmp_path))
    try:
        code, _, err = run_cli("ocr", pages, "--out", tmp_path / "o")
    finally:
        ocr._tesseract.cache_clear()
    assert (
        code == 2
        and "tesseract is not installed" in one_line(err)
        and "apt-get install tesseract-ocr" in err
    )


def test_ocr_reads_from_and_writes_to_s3(pages, tmp_path, s3_server):
    import boto3

    s3 = boto3.client("s3")
    for p in sorted(pages.iterdir()):
        s3.upload_file(str(p), "docsort-test", f"pages/{p.name}")
    code, _, err = run_cli(
        "ocr",
        "s3://docsort-test/pages",
        "--out",
        "s3://docsort-test/ocr",
        f"ocr.cache={tmp_path / 'c'}",
    )
    assert code == 0, err
    body = s3.get_object(Bucket="docsort-test", Key="ocr/ocr.jsonl")["Body"].read().decode()
    assert [json.loads(line)["ID"] for line in body.splitlines()] == [
        "page0.png",
        "page1.png",
        "page2.png",
    ]
    assert TITLES[2] in body


@pytest.mark.slow  # kfp.local: five tasks in subprocesses
def test_the_ocr_pipeline_shards_in_a_parallelfor_and_merges_to_one_runs_bytes(pages, tmp_path):
    from pathlib import Path

    from docsort.kfp.runner import run_local

    pipeline = Path(__file__).resolve().parents[1] / "src" / "docsort" / "pipelines" / "ocr.py"
    params = {"data_root": str(pages), "shards": 2, "overrides": "ocr.cache=null"}
    merged = Path(run_local(pipeline, tmp_path / "runs", params).path)
    assert run_cli("ocr", pages, "--out", tmp_path / "one", "ocr.cache=null")[0] == 0
    assert (merged / "ocr.jsonl").read_bytes() == (tmp_path / "one" / "ocr.jsonl").read_bytes()
    assert json.loads((merged / "ocr.json").read_text())["merged_from"] == 2


def test_reading_leaves_the_thread_limit_of_later_work_alone(pages, tmp_path, monkeypatch):
    """OMP_THREAD_LIMIT=1 is for tesseract only: torch (and kfp.local's tasks) run after it."""
    import os

    monkeypatch.delenv("OMP_THREAD_LIMIT", raising=False)
    assert run_cli("ocr", pages, "--out", tmp_path / "o", "ocr.cache=null")[0] == 0
    assert "OMP_THREAD_LIMIT" not in os.environ
