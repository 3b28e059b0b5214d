"""The HTML error notebook: structure, escaping, and what a real browser makes of it."""

from __future__ import annotations

import base64
import io
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from docsort.core.errors import DocsortError
from docsort.ensemble.tta_ablation import tta_ablation
from docsort.review.compare import score_candidates
from docsort.review.report_html import write_report, write_summary_md

CLASSES = ["letter", "memo", "form", "invoice"]
HOSTILE_CLASS = "<script>alert(1)</script>"
HOSTILE_ID = '"><img src=x onerror=alert(1)>'


class Dom(HTMLParser):
    """Every start tag with its attributes, in document order (stdlib, no extra dependency)."""

    def __init__(self, text: str):
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def find(self, tag: str | None = None, **attrs) -> list[dict[str, str | None]]:
        out = []
        for t, a in self.tags:
            if tag is not None and t != tag:
                continue
            if all(
                (k == "class_" and v in (a.get("class") or "").split()) or a.get(k) == v
                for k, v in attrs.items()
            ):
                out.append(a)
        return out


def _page(seed: int) -> np.ndarray:
    """A small synthetic document page: white with a few dark text bars."""
    rng = np.random.default_rng(seed)
    h, w = (300, 220) if seed % 2 else (180, 260)
    page = np.full((h, w), 245, np.uint8)
    for _ in range(8):
        y, x = int(rng.integers(10, h - 20)), int(rng.integers(5, w // 3))
        page[y : y + 6, x : x + int(rng.integers(w // 4, w // 2))] = 30
    return page


def _loader(image_id: str) -> np.ndarray | None:
    if image_id.startswith("missing"):
        return None
    n = sum(map(ord, image_id))
    page = _page(n)
    if n % 3 == 0:  # also exercise 16-bit and RGBA inputs
        return page.astype(np.uint16) * 257
    if n % 3 == 1:
        return np.dstack([page, page, page, np.full_like(page, 255)])
    return page


def _data(n: int = 24, seed: int = 0, class_names=CLASSES, ids=None):
    rng = np.random.default_rng(seed)
    k = len(class_names)
    y = np.arange(n) % k
    p = rng.dirichlet(np.ones(k), size=n) * 0.5
    right = rng.random(n) < 0.6
    p[np.arange(n), np.where(right, y, (y + 1) % k)] += 0.5
    ids = ids or [f"page_{i:03d}.jpg" for i in range(n)]
    return ids, y, p


def _extras(ids, y, p, class_names=CLASSES):
    comp = score_candidates(
        ids[:6],
        y[:6],
        {"c1814": p[:6], "c1824": np.roll(p[:6], 1, axis=1)},
        class_names=class_names,
        notes=["stamp hides title", "", "", "", "", ""],
        kinds=["model_error"] * 5 + ["label_error"],
        oof_macro_f1={"c1814": 0.84, "c1824": 0.85},
        members={"c1814": 3, "c1824": 2},
    )
    rng = np.random.default_rng(1)
    views = {v: p * (1 + rng.random(p.shape)) for v in ("identity", "rot90", "rot180", "flip")}
    abl = tta_ablation({v: q / q.sum(1, keepdims=True) for v, q in views.items()}, y)
    return comp, abl


def _decode(uri: str) -> Image.Image:
    head, data = uri.split(",", 1)
    assert head.endswith(";base64")
    return Image.open(io.BytesIO(base64.b64decode(data)))


def test_report_structure(tmp_path):
    ids, y, p = _data()
    ids[5] = "missing_05.jpg"
    comp, abl = _extras(ids, y, p)
    out = write_report(
        tmp_path / "r" / "report.html",
        class_names=CLASSES,
        ids=ids,
        targets=y,
        probs=p,
        image_loader=_loader,
        comparison=comp,
        ablation=abl,
    )
    text = out.read_text()
    dom = Dom(text)
    wrong = [i for i, (t, q) in enumerate(zip(y, p.argmax(1), strict=True)) if t != q]
    assert 0 < len(wrong) < len(ids)
    misses = dom.find("figure", class_="miss")
    assert sorted(m["data-id"] for m in misses) == sorted(ids[i] for i in wrong)
    (cm,) = dom.find("img", id="confusion")
    assert _decode(cm["src"]).format == "PNG"
    thumbs = dom.find("img", class_="thumb")
    assert len(thumbs) == len(wrong) - (5 in wrong)  # the missing image gets a placeholder
    for t in thumbs:
        im = _decode(t["src"])
        assert im.format == "JPEG" and max(im.size) <= 160
    for sid in (
        "confusion-matrix",
        "per-class",
        "confused-pairs",
        "gallery",
        "hard-cases",
        "tta-ablation",
    ):
        assert dom.find("section", id=sid), sid
    # self-contained: nothing but inline data and in-page anchors
    for _, attrs in dom.tags:
        for key in ("src", "href"):
            if attrs.get(key):
                assert attrs[key].startswith(("data:", "#")), attrs[key]
    assert "c1814" in text and "stamp hides title" in text
    assert [p.name for p in out.parent.iterdir()] == ["report.html"]  # no temp files left


def test_report_escapes_user_text(tmp_path):
    classes = [HOSTILE_CLASS, "memo & co", 'say "hi"', "$x^2$ form"]
    ids, y, p = _data(n=12, seed=3, class_names=classes)
    ids[0] = HOSTILE_ID
    p[0] = [0.0, 0.1, 0.2, 0.7]  # make sure the hostile ID is misclassified
    comp = score_candidates(
        ids[:3], y[:3], {"A": p[:3]}, class_names=classes, notes=[HOSTILE_CLASS, "", ""]
    )
    text = write_report(
        tmp_path / "r.html",
        class_names=classes,
        ids=ids,
        targets=y,
        probs=p,
        image_loader=_loader,
        comparison=comp,
    ).read_text()
    assert HOSTILE_CLASS not in text and "<img src=x" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;" in text
    dom = Dom(text)
    assert len(dom.find("script")) == 1  # only the report's own probe
    assert not [a for _, a in dom.tags if "onerror" in a]
    assert HOSTILE_ID in [m["data-id"] for m in dom.find("figure", class_="miss")]

    md = write_summary_md(
        tmp_path / "s.md", class_names=classes, targets=y, probs=p, comparison=comp
    ).read_text()
    assert HOSTILE_CLASS not in md and "&lt;script&gt;" in md


def test_summary_markdown(tmp_path):
    ids, y, p = _data()
    comp, abl = _extras(ids, y, p)
    md = write_summary_md(
        tmp_path / "summary.md",
        class_names=CLASSES,
        targets=y,
        probs=p,
        comparison=comp,
        ablation=abl,
    )
    text = md.read_text()
    acc = float(np.mean(p.argmax(1) == y))
    assert f"- accuracy: {acc:.4f}" in text
    assert f"Winner: **{comp.winner}**" in text
    assert "Recommended views: **" + "+".join(abl.recommended).replace("_", "\\_") + "**" in text
    assert "## Weakest classes" in text and "## Most-confused pairs" in text


def test_report_rejects_misaligned_inputs(tmp_path):
    ids, y, p = _data()
    with pytest.raises(DocsortError, match="do not match"):
        write_report(tmp_path / "r.html", class_names=CLASSES, ids=ids[:-1], targets=y, probs=p)
    with pytest.raises(DocsortError, match=r"0\.\.3"):
        write_report(tmp_path / "r.html", class_names=CLASSES, ids=ids, targets=y + 1, probs=p)
    assert not list(tmp_path.iterdir())  # nothing written, not even a temp file


# ------------------------------------------------------------------ headless Chromium


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if path := shutil.which(name):
            return path
    pytest.skip("headless Chromium is not installed (apt-get install chromium)")


def _browse(tmp_path: Path, html_file: Path, *mode: str) -> subprocess.CompletedProcess:
    cmd = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'chrome-profile'}",
        "--virtual-time-budget=5000",
        *mode,
        html_file.resolve().as_uri(),
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)


def test_report_in_headless_chromium(tmp_path):
    ids, y, p = _data(n=40, seed=5)
    comp, abl = _extras(ids, y, p)
    html_file = write_report(
        tmp_path / "report.html",
        class_names=CLASSES,
        ids=ids,
        targets=y,
        probs=p,
        image_loader=_loader,
        comparison=comp,
        ablation=abl,
    )
    n_wrong = int((p.argmax(1) != y).sum())
    dom = Dom(_browse(tmp_path, html_file, "--dump-dom").stdout)
    (body,) = dom.find("body")
    assert body.get("data-confusion-loaded") == "true"  # the picture decoded in the browser
    assert body.get("data-thumbs-loaded") == f"{n_wrong}/{n_wrong}"
    assert len(dom.find("figure", class_="miss")) == n_wrong

    shot = tmp_path / "report.png"
    _browse(tmp_path, html_file, f"--screenshot={shot}", "--window-size=1280,2400")
    im = Image.open(shot).convert("L")
    assert im.size == (1280, 2400)
    assert np.asarray(im).std() > 10  # not a blank page


def test_escaping_in_headless_chromium(tmp_path):
    classes = [HOSTILE_CLASS, "memo", "form", "invoice"]
    ids, y, p = _data(n=12, seed=3, class_names=classes)
    ids[0] = HOSTILE_ID
    p[0] = [0.0, 0.1, 0.2, 0.7]
    comp = score_candidates(
        ids[:3], y[:3], {"A": p[:3]}, class_names=classes, notes=[HOSTILE_ID, "", ""]
    )
    html_file = write_report(
        tmp_path / "r.html",
        class_names=classes,
        ids=ids,
        targets=y,
        probs=p,
        image_loader=_loader,
        comparison=comp,
    )
    dumped = _browse(tmp_path, html_file, "--dump-dom").stdout
    dom = Dom(dumped)
    scripts = dom.find("script")
    assert len(scripts) == 1  # the report's own probe, nothing injected
    assert not [a for t, a in dom.tags if t == "img" and a.get("src") == "x"]
    assert not [a for _, a in dom.tags if "onerror" in a]
    assert dom.find("body")[0].get("data-confusion-loaded") == "true"
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dumped  # shown as text
