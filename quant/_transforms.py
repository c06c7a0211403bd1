"""Pure parameter transforms shared by the algorithms: folding input transforms into the norm
that produces a layer's input.

A layer y = x W + b can take its input as x' = x / s - p at no run-time cost (PTQ4ARVG `gps.py`,
SmoothQuant) when x comes from
  * an AdaLN modulation LN(h) * (1 + scale) + shift ("adaln": VAR, RAR): divide the modulation
    Dense's scale and shift columns by s (the constant 1 of `1 + scale` goes into the bias) and
    subtract p from the shift bias;
  * an affine norm norm(h) * weight [+ bias] ("norm_bias": PAR's RMSNorm, MAR's LayerNorm):
    weight /= s and bias = bias / s - p; a norm without a bias gains one, as PTQ4ARVG's PAR
    RMSNorm does (`PAR/autoregressive/models/gpt.py:158,165`; MAR `main_mar_quant.py:143-176`).
Then W's input rows are multiplied by s and b += p W' (b created when absent), for the layer and
for every sibling layer reading the same input (PAR's w3 beside w1, `PAR/.../quant/gps.py:57-100`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from quant import _tree

FOLD_KINDS = ("adaln", "norm_bias")


def fold_into(params: dict[str, Any], layer: str, target, s, p=None) -> dict[str, Any]:
    """`fold_input_transform` into a resolved `quant.coverage.FoldTarget`."""
    return fold_input_transform(
        params,
        layer,
        target.norm_layer,
        target.scale_cols,
        target.shift_cols,
        s,
        p,
        kind=target.kind,
        siblings=target.siblings,
    )


def fold_input_transform(
    params: dict[str, Any],
    layer: str,
    norm_layer: str,
    scale_cols: slice,
    shift_cols: slice,
    s: np.ndarray,
    p: np.ndarray | None = None,
    *,
    kind: str = "adaln",
    siblings: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Returns params where `layer` (and `siblings`) see x / s - p and the model's output is
    unchanged.

    Args:
      params: float param tree (not mutated).
      layer: '/'-path of the Dense that reads the normed input (kernel [C, F], bias [F]).
      norm_layer: "adaln": '/'-path of the AdaLN Dense producing (…, scale, …, shift, …)
        columns; "norm_bias": '/'-path of the norm with params `scale` [C] (and `bias` [C]).
      scale_cols, shift_cols: "adaln": the C columns of `norm_layer` holding scale and shift
        (ignored for "norm_bias").
      s: [C] positive per-channel divisor.
      p: [C] per-channel shift subtracted after the division (None: 0).
      kind: "adaln" or "norm_bias" (module docstring).
      siblings: other Dense layers reading the same input.

    Returns:
      A new param tree.
    """
    if kind not in FOLD_KINDS:
        raise ValueError(f"fold kind must be one of {FOLD_KINDS}, got {kind!r}")
    s = np.asarray(s, np.float64)
    p = None if p is None else np.asarray(p, np.float64)
    flat = _tree.flatten(params)
    layers = (layer, *siblings)
    norm_keys = ("kernel", "bias") if kind == "adaln" else ("scale",)
    for k in (*(f"{n}/kernel" for n in layers), *(f"{norm_layer}/{n}" for n in norm_keys)):
        if k not in flat:
            raise KeyError(f"fold_input_transform: no float parameter {k!r}")
        if _tree.is_quant_leaf(flat[k]):
            raise TypeError(f"fold_input_transform: {k!r} is already quantized; fold first")
    for n in layers:
        rows = flat[f"{n}/kernel"].shape[0]
        if rows != s.shape[0]:
            raise ValueError(f"{n}/kernel has {rows} input rows, scale has {s.shape[0]}")
    if kind == "adaln":
        _fold_adaln(flat, norm_layer, scale_cols, shift_cols, s, p)
    else:
        _fold_norm(flat, norm_layer, s, p)
    for n in layers:
        _scale_layer(flat, n, s, p)
    return _tree.unflatten(flat)


def _fold_adaln(flat, norm_layer: str, scale_cols: slice, shift_cols: slice, s, p) -> None:
    ak = flat[f"{norm_layer}/kernel"]  # [D, k*C]
    # The kernels stay where they are (a device array stays on its device). Their updates are
    # single float32 divisions/multiplications by float32-representable s, which round exactly
    # as the float64 computation rounded to float32 would, so host and device agree bit for bit.
    flat[f"{norm_layer}/kernel"] = _scale_cols(ak, (scale_cols, shift_cols), s)
    ab = np.array(flat[f"{norm_layer}/bias"], np.float64)  # [k*C], small: float64 on the host
    ab[scale_cols] = (ab[scale_cols] + 1.0) / s - 1.0
    ab[shift_cols] = ab[shift_cols] / s - (0.0 if p is None else p)
    flat[f"{norm_layer}/bias"] = ab.astype(np.asarray(flat[f"{norm_layer}/bias"]).dtype)


def _fold_norm(flat, norm_layer: str, s, p) -> None:
    """norm(h) * g + b -> norm(h) * (g / s) + (b / s - p); b created (0) when absent."""
    g = np.asarray(flat[f"{norm_layer}/scale"])
    _exact_f32(s)
    flat[f"{norm_layer}/scale"] = (np.asarray(g, np.float64) / s).astype(g.dtype)
    bias_key = f"{norm_layer}/bias"
    if bias_key not in flat and p is None:
        return
    b = np.asarray(flat.get(bias_key, np.zeros(g.shape, g.dtype)))
    b_new = np.asarray(b, np.float64) / s - (0.0 if p is None else p)
    flat[bias_key] = b_new.astype(b.dtype)


def _scale_layer(flat, layer: str, s, p) -> None:
    """W' = diag(s) W; b += p W' (float64 on the host), b created when absent."""
    w = flat[f"{layer}/kernel"]  # [C, F]
    w_new = _scale_rows(w, s)
    flat[f"{layer}/kernel"] = w_new
    bias_key = f"{layer}/bias"
    dtype = np.dtype(w.dtype)
    if bias_key not in flat:
        flat[bias_key] = np.zeros((w.shape[1],), dtype)
    if p is not None:
        b = np.asarray(flat[bias_key], np.float64)
        flat[bias_key] = (b + p @ np.asarray(w_new, np.float64)).astype(dtype)


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
