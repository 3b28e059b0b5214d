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
from docsort.review.report_html import FULL_MAX, PerImage, write_report, write_summary_md

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

    def find(
        self, tag: str | None = None, *, inside: str | None = None, **attrs
    ) -> list[dict[str, str | None]]:
        """Tags matching ``attrs``; ``inside`` an element id: only between it and the next tag of its kind."""
        tags = self.tags
        if inside is not None:
            (start,) = [n for n, (_, a) in enumerate(tags) if a.get("id") == inside]
            kind = tags[start][0]
            end = next((n for n in range(start + 1, len(tags)) if tags[n][0] == kind), len(tags))
            tags = tags[start + 1 : end]
        out = []
        for t, a in tags:
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
    (rel,) = dom.find("img", id="reliability-diagram")
    assert _decode(rel["src"]).format == "PNG"
    gallery = dom.find("img", class_="thumb", **{"data-where": "gallery"})
    assert len(gallery) == len(wrong) - (5 in wrong)  # the missing image gets a placeholder
    hard_rows = dom.find("tr", inside="comparison-table")
    assert [r["data-id"] for r in hard_rows if r.get("data-id")] == ids[:6]  # with thumbnails
    assert len(dom.find("img", class_="thumb", **{"data-where": "comparison"})) == 5  # not ids[5]
    for t in gallery:
        im = _decode(t["src"])
        assert im.format == "JPEG" and max(im.size) <= 160
    _check_full_size_links(dom)
    for sid in (
        "confusion-matrix",
        "reliability",
        "per-class",
        "confused-pairs",
        "gallery",
        "hard-cases",
        "tta-ablation",
    ):
        assert dom.find("section", id=sid), sid
    # each confused cell of the matrix and each confused pair links to its gallery group
    groups = {a["id"] for a in dom.find("div", class_="group")}
    cells = [a["href"] for a in dom.find("a", class_="cell")]
    assert cells and {c[1:] for c in cells} == groups
    pair_links = [a["href"] for a in dom.find("a", inside="confused-pairs") if a.get("href")]
    assert pair_links and {h[1:] for h in pair_links} <= groups
    first = max(groups, key=lambda g: len(dom.find("figure", inside=g)))
    t, q = map(int, first.split("-")[1:])
    assert all(y[ids.index(f["data-id"])] == t for f in dom.find("figure", inside=first))
    # self-contained: nothing but inline data and in-page anchors
    for _, attrs in dom.tags:
        for key in ("src", "href"):
            if attrs.get(key):
                assert attrs[key].startswith(("data:", "#")), attrs[key]
    assert "c1814" in text and "stamp hides title" in text
    assert [p.name for p in out.parent.iterdir()] == ["report.html"]  # no temp files left


def _check_full_size_links(dom: Dom) -> None:
    """Every thumbnail sits in a link to its image at full size (a JPEG data URI, larger than the thumbnail)."""
    thumbs = [
        n for n, (t, a) in enumerate(dom.tags) if t == "img" and "thumb" in (a.get("class") or "")
    ]
    assert thumbs
    for n in thumbs:
        tag, link = dom.tags[n - 1]
        assert tag == "a" and link.get("class") == "full", "thumbnail without a full-size link"
        full, thumb = _decode(link["href"]), _decode(dom.tags[n][1]["src"])
        assert full.format == "JPEG" and max(full.size) <= FULL_MAX
        assert max(full.size) >= max(thumb.size)


def _disagreeing(probs: dict[str, np.ndarray]) -> list[int]:
    """Rows where the candidates' top classes are not all the same."""
    top = np.stack([p.argmax(1) for p in probs.values()])
    return [i for i in range(top.shape[1]) if len(set(top[:, i])) > 1]


def _review_sets(n: int = 30, seed: int = 7):
    """Two candidates on ``n`` test images (a few labelled, a few with verdicts) and the hard cases."""
    ids, y, p = _data(n=n, seed=seed)
    ids = [f"test_{i:03d}.jpg" for i in range(n)]
    rng = np.random.default_rng(seed)
    other = p.copy()
    flip = rng.random(n) < 0.3
    other[flip] = np.roll(other[flip], 1, axis=1)
    probs = {"c1814": p, "c1824": other}
    truth = np.where(np.arange(n) % 3 == 0, y, -1)
    kinds = ["hard" if i % 5 == 0 else "" for i in range(n)]
    notes = ["stamp over title" if i % 10 == 0 else "" for i in range(n)]
    dis = PerImage(ids, probs, truth=truth, kinds=kinds, notes=notes, image_loader=_loader)
    hard_idx = [i for i in range(n) if kinds[i]]
    hard = PerImage(
        [ids[i] for i in hard_idx],
        {c: q[hard_idx] for c, q in probs.items()},
        truth=y[hard_idx],
        kinds=[kinds[i] for i in hard_idx],
        notes=[notes[i] for i in hard_idx],
        image_loader=_loader,
    )
    return dis, hard, probs


def test_disagreement_and_hard_case_views(tmp_path):
    ids, y, p = _data()
    dis, hard, probs = _review_sets()
    out = write_report(tmp_path / "r.html", class_names=CLASSES, ids=ids, targets=y, probs=p,
                       image_loader=_loader, disagreements=dis, hardcases=hard)  # fmt: skip
    dom = Dom(out.read_text())
    expected = _disagreeing(probs)
    assert 0 < len(expected) < len(dis.ids)
    rows = [r for r in dom.find("tr", inside="disagree-table") if r.get("data-id")]
    assert sorted(r["data-id"] for r in rows) == sorted(dis.ids[i] for i in expected)
    assert len(dom.find("img", class_="thumb", **{"data-where": "disagree"})) == len(expected)
    hard_rows = [r["data-id"] for r in dom.find("tr", inside="hardcase-table") if r.get("data-id")]
    assert hard_rows == hard.ids
    assert len(dom.find("img", class_="thumb", **{"data-where": "hardcases"})) == len(hard.ids)
    _check_full_size_links(dom)
    # each candidate's prediction and probability per row, coloured where the truth is known
    text = out.read_text()
    first = dis.ids[expected[0]]
    for c in probs:
        assert f"<th>{c} p</th>" in text
    k = int(probs["c1824"][expected[0]].argmax())
    assert f"{probs['c1824'][expected[0], k]:.3f}" in text and first in text
    md = write_summary_md(
        tmp_path / "s.md", class_names=CLASSES, targets=y, probs=p, disagreements=dis
    ).read_text()
    assert f"{len(expected)} of {len(dis.ids)} test images get different predictions" in md


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
    n_thumbs = n_wrong + 6  # the gallery's and the hard cases' (every one has an image)
    assert len(dom.find("img", class_="thumb")) == n_thumbs
    assert body.get("data-thumbs-loaded") == f"{n_thumbs}/{n_thumbs}"
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


def _with_test_script(html_file: Path, script: str) -> Path:
    """A copy of the report that also runs ``script`` (its hash added to the page's policy)."""
    import hashlib

    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    text = html_file.read_text()
    assert text.count("script-src 'sha256-") == 1
    text = text.replace("script-src 'sha256-", f"script-src 'sha256-{digest}' 'sha256-", 1)
    text = text.replace("</body>", f"<script>{script}</script></body>", 1)
    out = html_file.with_name("clicked-" + html_file.name)
    out.write_text(text)
    return out


def _sort_filter_open(table_id: str, column: int, query: str) -> str:
    """A script that sorts ``table_id`` by a header click, opens its first thumbnail, then filters it."""
    return (
        f"var t=document.getElementById('{table_id}');t.tHead.rows[0].cells[{column}].click();"
        f"document.querySelector('#{table_id} a.full').click();"
        f"var f=document.querySelector('input.filter[data-table={table_id}]');"
        f"f.value='{query}';f.dispatchEvent(new Event('input'));"
    )


@pytest.mark.slow
def test_review_tool_in_headless_chromium(tmp_path):
    """At 1,400 px: no sideways scroll, every picture decodes, a header click sorts, a thumbnail opens."""
    ids, y, p = _data(n=40, seed=5)
    comp, abl = _extras(ids, y, p)
    dis, hard, probs = _review_sets()
    html_file = write_report(tmp_path / "report.html", class_names=CLASSES, ids=ids, targets=y, probs=p,
                             image_loader=_loader, comparison=comp, ablation=abl, disagreements=dis,
                             hardcases=hard)  # fmt: skip
    dom = Dom(_browse(tmp_path, html_file, "--dump-dom", "--window-size=1400,1000").stdout)
    (body,) = dom.find("body")
    assert body.get("data-confusion-loaded") == "true"
    assert body.get("data-reliability-loaded") == "true"
    n_thumbs = len(dom.find("img", class_="thumb"))
    assert n_thumbs > 0 and body.get("data-thumbs-loaded") == f"{n_thumbs}/{n_thumbs}"
    assert int(body["data-scroll-width"]) <= 1400  # no horizontal scroll
    expected = _disagreeing(probs)
    before = [r["data-id"] for r in dom.find("tr", inside="disagree-table") if r.get("data-id")]
    assert len(before) == len(expected)

    # click the "c1824 p" header (ascending), then open the first row's thumbnail
    column = 4 + 2 * 1 + 1
    query = dis.ids[expected[-1]]
    clicked = _with_test_script(html_file, _sort_filter_open("disagree-table", column, query))
    dom = Dom(_browse(tmp_path, clicked, "--dump-dom", "--window-size=1400,1000").stdout)
    rows = [r for r in dom.find("tr", inside="disagree-table") if r.get("data-id")]
    assert [r["data-id"] for r in rows if "hidden" not in r] == [query]  # the filter
    order = [r["data-id"] for r in rows]
    q = probs["c1824"]
    want = sorted((dis.ids[i] for i in expected), key=lambda i: round(q[dis.ids.index(i)].max(), 3))
    assert [round(q[dis.ids.index(i)].max(), 3) for i in order] == [
        round(q[dis.ids.index(i)].max(), 3) for i in want
    ]
    assert order != before  # the click changed the order
    (box,) = dom.find("div", id="lightbox")
    assert "hidden" not in box  # the viewer is open
    (big,) = dom.find("img", id="lightbox-img")
    first = [a for a in dom.find("a", class_="full", inside="disagree-table")][0]
    assert big["src"] == first["href"] and _decode(big["src"]).format == "JPEG"

    shots = tmp_path / "screenshots"
    shots.mkdir()
    for name, page, size in (
        ("report-1400.png", html_file, "1400,5200"),
        ("viewer-1400.png", clicked, "1400,900"),
    ):
        _browse(tmp_path, page, f"--screenshot={shots / name}", f"--window-size={size}")
        im = Image.open(shots / name).convert("L")
        assert im.size[0] == 1400 and np.asarray(im).std() > 10
    print(f"screenshots: {shots}")
