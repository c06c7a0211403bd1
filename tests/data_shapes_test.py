"""The procedural shapes dataset: determinism, balance, range, class distinctness."""

import numpy as np
import pytest

from arvg_jax.data import shapes


def test_deterministic_by_seed_and_independent_of_chunking():
    x1, y1 = shapes.make_dataset(53, seed=7, size=16)
    x2, y2 = shapes.make_dataset(53, seed=7, size=16, chunk=5, workers=2)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    x3, y3 = shapes.make_dataset(53, seed=8, size=16)
    assert not np.array_equal(x1, x3)
    assert not np.array_equal(y1, y3)


@pytest.mark.parametrize("n", [12 * 7, 12 * 7 + 5], ids=["divisible", "remainder"])
def test_class_balance_shape_dtype_and_range(n):
    x, y = shapes.make_dataset(n, seed=0, size=16)
    assert x.shape == (n, 16, 16, 3) and x.dtype == np.float32
    assert y.shape == (n,) and y.dtype == np.int32
    counts = np.bincount(y, minlength=shapes.NUM_CLASSES)
    assert counts.size == shapes.NUM_CLASSES >= 10
    assert counts.max() - counts.min() <= 1
    assert x.min() >= -1.0 and x.max() <= 1.0
    # Dark background, bright foreground: every image spans a good part of the range.
    assert np.all(x.max(axis=(1, 2, 3)) - x.min(axis=(1, 2, 3)) > 0.5)


def test_render_rejects_bad_labels():
    with pytest.raises(ValueError, match="labels"):
        shapes.render(np.array([0, shapes.NUM_CLASSES]), np.random.default_rng(0))


def test_classes_are_visually_distinct():
    x, y = shapes.make_dataset(12 * 20, seed=3)
    # Translation-invariant features: normalised magnitude spectrum of the grey image.
    g = x.mean(-1)
    g = g - g.mean(axis=(1, 2), keepdims=True)
    f = np.abs(np.fft.fft2(g)).reshape(len(x), -1)
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    d = np.sqrt(np.maximum(((f[:, None] - f[None]) ** 2).sum(-1), 0))
    same = y[:, None] == y[None]
    off_diag = ~np.eye(len(y), dtype=bool)
    within, between = d[same & off_diag].mean(), d[~same].mean()
    assert within < 0.8 * between, (within, between)
    for c in range(shapes.NUM_CLASSES):
        m = y == c
        w = d[np.ix_(m, m)][~np.eye(m.sum(), dtype=bool)].mean()
        b = d[np.ix_(m, ~m)].mean()
        assert w < b, (shapes.CLASS_NAMES[c], w, b)


def test_anti_aliased_edges():
    # A disk has intermediate (partially covered) pixels along its edge, not just two colours.
    x, y = shapes.make_dataset(12, seed=0)
    disk = x[np.nonzero(y == shapes.CLASS_NAMES.index("disk"))[0][0]].mean(-1)
    lo, hi = disk.min(), disk.max()
    mid = (disk > lo + 0.2 * (hi - lo)) & (disk < hi - 0.2 * (hi - lo))
    assert 5 <= mid.sum() <= 200
