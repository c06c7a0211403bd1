"""TensorFlow 1 `ResizeBilinear` (align_corners=False, half_pixel_centers=False), bit-exact.

The Inception graph behind the ADM evaluator (classify_image_graph_def.pb) resizes its input to
299 x 299 with this legacy kernel (tensorflow/core/kernels/resize_bilinear_op.cc and
image_resizer_state.h in TF 1.x): per axis scale = float32(in / out), source coordinate
float32(i * scale), taps floor(src) and min(floor(src) + 1, in - 1), weight src - floor(src).
There is no antialiasing: a downsample reads only the 2 x 2 nearest pixels. `jax.image.resize`
(half-pixel centres, antialiased) does not match it.

Dims: B batch, H/W input height/width, P/Q output height/width, C channels.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


@functools.cache
def legacy_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-output-index taps of the legacy kernel along one axis.

    Args:
        in_size: input length.
        out_size: output length.

    Returns:
        (lo int32 [out], hi int32 [out], frac float32 [out]), read-only.
    """
    if in_size < 1 or out_size < 1:
        raise ValueError(f"sizes must be positive, got in={in_size}, out={out_size}")
    # image_resizer_state.h CalculateResizeScale: float division of the two sizes.
    scale = np.float32(in_size) / np.float32(out_size)
    # resize_bilinear_op.cc compute_interpolation_weights (LegacyScaler): in = out * scale.
    src = np.arange(out_size, dtype=np.float32) * scale
    lo = np.floor(src).astype(np.int32)
    hi = np.minimum(lo + 1, in_size - 1).astype(np.int32)
    frac = (src - lo.astype(np.float32)).astype(np.float32)
    for a in (lo, hi, frac):
        a.setflags(write=False)  # cached and shared between callers
    return lo, hi, frac


def resize_bilinear_tf1(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """`tf.compat.v1.image.resize_bilinear(x, size, align_corners=False)` (legacy centres).

    The arithmetic is float32 in the kernel's order: top = a + (b - a) * fx,
    bottom = c + (d - c) * fx, out = top + (bottom - top) * fy.

    Args:
        x: float32 images [B, H, W, C].
        size: (P, Q) output height and width.

    Returns:
        float32 [B, P, Q, C].
    """
    x = jnp.asarray(x, jnp.float32)
    _, h, w, _ = x.shape
    p, q = size
    ylo, yhi, fy = legacy_taps(h, p)
    xlo, xhi, fx = legacy_taps(w, q)
    if (p, q) == (h, w):  # scale 1: every weight is 0 and every lo tap is the pixel itself
        return x
    top_rows, bottom_rows = x[:, ylo], x[:, yhi]  # [B, P, W, C]
    fx = jnp.asarray(fx)[None, None, :, None]
    top = top_rows[:, :, xlo] + (top_rows[:, :, xhi] - top_rows[:, :, xlo]) * fx  # [B, P, Q, C]
    bottom = bottom_rows[:, :, xlo] + (bottom_rows[:, :, xhi] - bottom_rows[:, :, xlo]) * fx
    return top + (bottom - top) * jnp.asarray(fy)[None, :, None, None]
