"""Pure parameter transforms shared by the algorithms: folding input transforms into AdaLN rows.

A layer y = x W + b whose input x comes from an AdaLN modulation LN(h) * (1 + scale) + shift can
take its input as x' = x / s - p at no run-time cost (PTQ4ARVG `gps.py`, SmoothQuant): divide the
modulation's scale and shift columns by s (the constant 1 of `1 + scale` goes into the bias),
subtract p from the shift bias, multiply W's input rows by s and correct b += p W'.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from quant import _tree


def fold_input_transform(
    params: dict[str, Any],
    layer: str,
    norm_layer: str,
    scale_cols: slice,
    shift_cols: slice,
    s: np.ndarray,
    p: np.ndarray | None = None,
) -> dict[str, Any]:
    """Returns params where `layer` sees x / s - p and the model's output is unchanged.

    Args:
      params: float param tree (not mutated).
      layer: '/'-path of the Dense that reads the modulated input (kernel [C, F], bias [F]).
      norm_layer: '/'-path of the AdaLN Dense producing (…, scale, …, shift, …) columns.
      scale_cols, shift_cols: the C columns of `norm_layer` holding scale and shift.
      s: [C] positive per-channel divisor.
      p: [C] per-channel shift subtracted after the division (None: 0).

    Returns:
      A new param tree.
    """
    s = np.asarray(s, np.float64)
    p = None if p is None else np.asarray(p, np.float64)
    flat = _tree.flatten(params)
    for k in (f"{layer}/kernel", f"{norm_layer}/kernel", f"{norm_layer}/bias"):
        if k not in flat:
            raise KeyError(f"fold_input_transform: no float parameter {k!r}")
        if _tree.is_quant_leaf(flat[k]):
            raise TypeError(f"fold_input_transform: {k!r} is already quantized; fold first")
    w = flat[f"{layer}/kernel"]  # [C, F]
    if w.shape[0] != s.shape[0]:
        raise ValueError(f"{layer}/kernel has {w.shape[0]} input rows, scale has {s.shape[0]}")
    ak = flat[f"{norm_layer}/kernel"]  # [D, k*C]
    # The kernels stay where they are (a device array stays on its device). Their updates are
    # single float32 divisions/multiplications by float32-representable s, which round exactly
    # as the float64 computation rounded to float32 would, so host and device agree bit for bit.
    flat[f"{norm_layer}/kernel"] = _scale_cols(ak, (scale_cols, shift_cols), s)
    w_new = _scale_rows(w, s)
    flat[f"{layer}/kernel"] = w_new
    ab = np.array(flat[f"{norm_layer}/bias"], np.float64)  # [k*C], small: float64 on the host
    ab[scale_cols] = (ab[scale_cols] + 1.0) / s - 1.0
    ab[shift_cols] = ab[shift_cols] / s - (0.0 if p is None else p)
    flat[f"{norm_layer}/bias"] = ab.astype(np.asarray(flat[f"{norm_layer}/bias"]).dtype)
    bias_key = f"{layer}/bias"
    dtype = np.dtype(w.dtype)
    if bias_key not in flat:
        flat[bias_key] = np.zeros((w.shape[1],), dtype)
    if p is not None:  # b += p W' (float64 on the host)
        b = np.asarray(flat[bias_key], np.float64)
        flat[bias_key] = (b + p @ np.asarray(w_new, np.float64)).astype(dtype)
    return _tree.unflatten(flat)


def _exact_f32(s: np.ndarray) -> np.ndarray:
    s32 = s.astype(np.float32)
    if not np.array_equal(s32.astype(np.float64), s):
        raise ValueError("fold_input_transform: scales must be float32-representable")
    return s32


def _scale_cols(ak, col_slices, s: np.ndarray):
    """ak with each column slice divided by s (float32 kernels)."""
    s32 = _exact_f32(s)
    if isinstance(ak, jax.Array):
        for cols in col_slices:
            ak = ak.at[:, cols].divide(jnp.asarray(s32, ak.dtype))
        return ak
    out = np.array(ak, np.float64)
    for cols in col_slices:
        out[:, cols] /= s
    return out.astype(np.asarray(ak).dtype)


def _scale_rows(w, s: np.ndarray):
    s32 = _exact_f32(s)
    if isinstance(w, jax.Array):
        return w * jnp.asarray(s32, w.dtype)[:, None]
    return (np.asarray(w, np.float64) * s[:, None]).astype(np.asarray(w).dtype)
