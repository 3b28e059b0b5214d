"""The error notebook: one self-contained HTML file, plus a short Markdown summary.

One file (images as base64 data URIs, inline CSS, no external URL) so it can be
mailed, attached to a KFP run or opened from S3 without a server. Everything
that comes from the user's data (IDs/file names, class names, notes) is
HTML-escaped, and a Content-Security-Policy allows only inline data images,
inline styles and the report's own fixed script: a hostile file name can
neither inject markup nor load anything.

The fixed script records in the DOM whether the pictures decoded
(``data-confusion-loaded``, ``data-thumbs-loaded`` on ``<body>``), so a
headless browser can check the report without comparing screenshots.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import os
from collections.abc import Callable, Sequence
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

ImageLoader = Callable[[str], "np.ndarray | None"]

THUMB_MAX = 160

_PROBE_JS = (
    "window.addEventListener('load',function(){"
    "var c=document.getElementById('confusion');"
    "document.body.dataset.confusionLoaded=String(!!(c&&c.complete&&c.naturalWidth>0));"
    "var t=document.querySelectorAll('img.thumb'),n=0;"
    "for(var i=0;i<t.length;i++){if(t[i].complete&&t[i].naturalWidth>0)n++;}"
    "document.body.dataset.thumbsLoaded=n+'/'+t.length;});"
)
_PROBE_HASH = base64.b64encode(hashlib.sha256(_PROBE_JS.encode()).digest()).decode()
CSP = (
    "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
    f"script-src 'sha256-{_PROBE_HASH}'; base-uri 'none'; form-action 'none'"
)

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px auto;max-width:1200px;
 padding:0 16px;color:#1d2327;background:#fff}
h1{margin-bottom:4px} h2{border-bottom:2px solid #dde3e8;padding-bottom:4px;margin-top:36px}
h3{font-size:15px;margin:18px 0 6px}
.overview{color:#444;font-size:15px} .overview b{color:#111}
nav a{margin-right:14px;font-size:14px}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
th,td{border:1px solid #d4dadf;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f1f4f6} td.num{text-align:right;font-variant-numeric:tabular-nums}
td.ok{background:#e3f4e1} td.bad{background:#fbe1df} td.skip{background:#eee;color:#666}
tr.best td{font-weight:600;background:#fff6d6}
#confusion{max-width:100%;height:auto;border:1px solid #d4dadf}
.groups{display:flex;flex-wrap:wrap;gap:8px 28px;align-items:flex-start}
.group h3{margin-top:12px} .grid{display:flex;flex-wrap:wrap;gap:10px}
figure.miss{margin:0;width:176px;border:1px solid #d4dadf;border-radius:4px;padding:6px;background:#fafbfc;
 font-size:12px;overflow-wrap:anywhere}
figure.miss img{display:block;max-width:160px;max-height:160px;margin:0 auto 4px;background:#fff}
figure.miss .noimg{height:60px;display:flex;align-items:center;justify-content:center;color:#888;
 background:#eee;margin-bottom:4px}
figure.miss ol{margin:4px 0 0;padding-left:18px} .id{font-family:ui-monospace,monospace;font-size:11px}
.policy{white-space:pre-wrap;background:#f6f8fa;padding:8px;border:1px solid #d4dadf}
.muted{color:#666}
"""


def _e(value: object) -> str:
    """HTML-escape anything (quotes too, so it is safe in attributes)."""
    return html.escape(str(value), quote=True)


# ---------------------------------------------------------------- pictures


def confusion_png(cm: np.ndarray, class_names: Sequence[str]) -> bytes:
    """Row-normalized confusion matrix (colour = share of the true class) with counts written in."""
    cm = np.asarray(cm)
    k = len(class_names)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    side = max(5.0, 0.55 * k + 2.5)
    fig = Figure(figsize=(side + 1.2, side), dpi=100)
    FigureCanvasAgg(fig)
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
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


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


def thumbnail_jpeg(image: np.ndarray, max_side: int = THUMB_MAX) -> bytes:
    """A JPEG at most ``max_side`` pixels on its longer side (aspect kept)."""
    im = Image.fromarray(_to_uint8(image))
    im.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


# ---------------------------------------------------------------- HTML pieces


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]], row_classes=None) -> str:
    """An HTML table; cells are escaped, numbers right-aligned, ``(text, css)`` tuples get a class."""
    out = ["<table><thead><tr>", *(f"<th>{_e(h)}</th>" for h in headers), "</tr></thead><tbody>"]
    for i, row in enumerate(rows):
        cls = f' class="{_e(row_classes[i])}"' if row_classes and row_classes[i] else ""
        out.append(f"<tr{cls}>")
        for cell in row:
            css = None
            if isinstance(cell, tuple):
                cell, css = cell
            elif isinstance(cell, int | float | np.integer | np.floating):
                css = "num"
            attr = f' class="{_e(css)}"' if css else ""
            out.append(f"<td{attr}>{_e(fmt_cell(cell))}</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _df_table(df: pd.DataFrame, row_classes=None) -> str:
    return _table(list(df.columns), df.itertuples(index=False, name=None), row_classes)


def _gallery(
    ids: Sequence[str],
    targets: np.ndarray,
    probs: np.ndarray,
    class_names: Sequence[str],
    image_loader: ImageLoader | None,
    max_items: int,
) -> str:
    """Misclassified images grouped by (true, predicted), largest group first, most confident first."""
    preds = probs.argmax(axis=1)
    wrong = np.flatnonzero(preds != targets)
    if wrong.size == 0:
        return "<p>No misclassified images.</p>"
    groups: dict[tuple[int, int], list[int]] = {}
    for i in wrong:
        groups.setdefault((int(targets[i]), int(preds[i])), []).append(int(i))
    order = sorted(groups, key=lambda g: (-len(groups[g]), g))
    shown = 0
    out = []
    if wrong.size > max_items:
        out.append(
            f'<p class="muted">Showing {max_items} of {wrong.size} misclassified images.</p>'
        )
    out.append('<div class="groups">')
    for g in order:
        if shown >= max_items:
            break
        members = sorted(groups[g], key=lambda i: -probs[i].max())[: max_items - shown]
        t, p = g
        out.append(
            f'<div class="group"><h3>true {_e(class_names[t])} &rarr; predicted {_e(class_names[p])} '
            f'<span class="muted">({len(groups[g])})</span></h3><div class="grid">'
        )
        for i in members:
            out.append(_gallery_item(ids[i], t, probs[i], class_names, image_loader))
        out.append("</div></div>")
        shown += len(members)
    out.append("</div>")
    return "".join(out)


def _gallery_item(
    image_id: str,
    target: int,
    row: np.ndarray,
    class_names: Sequence[str],
    image_loader: ImageLoader | None,
) -> str:
    image = image_loader(image_id) if image_loader is not None else None
    if image is None:
        pic = '<div class="noimg">no image</div>'
    else:
        uri = _data_uri(thumbnail_jpeg(image), "image/jpeg")
        pic = f'<img class="thumb" src="{uri}" alt="{_e(image_id)}">'
    top = np.argsort(-row, kind="stable")[:3]
    items = "".join(f"<li>{_e(class_names[c])} {row[c]:.3f}</li>" for c in top)
    return (
        f'<figure class="miss" data-id="{_e(image_id)}">{pic}<figcaption>'
        f'<div class="id">{_e(image_id)}</div>'
        f"<div>true: <b>{_e(class_names[target])}</b> (p={row[target]:.3f})</div>"
        f"<ol>{items}</ol></figcaption></figure>"
    )


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


def _comparison_html(comp: Comparison) -> str:
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
    headers = ["ID", "truth", "kind", "note"] + comp.candidates
    rows = []
    for _, r in comp.per_image.iterrows():
        cells: list[object] = [r["ID"], r["truth"], r["kind"], r["note"]]
        for c in comp.candidates:
            css = ("ok" if r[f"{c}:ok"] else "bad") if r["scored"] else "skip"
            cells.append((f"{r[f'{c}:pred']} ({r[f'{c}:conf']:.2f})", css))
        rows.append(cells)
    parts += ["<h3>Per image</h3>", _table(headers, rows)]
    return "".join(parts)


def _ablation_html(abl: Ablation) -> str:
    summary = abl.summary()
    rec = "+".join(abl.recommended)
    best = ["best" if v == rec else "" for v in summary["views"]]
    return (
        f"<p>Recommended views: <b>{_e(rec)}</b> (merge: {_e(abl.merge)}; "
        f"{len(abl.table)} subsets scored; fixed/broken are versus identity alone).</p>"
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
) -> Path:
    """Write the HTML error notebook for predictions ``probs`` (N x K) of ``ids`` with ``targets``.

    ``image_loader(id)`` returns the image as an array (gray or RGB) or None
    when it is not available; images are only read for misclassified rows.
    ``note`` says what the predictions are (OOF, test labels, hard cases);
    ``tables`` are extra ``(section id, heading, table)`` sections, such as the
    ensemble methods and calibration tables.
    """
    targets, probs = _check(class_names, ids, targets, probs)
    names = [str(c) for c in class_names]
    preds = probs.argmax(axis=1)
    cm = confusion(targets, preds, len(names))
    n_wrong = int((preds != targets).sum())
    per_class = per_class_table(targets, preds, names).drop(columns="target")
    per_class.columns = ["class", "precision", "recall", "F1", "support"]
    pairs = most_confused_pairs(cm, names, top=10)
    pairs.columns = ["true", "predicted", "count", "share of true"]
    png = _data_uri(confusion_png(cm, names), "image/png")

    sections = [
        (
            "confusion-matrix",
            "Confusion matrix",
            f'<img id="confusion" src="{png}" alt="Confusion matrix">',
        ),
        ("per-class", "Per-class precision, recall, F1", _df_table(per_class)),
        (
            "confused-pairs",
            "Most-confused class pairs",
            _df_table(pairs) if len(pairs) else "<p>No confusions.</p>",
        ),
        (
            "gallery",
            f"Misclassified images ({n_wrong})",
            _gallery(ids, targets, probs, names, image_loader, max_gallery),
        ),
    ]
    if comparison is not None:
        sections.append(("hard-cases", "Hard-case comparison", _comparison_html(comparison)))
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
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{_e(title)}</h1>"
        + (f'<p class="muted">{_e(note)}</p>' if note else "")
        + f'<p class="overview"><b>{len(ids)}</b> images &middot; accuracy <b>{accuracy(targets, preds):.4f}</b>'
        f" &middot; macro F1 <b>{macro_f1(targets, preds):.4f}</b> &middot; misclassified <b>{n_wrong}</b></p>"
        f"<nav>{nav}</nav>{body}<script>{_PROBE_JS}</script></body></html>\n"
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
    if ablation is not None:
        best = ablation.table.iloc[0]
        lines += [
            "",
            "## TTA ablation",
            "",
            f"Recommended views: **{_md('+'.join(ablation.recommended))}** "
            f"(macro F1 {best.macro_f1:.4f}, fixed {best.fixed}, broken {best.broken} vs identity).",
        ]
    return write_text_atomic(path, "\n".join(lines) + "\n")
