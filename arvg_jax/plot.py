"""The `arvg bench` throughput plot, drawn with matplotlib into a numpy image.

`line_plot(series, ...)` returns an [H, W, 3] uint8 image: x on a log2 axis (batch sizes), y
linear from 0, one coloured line with square markers per series, a legend on the right. Write it
with `arvg_jax.imageio.write_png`. `figure` / `render` are the pixel-sized Agg canvas helpers
shared with `arvg_jax.eval.plots`.

Matplotlib is used through `Figure` + `FigureCanvasAgg` only (never pyplot): no backend switch,
no rcParams edits, no global figure registry, so importing this module changes no global state.

Dims: H height, W width (pixels).
"""

from __future__ import annotations

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullLocator

DPI = 100  # sizes are given in pixels; points = pixels * 72 / DPI
TEXT_PT = 7.0
# matplotlib's "tab10" cycle as 0-255 RGB: tests find a series by its exact colour.
COLORS = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
]
BLACK, GREY = (0, 0, 0), (225, 225, 225)


def rgb(color: tuple[int, int, int]) -> tuple[float, float, float]:
    """0-255 RGB -> matplotlib's 0-1 floats."""
    return tuple(c / 255.0 for c in color)


def figure(width: int, height: int) -> Figure:
    """A white figure of exactly `width` x `height` pixels on its own Agg canvas."""
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, facecolor="white")
    FigureCanvasAgg(fig)
    return fig


def axes_px(fig: Figure, *, left: int, right: int, top: int, bottom: int):
    """Axes placed by pixel margins (the layouts are fixed-size, so no tight_layout guessing)."""
    w, h = fig.get_size_inches() * fig.dpi
    pw, ph = max(w - left - right, 1), max(h - top - bottom, 1)  # tiny images: a 1-pixel plot
    return fig.add_axes((left / w, bottom / h, pw / w, ph / h))


def render(fig: Figure) -> np.ndarray:
    """Draws `fig` and returns its pixels as uint8 [H, W, 3] (H, W from the figure size)."""
    canvas = fig.canvas
    canvas.draw()
    img = np.asarray(canvas.buffer_rgba())[..., :3]
    w, h = (round(float(v)) for v in fig.get_size_inches() * fig.dpi)
    out = np.full((h, w, 3), 255, np.uint8)  # guards against an off-by-one canvas size
    out[: img.shape[0], : img.shape[1]] = img[:h, :w]
    return out


def style_axes(ax, fontsize: float = TEXT_PT) -> None:
    """Left and bottom spines only, grey horizontal grid under the data, small tick labels."""
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.set_axisbelow(True)
    ax.yaxis.grid(True, color=rgb(GREY), linewidth=0.8)
    ax.tick_params(labelsize=fontsize, length=2, pad=2)


def _fmt(v: float) -> str:
    return f"{v:g}" if abs(v) < 1e5 else f"{v:.0e}"


def line_plot(
    series: dict[str, list[tuple[float, float]]],
    *,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    width: int = 720,
    height: int = 440,
    scale: int = 1,
) -> np.ndarray:
    """Renders {label: [(x, y), ...]} as an RGB uint8 image (x log2, y linear from 0).

    Args:
      series: label -> points; points with y None or x <= 0 are left out.
      title, xlabel, ylabel: texts (empty: none).
      width, height: image size in pixels.
      scale: text size multiplier.

    Returns:
      uint8 [height, width, 3].
    """
    fs = TEXT_PT * 1.3 * scale
    fig = figure(width, height)
    ax = axes_px(fig, left=70, right=190, top=34, bottom=50)
    style_axes(ax, fs)
    xs = set()
    for i, (label, pts) in enumerate(series.items()):
        pts = sorted((x, y) for x, y in pts if y is not None and x > 0)
        xs.update(x for x, _ in pts)
        color = rgb(COLORS[i % len(COLORS)])
        ax.plot(
            [x for x, _ in pts],
            [y for _, y in pts],
            color=color,
            linewidth=2,
            marker="s",
            markersize=5,
            label=label[:25],
        )
    ax.set_xscale("log", base=2)
    ticks = sorted(xs) or [1.0]
    ax.set_xticks(ticks, [_fmt(x) for x in ticks])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.grid(True, color=rgb(GREY), linewidth=0.8)
    if len(ticks) == 1:  # one batch size: a two-octave window around it
        ax.set_xlim(ticks[0] / 2, ticks[0] * 2)
    ax.set_ylim(bottom=0)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: _fmt(v)))
    if title:
        fig.text(70 / width, 1 - 8 / height, title, fontsize=fs * 1.4, va="top", ha="left")
    if xlabel:
        ax.set_xlabel(xlabel, fontsize=fs)
    if ylabel:
        ax.set_ylabel(ylabel, fontsize=fs)
    if series:
        ax.legend(
            loc="upper left",
            bbox_to_anchor=(1.02, 1.0),
            frameon=False,
            fontsize=fs,
            handlelength=1.6,
            borderaxespad=0.0,
        )
    return render(fig)
