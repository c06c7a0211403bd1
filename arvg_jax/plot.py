"""A dependency-free line plot rendered with numpy (matplotlib is not a project dependency).

`line_plot(series, ...)` returns an [H, W, 3] uint8 image: x on a log2 axis (batch sizes), y
linear from 0, one coloured polyline with square markers per series, tick labels and a legend in
a built-in 5x7 bitmap font. Write it with `arvg_jax.imageio.write_png`.
"""

from __future__ import annotations

import math

import numpy as np

# 5x7 glyphs, one string of 7 rows x 5 columns ('#' = ink) per character.
_FONT_ROWS = {
    "0": " ### #   ##  ### # ###  ##   # ### ",
    "1": "  #   ##    #    #    #    #   ### ",
    "2": " ### #   #    #   #   #   #   #####",
    "3": "#####   #   #     #     ##   # ### ",
    "4": "   #   ##  # # #  # #####   #    # ",
    "5": "######    ####     #    ##   # ### ",
    "6": "  ##  #   #    #### #   ##   # ### ",
    "7": "#####    #   #   #   #    #    #   ",
    "8": " ### #   ##   # ### #   ##   # ### ",
    "9": " ### #   ##   # ####    #   #  ##  ",
    "a": "           ###     # #####   # ####",
    "b": "#    #    # ## ##  ##   ##   ##### ",
    "c": "           ### #    #    #   # ### ",
    "d": "    #    # ## ##  ###   ##   # ####",
    "e": "           ### #   #######     ### ",
    "f": "  ##  #  # #   ###   #    #    #   ",
    "g": "      #####   ##   # ####    # ### ",
    "h": "#    #    # ## ##  ##   ##   ##   #",
    "i": "  #        ##    #    #    #   ### ",
    "j": "   #        ##    #    # #  #  ##  ",
    "k": "#    #    #  # # #  ##   # #  #  # ",
    "l": " ##    #    #    #    #    #   ### ",
    "m": "          ## # # # ## # ##   ##   #",
    "n": "          # ## ##  ##   ##   ##   #",
    "o": "           ### #   ##   ##   # ### ",
    "p": "          #### #   ##### #    #    ",
    "q": "           #####   # ####    #    #",
    "r": "          # ## ##   #    #    #    ",
    "s": "           ### #     ###     ####  ",
    "t": " #    #   ###   #    #    #  #  ## ",
    "u": "          #   ##   ##   ##  ## ## #",
    "v": "          #   ##   ##   # # #   #  ",
    "w": "          #   ##   ## # ## # # # # ",
    "x": "          #   # # #   #   # # #   #",
    "y": "          #   ##   # ####    # ### ",
    "z": "          #####   #   #   #   #####",
    "-": "               #####               ",
    ".": "                         ##   ##  ",
    "/": "    #    #   #   #   #    #        ",
    ":": "      ##   ##        ##   ##       ",
    " ": "                                   ",
    "(": "   #   #   #    #    #     #     # ",
    ")": " #     #     #    #    #   #   #   ",
    "+": "       #    #  #####  #    #       ",
    "=": "          #####     #####          ",
    "%": "##   ##  #   #   #   #   #  ##   ##",
    ",": "                    ##   ##   #   ",
    "_": "                              #####",
}
_GLYPHS = {}
for _ch, _rows in _FONT_ROWS.items():
    if len(_ch) == 1:
        _rows = (_rows + " " * 35)[:35]
        _GLYPHS[_ch] = np.array([[c == "#" for c in _rows[r * 5 : (r + 1) * 5]] for r in range(7)])

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


def draw_text(img: np.ndarray, x: int, y: int, text: str, color=(0, 0, 0), scale: int = 1) -> int:
    """Draws text with its top-left corner at (x, y); returns the x after the last glyph."""
    for ch in text:
        g = _GLYPHS.get(ch, _GLYPHS.get(ch.lower(), _GLYPHS[" "]))
        if scale > 1:
            g = np.kron(g, np.ones((scale, scale), bool))
        h, w = g.shape
        y0, x0 = max(y, 0), max(x, 0)
        y1, x1 = min(y + h, img.shape[0]), min(x + w, img.shape[1])
        if y1 > y0 and x1 > x0:
            sub = g[y0 - y : y1 - y, x0 - x : x1 - x]
            img[y0:y1, x0:x1][sub] = color
        x += w + scale
    return x


def text_width(text: str, scale: int = 1) -> int:
    return len(text) * 6 * scale


def _line(img, x0, y0, x1, y1, color, width=2):
    n = int(max(abs(x1 - x0), abs(y1 - y0), 1)) * 2
    for t in np.linspace(0, 1, n + 1):
        x = int(round(x0 + t * (x1 - x0)))
        y = int(round(y0 + t * (y1 - y0)))
        r = width // 2
        img[max(y - r, 0) : y + r + 1, max(x - r, 0) : x + r + 1] = color


def _nice_step(span: float) -> float:
    raw = span / 5
    mag = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


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
    """Renders {label: [(x, y), ...]} as an RGB uint8 image (x log2, y linear from 0)."""
    img = np.full((height, width, 3), 255, np.uint8)
    left, right, top, bottom = 70, 190, 34, 50
    pw, ph = width - left - right, height - top - bottom
    pts = [(x, y) for s in series.values() for x, y in s if y is not None and x > 0]
    xs = sorted({x for x, _ in pts}) or [1.0]
    lx0, lx1 = math.log2(min(xs)), math.log2(max(xs))
    if lx1 == lx0:
        lx0, lx1 = lx0 - 1, lx1 + 1
    ymax = max([y for _, y in pts] + [1e-9])
    step = _nice_step(ymax * 1.05)
    ytop = step * math.ceil(ymax * 1.05 / step)

    def px(x):
        return left + int(round((math.log2(x) - lx0) / (lx1 - lx0) * pw))

    def py(y):
        return top + ph - int(round(y / ytop * ph))

    grey, black = (225, 225, 225), (0, 0, 0)
    v = 0.0
    while v <= ytop + 1e-9:
        y = py(v)
        img[y, left : left + pw] = grey
        label = _fmt(v)
        draw_text(img, left - 6 - text_width(label), y - 3, label, black)
        v += step
    for x in xs:
        xx = px(x)
        img[top : top + ph, xx] = grey
        label = _fmt(x)
        draw_text(img, xx - text_width(label) // 2, top + ph + 6, label, black)
    img[top : top + ph + 1, left] = black
    img[top + ph, left : left + pw + 1] = black
    if title:
        draw_text(img, left, 10, title, black, scale=2 if width >= 600 else 1)
    if xlabel:
        draw_text(img, left + pw // 2 - text_width(xlabel) // 2, height - 18, xlabel, black)
    if ylabel:
        draw_text(img, 4, top - 14, ylabel, black)
    for i, (label, s) in enumerate(series.items()):
        color = COLORS[i % len(COLORS)]
        pts_s = [(px(x), py(y)) for x, y in sorted(s) if y is not None and x > 0]
        for (x0, y0), (x1, y1) in zip(pts_s, pts_s[1:]):
            _line(img, x0, y0, x1, y1, color)
        for x0, y0 in pts_s:
            img[max(y0 - 3, 0) : y0 + 4, max(x0 - 3, 0) : x0 + 4] = color
        ly = top + 8 + 16 * i
        img[ly : ly + 8, left + pw + 14 : left + pw + 30] = color
        draw_text(img, left + pw + 36, ly, label[:25], black)
    return img
