"""Pure parameter transforms shared by the algorithms: folding input transforms into AdaLN rows.

A layer y = x W + b whose input x comes from an AdaLN modulation LN(h) * (1 + scale) + shift can
take its input as x' = x / s - p at no run-time cost (PTQ4ARVG `gps.py`, SmoothQuant): divide the
modulation's scale and shift columns by s (the constant 1 of `1 + scale` goes into the bias),
subtract p from the shift bias, multiply W's input rows by s and correct b += p W'.
"""

from __future__ import annotations

from typing import Any

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
    p = np.zeros_like(s) if p is None else np.asarray(p, np.float64)
    flat = _tree.flatten(params)
    for k in (f"{layer}/kernel", f"{norm_layer}/kernel", f"{norm_layer}/bias"):
        if k not in flat:
            raise KeyError(f"fold_input_transform: no float parameter {k!r}")
        if _tree.is_quant_leaf(flat[k]):
            raise TypeError(f"fold_input_transform: {k!r} is already quantized; fold first")
    w = np.asarray(flat[f"{layer}/kernel"], np.float64)  # [C, F]
    if w.shape[0] != s.shape[0]:
        raise ValueError(f"{layer}/kernel has {w.shape[0]} input rows, scale has {s.shape[0]}")
    ak = np.array(flat[f"{norm_layer}/kernel"], np.float64)  # [D, k*C]
    ab = np.array(flat[f"{norm_layer}/bias"], np.float64)  # [k*C]
    ak[:, scale_cols] /= s
    ab[scale_cols] = (ab[scale_cols] + 1.0) / s - 1.0
    ak[:, shift_cols] /= s
    ab[shift_cols] = ab[shift_cols] / s - p
    w_new = w * s[:, None]
    dtype = np.asarray(flat[f"{layer}/kernel"]).dtype
    flat[f"{norm_layer}/kernel"] = ak.astype(dtype)
    flat[f"{norm_layer}/bias"] = ab.astype(dtype)
    flat[f"{layer}/kernel"] = w_new.astype(dtype)
    bias_key = f"{layer}/bias"
    b = np.asarray(flat.get(bias_key, np.zeros(w.shape[1])), np.float64)
    flat[bias_key] = (b + p @ w_new).astype(dtype)
    return _tree.unflatten(flat)
