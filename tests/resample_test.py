"""PyTorch-exact bicubic / area resize matrices against naive loops of PyTorch's algorithms.

torch is not available, so the expectations come from direct float64 loops of
`upsample_bicubic2d` (aten/src/ATen/native/UpSampleBicubic2d.cpp: source index, Keys kernel
A = -0.75, clamped tap access) and `adaptive_avg_pool2d` (AdaptiveAveragePooling.cpp windows),
written here independently of `arvg_jax/resample.py`.
"""

import math

import numpy as np
import pytest

from arvg_jax import resample

A = -0.75


def _keys(x: float) -> float:
    """Keys cubic convolution kernel W(x) with A = -0.75 (piecewise form)."""
    x = abs(x)
    if x <= 1:
        return (A + 2) * x**3 - (A + 3) * x**2 + 1
    if x < 2:
        return A * x**3 - 5 * A * x**2 + 8 * A * x - 4 * A
    return 0.0


def _source_index(n_in: int, n_out: int, dst: int) -> float:
    """scale * (dst + 0.5) - 0.5, not clamped at 0 for cubic.

    PyTorch evaluates it in float32 for float32 tensors (scale = in / out rounded to float32, e.g.
    16 / 13), which moves taps by ~1e-7 and outputs by ~1e-6; everything else here is float64.
    """
    f32 = np.float32
    return float(f32(n_in) / f32(n_out) * (f32(dst) + f32(0.5)) - f32(0.5))


def _naive_bicubic(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """`F.interpolate(x, (out_h, out_w), mode='bicubic', align_corners=False)` on [H, W]."""
    in_h, in_w = x.shape
    out = np.zeros((out_h, out_w))

    def at(yy, xx):  # upsample_get_value_bounded: clamp the access, not the weight
        return x[min(max(yy, 0), in_h - 1), min(max(xx, 0), in_w - 1)]

    for oy in range(out_h):
        ry = _source_index(in_h, out_h, oy)
        iy = math.floor(ry)
        ty = ry - iy
        for ox in range(out_w):
            rx = _source_index(in_w, out_w, ox)
            ix = math.floor(rx)
            tx = rx - ix
            acc = 0.0
            for i in range(-1, 3):
                row = sum(_keys(tx - j) * at(iy + i, ix + j) for j in range(-1, 3))
                acc += _keys(ty - i) * row
            out[oy, ox] = acc
    return out


def _naive_area(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """`adaptive_avg_pool2d(x, (out_h, out_w))` on [H, W] with PyTorch's integer windows."""
    in_h, in_w = x.shape
    out = np.zeros((out_h, out_w))
    for oy in range(out_h):
        y0, y1 = (oy * in_h) // out_h, ((oy + 1) * in_h + out_h - 1) // out_h
        for ox in range(out_w):
            x0, x1 = (ox * in_w) // out_w, ((ox + 1) * in_w + out_w - 1) // out_w
            out[oy, ox] = x[y0:y1, x0:x1].mean()
    return out


# (in_h, in_w) -> (out_h, out_w): VAR's pn -> 16 up and 16 -> pn down, PAR-like 384 -> 256 style
# down factors, non-square shapes to catch axis mix-ups, and identities.
SIZES = [
    ((1, 1), (16, 16)),
    ((2, 3), (16, 16)),
    ((13, 10), (16, 16)),
    ((16, 16), (13, 5)),
    ((16, 16), (6, 3)),
    ((5, 7), (7, 5)),
    ((12, 9), (8, 6)),
    ((16, 16), (16, 16)),
]
IDS = [f"{a[0]}x{a[1]}to{b[0]}x{b[1]}" for a, b in SIZES]


def _random(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape)


@pytest.mark.parametrize("src,dst", SIZES, ids=IDS)
def test_bicubic_weights_match_naive_loop(src, dst):
    # Impulse responses of the 2-D loop along each axis give the PyTorch weight matrices.
    (in_h, in_w), (out_h, out_w) = src, dst
    want_h = np.stack([_naive_bicubic(e[:, None], out_h, 1)[:, 0] for e in np.eye(in_h)], 1)
    want_w = np.stack([_naive_bicubic(e[None, :], 1, out_w)[0] for e in np.eye(in_w)], 1)
    # float32 weights (as PyTorch's) vs the float64 loop: a few float32 ulps.
    np.testing.assert_allclose(resample.bicubic_matrix(in_h, out_h), want_h, rtol=0, atol=1e-6)
    np.testing.assert_allclose(resample.bicubic_matrix(in_w, out_w), want_w, rtol=0, atol=1e-6)


@pytest.mark.parametrize("src,dst", SIZES, ids=IDS)
def test_bicubic_2d_matches_naive_loop(src, dst):
    # The 2-D loop is separable; resize_nhwc must apply W_h to H and W_w to W of NHWC.
    x = _random((2, *src, 3)).astype(np.float32)
    got = np.asarray(resample.bicubic_resize_nhwc(x, dst))
    assert got.shape == (2, *dst, 3)
    for b in range(2):
        for c in range(3):
            want = _naive_bicubic(x[b, :, :, c].astype(np.float64), *dst)
            # float32 weights and sums over 16 taps of |x| <= 4: bound 16 * 4 * 2^-23 ~ 8e-6.
            np.testing.assert_allclose(got[b, :, :, c], want, rtol=0, atol=8e-6)


@pytest.mark.parametrize("src,dst", SIZES, ids=IDS)
def test_area_matches_naive_loop(src, dst):
    x = _random((2, *src, 3), seed=1).astype(np.float32)
    got = resample.area_resize_nhwc(x, dst)
    assert got.shape == (2, *dst, 3)
    for b in range(2):
        for c in range(3):
            want = _naive_area(x[b, :, :, c].astype(np.float64), *dst)
            np.testing.assert_allclose(np.asarray(got[b, :, :, c]), want, rtol=0, atol=1e-6)


def test_area_windows_16_to_13():
    # Output i averages [floor(16 i / 13), ceil(16 (i + 1) / 13)); windows overlap.
    windows = [
        (0, 2), (1, 3), (2, 4), (3, 5), (4, 7), (6, 8), (7, 9),
        (8, 10), (9, 12), (11, 13), (12, 14), (13, 15), (14, 16),
    ]  # fmt: skip
    want = np.zeros((13, 16), np.float32)
    for i, (a, b) in enumerate(windows):
        want[i, a:b] = 1.0 / (b - a)
    np.testing.assert_array_equal(resample.area_matrix(16, 13), want)


def test_bicubic_known_values_2_to_4():
    # Output 0: src = -0.25, floor -1, t = 0.75; taps -2, -1, 0 clamp to input 0 and tap 1 is
    # input 1. Weights W(1.75) + W(0.75) + W(0.25) = 1.10546875 and W(1.25) = -0.10546875.
    want = np.array(
        [
            [1.10546875, -0.10546875],
            [0.7734375, 0.2265625],
            [0.2265625, 0.7734375],
            [-0.10546875, 1.10546875],
        ],
        np.float32,
    )
    np.testing.assert_array_equal(resample.bicubic_matrix(2, 4), want)


@pytest.mark.parametrize("n_in,n_out", [(1, 16), (3, 16), (13, 16), (16, 13), (16, 5), (7, 3)])
def test_rows_sum_to_one(n_in, n_out):
    np.testing.assert_allclose(resample.bicubic_matrix(n_in, n_out).sum(1), 1.0, atol=1e-6)
    np.testing.assert_allclose(resample.area_matrix(n_in, n_out).sum(1), 1.0, atol=1e-6)


@pytest.mark.parametrize("n", [1, 5, 16])
def test_identity_when_sizes_match(n):
    np.testing.assert_array_equal(resample.bicubic_matrix(n, n), np.eye(n, dtype=np.float32))
    np.testing.assert_array_equal(resample.area_matrix(n, n), np.eye(n, dtype=np.float32))


def test_matrices_cached_and_read_only():
    m = resample.bicubic_matrix(3, 16)
    assert resample.bicubic_matrix(3, 16) is m
    assert resample.area_matrix(16, 3) is resample.area_matrix(16, 3)
    with pytest.raises(ValueError):
        m[0, 0] = 1.0
    with pytest.raises(ValueError):
        resample.area_matrix(0, 3)


def test_upsample_nearest_2x():
    x = np.arange(6, dtype=np.float32).reshape(1, 2, 3, 1)
    want = np.array(
        [[0, 0, 1, 1, 2, 2], [0, 0, 1, 1, 2, 2], [3, 3, 4, 4, 5, 5], [3, 3, 4, 4, 5, 5]],
        np.float32,
    )
    np.testing.assert_array_equal(np.asarray(resample.upsample_nearest_2x(x))[0, :, :, 0], want)
