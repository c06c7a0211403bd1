"""RTN baseline: per-output-channel weights and per-tensor static activations, no transform.

Weights use the official percentile-MSE `UniformQuantizer` per output row; each layer input gets one
static (Δ, z) calibrated on the output of the already-quantized layers before it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

from quant import _tree
from quant._calibrate import fit_stages
from quant._fit import FitInput, matmul_fits, quantize_weight_jit
from quant._oracle import OracleKernel
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


def quantize_layers(
    adapter,
    params: dict[str, Any],
    batch,
    recipe: Recipe,
    input_spec: Callable[[str], FitInput],
    *,
    desc: str,
    progress: bool = True,
) -> dict[str, Any]:
    """Quantizes every covered layer: QArray kernel + the input quantizer ``input_spec(name)``
    fitted on the output of the already fake-quantized layers before it.

    One forward per stage (`fit_stages`); the weights are searched on device, and the calibration
    upstream runs the fake-quant oracle (the official quantized forward) on the same codes that
    the deployed int8 path uses.
    """
    flat = _tree.flatten(params)
    probe = dict(flat)
    for name in adapter.quantized_layers():
        flat[f"{name}/kernel"] = quantize_weight_jit(
            jnp.asarray(flat[f"{name}/kernel"], jnp.float32),
            recipe.w_bits,
            symmetric=recipe.weight_symmetric,
        )
        probe[f"{name}/kernel"] = OracleKernel(flat[f"{name}/kernel"])
        probe[f"{name}/input_quant"] = input_spec(name)
    for name, fit in matmul_fits(adapter, recipe.a_bits).items():  # attention matmuls
        probe[f"{name}/input_quant"] = fit
    found = fit_stages(adapter, _tree.unflatten(probe), batch, desc=desc, progress=progress)
    flat.update({f"{name}/input_quant": q for name, q in found.items()})
    return _tree.unflatten(flat)


def rtn(adapter, params: dict[str, Any], batch, recipe: Recipe, *, progress: bool = True):
    """Quantizes every layer the adapter covers (per-tensor inputs); returns a new param tree."""
    return quantize_layers(
        adapter,
        params,
        batch,
        recipe,
        lambda name: FitInput("tensor", recipe.a_bits),
        desc=f"rtn {recipe.bits}",
        progress=progress,
    )
