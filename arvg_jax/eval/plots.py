"""Bar and line charts rasterised with numpy (matplotlib is not a dependency), for the docs figures.

Each function returns an RGB uint8 image [H, W, 3]; write it with `arvg_jax.imageio.write_png`.
Text uses the 5x7 bitmap font of `arvg_jax.plot` (digits, lower-case letters, a little
punctuation; upper case is drawn in lower case). `stack` tiles panels into one figure.

Dims: H height, W width (pixels), N bars / points.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np

from arvg_jax.plot import COLORS, draw_text, text_width

BLACK, GREY = (0, 0, 0), (225, 225, 225)
# The shared font's "q" draws an "r" (its row string is shifted by one column); ours:
_Q = np.array(
    [
        [c == "#" for c in row]
        for row in ("     ", "     ", " ####", "#   #", "#   #", " ####", "    #")
    ]
)


def _text(img: np.ndarray, x: int, y: int, text: str, color=BLACK, scale: int = 1) -> int:
    """`draw_text` with a correct "q"; returns the x after the last glyph."""
    for ch in text:
        if ch.lower() != "q":
            x = draw_text(img, x, y, ch, color, scale=scale)
            continue
        g = np.kron(_Q, np.ones((scale, scale), bool)) if scale > 1 else _Q
        h, w = g.shape
        sub = img[max(y, 0) : y + h, max(x, 0) : x + w]
        sub[g[: sub.shape[0], : sub.shape[1]]] = color
        x += w + scale
    return x


HIGHLIGHT = (214, 39, 40)  # red: the bars `bar_chart` is asked to mark


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1e4 or abs(v) < 1e-2:
        return f"{v:.0e}".replace("e+0", "e").replace("e-0", "e-")
    return f"{v:g}"


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """Round tick values covering [lo, hi] (linear axis)."""
    span = max(hi - lo, 1e-12)
    raw = span / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if raw <= m * mag)
    first = math.floor(lo / step) * step
    ticks, v = [], first
    while v <= hi + step * 1e-6:
        ticks.append(round(v, 12))
        v += step
    if ticks[-1] < hi:
        ticks.append(ticks[-1] + step)
    return ticks


class _Axes:
    """Maps data to pixels inside a frame and draws the frame, grid and y ticks."""

    def __init__(self, img, *, left, top, width, height, y_lo, y_hi, log_y):
        self.img, self.left, self.top, self.w, self.h = img, left, top, width, height
        self.log_y = log_y
        if log_y:
            y_lo = max(y_lo, 1e-12)
            self.ticks = [
                10.0**e
                for e in range(math.floor(math.log10(y_lo)), math.ceil(math.log10(y_hi)) + 1)
            ]
            if len(self.ticks) < 2:
                self.ticks = [self.ticks[0], self.ticks[0] * 10]
            self.lo, self.hi = math.log10(self.ticks[0]), math.log10(self.ticks[-1])
        else:
            self.ticks = _nice_ticks(y_lo, y_hi)
            self.lo, self.hi = self.ticks[0], self.ticks[-1]

    def py(self, y: float) -> int:
        v = math.log10(max(y, 1e-12)) if self.log_y else y
        frac = (v - self.lo) / (self.hi - self.lo or 1.0)
        return self.top + self.h - round(min(max(frac, 0.0), 1.0) * self.h)

    def draw_frame(self):
        img = self.img
        for t in self.ticks:
            y = self.py(t)
            img[y, self.left : self.left + self.w] = GREY
            label = _fmt(t)
            _text(img, self.left - 5 - text_width(label), y - 3, label, BLACK)
        img[self.top : self.top + self.h + 1, self.left] = BLACK
        img[self.top + self.h, self.left : self.left + self.w + 1] = BLACK


def _canvas(width: int, height: int, title: str) -> np.ndarray:
    img = np.full((height, width, 3), 255, np.uint8)
    if title:
        _text(img, 8, 6, title, BLACK)
    return img


def bar_chart(
    values: Sequence[float],
    *,
    title: str = "",
    highlight: Sequence[int] = (),
    hline: float | None = None,
    log_y: bool = False,
    y_max: float | None = None,
    width: int = 640,
    height: int = 150,
) -> np.ndarray:
    """One bar per value (e.g. per channel), bars in `highlight` in red, an optional dashed line.

    Args:
        values: [N] non-negative bar heights.
        title: text above the plot.
        highlight: indices drawn in red (e.g. the top channels).
        hline: a horizontal reference (e.g. the median), drawn dashed.
        log_y: logarithmic y axis (decades).
        y_max: top of the y axis (default: the largest value); share it across panels.
        width, height: image size in pixels.

    Returns:
        uint8 [H, W, 3].
    """
    v = np.asarray(values, np.float64)
    img = _canvas(width, height, title)
    left, top, right, bottom = 48, 20, 8, 14
    hi = float(y_max if y_max is not None else max(v.max(initial=0.0), 1e-9))
    lo = float(max(v[v > 0].min(initial=hi) * 0.8, 1e-12)) if log_y else 0.0
    ax = _Axes(
        img,
        left=left,
        top=top,
        width=width - left - right,
        height=height - top - bottom,
        y_lo=lo,
        y_hi=hi,
        log_y=log_y,
    )
    ax.draw_frame()
    n = max(len(v), 1)
    marked = {int(i) for i in highlight}
    base = ax.py(ax.ticks[0])
    for i, val in enumerate(v):
        x0 = left + 1 + int(i * ax.w / n)
        x1 = max(left + 1 + int((i + 1) * ax.w / n) - (1 if ax.w / n >= 3 else 0), x0 + 1)
        y = ax.py(val)
        color = HIGHLIGHT if i in marked else COLORS[0]
        img[min(y, base - 1) : base, x0:x1] = color
    if hline is not None:
        y = ax.py(hline)
        for x in range(left + 1, left + ax.w, 6):
            img[y, x : x + 3] = BLACK
    return img


def line_chart(
    series: dict[str, Sequence[float]],
    *,
    x: Sequence[float] | None = None,
    title: str = "",
    log_y: bool = False,
    vlines: Sequence[float] = (),
    x_ticks: Sequence[float] = (),
    markers: bool = False,
    width: int = 640,
    height: int = 260,
    legend_width: int = 110,
) -> np.ndarray:
    """Polylines {label: [N] values} over a shared x, with a legend on the right.

    Args:
        series: label -> y values (NaN points are skipped).
        x: [N] x positions (default 0..N-1 of the longest series).
        title: text above the plot.
        log_y: logarithmic y axis.
        vlines: x positions of thin grey vertical separators (e.g. scale boundaries).
        x_ticks: x positions labelled under the axis.
        markers: square markers at the points.
        width, height, legend_width: sizes in pixels.

    Returns:
        uint8 [H, W, 3].
    """
    ys = {k: np.asarray(v, np.float64) for k, v in series.items()}
    n = max(len(v) for v in ys.values())
    xs = np.arange(n, dtype=np.float64) if x is None else np.asarray(x, np.float64)
    img = _canvas(width, height, title)
    left, top, bottom = 48, 20, 16
    pw = width - left - legend_width - 8
    finite = np.concatenate([v[np.isfinite(v)] for v in ys.values()])
    hi = float(finite.max(initial=1.0))
    lo = float(finite[finite > 0].min(initial=hi) * 0.8) if log_y else min(0.0, finite.min())
    ax = _Axes(
        img,
        left=left,
        top=top,
        width=pw,
        height=height - top - bottom,
        y_lo=lo,
        y_hi=hi,
        log_y=log_y,
    )
    x_lo, x_hi = float(xs.min()), float(xs.max())

    def px(v: float) -> int:
        return left + round((v - x_lo) / (x_hi - x_lo or 1.0) * (pw - 1))

    for v in vlines:
        img[top : top + ax.h, px(v)] = GREY
    ax.draw_frame()
    last_end = -(10**9)
    for t in sorted(x_ticks):  # labels that would overlap the previous one are left out
        label = _fmt(t)
        x0 = px(t) - text_width(label) // 2
        if x0 > last_end + 4:
            last_end = _text(img, x0, top + ax.h + 4, label, BLACK)
    for i, (label, y) in enumerate(ys.items()):
        color = COLORS[i % len(COLORS)]
        pts = [(px(xs[j]), ax.py(y[j])) for j in range(len(y)) if np.isfinite(y[j])]
        for (x0, y0), (x1, y1) in itertools.pairwise(pts):
            steps = max(abs(x1 - x0), abs(y1 - y0), 1)
            for t in np.linspace(0.0, 1.0, steps + 1):
                xx, yy = round(x0 + t * (x1 - x0)), round(y0 + t * (y1 - y0))
                img[yy : yy + 2, xx : xx + 2] = color
        if markers:
            for x0, y0 in pts:
                img[max(y0 - 2, 0) : y0 + 3, max(x0 - 2, 0) : x0 + 3] = color
        ly = top + 4 + 12 * i
        lx = left + pw + 10
        img[ly + 1 : ly + 6, lx : lx + 12] = color
        _text(img, lx + 16, ly, label[: (legend_width - 20) // 6], BLACK)
    return img


def stack(panels: Sequence[np.ndarray], cols: int = 1, pad: int = 4) -> np.ndarray:
    """Tiles equally sized or not panels row by row (white padding), left/top aligned."""
    rows = [panels[i : i + cols] for i in range(0, len(panels), cols)]
    heights = [max(p.shape[0] for p in r) for r in rows]
    widths = [max(panels[i].shape[1] for i in range(c, len(panels), cols)) for c in range(cols)]
    out = np.full(
        (sum(heights) + pad * (len(rows) + 1), sum(widths) + pad * (cols + 1), 3), 255, np.uint8
    )
    y = pad
    for r, h in zip(rows, heights):
        x = pad
        for c, p in enumerate(r):
            out[y : y + p.shape[0], x : x + p.shape[1]] = p
            x += widths[c] + pad
        y += h + pad
    return out


def label_rows(
    image: np.ndarray,
    labels: Sequence[str],
    row_height: int,
    top: int = 0,
    margin: int = 110,
    scale: int = 1,
) -> np.ndarray:
    """Adds a white margin on the left with one label per row (e.g. model names of a grid)."""
    h = image.shape[0]
    out = np.full((h, image.shape[1] + margin, 3), 255, np.uint8)
    out[:, margin:] = image
    for i, label in enumerate(labels):
        y = top + i * row_height + row_height // 2 - 4 * scale
        _text(out, 4, y, label[: (margin - 8) // (6 * scale)], BLACK, scale=scale)
    return out


__all__ = ["bar_chart", "label_rows", "line_chart", "stack"]
