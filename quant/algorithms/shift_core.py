"""Zero-centering channel shift of PTQ4ARVG stage C (``SmoothModule.calculate_sym_shift``).

Dims: ``C`` input channels of the shifted linear, ``O`` its output channels.
Reference: BienLuky/PTQ4ARVG f249fe9 ``VAR/quant/smooth.py:71-83`` and
``VAR/quant/gps.py:7-95`` (``shift_activation_to_sym``). From the per-channel asymmetric input
quantizer (Δ_j, z_j) of a GPS layer, the shift ``b_j = Δ_j·((2**(b-1) - 1) - z_j)`` moves channel
j's range ``[-z_jΔ_j, (2**b - 1 - z_j)Δ_j]`` onto ``[-(2**(b-1) - 1)Δ_j, 2**(b-1)Δ_j]``. The linear
then sees ``x - b`` and its bias gains ``W·b`` (``fold_shift_into_bias``).
"""

from __future__ import annotations

import numpy as np

__all__ = ["calculate_sym_shift", "fold_shift_into_bias"]

_F32 = np.float32


def calculate_sym_shift(delta, zero_point, bits: int):
    """The official ``calculate_sym_shift`` in float32.

    Args:
      delta: per-channel Δ (any shape; flattened to [C]).
      zero_point: per-channel official (unsigned) zero point z, same size.
      bits: activation bits.

    Returns:
      ``(ratio, shift, target_delta, target_zp)``: ``ratio = Δ/Δ`` [C] (1 wherever Δ is finite
      and non-zero), ``shift = (-z·Δ)/ratio - (-(2**(b-1) - 1)·Δ)`` [C], ``target_delta = Δ``
      [C] and ``target_zp = 2**(b-1) - 1`` (float32 scalar), the quantizer the shifted input
      gets.
    """
    s = np.asarray(delta, _F32).reshape(-1)
    z = np.asarray(zero_point, _F32).reshape(-1)
    if s.shape != z.shape:
        raise ValueError(f"delta {s.shape} and zero_point {z.shape} differ in size")
    act_min = (-z * s).astype(_F32)
    target_s = s
    target_zp = 2 ** (bits - 1) - 1
    target_min = (_F32(-target_zp) * target_s).astype(_F32)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = (s / target_s).astype(_F32)
        shift = ((act_min / ratio).astype(_F32) - target_min).astype(_F32)
    return ratio, shift, target_s.copy(), np.asarray(target_zp, _F32)


def fold_shift_into_bias(kernel, bias, shift) -> np.ndarray:
    """New bias of a linear whose input becomes ``x - shift``: ``bias + shift @ kernel``.

    Args:
      kernel: Flax Dense kernel [C, O]. bias: [O] or None. shift: [C].
    """
    kernel = np.asarray(kernel, _F32)
    out = np.asarray(shift, _F32) @ kernel
    return out if bias is None else (np.asarray(bias, _F32) + out).astype(_F32)
