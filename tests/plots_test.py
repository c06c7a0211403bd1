"""`arvg_jax.eval.plots` (and the Agg helpers of `arvg_jax.plot`): sizes, colours, labels."""

import subprocess
import sys

import numpy as np

from arvg_jax.eval import plots as P
from arvg_jax.plot import COLORS


def _has(img, color, at_least=1):
    return np.sum(np.all(img == np.array(color, np.uint8), axis=-1)) >= at_least


def _column_top(img, color):
    """Top row of the first pixel column holding `color` (a bar's height)."""
    ys, _ = np.nonzero(np.all(img == np.array(color, np.uint8), axis=-1))
    return ys.min()


def test_bar_chart_size_colours_and_shared_scale():
    v = np.array([1.0, 2.0, 7.0, 3.0, 0.5, 2.0, 1.0])
    img = P.bar_chart(v, highlight=[2], hline=1.5, title="t", width=211, height=97)
    assert img.dtype == np.uint8 and img.shape == (97, 211, 3)
    assert _has(img, COLORS[0], 50) and _has(img, P.HIGHLIGHT, 20)
    # panels sharing y_max draw the same value at the same height
    a = P.bar_chart([2.0, 4.0], highlight=[1], y_max=10.0, width=101, height=89)
    b = P.bar_chart([1.0, 4.0], highlight=[1], y_max=10.0, width=101, height=89)
    assert _column_top(a, P.HIGHLIGHT) == _column_top(b, P.HIGHLIGHT)
    log = P.bar_chart([1e-3, 1.0, 50.0], log_y=True, width=131, height=83)
    assert log.shape == (83, 131, 3) and _has(log, COLORS[0], 30)


def test_line_chart_size_and_one_colour_per_series():
    series = {"a": [1.0, 2.0, np.nan, 4.0, 3.0], "b": [3.0, 1.0, 2.0, 2.5, 0.5], "c": [1.0] * 5}
    img = P.line_chart(
        series, x_ticks=[0, 1, 2, 3, 4], vlines=[2], markers=True, width=307, height=149
    )
    assert img.shape == (149, 307, 3)
    for color in COLORS[:3]:
        assert _has(img, color, 10)
    log = P.line_chart({"a": [0.1, 10.0, 1000.0]}, x=[0, 5, 9], log_y=True, width=199, height=113)
    assert log.shape == (113, 199, 3) and _has(log, COLORS[0], 10)


def test_overlapping_tick_labels_are_left_out():
    kept = P._spaced(list(range(0, 100, 1)), 0.0, 99.0, 200.0)
    assert kept[0] == 0 and 3 < len(kept) < 40
    assert P._spaced([0, 50, 99], 0.0, 99.0, 600.0) == [0, 50, 99]


def test_label_rows_keeps_the_image_and_draws_in_the_margin():
    img = np.random.default_rng(0).integers(0, 256, (2 * 23, 37, 3), dtype=np.uint8)
    out = P.label_rows(img, ["float", "w8a8"], 23, margin=61)
    assert out.shape == (46, 61 + 37, 3)
    np.testing.assert_array_equal(out[:, 61:], img)
    margin = out[:, :61]
    for r in range(2):  # some ink in each labelled row
        assert (margin[r * 23 : (r + 1) * 23] < 128).any()


def test_stack_tiles_with_padding():
    a, b = np.zeros((3, 5, 3), np.uint8), np.zeros((7, 2, 3), np.uint8)
    out = P.stack([a, b, a], cols=2, pad=1)
    assert out.shape == (1 + 7 + 1 + 3 + 1, 1 + 5 + 1 + 2 + 1, 3)
    assert (out[0] == 255).all() and (out[1:4, 1:6] == 0).all()


def test_drawing_leaves_matplotlib_global_state_alone():
    code = (
        "import sys, matplotlib\n"
        "before = matplotlib.rcParams.copy()\n"  # copy(): reading rcParams['backend'] loads pyplot
        "from arvg_jax.eval import plots\n"
        "plots.line_chart({'a': [1.0, 2.0]}, width=200, height=80)\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
        "assert matplotlib.rcParams.copy() == before\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
