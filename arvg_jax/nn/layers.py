"""Shared layers: a quantization-aware Dense, parameter-free LayerNorm, activations.

Dims: B batch, L tokens, D input features, F output features.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

Array = jax.Array
Dtype = Any

# torch.nn.Linear's default init (kaiming_uniform with a=sqrt(5)) is uniform(±1/sqrt(fan_in)); the
# official VAR overwrites it anyway (VAR.init_weights), so any sane init serves for shape planning.
default_kernel_init = nn.initializers.lecun_normal()


def _is_plain_array(x: Any) -> bool:
    """True for a float array (concrete, traced or numpy); False for a `quant.QArray`."""
    return isinstance(x, (jax.Array, np.ndarray))


MATMUL_OUTS = ("float32", "dtype")  # Dense.matmul_out


class Dense(nn.Module):
    """`y = x @ kernel + bias`, accepting a `quant.QArray` kernel and an `input_quant` quantizer.

    Params: `kernel` [D, F] (the transpose of torch's Linear weight), `bias` [F], and, once a
    quantization transform has run, `input_quant` (a `quant.ActQuant`). Existing params are read with
    `get_variable`, so the kernel may be a `QArray` (int8 path through `quant.dense`); `self.param`
    is used only to create params at init.

    The layer input is sown as `intermediates/<path>/input` for calibration (a no-op unless the
    `intermediates` collection is mutable). An `input_quant` with a `fit_input` method (a
    `quant.FitInput` placeholder) is fitted on the input first and sown as
    `calibration/<path>/input_quant`.

    Attributes:
        features: F.
        use_bias: whether init creates a bias (a bias given in the params is always used).
        dtype: compute dtype of the matmul inputs and of the output; accumulation is float32.
        matmul_out: float path only. "float32" (default): the matmul returns float32, the bias is
            added in float32 and the sum is rounded to `dtype` once, as the official autocast
            forward rounds (exact on every backend). "dtype": the matmul returns `dtype` and the
            bias is added in `dtype`: half the output bytes in bfloat16. On H100 the default
            writes float32 GEMM outputs (VAR-d30's qkv: f32[32768, 5760]) that XLA fusions read
            back; "dtype" made the VAR-d30 batch-64 bf16 sampler 45 ms faster (BENCHMARKS.md).
            Where XLA folds the bias into cuBLAS's epilogue this rounds once as well; where it
            does not (or keeps the sum in excess precision, as XLA:CPU does), the result may
            differ by a bf16 rounding.
        defer_bias: return ``(y, bias)`` instead of ``y``: on the float path ``y`` is the
            matmul output before the bias and before rounding (float32 under matmul_out
            "float32") and ``bias`` the float32 bias (or None), for a fused consumer that adds
            and rounds itself (`arvg_jax.kernels.attn_prologue_pallas`); the quantized path adds its
            bias as usual and returns ``(y, None)``.
    """

    features: int
    use_bias: bool = True
    dtype: Dtype = jnp.float32
    kernel_init: Any = default_kernel_init
    matmul_out: str = "float32"
    defer_bias: bool = False

    @nn.compact
    def __call__(self, x: Array, positions: np.ndarray | Array | None = None) -> Array:
        """Applies the layer.

        Args:
            x: [..., D] input.
            positions: int32 [L] absolute sequence positions of the tokens of `x` (axis -2), used
                by token-group activation quantizers; ignored by the float path.

        Returns:
            [..., F] in `self.dtype`.
        """
        self.sow("intermediates", "input", x)
        if self.has_variable("params", "kernel"):
            kernel = self.get_variable("params", "kernel")
        else:
            kernel = self.param(
                "kernel", self.kernel_init, (x.shape[-1], self.features), jnp.float32
            )
        bias = None
        # A bias present in the params is used even with use_bias=False: quantization folds
        # (a zero-centering shift, `quant._transforms`) give bias-free layers (PAR) a bias.
        if self.has_variable("params", "bias"):
            bias = self.get_variable("params", "bias")
        elif self.use_bias:
            bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        input_quant = None
        if self.has_variable("params", "input_quant"):
            input_quant = self.get_variable("params", "input_quant")

        if input_quant is not None and hasattr(input_quant, "fit_input"):
            # Calibration placeholder (`quant.FitInput`): fit the quantizer on this very input and
            # apply it at once, so the layers after this one see a quantized upstream and a block
            # calibrates in one forward. The fitted quantizer is sown for the caller to keep.
            input_quant = input_quant.fit_input(x, positions)
            self.sow("calibration", "input_quant", input_quant)

        if input_quant is not None or not _is_plain_array(kernel):
            # Imported lazily: the float model must not depend on the quantization package.
            from quant import dense

            y = dense(x, kernel, bias, input_quant, positions, out_dtype=self.dtype)
            return (y.astype(self.dtype), None) if self.defer_bias else y.astype(self.dtype)

        if self.matmul_out not in MATMUL_OUTS:
            raise ValueError(f"matmul_out must be one of {MATMUL_OUTS}, got {self.matmul_out!r}")
        acc = jnp.float32 if self.matmul_out == "float32" else self.dtype
        y = jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype), preferred_element_type=acc)
        if self.defer_bias:
            return y, None if bias is None else bias.astype(jnp.float32)
        if bias is not None:
            y = y + bias.astype(acc)
        return y.astype(self.dtype)


def layer_norm(x: Array, eps: float = 1e-6) -> Array:
    """LayerNorm over the last axis without affine parameters, computed in float32.

    Two-pass (biased) variance as torch.nn.LayerNorm computes it, not E[x²] − E[x]².

    Args:
        x: [..., C].
        eps: added to the variance.

    Returns:
        float32 [..., C].
    """
    x = x.astype(jnp.float32)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    xc = x - mean
    var = jnp.mean(xc * xc, axis=-1, keepdims=True)
    return xc * jax.lax.rsqrt(var + eps)


def l2_normalize(x: Array, eps: float = 1e-12) -> Array:
    """torch.nn.functional.normalize(x, dim=-1): x / max(‖x‖₂, eps), computed in float32."""
    x = x.astype(jnp.float32)
    norm = jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True))
    return x / jnp.maximum(norm, eps)


def gelu_tanh(x: Array) -> Array:
    """torch.nn.GELU(approximate='tanh')."""
    return jax.nn.gelu(x, approximate=True)
