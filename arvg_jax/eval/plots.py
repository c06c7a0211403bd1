"""Bar and line charts drawn with matplotlib into numpy images, for the docs figures.

Each function returns an RGB uint8 image [H, W, 3] of the requested pixel size; write it with
`arvg_jax.imageio.write_png`. `stack` tiles panels into one figure. Drawing goes through the
Agg canvas helpers of `arvg_jax.plot` (matplotlib `Figure` + `FigureCanvasAgg`, no pyplot).

Dims: H height, W width (pixels), N bars / points.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

from arvg_jax.plot import (
    BLACK,
    COLORS,
    DPI,
    GREY,
    TEXT_PT,
    axes_px,
    figure,
    render,
    rgb,
    style_axes,
)

HIGHLIGHT = (214, 39, 40)  # red: the bars `bar_chart` is asked to mark
_CHAR_PX = TEXT_PT * DPI / 72 * 0.6  # average glyph width, to keep x tick labels apart


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1e4 or abs(v) < 1e-2:
        return f"{v:.0e}".replace("e+0", "e").replace("e-0", "e-")
    return f"{v:g}"


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """Round tick values covering [lo, hi] (linear axis); the axis spans first..last tick."""
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


def _y_axis(ax, lo: float, hi: float, log_y: bool) -> tuple[float, float]:
    """Round ticks (decades on a log axis) spanning [lo, hi]; returns the axis limits, which
    depend only on (lo, hi) so panels given the same `y_max` share their scale."""
    if log_y:
        lo = max(lo, 1e-12)
        e0, e1 = math.floor(math.log10(lo)), math.ceil(math.log10(max(hi, lo)))
        ticks = [10.0**e for e in range(e0, max(e1, e0 + 1) + 1)]
        ax.set_yscale("log")
    else:
        ticks = _nice_ticks(lo, hi)
    ax.yaxis.set_major_locator(FixedLocator(ticks))
    ax.yaxis.set_minor_locator(NullLocator())
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: _fmt(v)))
    ax.set_ylim(ticks[0], ticks[-1])
    return ticks[0], ticks[-1]


def _title(fig, title: str, width: int, height: int) -> None:
    if title:
        fig.text(8 / width, 1 - 4 / height, title, fontsize=TEXT_PT, va="top", ha="left")


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
    fig = figure(width, height)
    left, top, right, bottom = 48, 20, 8, 14
    ax = axes_px(fig, left=left, right=right, top=top, bottom=bottom)
    style_axes(ax)
    _title(fig, title, width, height)
    hi = float(y_max if y_max is not None else max(v.max(initial=0.0), 1e-9))
    lo = float(max(v[v > 0].min(initial=hi) * 0.8, 1e-12)) if log_y else 0.0
    base, _ = _y_axis(ax, lo, hi, log_y)
    n = max(len(v), 1)
    marked = {int(i) for i in highlight}
    colors = [rgb(HIGHLIGHT if i in marked else COLORS[0]) for i in range(len(v))]
    # a one-pixel gap between bars only where a bar is at least 3 pixels wide
    gap = 1.0 / ((width - left - right) / n) if (width - left - right) / n >= 3 else 0.0
    heights = np.maximum(v, base) - base  # bars start at the axis bottom (log axes have no 0)
    ax.bar(np.arange(len(v)), heights, bottom=base, width=1.0 - gap, color=colors, linewidth=0)
    ax.set_xlim(-0.5, n - 0.5)
    ax.xaxis.set_major_locator(NullLocator())
    if hline is not None:
        ax.axhline(hline, color=rgb(BLACK), linewidth=0.8, linestyle=(0, (3, 3)))
    return render(fig)


def _spaced(ticks: Sequence[float], x_lo: float, x_hi: float, plot_px: float) -> list[float]:
    """Leaves out tick labels that would overlap the previous kept one."""
    kept, last_end = [], -math.inf
    for t in sorted(ticks):
        half = len(_fmt(t)) * _CHAR_PX / 2
        x = (t - x_lo) / (x_hi - x_lo or 1.0) * plot_px
        if x - half > last_end + 4:
            kept.append(t)
            last_end = x + half
    return kept


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
        series: label -> y values (NaN points are skipped: the line joins their neighbours).
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
    fig = figure(width, height)
    left, top, bottom, right = 48, 20, 16, legend_width + 8
    ax = axes_px(fig, left=left, right=right, top=top, bottom=bottom)
    style_axes(ax)
    _title(fig, title, width, height)
    finite = np.concatenate([v[np.isfinite(v)] for v in ys.values()])
    hi = float(finite.max(initial=1.0))
    lo = float(finite[finite > 0].min(initial=hi) * 0.8) if log_y else min(0.0, finite.min())
    _y_axis(ax, lo, hi, log_y)
    x_lo, x_hi = float(xs.min()), float(xs.max())
    ax.set_xlim(x_lo, x_hi if x_hi > x_lo else x_lo + 1.0)
    for v in vlines:
        ax.axvline(v, color=rgb(GREY), linewidth=0.8, zorder=0)
    shown = _spaced(x_ticks, x_lo, x_hi, width - left - right)
    ax.xaxis.set_major_locator(FixedLocator(shown))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: _fmt(v)))
    ax.xaxis.set_minor_locator(NullLocator())
    for i, (label, y) in enumerate(ys.items()):
        ok = np.isfinite(y)
        ax.plot(
            xs[: len(y)][ok],
            y[ok],
            color=rgb(COLORS[i % len(COLORS)]),
            linewidth=1.5,
            marker="s" if markers else None,
            markersize=3,
            label=label[: (legend_width - 20) // 6],
        )
    ax.legend(
        loc="upper left",
        bbox_to_anchor=(1.0 + 10 / (width - left - right), 1.0),
        frameon=False,
        fontsize=TEXT_PT,
        handlelength=1.2,
        borderaxespad=0.0,
        labelspacing=0.3,
    )
    return render(fig)


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
    """Adds a white margin on the left with one label per row (e.g. model names of a grid).

    The image's pixels are copied unchanged; only the margin is drawn (labels longer than the
    margin holds are cut).
    """
    h = image.shape[0]
    fig = figure(margin, h)
    fs = TEXT_PT * 1.2 * scale
    for i, label in enumerate(labels):
        y = top + i * row_height + row_height / 2  # row centre, pixels from the top
        fig.text(
            4 / margin, 1 - y / h, label[: (margin - 8) // (6 * scale)], fontsize=fs, va="center"
        )
    return np.concatenate([render(fig), np.asarray(image, np.uint8)], axis=1)


__all__ = ["bar_chart", "label_rows", "line_chart", "stack"]
