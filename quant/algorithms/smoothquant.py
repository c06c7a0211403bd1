"""SmoothQuant baseline (α = 0.5), folded into the preceding AdaLN rows, then RTN quantization.

The smoothed layers are the ones PTQ4ARVG smooths (VAR: qkv, fc1, head): their inputs come from an
AdaLN modulation, so s is absorbed at zero run-time cost (`quant._transforms`). Statistics skip
the sink tokens, as the official SQ stage does (`VAR/quant/quant_modules.py:54-55`).
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

from quant._calibrate import collect, statistics_input
from quant._transforms import fold_into
from quant.algorithms.rtn import rtn
from quant.algorithms.smoothquant_core import smoothquant_scales
from quant.recipes import Recipe


def input_absmax(adapter, name: str, x, batch=None) -> np.ndarray:
    """Per-input-channel max|x| of a layer input, sinks excluded where the adapter says so and
    only its valid rows (`quant._calibrate.statistics_input`)."""
    x = statistics_input(adapter, name, x, batch)
    return np.asarray(jnp.max(jnp.abs(x.reshape(-1, x.shape[-1])), axis=0), np.float32)


def smooth(adapter, params: dict[str, Any], batch, alpha: float = 0.5, *, progress: bool = True):
    """Applies SmoothQuant scales to the adapter's GPS layers; float params in, float out."""
    targets = set(adapter.gps_layers())
    absmax = collect(
        adapter,
        params,
        batch,
        lambda n, x, layer: input_absmax(adapter, n, x, batch),
        layers=targets.__contains__,
        desc="smoothquant stats",
        progress=progress,
    )
    for name in adapter.gps_layers():
        kernel = np.asarray(params_get(params, name)["kernel"], np.float32)  # [C_in, C_out]
        w_absmax = np.max(np.abs(kernel), axis=1)
        s = smoothquant_scales(absmax[name], w_absmax, alpha)
        params = fold_into(params, name, adapter.fold_target(name), s)
    return params


def params_get(params, name):
    from quant._tree import tree_get

    return tree_get(params, name)


def smoothquant(adapter, params, batch, recipe: Recipe, *, progress: bool = True):
    return rtn(
        adapter,
        smooth(adapter, params, batch, recipe.sq_alpha, progress=progress),
        batch,
        recipe,
        progress=progress,
    )
