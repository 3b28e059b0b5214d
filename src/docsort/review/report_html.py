"""The error notebook: one self-contained HTML file, plus a short Markdown summary.

One file (images as base64 data URIs, inline CSS, no external URL) so it can be
mailed, attached to a KFP run or opened from S3 without a server. Everything
that comes from the user's data (IDs/file names, class names, notes) is
HTML-escaped, and a Content-Security-Policy allows only inline data images,
inline styles and the report's own fixed script: a hostile file name can
neither inject markup nor load anything.

It is the review tool for choosing between candidates: every thumbnail links
to the image at up to :data:`FULL_MAX` pixels (a data URI, opened in an
in-page viewer by the script), the confusion matrix links to the gallery of
each confused pair, and, given the comparison's candidates, one table lists
the images where they disagree. Tables sort (click a header) and filter.

The fixed script records in the DOM whether the pictures decoded
(``data-confusion-loaded``, ``data-reliability-loaded``,
``data-thumbs-loaded`` on ``<body>``) and the page's ``scrollWidth``
(``data-scroll-width``), so a headless browser can check the report without
comparing screenshots.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from docsort.core.atomic import write_text_atomic
from docsort.core.errors import DocsortError, plot_label
from docsort.core.stats import accuracy, confusion, macro_f1, most_confused_pairs, per_class_table
from docsort.core.tables import fmt_cell
from docsort.ensemble.tta_ablation import Ablation
from docsort.review.compare import Comparison
from docsort.review.figures import reliability_png

ImageLoader = Callable[[str], "np.ndarray | None"]

THUMB_MAX = 160
FULL_MAX = 1024  # the full-size view: enough to read a page, small enough for hundreds in one file

_SCRIPT = (
    "(function(){var d=document;"
    # sortable tables: click (or Enter on) a header; numbers sort as numbers, blanks last
    "function key(td){var s=td.getAttribute('data-sort');if(s===null)s=td.textContent.trim();"
    "var n=Number(s);return s===''?{e:1}:(isNaN(n)?{s:s.toLowerCase()}:{n:n});}"
    "function cmp(a,b){if(a.e||b.e)return (a.e?1:0)-(b.e?1:0);if('n' in a&&'n' in b)return a.n-b.n;"
    "if('n' in a)return -1;if('n' in b)return 1;return a.s<b.s?-1:(a.s>b.s?1:0);}"
    "d.querySelectorAll('table.sortable').forEach(function(t){var hs=t.tHead.rows[0].cells;"
    "Array.prototype.forEach.call(hs,function(th,c){th.tabIndex=0;"
    "function go(){var asc=th.getAttribute('aria-sort')!=='ascending';"
    "Array.prototype.forEach.call(hs,function(h){h.removeAttribute('aria-sort');});"
    "th.setAttribute('aria-sort',asc?'ascending':'descending');var b=t.tBodies[0];"
    "var rows=Array.prototype.slice.call(b.rows);rows.sort(function(x,y){var a=key(x.cells[c]),"
    "z=key(y.cells[c]);return (a.e||z.e)?cmp(a,z):(asc?cmp(a,z):cmp(z,a));});"
    "rows.forEach(function(r){b.appendChild(r);});}"
    "th.addEventListener('click',go);th.addEventListener('keydown',function(e){"
    "if(e.key==='Enter')go();});});});"
    # filters: rows whose text contains the query stay visible
    "d.querySelectorAll('input.filter').forEach(function(f){"
    "var t=d.getElementById(f.getAttribute('data-table')),out=f.nextElementSibling;"
    "f.addEventListener('input',function(){var q=f.value.trim().toLowerCase(),n=0,"
    "rows=t.tBodies[0].rows;for(var i=0;i<rows.length;i++){"
    "var hit=rows[i].textContent.toLowerCase().indexOf(q)>=0;rows[i].hidden=!hit;if(hit)n++;}"
    "if(out)out.textContent=q?n+' of '+rows.length+' rows':'';});});"
    # full-size viewer: a plain click on a thumbnail shows its link target in the page
    "var box=d.getElementById('lightbox'),big=d.getElementById('lightbox-img'),"
    "cap=d.getElementById('lightbox-cap');"
    "d.addEventListener('click',function(e){var a=e.target.closest?e.target.closest('a.full'):null;"
    "if(a&&box&&e.button===0&&!e.ctrlKey&&!e.metaKey&&!e.shiftKey){e.preventDefault();"
    "big.src=a.getAttribute('href');cap.textContent=a.getAttribute('data-caption')||'';"
    "box.hidden=false;return;}"
    "if(box&&!box.hidden&&e.target.closest&&e.target.closest('#lightbox')){box.hidden=true;}});"
    "d.addEventListener('keydown',function(e){if(e.key==='Escape'&&box)box.hidden=true;});"
    # probes for headless checks
    "window.addEventListener('load',function(){var b=d.body.dataset;"
    "function ok(id){var c=d.getElementById(id);return String(!!(c&&c.complete&&c.naturalWidth>0));}"
    "b.confusionLoaded=ok('confusion');b.reliabilityLoaded=ok('reliability-diagram');"
    "var t=d.querySelectorAll('img.thumb'),n=0;"
    "for(var i=0;i<t.length;i++){if(t[i].complete&&t[i].naturalWidth>0)n++;}"
    "b.thumbsLoaded=n+'/'+t.length;b.scrollWidth=String(d.documentElement.scrollWidth);});"
    "})();"
)
_SCRIPT_HASH = base64.b64encode(hashlib.sha256(_SCRIPT.encode()).digest()).decode()
CSP = (
    "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
    f"script-src 'sha256-{_SCRIPT_HASH}'; base-uri 'none'; form-action 'none'"
)

_CSS = """
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px auto;max-width:1200px;
 padding:0 16px;color:#1d2327;background:#fff}
h1,h2,h3,p,nav,.policy{overflow-wrap:break-word} h1,h3,p,.policy,td{overflow-wrap:anywhere}
h1{margin-bottom:4px} h2{border-bottom:2px solid #dde3e8;padding-bottom:4px;margin-top:36px}
h3{font-size:15px;margin:18px 0 6px}
img{max-width:100%}
.overview{color:#444;font-size:15px} .overview b{color:#111}
nav{line-height:1.8} nav a{margin-right:14px;font-size:14px;white-space:nowrap}
.tablewrap{max-width:100%;overflow-x:auto}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
th,td{border:1px solid #d4dadf;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f1f4f6} td.num{text-align:right;font-variant-numeric:tabular-nums}
table.sortable th{cursor:pointer;user-select:none}
table.sortable th::after{content:" \\2195";color:#9aa5ae;font-size:11px}
table.sortable th[aria-sort=ascending]::after{content:" \\25B2";color:#333}
table.sortable th[aria-sort=descending]::after{content:" \\25BC";color:#333}
td.ok{background:#e3f4e1} td.bad{background:#fbe1df} td.skip{background:#eee;color:#666}
tr.best td{font-weight:600;background:#fff6d6}
td.pic{width:112px;text-align:center} td.pic img.thumb{max-width:96px;max-height:96px;display:block;margin:auto}
td.id{font-family:ui-monospace,monospace;font-size:12px;min-width:8em}
.filterbar{margin:6px 0;font-size:13px} .filterbar input{width:22em;max-width:100%;padding:3px 6px}
.cmwrap{position:relative;display:inline-block;max-width:100%;line-height:0}
.cmwrap img{display:block;max-width:100%;height:auto}
#confusion,#reliability-diagram{max-width:100%;height:auto;border:1px solid #d4dadf}
.cmwrap a.cell{position:absolute;display:block}
.cmwrap a.cell:hover,.cmwrap a.cell:focus{outline:2px solid #d9480f;background:rgba(217,72,15,.15)}
.groups{display:flex;flex-wrap:wrap;gap:8px 28px;align-items:flex-start}
.group h3{margin-top:12px} .grid{display:flex;flex-wrap:wrap;gap:10px}
.group:target h3{background:#fff6d6}
figure.miss{margin:0;width:176px;border:1px solid #d4dadf;border-radius:4px;padding:6px;background:#fafbfc;
 font-size:12px;overflow-wrap:anywhere}
figure.miss img{display:block;max-width:160px;max-height:160px;margin:0 auto 4px;background:#fff}
.noimg{height:60px;display:flex;align-items:center;justify-content:center;color:#888;
 background:#eee;margin-bottom:4px;font-size:12px}
figure.miss ol{margin:4px 0 0;padding-left:18px} .id{font-family:ui-monospace,monospace;font-size:11px}
a.full{display:block;cursor:zoom-in}
.policy{white-space:pre-wrap;background:#f6f8fa;padding:8px;border:1px solid #d4dadf}
.muted{color:#666}
#lightbox{position:fixed;inset:0;background:rgba(20,24,28,.88);display:flex;align-items:center;
 justify-content:center;z-index:10;cursor:zoom-out;padding:16px}
#lightbox[hidden]{display:none}
#lightbox figure{margin:0;max-width:100%;max-height:100%;text-align:center}
#lightbox img{max-width:calc(100vw - 48px);max-height:calc(100vh - 80px);background:#fff}
#lightbox figcaption{color:#eee;font-size:13px;margin-top:6px}
"""


def _e(value: object) -> str:
    """HTML-escape anything (quotes too, so it is safe in attributes)."""
    return html.escape(str(value), quote=True)


# ---------------------------------------------------------------- pictures


Box = tuple[float, float, float, float]  # left, top, width, height in percent of the picture


def confusion_png(cm: np.ndarray, class_names: Sequence[str]) -> bytes:
    """Row-normalized confusion matrix (colour = share of the true class) with counts written in."""
    return _confusion_picture(cm, class_names)[0]


def _confusion_picture(
    cm: np.ndarray, class_names: Sequence[str]
) -> tuple[bytes, dict[tuple[int, int], Box]]:
    """The confusion matrix PNG and where each cell lies in it (to lay links over the picture)."""
    cm = np.asarray(cm)
    k = len(class_names)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    side = max(5.0, 0.55 * k + 2.5)
    fig = Figure(figsize=(side + 1.2, side), dpi=100)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of true class")
    labels = [plot_label(str(c)) for c in class_names]
    ax.set_xticks(range(k), labels, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(k), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    size = 9 if k <= 12 else 7
    for t in range(k):
        for p in range(k):
            if cm[t, p]:
                colour = "white" if norm[t, p] > 0.5 else "black"
                ax.text(
                    p, t, str(int(cm[t, p])), ha="center", va="center", color=colour, fontsize=size
                )
    fig.tight_layout()
    canvas.draw()  # fixes the axes' final position (equal aspect) before cells are measured
    width, height = fig.bbox.width, fig.bbox.height
    boxes = {}
    for t in range(k):
        for p in range(k):
            (x0, y0), (x1, y1) = ax.transData.transform([(p - 0.5, t - 0.5), (p + 0.5, t + 0.5)])
            boxes[(t, p)] = (
                100 * min(x0, x1) / width,
                100 * (height - max(y0, y1)) / height,
                100 * abs(x1 - x0) / width,
                100 * abs(y1 - y0) / height,
            )
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue(), boxes


def _to_uint8(image: np.ndarray) -> np.ndarray:
    """Any loader output (bool, 8/16-bit, float 0..1, gray/RGB/RGBA) as 8-bit gray or RGB."""
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim == 3 and a.shape[2] == 4:
        a = a[:, :, :3]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] != 3):
        raise ValueError(f"cannot show an image of shape {a.shape}")
    if a.dtype == np.uint8:
        return a
    if a.dtype == bool:
        return a.astype(np.uint8) * 255
    f = a.astype(np.float64)
    if np.issubdtype(a.dtype, np.floating) and f.size and np.nanmax(f) <= 1.0:
        f = f * 255.0
    elif f.size and f.max() > 255:
        f = f / 257.0
    return np.clip(np.nan_to_num(f), 0, 255).astype(np.uint8)


def thumbnail_jpeg(image: np.ndarray, max_side: int = THUMB_MAX, quality: int = 85) -> bytes:
    """A JPEG at most ``max_side`` pixels on its longer side (aspect kept)."""
    im = Image.fromarray(_to_uint8(image))
    im.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


class _Pictures:
    """Thumbnail and full-size data URIs of each image, read and encoded once per report."""

    def __init__(self, loader: ImageLoader | None):
        self.loader = loader
        self._uris: dict[str, tuple[str, str] | None] = {}

    def uris(self, image_id: str) -> tuple[str, str] | None:
        if image_id not in self._uris:
            image = self.loader(image_id) if self.loader is not None else None
            self._uris[image_id] = (
                None
                if image is None
                else (
                    _data_uri(thumbnail_jpeg(image), "image/jpeg"),
                    _data_uri(thumbnail_jpeg(image, FULL_MAX, quality=80), "image/jpeg"),
                )
            )
        return self._uris[image_id]

    def link(self, image_id: str, where: str, caption: str = "") -> str:
        """The thumbnail, linked to the full-size image (the script shows it in the page)."""
        uris = self.uris(image_id)
        if uris is None:
            return '<div class="noimg">no image</div>'
        thumb, full = uris
        return (
            f'<a class="full" href="{full}" data-caption="{_e(caption or image_id)}" '
            f'title="full size">'
            f'<img class="thumb" data-where="{_e(where)}" src="{thumb}" alt="{_e(image_id)}"></a>'
        )


# ---------------------------------------------------------------- HTML pieces


class _Markup(str):
    """HTML this module built from escaped parts: a table cell takes it as is."""


def _table(
    headers: Sequence[str],
    rows,
    row_classes=None,
    *,
    table_id: str | None = None,
    row_ids: Sequence[str] | None = None,
    filter_label: str | None = None,
) -> str:
    """A sortable HTML table; cells are escaped, numbers right-aligned.

    A cell may be ``(content, css)`` or ``(content, css, sort key)``; content
    that is :class:`_Markup` goes in unescaped. ``table_id`` with
    ``filter_label`` adds a filter box above the table. The table scrolls
    sideways inside its box, never the page.
    """
    out = []
    if table_id and filter_label:
        out.append(
            f'<div class="filterbar"><input type="search" class="filter" data-table="{_e(table_id)}" '
            f'placeholder="{_e(filter_label)}" aria-label="{_e(filter_label)}"> '
            '<span class="muted"></span></div>'
        )
    tid = f' id="{_e(table_id)}"' if table_id else ""
    out += [
        f'<div class="tablewrap"><table class="sortable"{tid}><thead><tr>',
        *(f"<th>{_e(h)}</th>" for h in headers),
        "</tr></thead><tbody>",
    ]
    for i, row in enumerate(rows):
        cls = f' class="{_e(row_classes[i])}"' if row_classes and row_classes[i] else ""
        rid = f' data-id="{_e(row_ids[i])}"' if row_ids is not None else ""
        out.append(f"<tr{cls}{rid}>")
        for cell in row:
            css, sort = None, None
            if isinstance(cell, tuple):
                cell, css, *rest = cell
                sort = rest[0] if rest else None
            elif isinstance(cell, int | float | np.integer | np.floating):
                css = "num"
            attr = f' class="{_e(css)}"' if css else ""
            if sort is not None:
                attr += f' data-sort="{_e(sort)}"'
            text = cell if isinstance(cell, _Markup) else _e(fmt_cell(cell))
            out.append(f"<td{attr}>{text}</td>")
        out.append("</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def _df_table(df: pd.DataFrame, row_classes=None, **kw) -> str:
    return _table(list(df.columns), df.itertuples(index=False, name=None), row_classes, **kw)


def _pair_anchor(t: int, p: int) -> str:
    return f"pair-{t}-{p}"


def _gallery_groups(
    targets: np.ndarray, probs: np.ndarray, max_items: int
) -> list[tuple[tuple[int, int], list[int], int]]:
    """Shown gallery groups: ``((true, predicted), members shown, group size)``, largest group first."""
    preds = probs.argmax(axis=1)
    groups: dict[tuple[int, int], list[int]] = {}
    for i in np.flatnonzero(preds != targets):
        groups.setdefault((int(targets[i]), int(preds[i])), []).append(int(i))
    shown, out = 0, []
    for g in sorted(groups, key=lambda g: (-len(groups[g]), g)):
        if shown >= max_items:
            break
        members = sorted(groups[g], key=lambda i: -probs[i].max())[: max_items - shown]
        out.append((g, members, len(groups[g])))
        shown += len(members)
    return out


def _gallery(
    ids: Sequence[str],
    targets: np.ndarray,
    probs: np.ndarray,
    class_names: Sequence[str],
    pictures: _Pictures,
    groups: list[tuple[tuple[int, int], list[int], int]],
) -> str:
    """Misclassified images grouped by (true, predicted), largest group first, most confident first."""
    n_wrong = int((probs.argmax(axis=1) != targets).sum())
    if n_wrong == 0:
        return "<p>No misclassified images.</p>"
    out = []
    shown = sum(len(m) for _, m, _ in groups)
    if shown < n_wrong:
        out.append(f'<p class="muted">Showing {shown} of {n_wrong} misclassified images.</p>')
    out.append('<div class="groups">')
    for (t, p), members, size in groups:
        out.append(
            f'<div class="group" id="{_pair_anchor(t, p)}"><h3>true {_e(class_names[t])} &rarr; '
            f'predicted {_e(class_names[p])} <span class="muted">({size})</span></h3><div class="grid">'
        )
        for i in members:
            out.append(_gallery_item(ids[i], t, probs[i], class_names, pictures))
        out.append("</div></div>")
    out.append("</div>")
    return "".join(out)


def _gallery_item(
    image_id: str,
    target: int,
    row: np.ndarray,
    class_names: Sequence[str],
    pictures: _Pictures,
) -> str:
    top = np.argsort(-row, kind="stable")[:3]
    caption = (
        f"{image_id}: true {class_names[target]}, predicted {class_names[top[0]]} {row[top[0]]:.3f}"
    )
    pic = pictures.link(image_id, "gallery", caption)
    items = "".join(f"<li>{_e(class_names[c])} {row[c]:.3f}</li>" for c in top)
    return (
        f'<figure class="miss" data-id="{_e(image_id)}">{pic}<figcaption>'
        f'<div class="id">{_e(image_id)}</div>'
        f"<div>true: <b>{_e(class_names[target])}</b> (p={row[target]:.3f})</div>"
        f"<ol>{items}</ol></figcaption></figure>"
    )


def _confusion_html(cm: np.ndarray, names: Sequence[str], linked: set[tuple[int, int]]) -> str:
    """The matrix picture with a link laid over each confused cell to its gallery group."""
    png, boxes = _confusion_picture(cm, names)
    cells = []
    for t, p in sorted(linked):
        left, top, width, height = boxes[(t, p)]
        cells.append(
            f'<a class="cell" href="#{_pair_anchor(t, p)}" '
            f'style="left:{left:.3f}%;top:{top:.3f}%;width:{width:.3f}%;height:{height:.3f}%" '
            f'title="{_e(f"true {names[t]} → predicted {names[p]}: {int(cm[t, p])}")}" '
            f'aria-label="{_e(f"gallery: true {names[t]}, predicted {names[p]}")}"></a>'
        )
    return (
        '<p class="muted">Click a confused cell (or a pair below) to see its images.</p>'
        f'<div class="cmwrap"><img id="confusion" src="{_data_uri(png, "image/png")}" '
        f'alt="Confusion matrix">{"".join(cells)}</div>'
    )


def _pairs_html(cm: np.ndarray, names: Sequence[str], linked: set[tuple[int, int]]) -> str:
    pairs = most_confused_pairs(cm, names, top=10)
    if not len(pairs):
        return "<p>No confusions.</p>"
    index = {n: k for k, n in enumerate(names)}
    rows = []
    for r in pairs.itertuples(index=False):
        t, p = index[r[0]], index[r[1]]
        where = (
            _Markup(f'<a href="#{_pair_anchor(t, p)}">images</a>')
            if (t, p) in linked
            else "not shown"
        )
        rows.append([r[0], r[1], r[2], r[3], where])
    return _table(["true", "predicted", "count", "share of true", "gallery"], rows)


_PRETTY = {
    "macro_f1": "macro F1",
    "oof_macro_f1": "OOF macro F1",
    "a": "A",
    "b": "B",
    "a_wins": "A wins",
    "b_wins": "B wins",
    "both_right": "both right",
    "both_wrong": "both wrong",
    "mcnemar_p": "McNemar p",
    "n_views": "n views",
    "p_vs_identity": "McNemar p vs identity",
}


@dataclass(frozen=True)
class PerImage:
    """Several candidates' predictions on the same images, with what is known of each image.

    The hard cases (every verdict of the hard-case file) and the test images
    (to find where candidates disagree) are both shown this way. A row of
    NaN means the candidate has no prediction for that image.
    """

    ids: list[str]
    probs: Mapping[str, np.ndarray]
    truth: np.ndarray | None = None  # target per image, -1 where unknown
    kinds: Sequence[str] | None = None  # hard-case verdict kind, "" where none
    notes: Sequence[str] | None = None
    image_loader: ImageLoader | None = None
    note: str = ""  # what these images are; candidates that could not be read
    split: str = "test images"

    def __post_init__(self) -> None:
        n = len(self.ids)
        bad = [c for c, p in self.probs.items() if np.asarray(p).shape[0] != n]
        if bad or any(len(v) != n for v in (self.truth, self.kinds, self.notes) if v is not None):
            raise DocsortError(
                f"per-image rows do not match the {n} images"
                + (f" (probabilities of {', '.join(bad)})" if bad else "")
            )

    def predicted(self) -> dict[str, np.ndarray]:
        """Each candidate's predicted class, -1 where it has no prediction."""
        out = {}
        for c, p in self.probs.items():
            p = np.asarray(p, dtype=np.float64)
            have = ~np.isnan(p).any(axis=1) if p.size else np.zeros(len(p), dtype=bool)
            out[c] = np.where(have, np.nan_to_num(p, nan=-1.0).argmax(axis=1), -1)
        return out

    def disagreeing(self) -> np.ndarray:
        """Rows where every candidate has a prediction and they do not all agree."""
        preds = list(self.predicted().values())
        if len(preds) < 2:
            return np.zeros(0, dtype=np.int64)
        stack = np.stack(preds)
        return np.flatnonzero((stack >= 0).all(axis=0) & (stack != stack[0]).any(axis=0))


def _per_image_table(
    rows: PerImage,
    order: Sequence[int],
    names: Sequence[str],
    pictures: _Pictures,
    table_id: str,
    where: str,
) -> str:
    """One row per image: thumbnail, ID, truth, verdict, each candidate's prediction and probability."""
    preds = rows.predicted()
    cands = list(rows.probs)
    headers = ["image", "ID", "truth", "verdict"]
    for c in cands:
        headers += [c, f"{c} p"]
    body, row_ids = [], []
    for i in order:
        image_id = rows.ids[i]
        t = int(rows.truth[i]) if rows.truth is not None else -1
        kind = rows.kinds[i] if rows.kinds is not None else ""
        note = rows.notes[i] if rows.notes is not None else ""
        truth = names[t] if t >= 0 else ""
        verdict = f"{kind}: {note}" if kind and note else (kind or note)
        said = [
            f"{c} {names[int(preds[c][i])]} {float(np.asarray(rows.probs[c])[i].max()):.3f}"
            for c in cands
            if preds[c][i] >= 0
        ]
        caption = "; ".join([image_id + (f": true {truth}" if truth else ""), *said])
        cells: list[object] = [
            (_Markup(pictures.link(image_id, where, caption)), "pic", image_id),
            (image_id, "id"),
            truth,
            verdict,
        ]
        for c in cands:
            k = int(preds[c][i])
            if k < 0:
                cells += [("no prediction", "skip"), ""]
                continue
            css = ("ok" if k == t else "bad") if t >= 0 else None
            cells += [(names[k], css), (f"{float(np.asarray(rows.probs[c])[i, k]):.3f}", "num")]
        body.append(cells)
        row_ids.append(image_id)
    return _table(
        headers, body, table_id=table_id, row_ids=row_ids, filter_label="filter: ID, class, note"
    )


def _disagreement_html(
    rows: PerImage, names: Sequence[str], pictures: _Pictures, max_rows: int
) -> str:
    """Where the candidates' predictions differ: the images that decide between them."""
    cands = list(rows.probs)
    parts = [f'<p class="muted">{_e(rows.note)}</p>'] if rows.note else []
    if len(cands) < 2:
        return "".join(parts) + "<p>Needs at least two candidates with predictions.</p>"
    diff = rows.disagreeing()
    truth = rows.truth if rows.truth is not None else np.full(len(rows.ids), -1)
    preds = rows.predicted()
    known = diff[truth[diff] >= 0]
    line = (
        f"<p><b>{len(diff)}</b> of {len(rows.ids)} {_e(rows.split)} get different predictions "
        f"from {_e(', '.join(cands))}."
    )
    if len(known):
        right = ", ".join(
            f"{_e(c)} right on {int((preds[c][known] == truth[known]).sum())}" for c in cands
        )
        line += f" On the {len(known)} of them with a known label: {right}."
    parts.append(line + "</p>")
    if not len(diff):
        return "".join(parts)
    conf = np.nanmax(np.stack([np.asarray(rows.probs[c])[diff].max(axis=1) for c in cands]), 0)
    order = diff[np.lexsort((-conf, truth[diff] < 0))][:max_rows]  # labelled first, then surest
    if len(order) < len(diff):
        parts.append(f'<p class="muted">Showing {len(order)} of {len(diff)} images.</p>')
    parts.append(_per_image_table(rows, order, names, pictures, "disagree-table", "disagree"))
    return "".join(parts)


def _hardcases_html(rows: PerImage, names: Sequence[str], pictures: _Pictures) -> str:
    parts = [f'<p class="muted">{_e(rows.note)}</p>'] if rows.note else []
    if not rows.ids:
        return "".join(parts) + "<p>No hard-case verdicts yet (`docsort hardcases add`).</p>"
    parts.append(
        _per_image_table(rows, range(len(rows.ids)), names, pictures, "hardcase-table", "hardcases")
    )
    return "".join(parts)


def _comparison_html(comp: Comparison, pictures: _Pictures | None) -> str:
    """Winner, per-candidate and pairwise tables; the per-image table when no verdict view replaces it."""
    pc = comp.per_candidate
    pairs = comp.pairwise.copy()
    pairs["mcnemar_p"] = [
        f"{p:.3g}" for p in pairs["mcnemar_p"]
    ]  # small p must not print as 0.0000
    best = ["best" if c == comp.winner else "" for c in pc["candidate"]]
    parts = [
        f'<p>Winner: <b>{_e(comp.winner)}</b></p><div class="policy">{_e(comp.policy)}</div>',
        "<h3>Candidates</h3>",
        _df_table(pc.rename(columns=_PRETTY), best),
    ]
    if len(comp.pairwise):
        parts += [
            "<h3>Pairs (wins = only this one right; exact McNemar p)</h3>",
            _df_table(pairs.rename(columns=_PRETTY)),
        ]
    if pictures is None:
        parts.append(
            '<p class="muted">Per image: see <a href="#hardcase-verdicts">Hard cases</a>.</p>'
        )
        return "".join(parts)
    headers = ["image", "ID", "truth", "kind", "note"] + comp.candidates
    rows, row_ids = [], []
    for _, r in comp.per_image.iterrows():
        pic = pictures.link(str(r["ID"]), "comparison", f"{r['ID']}: true {r['truth']}")
        cells: list[object] = [
            (_Markup(pic), "pic", str(r["ID"])),
            (r["ID"], "id"),
            r["truth"],
            r["kind"],
            r["note"],
        ]
        for c in comp.candidates:
            css = ("ok" if r[f"{c}:ok"] else "bad") if r["scored"] else "skip"
            cells.append((f"{r[f'{c}:pred']} ({r[f'{c}:conf']:.2f})", css))
        rows.append(cells)
        row_ids.append(str(r["ID"]))
    parts += [
        "<h3>Per image</h3>",
        _table(
            headers, rows, table_id="comparison-table", row_ids=row_ids, filter_label="filter rows"
        ),
    ]
    return "".join(parts)


def _choice_html(abl: Ablation) -> str:
    """Whether evidence or the stated prior chose the views, with the counts."""
    c = abl.choice
    if c is None:
        return ""
    return f'<div class="policy">Decided by {_e(c.decided_by)}: {_e(c.evidence_text)}.</div>'


def _ablation_html(abl: Ablation) -> str:
    summary = abl.summary()
    rec = "+".join(abl.recommended)
    best = ["best" if v == rec else "" for v in summary["views"]]
    return (
        f"<p>Recommended views: <b>{_e(rec)}</b> (merge: {_e(abl.merge)}; "
        f"{len(abl.table)} subsets scored; fixed/broken are versus identity alone).</p>"
        + _choice_html(abl)
        + _df_table(summary.rename(columns=_PRETTY), best)
    )


# ---------------------------------------------------------------- entry points


def _check(class_names, ids, targets, probs) -> tuple[np.ndarray, np.ndarray]:
    """Targets and probabilities as arrays, aligned with the IDs and classes."""
    probs = np.asarray(probs, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.int64)
    if probs.ndim != 2 or probs.shape != (len(ids), len(class_names)) or len(targets) != len(ids):
        raise DocsortError(
            f"report inputs do not match: probs {probs.shape}, {len(ids)} ids, "
            f"{len(targets)} targets, {len(class_names)} classes"
        )
    if len(targets) and (targets.min() < 0 or targets.max() >= len(class_names)):
        raise DocsortError(f"report targets must lie in 0..{len(class_names) - 1}")
    return targets, probs


_LIGHTBOX = (
    '<div id="lightbox" hidden><figure><img id="lightbox-img" alt="full-size image">'
    '<figcaption id="lightbox-cap"></figcaption></figure></div>'
)


def write_report(
    path: str | os.PathLike,
    *,
    class_names: Sequence[str],
    ids: Sequence[str],
    targets: Sequence[int],
    probs: np.ndarray,
    image_loader: ImageLoader | None = None,
    comparison: Comparison | None = None,
    ablation: Ablation | None = None,
    title: str = "docsort error report",
    max_gallery: int = 1000,
    note: str = "",
    tables: Sequence[tuple[str, str, pd.DataFrame]] = (),
    hardcases: PerImage | None = None,
    disagreements: PerImage | None = None,
) -> Path:
    """Write the HTML error notebook for predictions ``probs`` (N x K) of ``ids`` with ``targets``.

    ``image_loader(id)`` returns the image as an array (gray or RGB) or None
    when it is not available; images are only read for the rows shown.
    ``note`` says what the predictions are (OOF, test labels, hard cases);
    ``tables`` are extra ``(section id, heading, table)`` sections, such as the
    ensemble methods and calibration tables. ``hardcases`` (the verdict file's
    rows) and ``disagreements`` (the comparison's candidates on the test
    images; the rows where they differ are shown, at most ``max_gallery``)
    bring their own image loaders.
    """
    targets, probs = _check(class_names, ids, targets, probs)
    names = [str(c) for c in class_names]
    preds = probs.argmax(axis=1)
    cm = confusion(targets, preds, len(names))
    n_wrong = int((preds != targets).sum())
    per_class = per_class_table(targets, preds, names).drop(columns="target")
    per_class.columns = ["class", "precision", "recall", "F1", "support"]
    pictures = _Pictures(image_loader)
    groups = _gallery_groups(targets, probs, max_gallery)
    linked = {g for g, _, _ in groups}
    reliability = _data_uri(reliability_png(probs, targets), "image/png")

    # The decision first (where candidates part, the hard cases), then the error analysis, the long gallery last.
    sections = []
    if disagreements is not None:
        sections.append(
            (
                "disagreements",
                "Where candidates disagree",
                _disagreement_html(
                    disagreements, names, _Pictures(disagreements.image_loader), max_gallery
                ),
            )
        )
    if hardcases is not None:
        sections.append(
            (
                "hardcase-verdicts",
                f"Hard cases ({len(hardcases.ids)})",
                _hardcases_html(hardcases, names, _Pictures(hardcases.image_loader)),
            )
        )
    if comparison is not None:
        own = None if hardcases is not None else pictures
        sections.append(("hard-cases", "Hard-case comparison", _comparison_html(comparison, own)))
    sections += [
        ("confusion-matrix", "Confusion matrix", _confusion_html(cm, names, linked)),
        ("confused-pairs", "Most-confused class pairs", _pairs_html(cm, names, linked)),
        ("per-class", "Per-class precision, recall, F1", _df_table(per_class)),
        (
            "reliability",
            "Reliability (confidence against accuracy)",
            f'<img id="reliability-diagram" src="{reliability}" alt="Reliability diagram">',
        ),
        (
            "gallery",
            f"Misclassified images ({n_wrong})",
            _gallery(ids, targets, probs, names, pictures, groups),
        ),
    ]
    if ablation is not None:
        sections.append(("tta-ablation", "TTA ablation", _ablation_html(ablation)))
    for sid, head, df in tables:
        sections.append((sid, head, _df_table(df.rename(columns=_PRETTY))))

    nav = "".join(f'<a href="#{sid}">{_e(head)}</a>' for sid, head, _ in sections)
    body = "".join(
        f'<section id="{sid}"><h2>{_e(head)}</h2>{content}</section>'
        for sid, head, content in sections
    )
    doc = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{_e(title)}</h1>"
        + (f'<p class="muted">{_e(note)}</p>' if note else "")
        + f'<p class="overview"><b>{len(ids)}</b> images &middot; accuracy <b>{accuracy(targets, preds):.4f}</b>'
        f" &middot; macro F1 <b>{macro_f1(targets, preds):.4f}</b> &middot; misclassified <b>{n_wrong}</b></p>"
        f"<nav>{nav}</nav>{body}{_LIGHTBOX}<script>{_SCRIPT}</script></body></html>\n"
    )
    return write_text_atomic(path, doc)


def _md(value: object) -> str:
    """Markdown-safe text: HTML-escaped (viewers render raw HTML) and table/emphasis marks escaped."""
    s = html.escape(str(value), quote=False)
    for ch in "\\`*_[]|~":
        s = s.replace(ch, "\\" + ch)
    return s.replace("\n", " ")


def write_summary_md(
    path: str | os.PathLike,
    *,
    class_names: Sequence[str],
    targets: Sequence[int],
    probs: np.ndarray,
    comparison: Comparison | None = None,
    ablation: Ablation | None = None,
    title: str = "docsort error report",
    note: str = "",
    disagreements: PerImage | None = None,
) -> Path:
    """A short Markdown summary (KFP's Markdown viewer, PR comments): scores, weak spots, decisions."""
    names = [str(c) for c in class_names]
    targets, probs = _check(names, list(range(len(targets))), targets, probs)
    preds = probs.argmax(axis=1)
    per_class = per_class_table(targets, preds, names)
    per_class = per_class[per_class["support"] > 0].sort_values(["f1", "support"])
    pairs = most_confused_pairs(confusion(targets, preds, len(names)), names, top=5)
    lines = [
        f"# {_md(title)}",
        "",
        *([_md(note), ""] if note else []),
        f"- images: {len(targets)}",
        f"- accuracy: {accuracy(targets, preds):.4f}",
        f"- macro F1: {macro_f1(targets, preds):.4f}",
        f"- misclassified: {int((preds != targets).sum())}",
        "",
        "## Weakest classes",
        "",
        "| class | precision | recall | F1 | support |",
        "|---|---:|---:|---:|---:|",
        *(
            f"| {_md(r.class_name)} | {r.precision:.3f} | {r.recall:.3f} | {r.f1:.3f} | {r.support} |"
            for r in per_class.head(3).itertuples()
        ),
    ]
    if len(pairs):
        lines += [
            "",
            "## Most-confused pairs",
            "",
            "| true | predicted | count | share of true |",
            "|---|---|---:|---:|",
        ]
        lines += [
            f"| {_md(r['true'])} | {_md(r['predicted'])} | {r['count']} | {r['share_of_true']:.3f} |"
            for _, r in pairs.iterrows()
        ]
    if comparison is not None:
        lines += ["", "## Hard cases", "", f"Winner: **{_md(comparison.winner)}**", ""]
        lines += [f"    {line}" for line in comparison.policy.splitlines()]
    if disagreements is not None and len(disagreements.probs) >= 2:
        n = len(disagreements.disagreeing())
        lines += [
            "",
            "## Where candidates disagree",
            "",
            f"{n} of {len(disagreements.ids)} {_md(disagreements.split)} get different predictions "
            f"from {_md(', '.join(disagreements.probs))}.",
        ]
    if ablation is not None:
        best = ablation.row(ablation.recommended)
        lines += [
            "",
            "## TTA ablation",
            "",
            f"Recommended views: **{_md('+'.join(ablation.recommended))}** "
            f"(macro F1 {best.macro_f1:.4f}, fixed {best.fixed}, broken {best.broken} vs identity).",
        ]
        if ablation.choice is not None:
            c = ablation.choice
            lines += ["", f"Decided by {c.decided_by}: {_md(c.evidence_text)}."]
    return write_text_atomic(path, "\n".join(lines) + "\n")
