"""GPS (Gain-Projected Scaling) closed-form per-channel scales (``calculate_scales_hessian``).

Dims: ``C`` input channels of the GPS linear, ``O`` its output channels, ``M`` = N·T values per
channel. Reference: BienLuky/PTQ4ARVG f249fe9 ``VAR/quant/smooth.py:26-69`` (identical in RAR,
PAR and MAR); docs/ptq4arvg.md §2.3:

    k      = argmax_j range(x_j)                   (first on ties)
    s_std  = range(x_k)**α / range(W_:,k)**(1-α)   (α = 0.5: sqrt / sqrt)
    Δx     = x - Qa(x; Δ_k, z_k)                    (every channel on channel k's grid)
    s_j    = s_std · ((Σx_j²·ΣΔW_:,j²) / (ΣΔx_j²·ΣQ(W)_:,j²))**¼,  s_k = s_std,  1 if the
             denominator is 0.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from quant._quantizers import fake_quant_uniform

__all__ = ["calculate_scales_hessian"]

_F32 = np.float32


def _sumsq(a, axis: int):
    # float32 squares summed in float64, rounded to float32 (torch: float32 cascade sums); on a
    # jax device, summed in float32 (no float64 there).
    if isinstance(a, jax.Array):
        return jnp.sum(a * a, axis=axis, dtype=jnp.float32)
    return np.sum(a * a, axis=axis, dtype=np.float64).astype(_F32)


def calculate_scales_hessian(
    x, kernel, act_delta, act_zero_point, kernel_hat, bits: int, alpha: float = 0.5
):
    """The official GPS scales of one linear for one calibration batch.

    Runs on the host (numpy, float64 sums) or, when ``x`` is a jax array, on its device
    (``calculate_scales_hessian_jit``: float32 sums, the rest identical).

    Args:
      x: the linear's input ``[..., C]`` (already SmoothQuant-scaled and shifted, sink tokens
        removed).
      kernel: the current Flax kernel ``[C, O]`` (torch ``weight.T``, already including s_SQ).
      act_delta, act_zero_point: the per-input-channel quantizer of x (official unsigned z),
        any shape of size C.
      kernel_hat: the fake-quantized kernel Q(W) ``[C, O]`` (the official per-output-row weight
        quantizer; the caller chooses its calibration/EMA state).
      bits: activation bits (the grid of channel k).
      alpha: 0.5 in PTQ4ARVG.

    Returns:
      float32 [C] scales (divide x by them, multiply the kernel's input rows by them).
    """
    c = np.shape(x)[-1]
    if np.shape(kernel)[0] != c or np.shape(kernel_hat) != np.shape(kernel):
        raise ValueError(
            f"x [..., {c}] needs kernel/kernel_hat [{c}, O]; got {np.shape(kernel)}, "
            f"{np.shape(kernel_hat)}"
        )
    if np.size(act_delta) != c or np.size(act_zero_point) != c:
        raise ValueError(
            f"act_delta/zero_point need {c} values, got {np.size(act_delta)}/"
            f"{np.size(act_zero_point)}"
        )
    if isinstance(x, jax.Array):
        return calculate_scales_hessian_jit(
            x, kernel, act_delta, act_zero_point, kernel_hat, bits=bits, alpha=alpha
        )
    return _scales(np, x, kernel, act_delta, act_zero_point, kernel_hat, bits, alpha)


@functools.partial(jax.jit, static_argnames=("bits", "alpha"))
def calculate_scales_hessian_jit(x, kernel, act_delta, act_zero_point, kernel_hat, *, bits, alpha):
    """``calculate_scales_hessian`` traced (float32 sums)."""
    return _scales(jnp, x, kernel, act_delta, act_zero_point, kernel_hat, bits, alpha)


def _scales(xp, x, kernel, act_delta, act_zero_point, kernel_hat, bits, alpha):
    x = xp.asarray(x, _F32)
    c = x.shape[-1]
    l = x.reshape(-1, c)  # [M, C]   (official: [C, M])
    w = xp.asarray(kernel, _F32)
    w_hat = xp.asarray(kernel_hat, _F32)
    a_delta = xp.asarray(act_delta, _F32).reshape(-1)
    a_zp = xp.asarray(act_zero_point, _F32).reshape(-1)

    range_x = (l.max(axis=0) - l.min(axis=0)).astype(_F32)  # [C]
    range_w = (w.max(axis=1) - w.min(axis=1)).astype(_F32)  # [C]
    k = xp.argmax(range_x)  # first on ties, as torch
    with np.errstate(divide="ignore", invalid="ignore"):  # a constant column: inf, as torch
        if alpha == 0.5:
            s_std = (xp.sqrt(range_x[k]) / xp.sqrt(range_w[k])).astype(_F32)
        else:
            s_std = (
                xp.power(range_x[k], _F32(alpha)) / xp.power(range_w[k], _F32(1 - alpha))
            ).astype(_F32)

        err_l = xp.abs(l - fake_quant_uniform(l, a_delta[k], a_zp[k], bits))  # [M, C]
        err_w = xp.abs(w - w_hat)  # [C, O]
        frac_1 = (_sumsq(l, 0) * _sumsq(err_w, 1)).astype(_F32)
        frac_2 = (_sumsq(err_l, 0) * _sumsq(w_hat, 1)).astype(_F32)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        s = (xp.power(s_std, _F32(4)) * (frac_1 / frac_2).astype(_F32)).astype(_F32)
        scales = xp.sqrt(xp.sqrt(s)).astype(_F32)
    scales = xp.where(frac_2 == 0, _F32(1), scales).astype(_F32)
    return xp.where(xp.arange(c) == k, s_std, scales).astype(_F32)
