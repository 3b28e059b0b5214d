"""Deterministic synthetic 17-class document-image dataset in the data-contract layout.

Why: the demo, the tests and new users need a dataset that looks like the seed's
(document photos and scans of 17 types, imbalanced classes, test images rotated
by multiples of 90 degrees, sometimes flipped and degraded, a few classes that
are deliberately alike) without downloading anything. Every class is a *layout
family* drawn with cv2/numpy (tables, photo boxes, gauges, plates, text columns,
stamps, receipts); paper tints are drawn from one distribution for all paper
classes, so a model has to learn layout rather than colour.

Each image has its own random stream seeded by ``(seed, split, class, index)``,
so the bytes written depend only on the arguments, never on thread scheduling.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from docsort.core.atomic import atomic_path
from docsort.core.choices import VIEW_NAMES
from docsort.core.errors import DocsortError
from docsort.core.outputs import stage

CLASS_NAMES: tuple[str, ...] = (
    "account_number",
    "application_for_payment_of_pregnancy_medical_expenses",
    "car_dashboard",
    "confirmation_of_admission_and_discharge",
    "diagnosis",
    "driver_license",
    "medical_bill_receipts",
    "medical_outpatient_certificate",
    "national_id_card",
    "passport",
    "payment_confirmation",
    "pharmaceutical_receipt",
    "prescription",
    "resume",
    "statement_of_opinion",
    "vehicle_registration_certificate",
    "vehicle_registration_plate",
)

JPEG_QUALITY = 90
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_FONT_BOLD = cv2.FONT_HERSHEY_DUPLEX
_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_LOWER = "abcdefghijklmnopqrstuvwxyz"
_DIGITS = "0123456789"

# Notes for the hard cases: a hard test image of class K borrows one layout
# detail of the class it is confused with (see _medical_form).
_HARD_NOTES = {
    3: "looks like outpatient certificate: short patient table, faint stay-period block",
    4: "looks like statement of opinion: no code boxes, stamp at bottom centre",
    7: "looks like admission/discharge confirmation: long patient table, small visit grid",
    14: "looks like diagnosis: stamp at bottom right, body split by a label column",
}

Color = tuple[int, int, int]


# --------------------------------------------------------------------------- primitives


def _ri(rng: np.random.Generator, lo: float, hi: float) -> int:
    """Random int in [lo, hi] (inclusive); lo/hi may be floats (pixel fractions)."""
    lo_i, hi_i = int(round(lo)), int(round(hi))
    return int(rng.integers(lo_i, max(lo_i, hi_i) + 1))


def _word(rng: np.random.Generator, n: int, alphabet: str = _CHARS + _LOWER) -> str:
    idx = rng.integers(0, len(alphabet), size=max(1, n))
    return "".join(alphabet[i] for i in idx)


def _phrase(rng: np.random.Generator, n_chars: int) -> str:
    """Words of random length separated by spaces, about ``n_chars`` long."""
    out: list[str] = []
    total = 0
    while total < n_chars:
        w = _word(rng, _ri(rng, 2, 8))
        out.append(w)
        total += len(w) + 1
    return " ".join(out)[: max(1, n_chars)]


def _scale(px: float) -> float:
    """Hershey font scale whose capital letters are about ``px`` pixels tall."""
    return max(0.18, px / 22.0)


def _char_w(scale: float, font: int = _FONT, thick: int = 1) -> float:
    return cv2.getTextSize("M", font, scale, thick)[0][0] * 0.8


def _put(
    img: np.ndarray,
    text: str,
    x: float,
    y: float,
    px: float,
    color: Color,
    thick: int = 1,
    font: int = _FONT,
) -> None:
    cv2.putText(img, text, (int(x), int(y)), font, _scale(px), color, thick, cv2.LINE_AA)


def _text_lines(
    img: np.ndarray,
    rng: np.random.Generator,
    box: tuple[float, float, float, float],
    px: float,
    ink: Color,
    gap: float = 1.8,
    fill: tuple[float, float] = (0.45, 1.0),
    max_lines: int = 999,
) -> None:
    """Fill ``box`` (x0, y0, x1, y1) with left-aligned lines of random text."""
    x0, y0, x1, y1 = box
    cw = _char_w(_scale(px))
    y = y0 + px
    n = 0
    while y <= y1 and n < max_lines:
        frac = rng.uniform(*fill)
        n_chars = int((x1 - x0) * frac / max(cw, 1.0))
        if n_chars > 0:
            _put(img, _phrase(rng, n_chars), x0, y, px, ink)
        y += px * gap
        n += 1


def _table(
    img: np.ndarray,
    rng: np.random.Generator,
    box: tuple[float, float, float, float],
    rows: int,
    cols: int | list[float],
    ink: Color,
    text_p: float = 0.8,
    shade_cols: tuple[int, ...] = (),
    shade: int = 0,
    thick: int = 1,
) -> list[float]:
    """Draw a ruled grid; ``cols`` is a count or a list of column-width weights.

    Returns the y coordinates of the row lines so callers can align more parts.
    """
    x0, y0, x1, y1 = (int(v) for v in box)
    weights = [1.0] * cols if isinstance(cols, int) else list(cols)
    w_arr = np.asarray(weights, dtype=float)
    xs = x0 + np.concatenate([[0.0], np.cumsum(w_arr) / w_arr.sum()]) * (x1 - x0)
    ys = np.linspace(y0, y1, rows + 1)
    if shade:
        for c in shade_cols:
            cv2.rectangle(img, (int(xs[c]), y0), (int(xs[c + 1]), y1), _tone(img, shade), -1)
    cv2.rectangle(img, (x0, y0), (x1, y1), ink, thick)
    for y in ys[1:-1]:
        cv2.line(img, (x0, int(y)), (x1, int(y)), ink, 1)
    for x in xs[1:-1]:
        cv2.line(img, (int(x), y0), (int(x), y1), ink, 1)
    cell_h = (y1 - y0) / rows
    px = min(9.0, cell_h * 0.45)
    cw = _char_w(_scale(px))
    for r in range(rows):
        for c in range(len(weights)):
            if rng.random() > text_p:
                continue
            cell_w = xs[c + 1] - xs[c]
            n_chars = int(cell_w * rng.uniform(0.3, 0.85) / max(cw, 1.0))
            if n_chars < 1:
                continue
            ty = ys[r] + (cell_h + px) / 2
            _put(img, _phrase(rng, n_chars), xs[c] + 2, ty, px, ink)
    return [float(y) for y in ys]


def _tone(img: np.ndarray, delta: int) -> Color:
    """Paper colour darkened by ``delta`` (shaded cells keep the paper's tint)."""
    b, g, r = (int(v) for v in np.clip(img[0, 0].astype(int) - delta, 0, 255))
    return b, g, r


def _paper(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Near-white paper with a small random tint, same distribution for every class."""
    base = rng.uniform(226, 252)
    tint = rng.normal(0.0, 4.0, size=3)
    img = np.empty((h, w, 3), dtype=np.uint8)
    img[:] = np.clip(base + tint, 0, 255).astype(np.uint8)
    return img


def _ink(rng: np.random.Generator) -> Color:
    g = rng.uniform(15, 70)
    tint = rng.normal(0.0, 6.0, size=3)
    if rng.random() < 0.25:  # blue-black ballpoint/printer ink
        tint += np.array([18.0, 0.0, -10.0])
    b, gr, r = (int(v) for v in np.clip(g + tint, 0, 255))
    return b, gr, r


def _stamp(
    img: np.ndarray,
    rng: np.random.Generator,
    cx: float,
    cy: float,
    r: float,
    alpha: float | None = None,
) -> None:
    """A semi-transparent red or blue seal: double circle with text inside."""
    red = rng.random() < 0.65
    color: Color = (
        (_ri(rng, 20, 60), _ri(rng, 20, 60), _ri(rng, 170, 225))
        if red
        else (_ri(rng, 150, 210), _ri(rng, 60, 100), _ri(rng, 20, 60))
    )
    cx, cy, r = int(cx), int(cy), max(4, int(r))
    h, w = img.shape[:2]
    x0, y0, x1, y1 = max(0, cx - r - 2), max(0, cy - r - 2), min(w, cx + r + 3), min(h, cy + r + 3)
    if x1 <= x0 or y1 <= y0:
        return
    roi = img[y0:y1, x0:x1]
    over = roi.copy()
    c = (cx - x0, cy - y0)
    cv2.circle(over, c, r, color, max(1, r // 7), cv2.LINE_AA)
    cv2.circle(over, c, int(r * 0.72), color, 1, cv2.LINE_AA)
    px = r * 0.35
    text = _word(rng, 3, _CHARS)
    tw = cv2.getTextSize(text, _FONT_BOLD, _scale(px), 1)[0][0]
    cv2.putText(over, text, (c[0] - tw // 2, c[1] + int(px / 2)), _FONT_BOLD, _scale(px), color, 1)
    a = rng.uniform(0.55, 0.85) if alpha is None else alpha
    cv2.addWeighted(over, a, roi, 1 - a, 0, dst=roi)


def _face(
    img: np.ndarray, rng: np.random.Generator, box: tuple[float, float, float, float]
) -> None:
    """A photo box with a head-and-shoulders silhouette (as on ID documents)."""
    x0, y0, x1, y1 = (int(v) for v in box)
    bw, bh = x1 - x0, y1 - y0
    bg = _ri(rng, 150, 225)
    cv2.rectangle(img, (x0, y0), (x1, y1), (bg, bg, bg + _ri(rng, -5, 8)), -1)
    cx = x0 + bw // 2 + _ri(rng, -bw * 0.05, bw * 0.05)
    skin = np.array([_ri(rng, 95, 175)] * 3) + np.array([-18, -4, 12])
    cloth = _ri(rng, 25, 90)
    cv2.ellipse(img, (cx, y1), (int(bw * 0.46), int(bh * 0.3)), 0, 180, 360, (cloth,) * 3, -1)
    cv2.ellipse(
        img,
        (cx, y0 + int(bh * 0.42)),
        (int(bw * 0.22), int(bh * 0.25)),
        0,
        0,
        360,
        tuple(int(v) for v in np.clip(skin, 0, 255)),
        -1,
        cv2.LINE_AA,
    )
    hair = _ri(rng, 15, 70)
    cv2.ellipse(
        img,
        (cx, y0 + int(bh * 0.32)),
        (int(bw * 0.24), int(bh * 0.17)),
        0,
        180,
        360,
        (hair,) * 3,
        -1,
        cv2.LINE_AA,
    )
    cv2.rectangle(img, (x0, y0), (x1, y1), (90, 90, 90), 1)


def _barcode(
    img: np.ndarray, rng: np.random.Generator, box: tuple[float, float, float, float]
) -> None:
    """Vertical bars of random width, as printed under a till receipt."""
    x0, y0, x1, y1 = (int(v) for v in box)
    x = x0
    while x < x1:
        bw = _ri(rng, 1, 3)
        if rng.random() < 0.55:
            cv2.rectangle(img, (x, y0), (min(x1, x + bw - 1), y1), (20, 20, 20), -1)
        x += bw


def _checkbox(img: np.ndarray, x: float, y: float, s: float, ink: Color, ticked: bool) -> None:
    x, y, s = int(x), int(y), max(3, int(s))
    cv2.rectangle(img, (x, y), (x + s, y + s), ink, 1)
    if ticked:
        cv2.line(img, (x + 1, y + s // 2), (x + s // 2, y + s - 1), ink, 1)
        cv2.line(img, (x + s // 2, y + s - 1), (x + s - 1, y + 1), ink, 1)


def _title(
    img: np.ndarray, rng: np.random.Generator, cx: float, y: float, px: float, ink: Color
) -> None:
    """A centred bold title of random capitals with its baseline at ``y``."""
    text = _word(rng, _ri(rng, 6, 14), _CHARS)
    sc = _scale(px)
    tw = cv2.getTextSize(text, _FONT_BOLD, sc, 2)[0][0]
    cv2.putText(img, text, (int(cx - tw / 2), int(y)), _FONT_BOLD, sc, ink, 2, cv2.LINE_AA)


def _on_surface(rng: np.random.Generator, card: np.ndarray, max_side: int) -> np.ndarray:
    """Place a card on a table-top background, as in a phone photo of an ID card."""
    ch, cw = card.shape[:2]
    pad = rng.uniform(1.08, 1.3)
    H, W = int(ch * pad), int(cw * pad)
    bg = np.empty((H, W, 3), dtype=np.uint8)
    base = rng.uniform(60, 200)
    bg[:] = np.clip(base + rng.normal(0, 12, size=3), 0, 255).astype(np.uint8)
    y = _ri(rng, 0, H - ch)
    x = _ri(rng, 0, W - cw)
    mask = np.zeros((ch, cw), dtype=np.uint8)
    rad = max(2, int(min(ch, cw) * 0.06))
    cv2.rectangle(mask, (rad, 0), (cw - rad - 1, ch - 1), 255, -1)
    cv2.rectangle(mask, (0, rad), (cw - 1, ch - rad - 1), 255, -1)
    for px, py in (
        (rad, rad),
        (cw - rad - 1, rad),
        (rad, ch - rad - 1),
        (cw - rad - 1, ch - rad - 1),
    ):
        cv2.circle(mask, (px, py), rad, 255, -1)
    region = bg[y : y + ch, x : x + cw]
    np.copyto(region, card, where=mask[..., None].astype(bool))
    scale = max_side / max(H, W)
    if scale < 1.0:
        bg = cv2.resize(bg, (int(W * scale), int(H * scale)), interpolation=cv2.INTER_AREA)
    return bg


def _size(rng: np.random.Generator, side: int, hw: tuple[float, float]) -> tuple[int, int]:
    """(h, w) with the longest side ``side`` and height/width ratio drawn from ``hw``."""
    ratio = rng.uniform(*hw)
    if ratio >= 1.0:
        return side, max(16, int(side / ratio))
    return max(16, int(side * ratio)), side


# --------------------------------------------------------------------------- layouts


@dataclass(frozen=True)
class _Ctx:
    rng: np.random.Generator
    side: int  # longest side in pixels
    hard: bool  # draw the hard-case variant (borrows a detail of a confusable class)


def _account_number(c: _Ctx) -> np.ndarray:
    """Bank-book copy: header band, logo, a large account number, a short ledger."""
    rng = c.rng
    h, w = _size(rng, c.side, (0.62, 0.8))
    img = _paper(rng, h, w)
    ink = _ink(rng)
    band = int(h * rng.uniform(0.12, 0.18))
    cv2.rectangle(img, (0, 0), (w, band), _tone(img, _ri(rng, 40, 90)), -1)
    r = int(band * 0.35)
    cv2.circle(img, (int(w * 0.06) + r, band // 2), r, ink, -1, cv2.LINE_AA)
    _put(img, _word(rng, _ri(rng, 5, 9), _CHARS), w * 0.08 + 2 * r, band * 0.65, band * 0.4, ink, 2)
    y = band + h * rng.uniform(0.1, 0.16)
    _put(img, _word(rng, 7, _CHARS), w * 0.07, y, h * 0.035, ink)
    num = "-".join(_word(rng, _ri(rng, 3, 6), _DIGITS) for _ in range(3))
    _put(img, num, w * 0.07, y + h * 0.13, h * 0.075, ink, 2, _FONT_BOLD)
    _text_lines(img, rng, (w * 0.07, y + h * 0.17, w * 0.6, y + h * 0.32), h * 0.03, ink)
    top = y + h * 0.36
    cv2.line(img, (int(w * 0.05), int(top)), (int(w * 0.95), int(top)), ink, 2)
    if top + h * 0.08 < h * 0.95:
        _table(img, rng, (w * 0.05, top + 4, w * 0.95, h * 0.95), _ri(rng, 3, 5), 4, ink, 0.7)
    return img


def _pregnancy_application(c: _Ctx) -> np.ndarray:
    """Government application form: shaded section bars, checkbox rows, signature lines."""
    rng = c.rng
    h, w = _size(rng, c.side, (1.3, 1.48))
    img = _paper(rng, h, w)
    ink = _ink(rng)
    _title(img, rng, w / 2, h * 0.07, h * 0.028, ink)
    y = h * 0.1
    mx = w * rng.uniform(0.05, 0.08)
    n_sections = _ri(rng, 3, 4)
    for s in range(n_sections):
        bar = h * 0.035
        cv2.rectangle(img, (int(mx), int(y)), (int(w - mx), int(y + bar)), _tone(img, 70), -1)
        _put(img, _word(rng, _ri(rng, 6, 12), _CHARS), mx + 3, y + bar * 0.75, bar * 0.55, ink)
        y += bar + h * 0.01
        if s % 2 == 0:
            for _ in range(_ri(rng, 2, 3)):
                x = mx
                for _ in range(_ri(rng, 3, 4)):
                    _checkbox(img, x, y, h * 0.018, ink, rng.random() < 0.3)
                    _put(
                        img,
                        _word(rng, _ri(rng, 4, 8)),
                        x + h * 0.025,
                        y + h * 0.016,
                        h * 0.013,
                        ink,
                    )
                    x += (w - 2 * mx) / 4
                y += h * 0.035
        else:
            rows = _ri(rng, 3, 4)
            th = rows * h * 0.035
            _table(
                img,
                rng,
                (mx, y, w - mx, y + th),
                rows,
                [1, 2.5, 1, 2.5],
                ink,
                shade_cols=(0, 2),
                shade=25,
            )
            y += th
        y += h * 0.02
        if y > h * 0.8:
            break
    y = max(y, h * 0.82)
    _text_lines(img, rng, (mx, y, w - mx, y + h * 0.05), h * 0.012, ink)
    for i in range(2):
        yy = int(h * 0.9 + i * h * 0.04)
        cv2.line(img, (int(w * 0.55), yy), (int(w - mx), yy), ink, 1)
        _put(img, _word(rng, 5), w * 0.4, yy, h * 0.013, ink)
    return img


def _car_dashboard(c: _Ctx) -> np.ndarray:
    """Instrument cluster photo: dark panel, two dials with ticks and needles, a display."""
    rng = c.rng
    h, w = _size(rng, c.side, (0.45, 0.62))
    img = np.empty((h, w, 3), dtype=np.uint8)
    base = rng.uniform(12, 45)
    img[:] = np.clip(base + rng.normal(0, 4, size=3), 0, 255).astype(np.uint8)
    # a lighter housing arc across the top
    cv2.ellipse(
        img,
        (w // 2, int(h * 1.1)),
        (int(w * 0.62), int(h * 1.05)),
        0,
        180,
        360,
        _tone(img, -18),
        int(h * 0.04),
    )
    light: Color = (_ri(rng, 200, 250), _ri(rng, 200, 250), _ri(rng, 200, 250))
    accent: Color = (_ri(rng, 0, 80), _ri(rng, 120, 200), _ri(rng, 200, 255))
    r = int(min(h * 0.36, w * 0.2) * rng.uniform(0.9, 1.1))
    cy = int(h * rng.uniform(0.48, 0.56))
    for cx in (int(w * rng.uniform(0.22, 0.28)), int(w * rng.uniform(0.72, 0.78))):
        cv2.circle(img, (cx, cy), r, light, 2, cv2.LINE_AA)
        cv2.circle(img, (cx, cy), int(r * 0.1), light, -1, cv2.LINE_AA)
        n_ticks = _ri(rng, 8, 12)
        for k in range(n_ticks + 1):
            a = np.deg2rad(135 + 270 * k / n_ticks)
            p0 = (int(cx + r * 0.82 * np.cos(a)), int(cy + r * 0.82 * np.sin(a)))
            p1 = (int(cx + r * 0.97 * np.cos(a)), int(cy + r * 0.97 * np.sin(a)))
            cv2.line(img, p0, p1, light, 1, cv2.LINE_AA)
            if k % 2 == 0:
                tp = (int(cx + r * 0.62 * np.cos(a)) - 4, int(cy + r * 0.62 * np.sin(a)) + 3)
                _put(img, str(k * _ri(rng, 1, 2) * 10), tp[0], tp[1], r * 0.09, light)
        a = np.deg2rad(135 + 270 * rng.uniform(0.05, 0.9))
        tip = (int(cx + r * 0.85 * np.cos(a)), int(cy + r * 0.85 * np.sin(a)))
        cv2.line(img, (cx, cy), tip, accent, 2, cv2.LINE_AA)
    # central display and warning lights
    dx0, dx1 = int(w * 0.42), int(w * 0.58)
    cv2.rectangle(img, (dx0, int(h * 0.35)), (dx1, int(h * 0.62)), _tone(img, -25), -1)
    _put(img, _word(rng, 3, _DIGITS), dx0 + 3, h * 0.52, h * 0.07, light, 1)
    for _ in range(_ri(rng, 2, 5)):
        col: Color = (_ri(rng, 0, 60), _ri(rng, 120, 220), _ri(rng, 150, 255))
        cv2.circle(
            img,
            (_ri(rng, w * 0.35, w * 0.65), _ri(rng, h * 0.72, h * 0.88)),
            max(2, h // 40),
            col,
            -1,
        )
    return img


def _medical_form(c: _Ctx, kind: int) -> np.ndarray:
    """Shared base of the four confusable hospital forms.

    Same skeleton (title, patient table, body box, date line, doctor's seal);
    each class differs in one or two smaller details:

    - 3 admission/discharge: long patient table (6-7 rows) + stay-period block
    - 7 outpatient certificate: medium table (4-5 rows) + visit-date grid of small cells
    - 14 statement of opinion: short table (3 rows), boxed title, tall body, seal at bottom centre
    - 4 diagnosis: short table (3-4 rows), boxed title, body split by a label column,
      diagnosis-code boxes, seal at bottom right

    A hard case borrows the confusable class's detail (see ``_HARD_NOTES``).
    """
    rng = c.rng
    h, w = _size(rng, c.side, (1.32, 1.45))
    img = _paper(rng, h, w)
    ink = _ink(rng)
    mx = w * rng.uniform(0.06, 0.09)
    x1 = w - mx
    boxed_title = kind in (4, 14)
    rows = {3: _ri(rng, 6, 7), 7: _ri(rng, 4, 5), 14: 3, 4: _ri(rng, 3, 4)}[kind]
    seal_centre = kind == 14
    split_body = kind == 4
    code_boxes = kind == 4
    period_block = kind == 3
    visit_grid = kind == 7
    faint = 1.0
    if c.hard:
        if kind == 3:
            rows, faint = _ri(rng, 4, 5), 0.45
        elif kind == 7:
            rows = _ri(rng, 6, 7)
        elif kind == 14:
            seal_centre, split_body = False, True
        elif kind == 4:
            code_boxes, seal_centre = False, True
    # title block
    ty = h * rng.uniform(0.07, 0.09)
    _title(img, rng, w / 2 + _ri(rng, -w * 0.02, w * 0.02), ty, h * 0.03, ink)
    if boxed_title:
        cv2.rectangle(
            img, (int(w * 0.22), int(ty - h * 0.045)), (int(w * 0.78), int(ty + h * 0.015)), ink, 1
        )
    _put(img, "No. " + _word(rng, 6, _DIGITS), mx, h * 0.125, h * 0.012, ink)
    # patient table
    y = h * 0.14
    row_h = h * 0.034
    _table(
        img,
        rng,
        (mx, y, x1, y + rows * row_h),
        rows,
        [1, 2, 1, 2],
        ink,
        shade_cols=(0, 2),
        shade=18,
    )
    y += rows * row_h + h * 0.02
    if period_block:
        ph = h * 0.06
        blk = ink if faint == 1.0 else _tone(img, int(120 * faint))
        _table(img, rng, (mx, y, x1, y + ph), 2, [1, 2.2, 0.4, 2.2, 1], blk, text_p=0.9)
        y += ph + h * 0.02
    if visit_grid:
        n_rows = _ri(rng, 2, 3) if not c.hard else 1
        gh = n_rows * h * 0.03
        _table(img, rng, (mx, y, x1, y + gh), n_rows, _ri(rng, 8, 10), ink, text_p=0.6)
        y += gh + h * 0.02
    if code_boxes:
        _put(img, _word(rng, 6, _CHARS), mx, y + h * 0.022, h * 0.014, ink)
        bx = mx + w * 0.28
        s = h * 0.03
        for i in range(_ri(rng, 5, 6)):
            cv2.rectangle(
                img, (int(bx + i * s), int(y)), (int(bx + (i + 1) * s), int(y + s)), ink, 1
            )
            _put(
                img,
                _word(rng, 1, _CHARS + _DIGITS),
                bx + i * s + s * 0.25,
                y + s * 0.75,
                s * 0.5,
                ink,
            )
        y += s + h * 0.02
    # body box
    body_bottom = h * rng.uniform(0.76, 0.8)
    cv2.rectangle(img, (int(mx), int(y)), (int(x1), int(body_bottom)), ink, 1)
    bx0 = mx + 4
    if split_body:
        lx = mx + (x1 - mx) * 0.2
        cv2.line(img, (int(lx), int(y)), (int(lx), int(body_bottom)), ink, 1)
        for k in range(3):
            _put(
                img,
                _word(rng, 4, _CHARS),
                mx + 3,
                y + (k + 0.5) * (body_bottom - y) / 3,
                h * 0.012,
                ink,
            )
        bx0 = lx + 4
    _text_lines(img, rng, (bx0, y + 3, x1 - 4, body_bottom - 4), h * 0.012, ink, gap=2.0)
    # date, institution, signature, seal
    _put(
        img,
        " . ".join(_word(rng, n, _DIGITS) for n in (4, 2, 2)),
        w / 2 - w * 0.12,
        h * 0.83,
        h * 0.014,
        ink,
    )
    _text_lines(img, rng, (mx, h * 0.86, w * 0.6, h * 0.95), h * 0.013, ink, max_lines=3)
    r = h * rng.uniform(0.04, 0.05)
    if seal_centre:
        _stamp(img, rng, w / 2 + _ri(rng, -w * 0.04, w * 0.04), h * 0.9, r)
    else:
        _stamp(img, rng, w * rng.uniform(0.78, 0.84), h * rng.uniform(0.88, 0.91), r)
    return img


def _id_card(c: _Ctx, kind: int) -> np.ndarray:
    """Landscape plastic card on a table: national ID (photo right) or driver licence
    (title band, photo left, licence-category grid)."""
    rng = c.rng
    ch = int(c.side * rng.uniform(0.55, 0.62))
    cw = int(ch * rng.uniform(1.55, 1.62))
    card = _paper(rng, ch, cw)
    ink = _ink(rng)
    # faint guilloche-like background pattern
    for k in range(_ri(rng, 3, 6)):
        cv2.ellipse(
            card,
            (int(cw * rng.uniform(0.3, 0.7)), int(ch * rng.uniform(0.3, 0.7))),
            (int(cw * (0.15 + 0.08 * k)), int(ch * (0.1 + 0.06 * k))),
            0, 0, 360, _tone(card, 18), 1, cv2.LINE_AA,
        )  # fmt: skip
    if kind == 8:  # national ID card: title top-left, text left, photo right
        _put(
            card,
            _word(rng, _ri(rng, 6, 10), _CHARS),
            cw * 0.06,
            ch * 0.17,
            ch * 0.07,
            ink,
            2,
            _FONT_BOLD,
        )
        _put(
            card,
            _word(rng, 6, _DIGITS) + "-" + _word(rng, 7, _DIGITS),
            cw * 0.06,
            ch * 0.34,
            ch * 0.055,
            ink,
        )
        _text_lines(
            card, rng, (cw * 0.06, ch * 0.42, cw * 0.58, ch * 0.72), ch * 0.035, ink, max_lines=3
        )
        _put(
            card,
            " . ".join(_word(rng, n, _DIGITS) for n in (4, 2, 2)),
            cw * 0.25,
            ch * 0.82,
            ch * 0.04,
            ink,
        )
        _face(card, rng, (cw * 0.66, ch * 0.25, cw * 0.92, ch * 0.78))
        _stamp(card, rng, cw * 0.55, ch * 0.86, ch * 0.08, alpha=0.5)
    else:  # driver licence: dark title band, photo left, text right, category grid
        band = int(ch * 0.16)
        cv2.rectangle(card, (0, 0), (cw, band), _tone(card, _ri(rng, 60, 110)), -1)
        _put(
            card,
            _word(rng, _ri(rng, 8, 12), _CHARS),
            cw * 0.2,
            band * 0.72,
            band * 0.5,
            (245, 245, 245),
            1,
            _FONT_BOLD,
        )
        _face(card, rng, (cw * 0.05, ch * 0.24, cw * 0.3, ch * 0.8))
        _put(
            card,
            "-".join(_word(rng, n, _DIGITS) for n in (2, 2, 6, 2)),
            cw * 0.35,
            ch * 0.32,
            ch * 0.05,
            ink,
        )
        _text_lines(
            card, rng, (cw * 0.35, ch * 0.38, cw * 0.95, ch * 0.62), ch * 0.03, ink, max_lines=4
        )
        _table(card, rng, (cw * 0.55, ch * 0.68, cw * 0.95, ch * 0.9), 2, 4, ink, text_p=0.6)
        cv2.circle(
            card, (int(cw * 0.43), int(ch * 0.8)), int(ch * 0.07), _tone(card, 35), 1, cv2.LINE_AA
        )
    return _on_surface(rng, card, c.side)


def _passport(c: _Ctx) -> np.ndarray:
    """Open passport: patterned visa page above, data page with photo, fields and MRZ below."""
    rng = c.rng
    h, w = _size(rng, c.side, (1.25, 1.4))
    img = _paper(rng, h, w)
    ink = _ink(rng)
    mid = int(h * rng.uniform(0.47, 0.52))
    pat = _tone(img, 22)
    step = max(4, int(w * 0.05))
    for x in range(-h, w, step):  # diagonal security pattern on the upper page
        cv2.line(img, (x, 0), (x + mid, mid), pat, 1)
    cv2.line(img, (0, mid), (w, mid), _tone(img, 60), 2)
    _put(img, _word(rng, 8, _CHARS), w * 0.06, mid + h * 0.05, h * 0.022, ink, 1, _FONT_BOLD)
    _face(img, rng, (w * 0.05, mid + h * 0.08, w * 0.35, mid + h * 0.33))
    for r in range(4):
        for col in range(2):
            x = w * (0.4 + 0.3 * col)
            yy = mid + h * (0.09 + 0.065 * r)
            _put(img, _word(rng, 5, _LOWER), x, yy, h * 0.01, ink)
            _put(img, _word(rng, _ri(rng, 4, 8), _CHARS), x, yy + h * 0.025, h * 0.016, ink)
    for k in range(2):  # machine-readable zone
        n = int(w * 0.9 / _char_w(_scale(h * 0.02)))
        head = "P<" + _word(rng, 3, _CHARS) if k == 0 else _word(rng, 9, _DIGITS + _CHARS)
        body = head + _word(rng, _ri(rng, 6, 10), _CHARS) + "<" * n
        _put(img, body[:n], w * 0.04, h * (0.88 + 0.055 * k), h * 0.02, ink)
    return img


def _medical_bill_receipt(c: _Ctx) -> np.ndarray:
    """Hospital bill: title, dense many-column fee grid with shaded header column, totals."""
    rng = c.rng
    h, w = _size(rng, c.side, (1.3, 1.45))
    img = _paper(rng, h, w)
    ink = _ink(rng)
    mx = w * 0.05
    _title(img, rng, w / 2, h * 0.06, h * 0.025, ink)
    _table(img, rng, (mx, h * 0.08, w - mx, h * 0.16), 2, 6, ink, text_p=0.9)
    rows = _ri(rng, 14, 20)
    cols = [1.2] + [1.0] * _ri(rng, 5, 7)
    _table(
        img,
        rng,
        (mx, h * 0.18, w - mx, h * 0.78),
        rows,
        cols,
        ink,
        text_p=0.75,
        shade_cols=(0,),
        shade=30,
        thick=2,
    )
    _table(img, rng, (w * 0.5, h * 0.8, w - mx, h * 0.94), 4, 2, ink, text_p=0.95)
    _text_lines(img, rng, (mx, h * 0.82, w * 0.46, h * 0.94), h * 0.011, ink)
    return img


def _payment_confirmation(c: _Ctx) -> np.ndarray:
    """Payment confirmation letter: key/value rows with dotted leaders, boxed amount, seal."""
    rng = c.rng
    h, w = _size(rng, c.side, (1.3, 1.45))
    img = _paper(rng, h, w)
    ink = _ink(rng)
    mx = w * rng.uniform(0.08, 0.12)
    _title(img, rng, w / 2, h * 0.1, h * 0.032, ink)
    cv2.line(img, (int(w * 0.25), int(h * 0.12)), (int(w * 0.75), int(h * 0.12)), ink, 2)
    y = h * 0.2
    for _ in range(_ri(rng, 6, 9)):
        _put(img, _word(rng, _ri(rng, 4, 8)), mx, y, h * 0.014, ink)
        for x in range(int(w * 0.35), int(w * 0.55), 4):
            cv2.circle(img, (x, int(y)), 0, ink, -1)
        _put(img, _word(rng, _ri(rng, 5, 10), _CHARS + _DIGITS), w * 0.57, y, h * 0.014, ink)
        y += h * 0.045
    y += h * 0.02
    cv2.rectangle(img, (int(mx), int(y)), (int(w - mx), int(y + h * 0.08)), ink, 2)
    _put(
        img,
        _word(rng, _ri(rng, 6, 9), _DIGITS),
        w * 0.35,
        y + h * 0.058,
        h * 0.035,
        ink,
        2,
        _FONT_BOLD,
    )
    _text_lines(img, rng, (mx, y + h * 0.11, w - mx, h * 0.8), h * 0.012, ink, max_lines=4)
    _put(
        img, _word(rng, _ri(rng, 8, 12), _CHARS), w * 0.35, h * 0.88, h * 0.022, ink, 1, _FONT_BOLD
    )
    _stamp(img, rng, w * rng.uniform(0.75, 0.85), h * 0.87, h * 0.045)
    return img


def _pharmacy_receipt(c: _Ctx) -> np.ndarray:
    """Thermal till slip: narrow and tall, centred header, dashed rules, item/price rows, barcode."""
    rng = c.rng
    h, w = _size(rng, c.side, (2.0, 2.8))
    img = _paper(rng, h, w)
    ink = _ink(rng)
    mx = w * 0.07
    _title(img, rng, w / 2, h * 0.05, w * 0.07, ink)
    _text_lines(img, rng, (w * 0.2, h * 0.07, w * 0.8, h * 0.13), w * 0.04, ink, fill=(0.6, 1.0))

    def dashed(yy: float) -> None:
        for x in range(int(mx), int(w - mx), 6):
            cv2.line(img, (x, int(yy)), (x + 3, int(yy)), ink, 1)

    y = h * 0.15
    dashed(y)
    y += h * 0.03
    for _ in range(_ri(rng, 8, 14)):
        _put(img, _word(rng, _ri(rng, 4, 9)), mx, y, w * 0.04, ink)
        _put(img, _word(rng, _ri(rng, 3, 6), _DIGITS), w * 0.68, y, w * 0.04, ink)
        y += h * 0.032
        if y > h * 0.7:
            break
    dashed(y)
    y += h * 0.04
    _put(img, _word(rng, 5, _CHARS), mx, y, w * 0.06, ink, 2, _FONT_BOLD)
    _put(img, _word(rng, 6, _DIGITS), w * 0.55, y, w * 0.06, ink, 2, _FONT_BOLD)
    dashed(y + h * 0.02)
    _text_lines(img, rng, (mx, y + h * 0.04, w - mx, h * 0.84), w * 0.035, ink, max_lines=4)
    _barcode(img, rng, (w * 0.15, h * 0.87, w * 0.85, h * 0.95))
    return img


def _prescription(c: _Ctx) -> np.ndarray:
    """Prescription form: patient/prescriber grid with a tall label column, drug table with
    narrow numeric columns, pharmacist grid at the bottom."""
    rng = c.rng
    h, w = _size(rng, c.side, (1.32, 1.45))
    img = _paper(rng, h, w)
    ink = _ink(rng)
    mx = w * 0.05
    _title(img, rng, w / 2, h * 0.06, h * 0.028, ink)
    _table(
        img,
        rng,
        (mx, h * 0.09, w - mx, h * 0.3),
        5,
        [0.5, 1.5, 1.5, 0.5, 1.5, 1.5],
        ink,
        shade_cols=(0, 3),
        shade=25,
        thick=2,
    )
    rows = _ri(rng, 8, 12)
    _table(
        img,
        rng,
        (mx, h * 0.33, w - mx, h * 0.75),
        rows,
        [4.0, 0.6, 0.6, 0.6, 1.5],
        ink,
        text_p=0.85,
        thick=2,
    )
    _text_lines(img, rng, (mx, h * 0.77, w - mx, h * 0.82), h * 0.011, ink, max_lines=2)
    _table(
        img,
        rng,
        (mx, h * 0.84, w - mx, h * 0.95),
        2,
        [0.5, 2, 1, 2],
        ink,
        shade_cols=(0,),
        shade=25,
    )
    if rng.random() < 0.6:
        _stamp(img, rng, w * 0.4, h * 0.22, h * 0.035)
    return img


def _resume(c: _Ctx) -> np.ndarray:
    """CV: shaded sidebar with photo and short lines; main column of headed text sections."""
    rng = c.rng
    h, w = _size(rng, c.side, (1.3, 1.45))
    img = _paper(rng, h, w)
    ink = _ink(rng)
    right = rng.random() < 0.25
    sw = w * rng.uniform(0.28, 0.34)
    sx0, sx1 = (w - sw, w) if right else (0, sw)
    cv2.rectangle(img, (int(sx0), 0), (int(sx1), h), _tone(img, _ri(rng, 20, 45)), -1)
    _face(img, rng, (sx0 + sw * 0.15, h * 0.04, sx1 - sw * 0.15, h * 0.04 + sw * 0.9))
    y = h * 0.06 + sw * 0.9
    for _ in range(3):
        _put(img, _word(rng, 6, _CHARS), sx0 + sw * 0.1, y, h * 0.014, ink, 1, _FONT_BOLD)
        _text_lines(
            img,
            rng,
            (sx0 + sw * 0.1, y + 3, sx1 - sw * 0.08, y + h * 0.12),
            h * 0.01,
            ink,
            max_lines=4,
        )
        y += h * 0.16
    mx0, mx1 = (w * 0.05, sx0 - w * 0.04) if right else (sx1 + w * 0.05, w * 0.95)
    _put(img, _word(rng, _ri(rng, 5, 9), _CHARS), mx0, h * 0.08, h * 0.035, ink, 2, _FONT_BOLD)
    _put(img, _word(rng, _ri(rng, 8, 14)), mx0, h * 0.12, h * 0.015, ink)
    y = h * 0.17
    while y < h * 0.88:
        _put(img, _word(rng, _ri(rng, 6, 10), _CHARS), mx0, y, h * 0.017, ink, 1, _FONT_BOLD)
        cv2.line(img, (int(mx0), int(y + 4)), (int(mx1), int(y + 4)), ink, 1)
        n_lines = _ri(rng, 3, 6)
        _text_lines(img, rng, (mx0, y + 6, mx1, y + 6 + n_lines * h * 0.02), h * 0.011, ink)
        y += h * (0.06 + n_lines * 0.02)
    return img


def _vehicle_registration(c: _Ctx) -> np.ndarray:
    """Registration certificate: emblem + title, long 4-column label/value table, notes, seal."""
    rng = c.rng
    h, w = _size(rng, c.side, (1.32, 1.45))
    img = _paper(rng, h, w)
    ink = _ink(rng)
    mx = w * 0.07
    cv2.circle(img, (int(mx + h * 0.03), int(h * 0.06)), int(h * 0.028), ink, 1, cv2.LINE_AA)
    cv2.circle(img, (int(mx + h * 0.03), int(h * 0.06)), int(h * 0.012), ink, -1, cv2.LINE_AA)
    _title(img, rng, w / 2 + w * 0.05, h * 0.075, h * 0.03, ink)
    _put(img, _word(rng, 10, _DIGITS), w * 0.6, h * 0.11, h * 0.012, ink)
    rows = _ri(rng, 9, 12)
    _table(
        img,
        rng,
        (mx, h * 0.13, w - mx, h * 0.6),
        rows,
        [1.0, 1.6, 1.0, 1.6],
        ink,
        shade_cols=(0, 2),
        shade=40,
        thick=2,
    )
    _table(
        img,
        rng,
        (mx, h * 0.62, w - mx, h * 0.74),
        3,
        [1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
        ink,
        text_p=0.7,
    )
    _text_lines(img, rng, (mx, h * 0.77, w - mx, h * 0.86), h * 0.011, ink)
    _put(img, _word(rng, _ri(rng, 8, 12), _CHARS), w * 0.3, h * 0.92, h * 0.02, ink, 1, _FONT_BOLD)
    _stamp(img, rng, w * 0.78, h * 0.91, h * 0.04)
    return img


def _plate(c: _Ctx) -> np.ndarray:
    """Close-up of a number plate: wide, short image, bordered plate with big characters."""
    rng = c.rng
    h, w = _size(rng, c.side, (0.32, 0.55))
    img = np.empty((h, w, 3), dtype=np.uint8)
    body = rng.uniform(30, 220)
    img[:] = np.clip(body + rng.normal(0, 25, size=3), 0, 255).astype(np.uint8)
    pw = int(w * rng.uniform(0.72, 0.9))
    ph = int(min(h * 0.8, pw / rng.uniform(2.2, 4.5)))
    x0 = _ri(rng, 0, w - pw)
    y0 = _ri(rng, 0, h - ph)
    plate = _paper(rng, ph, pw)
    ink = _ink(rng)
    cv2.rectangle(plate, (1, 1), (pw - 2, ph - 2), ink, max(1, ph // 25))
    for hx in (int(pw * 0.12), int(pw * 0.88)):
        cv2.circle(plate, (hx, int(ph * 0.18)), max(1, ph // 30), ink, -1)
    text = _word(rng, 2, _DIGITS) + _word(rng, 1, _CHARS) + " " + _word(rng, 4, _DIGITS)
    px = ph * 0.55
    sc = _scale(px)
    tw, _ = cv2.getTextSize(text, _FONT_BOLD, sc, max(1, ph // 12))[0]
    sc *= min(1.0, pw * 0.9 / max(tw, 1))
    tw, th = cv2.getTextSize(text, _FONT_BOLD, sc, max(1, ph // 12))[0]
    cv2.putText(
        plate,
        text,
        ((pw - tw) // 2, (ph + th) // 2),
        _FONT_BOLD,
        sc,
        ink,
        max(1, ph // 12),
        cv2.LINE_AA,
    )
    img[y0 : y0 + ph, x0 : x0 + pw] = plate
    return img


_LAYOUTS: tuple[Callable[[_Ctx], np.ndarray], ...] = (
    _account_number,
    _pregnancy_application,
    _car_dashboard,
    lambda c: _medical_form(c, 3),
    lambda c: _medical_form(c, 4),
    lambda c: _id_card(c, 5),
    _medical_bill_receipt,
    lambda c: _medical_form(c, 7),
    lambda c: _id_card(c, 8),
    _passport,
    _payment_confirmation,
    _pharmacy_receipt,
    _prescription,
    _resume,
    lambda c: _medical_form(c, 14),
    _vehicle_registration,
    _plate,
)


# --------------------------------------------------------------------------- degradation


def _degrade(img: np.ndarray, rng: np.random.Generator, s: float) -> np.ndarray:
    """Cheap Augraphy-style scan/photo effects; ``s`` in [0, 1] scales probability and strength."""
    h, w = img.shape[:2]
    if rng.random() < 0.4 * s:  # slight skew from an imperfect scan or photo
        ang = rng.uniform(-4, 4) * s
        m = cv2.getRotationMatrix2D((w / 2, h / 2), ang, 1.0)
        img = cv2.warpAffine(img, m, (w, h), borderMode=cv2.BORDER_REPLICATE)
    if rng.random() < 0.25 * s:  # photographed on a desk: a border of background
        p = _ri(rng, 2, max(3, int(min(h, w) * 0.08)))
        col = [float(v) for v in np.clip(rng.uniform(40, 200) + rng.normal(0, 15, size=3), 0, 255)]
        img = cv2.copyMakeBorder(img, p, p, p, p, cv2.BORDER_CONSTANT, value=col)
        img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
    if rng.random() < 0.3 * s:  # ink bleed (ink spreads) or faded ink (strokes thin)
        k = np.ones((2, 2), np.uint8)
        if rng.random() < 0.6:
            img = cv2.erode(img, k)
        else:  # half-strength, or 1-pixel rules would vanish entirely
            img = cv2.addWeighted(img, 0.5, cv2.dilate(img, k), 0.5, 0)
    f = img.astype(np.float32)
    if rng.random() < 0.5 * s:  # shadow / uneven lighting gradient in a random direction
        a = rng.uniform(0, 2 * np.pi)
        gx = np.linspace(-0.5, 0.5, w, dtype=np.float32) * np.cos(a)
        gy = np.linspace(-0.5, 0.5, h, dtype=np.float32) * np.sin(a)
        ramp = gy[:, None] + gx[None, :] + 0.5
        dark = rng.uniform(0.45, 0.85)
        f *= (1.0 - (1.0 - dark) * np.clip(ramp, 0, 1))[..., None]
    if rng.random() < 0.3 * s:  # low-ink streaks: bands where the print is washed out
        for _ in range(_ri(rng, 1, 4)):
            a = rng.uniform(0.3, 0.75)
            if rng.random() < 0.5:
                x = _ri(rng, 0, w - 1)
                band = f[:, x : x + _ri(rng, 2, max(3, w // 12))]
            else:
                y = _ri(rng, 0, h - 1)
                band = f[y : y + _ri(rng, 2, max(3, h // 12))]
            band += (255.0 - band) * a
    # small brightness / contrast drift, always
    f = f * rng.uniform(0.92, 1.05) + rng.uniform(-10, 10)
    if rng.random() < 0.6 * s:  # sensor / scanner noise
        f += rng.normal(0.0, rng.uniform(2, 12) * s, size=(h, w, 1)).astype(np.float32)
    img = np.clip(f, 0, 255).astype(np.uint8)
    if rng.random() < 0.35 * s:
        k = 3 if rng.random() < 0.8 else 5
        img = cv2.GaussianBlur(img, (k, k), rng.uniform(0.5, 1.2))
    if rng.random() < 0.2 * s:  # salt and pepper (dust, dropouts)
        n = int(h * w * rng.uniform(0.001, 0.008))
        ys = rng.integers(0, h, n)
        xs = rng.integers(0, w, n)
        img[ys, xs] = np.where(rng.random(n) < 0.5, 0, 255).astype(np.uint8)[:, None]
    if rng.random() < 0.45 * s:  # heavy JPEG compression from a messenger app
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, _ri(rng, 20, 55)])
        if ok:
            img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    return img


def _orient(
    img: np.ndarray, rng: np.random.Generator, p_rot: float, p_flip: float
) -> tuple[np.ndarray, str]:
    """Rotate by a random multiple of 90 degrees (with prob ``p_rot``) and maybe flip.

    Also returns the view given, named as ``core.choices.VIEW_NAMES`` (the image is
    ``models.tta.VIEWS[view]`` of the upright one), for scoring orientation models.
    """
    k = 0
    if rng.random() < p_rot:
        k = _ri(rng, 1, 3)
        img = np.rot90(img, k=k)
    view = VIEW_NAMES[k]
    if rng.random() < p_flip:
        if rng.random() < 0.5:  # left-right after rot k == rot(-k) of the left-right flip
            img, view = img[:, ::-1], VIEW_NAMES[4 + (-k) % 4]
        else:  # up-down == rot180 of left-right, so rot(2-k) of the left-right flip
            img, view = img[::-1], VIEW_NAMES[4 + (2 - k) % 4]
    return np.ascontiguousarray(img), view


# --------------------------------------------------------------------------- dataset


@dataclass(frozen=True)
class _Job:
    split: str  # "train" or "test"
    target: int
    index: int
    image_id: str
    hard: bool


def _draw(job: _Job, seed: int, max_side: int) -> tuple[np.ndarray, str]:
    """One image as written (before JPEG encoding) and the view it was given."""
    split_code = 0 if job.split == "train" else 1
    rng = np.random.default_rng([seed, split_code, job.target, job.index])
    side = int(max_side * rng.uniform(0.7, 1.0))
    img = _LAYOUTS[job.target](_Ctx(rng, side, job.hard))
    if job.split == "test":
        img = _degrade(img, rng, 1.0 if not job.hard else 1.2)
        return _orient(img, rng, p_rot=0.75, p_flip=0.25)
    img = _degrade(img, rng, 0.35)
    return _orient(img, rng, p_rot=0.05, p_flip=0.0)


def _render(job: _Job, seed: int, max_side: int, folder: Path) -> None:
    img, _ = _draw(job, seed, max_side)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:  # pragma: no cover - cv2 always encodes a valid uint8 image
        raise DocsortError(f"could not encode {job.image_id}", file=job.split)
    (folder / job.split / job.image_id).write_bytes(buf.tobytes())


def _class_counts(per_class: int, rng: np.random.Generator) -> list[int]:
    """Imbalanced per-class counts: mean ``per_class``, spread evenly over +-30%, shuffled."""
    k = len(CLASS_NAMES)
    factors = rng.permutation(np.linspace(0.7, 1.3, k))
    return [max(2, int(round(per_class * f))) for f in factors]


def _new_ids(rng: np.random.Generator, n: int, taken: set[str]) -> list[str]:
    out: list[str] = []
    while len(out) < n:
        name = f"doc_{int(rng.integers(0, 2**48)):012x}.jpg"
        if name not in taken:
            taken.add(name)
            out.append(name)
    return out


def _write_csv(path: Path, header: list[str], rows: list[list[object]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def _jobs(per_class: int, test_per_class: int, seed: int) -> tuple[list[_Job], list[_Job]]:
    """Every image to draw (train, then test) and the test images in their shuffled order."""
    rng = np.random.default_rng([seed, 7919])
    counts = _class_counts(per_class, rng)
    n_hard = min(2, max(1, test_per_class // 4))
    taken: set[str] = set()
    jobs: list[_Job] = []
    for t, n in enumerate(counts):
        hard_train = (
            set(rng.choice(n, size=int(n * 0.08), replace=False).tolist())
            if t in _HARD_NOTES
            else set()
        )
        for i, image_id in enumerate(_new_ids(rng, n, taken)):
            jobs.append(_Job("train", t, i, image_id, i in hard_train))
    for t in range(len(CLASS_NAMES)):
        for i, image_id in enumerate(_new_ids(rng, test_per_class, taken)):
            jobs.append(_Job("test", t, i, image_id, t in _HARD_NOTES and i < n_hard))
    test_jobs = [j for j in jobs if j.split == "test"]
    test_order = [test_jobs[i] for i in rng.permutation(len(test_jobs))]
    return jobs, test_order


def sample_views(
    per_class: int = 40,
    test_per_class: int | None = None,
    seed: int = 0,
    max_side: int = 320,
    split: str = "test",
) -> dict[str, str]:
    """Image ID -> the view (``core.choices.VIEW_NAMES``) each image of ``split`` was given by
    :func:`generate_sample_data` with the same arguments.

    Why: scoring an orientation model needs the truth, and the dataset's files are
    kept as they are; the images are drawn again (nothing is written), which costs
    about as much as generating that split.
    """
    if test_per_class is None:
        test_per_class = max(2, per_class // 4)
    jobs = [j for j in _jobs(per_class, test_per_class, seed)[0] if j.split == split]
    workers = max(1, min(4, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        views = list(pool.map(lambda j: _draw(j, seed, max_side)[1], jobs))
    return {j.image_id: v for j, v in zip(jobs, views, strict=True)}


@stage("sample-data", folder="out")
def generate_sample_data(
    out: str | Path,
    per_class: int = 40,
    test_per_class: int | None = None,
    seed: int = 0,
    max_side: int = 320,
) -> Path:
    """Write a synthetic 17-class document dataset in the data-contract layout to ``out``.

    Writes train.csv, meta.csv, train/, test/, sample_submission.csv (shuffled test
    order, placeholder targets 0), test_labels.csv and hardcases.csv. Train counts
    per class vary by +-30% around ``per_class`` (at least 2); test has
    ``test_per_class`` per class (default ``max(2, per_class // 4)``). The same
    arguments always give the same bytes. The folder appears only when complete.
    """
    out = Path(out)
    if per_class < 1:
        raise DocsortError(f"per_class must be >= 1, got {per_class}")
    if test_per_class is None:
        test_per_class = max(2, per_class // 4)
    if test_per_class < 1:
        raise DocsortError(f"test_per_class must be >= 1, got {test_per_class}")
    if max_side < 64:
        raise DocsortError(f"max_side must be >= 64 pixels, got {max_side}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DocsortError(
            "output exists and is not an empty folder; choose a new path", file=str(out)
        )

    jobs, test_order = _jobs(per_class, test_per_class, seed)

    with atomic_path(out, is_dir=True) as tmp:
        (tmp / "train").mkdir()
        (tmp / "test").mkdir()
        workers = max(1, min(4, os.cpu_count() or 1))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            # list() re-raises the first exception from any worker
            list(pool.map(lambda j: _render(j, seed, max_side, tmp), jobs))
        train_rows = sorted([j.image_id, j.target] for j in jobs if j.split == "train")
        _write_csv(tmp / "train.csv", ["ID", "target"], train_rows)
        _write_csv(
            tmp / "meta.csv", ["target", "class_name"], [[t, n] for t, n in enumerate(CLASS_NAMES)]
        )
        _write_csv(
            tmp / "sample_submission.csv", ["ID", "target"], [[j.image_id, 0] for j in test_order]
        )
        _write_csv(
            tmp / "test_labels.csv", ["ID", "target"], [[j.image_id, j.target] for j in test_order]
        )
        hard_rows = [
            [j.image_id, j.target, _HARD_NOTES[j.target], "hard"] for j in test_order if j.hard
        ]
        _write_csv(tmp / "hardcases.csv", ["ID", "target", "note", "kind"], hard_rows)
    return out
