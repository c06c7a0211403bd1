"""RTN baseline: per-output-channel weights and per-tensor static activations, no transform.

Weights use the official percentile-MSE `UniformQuantizer` per output row; each layer input gets one
static (Δ, z) calibrated on the output of the already-quantized layers before it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from quant._calibrate import run_calibration
from quant._quantizers import fit_act_quant, quantize_weight
from quant.recipes import Recipe


def quantize_layer(
    layer: Mapping[str, Any], x, recipe: Recipe, group_of_position: np.ndarray | None = None
) -> dict[str, Any]:
    """Weight -> QArray, input -> ActQuant (per tensor unless a group table is given)."""
    kernel = quantize_weight(
        np.asarray(layer["kernel"], np.float32), recipe.w_bits, symmetric=recipe.weight_symmetric
    )
    if group_of_position is None or np.size(group_of_position) == 1:
        aq = fit_act_quant(x, recipe.a_bits)
    else:
        aq = fit_act_quant(x, recipe.a_bits, group_of_position=group_of_position)
    return {**layer, "kernel": kernel, "input_quant": aq}


def rtn(adapter, params: dict[str, Any], batch, recipe: Recipe, *, progress: bool = True):
    """Quantizes every layer the adapter covers; returns a new param tree."""
    covered = set(adapter.quantized_layers())
    return run_calibration(
        adapter,
        params,
        batch,
        lambda name, x, layer: quantize_layer(layer, x, recipe),
        layers=covered.__contains__,
        desc=f"rtn {recipe.bits}",
        progress=progress,
    )
