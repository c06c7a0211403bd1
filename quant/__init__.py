"""PTQ4ARVG quantization for arvg-jax: quantized leaves, calibration primitives, int8 matmuls.

The public surface (each function's docstring has an example)::

    import arvg_jax, quant
    model = arvg_jax.load("var-tiny")
    tokens = model.generate(0, [0, 1, 2, 3], greedy=True)["tokens"]
    batch = model.calibration_batch([0, 1, 2, 3], tokens)
    qparams, summary = quant.quantize(model.params, "ptq4arvg:w6a6", model.quant_adapter(), batch)

* whole-model transforms over param pytrees: `quantize(params, recipe, adapter, batch)`, `rtn`,
  `smoothquant`, `ptq4arvg`; recipes: `Recipe`;
* the method's math over arrays: `gps` (GPS scales), `stwq` (token-group quantizers), `dgc`
  (calibration selection over `Candidates`), and the quantizers below (`quantize_weight`,
  `fit_act_quant`, `fit_uniform_*`, ...);
* quantized leaves `QArray`, `ActQuant`; int8 execution `dense`, `quantized_matmul`.
"""

from quant._dot_general import dense, fake_quant_dense, fake_quant_matmul, quantized_matmul
from quant._oracle import OracleKernel, oracle
from quant._public import dgc, gps, ptq4arvg, quantize, rtn, smoothquant, stwq
from quant._qarray import ActQuant, LogSqrt2Quant, QArray, offset_for_bits
from quant._quantizers import (
    PERCENTILES,
    TORCH_QUANTILE_MAX_ELEMENTS,
    ema_update,
    fake_quant_log2,
    fake_quant_uniform,
    fit_act_quant,
    fit_log2,
    fit_log_sqrt2_quant,
    fit_uniform_per_channel,
    fit_uniform_per_row,
    fit_uniform_per_tensor,
    fit_uniform_token_groups,
    group_table,
    official_quantile,
    quantize_weight,
    search_uniform_params,
)
from quant._reference import run_quant_reference
from quant.algorithms.calib_data import Candidates
from quant.recipes import Recipe

__all__ = [
    "PERCENTILES",
    "TORCH_QUANTILE_MAX_ELEMENTS",
    "ActQuant",
    "Candidates",
    "LogSqrt2Quant",
    "OracleKernel",
    "QArray",
    "Recipe",
    "dense",
    "dgc",
    "ema_update",
    "fake_quant_dense",
    "fake_quant_log2",
    "fake_quant_matmul",
    "fake_quant_uniform",
    "fit_act_quant",
    "fit_log2",
    "fit_log_sqrt2_quant",
    "fit_uniform_per_channel",
    "fit_uniform_per_row",
    "fit_uniform_per_tensor",
    "fit_uniform_token_groups",
    "gps",
    "group_table",
    "official_quantile",
    "offset_for_bits",
    "oracle",
    "ptq4arvg",
    "quantize",
    "quantize_weight",
    "quantized_matmul",
    "rtn",
    "run_quant_reference",
    "search_uniform_params",
    "smoothquant",
    "stwq",
]
