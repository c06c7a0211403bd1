"""PyTorch-exact image resampling as precomputed separable matrices.

`jax.image.resize` does not match PyTorch: its cubic kernel uses A = -0.5 and it antialiases when
downsampling. The sizes in these models are static, so each 1-D resize is a small `(out, in)` matrix
computed once in numpy with PyTorch's own formula, and a 2-D resize is `W_h @ x @ W_w^T`.

Dims: B batch, H/W input height/width, P/Q output height/width, C channels.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

# aten/src/ATen/native/UpSample.h: `get_cubic_upsample_coefficients` uses A = -0.75.
_CUBIC_A = np.float32(-0.75)


def _cubic_convolution1(x: np.float32, a: np.float32) -> np.float32:
    # UpSample.h `cubic_convolution1`: |x| <= 1 branch of the Keys kernel.
    return ((a + 2) * x - (a + 3)) * x * x + 1


def _cubic_convolution2(x: np.float32, a: np.float32) -> np.float32:
    # UpSample.h `cubic_convolution2`: 1 < |x| < 2 branch of the Keys kernel.
    return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a


def _readonly(m: np.ndarray) -> np.ndarray:
    m.setflags(write=False)  # the matrices are cached and shared between callers
    return m


@functools.cache  # = lru_cache(maxsize=None), keyed by (in, out)
def bicubic_matrix(in_size: int, out_size: int) -> np.ndarray:
    """1-D `F.interpolate(mode='bicubic', align_corners=False)` as an `(out, in)` matrix.

    Matches PyTorch's CPU kernel (`HelperInterpCubic::compute_indices_weights` in
    aten/src/ATen/native/cpu/UpSampleKernel.cpp): the arithmetic is float32 as there,
    src = (dst + 0.5) * in / out - 0.5 (not clamped at 0, since cubic=True), Keys weights with
    A = -0.75 at taps floor(src) - 1 .. floor(src) + 2, taps clamped to [0, in - 1] (their weights
    add up), no antialiasing even when downsampling.

    Args:
        in_size: input length.
        out_size: output length.

    Returns:
        A read-only float32 array of shape `(out_size, in_size)`; each row sums to 1 (up to
        rounding).
    """
    if in_size < 1 or out_size < 1:
        raise ValueError(f"sizes must be positive, got in={in_size}, out={out_size}")
    # area_pixel_compute_scale: input_size / output_size when no scale factor is given.
    scale = np.float32(in_size) / np.float32(out_size)
    m = np.zeros((out_size, in_size), np.float32)
    for dst in range(out_size):
        # area_pixel_compute_source_index(scale, dst, align_corners=False, cubic=True).
        src = scale * (np.float32(dst) + np.float32(0.5)) - np.float32(0.5)
        idx = int(np.floor(src))
        t = np.float32(src - np.float32(idx))
        t2 = np.float32(1) - t  # `get_cubic_upsample_coefficients` evaluates in this order
        weights = (
            _cubic_convolution2(t + np.float32(1), _CUBIC_A),
            _cubic_convolution1(t, _CUBIC_A),
            _cubic_convolution1(t2, _CUBIC_A),
            _cubic_convolution2(t2 + np.float32(1), _CUBIC_A),
        )
        for j, w in enumerate(weights):
            m[dst, min(max(idx - 1 + j, 0), in_size - 1)] += w
    return _readonly(m)


@functools.cache  # = lru_cache(maxsize=None), keyed by (in, out)
def area_matrix(in_size: int, out_size: int) -> np.ndarray:
    """1-D `F.interpolate(mode='area')` (= `adaptive_avg_pool2d`) as an `(out, in)` matrix.

    Output i averages input [floor(i * in / out), ceil((i + 1) * in / out)), the integer
    `start_index`/`end_index` of aten/src/ATen/native/AdaptiveAveragePooling.cpp; windows overlap
    when `in % out != 0`.

    Args:
        in_size: input length.
        out_size: output length.

    Returns:
        A read-only float32 array of shape `(out_size, in_size)`.
    """
    if in_size < 1 or out_size < 1:
        raise ValueError(f"sizes must be positive, got in={in_size}, out={out_size}")
    m = np.zeros((out_size, in_size), np.float64)
    for i in range(out_size):
        start = (i * in_size) // out_size
        end = -((-(i + 1) * in_size) // out_size)  # ceil division
        m[i, start:end] = 1.0 / (end - start)
    return _readonly(m.astype(np.float32))


def resize_nhwc(
    x: jax.Array, w_h: np.ndarray | jax.Array, w_w: np.ndarray | jax.Array
) -> jax.Array:
    """Applies separable resize matrices to an NHWC tensor.

    Args:
        x: `[B, H, W, C]`.
        w_h: `[P, H]` height matrix.
        w_w: `[Q, W]` width matrix.

    Returns:
        `[B, P, Q, C]` in x's dtype. The contraction runs at HIGHEST precision: these resizes feed
        the codebook argmin and the f̂ accumulation, which are float32 in the official code.
    """
    w_h = jnp.asarray(w_h, x.dtype)
    w_w = jnp.asarray(w_w, x.dtype)
    x = jnp.einsum("PH,BHWC->BPWC", w_h, x, precision=jax.lax.Precision.HIGHEST)
    return jnp.einsum("QW,BPWC->BPQC", w_w, x, precision=jax.lax.Precision.HIGHEST)


def bicubic_resize_nhwc(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """`F.interpolate(x, size, mode='bicubic', align_corners=False)` on `[B, H, W, C]`."""
    _, h, w, _ = x.shape
    return resize_nhwc(x, bicubic_matrix(h, size[0]), bicubic_matrix(w, size[1]))


def area_resize_nhwc(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """`F.interpolate(x, size, mode='area')` on `[B, H, W, C]`."""
    _, h, w, _ = x.shape
    return resize_nhwc(x, area_matrix(h, size[0]), area_matrix(w, size[1]))


def upsample_nearest_2x(x: jax.Array) -> jax.Array:
    """`F.interpolate(x, scale_factor=2, mode='nearest')` on `[B, H, W, C]` -> `[B, 2H, 2W, C]`."""
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
