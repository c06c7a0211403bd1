"""PTQ4ARVG quantization for arvg-jax: quantized leaves, calibration primitives, int8 matmuls."""

from quant._dot_general import dense, fake_quant_dense, fake_quant_matmul, quantized_matmul
from quant._oracle import OracleKernel, oracle
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

__all__ = [
    "PERCENTILES",
    "TORCH_QUANTILE_MAX_ELEMENTS",
    "ActQuant",
    "LogSqrt2Quant",
    "OracleKernel",
    "QArray",
    "dense",
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
    "group_table",
    "official_quantile",
    "offset_for_bits",
    "oracle",
    "quantize_weight",
    "quantized_matmul",
    "run_quant_reference",
    "search_uniform_params",
]
