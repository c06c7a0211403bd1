"""SmoothQuant per-input-channel scales as PTQ4ARVG computes them (``SmoothModule.calculate_scales``).

Dims: ``C`` input channels of the smoothed linear, ``O`` its output channels.
Reference: BienLuky/PTQ4ARVG f249fe9 ``VAR/quant/smooth.py:13-24``. The linear computes
``(x / s) @ (s * W)``: activations are divided by ``s`` (folded into the preceding norm/AdaLN) and
the weight's input rows are multiplied by it.
"""

from __future__ import annotations

import numpy as np

__all__ = ["act_absmax_per_channel", "smoothquant_scales", "weight_absmax_per_in_channel"]

_F32 = np.float32
_CLAMP = _F32(1e-6)


def act_absmax_per_channel(x) -> np.ndarray:
    """``max |x|`` per last-axis channel of ``[..., C]`` activations: float32 [C]."""
    x = np.asarray(x, _F32)
    return np.max(np.abs(x.reshape(-1, x.shape[-1])), axis=0)


def weight_absmax_per_in_channel(kernel) -> np.ndarray:
    """``max_o |W[o, j]|`` of a Flax Dense kernel ``[C, O]`` (= torch ``weight.abs().max(0)``)."""
    kernel = np.asarray(kernel, _F32)
    if kernel.ndim != 2:
        raise ValueError(f"need a 2-D [in, out] kernel, got {kernel.shape}")
    return np.max(np.abs(kernel), axis=1)


def smoothquant_scales(act_absmax, weight_absmax_per_in_channel, alpha: float = 0.5) -> np.ndarray:
    """``s_j = max|x_j|**alpha / max|W_:,j|**(1 - alpha)``, both maxima clamped to >= 1e-6.

    float32 like the official code; torch evaluates ``pow(0.5)`` as ``sqrt``, reproduced here.

    Args:
      act_absmax: float [C], per-input-channel activation absmax (sinks excluded by the caller).
      weight_absmax_per_in_channel: float [C], per-input-channel weight absmax.
      alpha: migration strength (PTQ4ARVG: 0.5).

    Returns:
      float32 [C].
    """
    a = np.maximum(np.asarray(act_absmax, _F32), _CLAMP)
    w = np.maximum(np.asarray(weight_absmax_per_in_channel, _F32), _CLAMP)
    if a.shape != w.shape:
        raise ValueError(f"act_absmax {a.shape} and weight absmax {w.shape} differ")

    def _pow(v, e):
        return np.sqrt(v) if e == 0.5 else np.power(v, _F32(e))

    return (_pow(a, alpha) / _pow(w, 1 - alpha)).astype(_F32)
