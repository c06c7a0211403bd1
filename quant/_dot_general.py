"""Dense layers and attention matmuls on float or quantized operands, with their float oracles.

Dims: ``L`` tokens, ``I`` input features (contracted), ``O`` output features; attention
``M``/``N`` rows/columns and ``K`` the contracted axis.

``_fast_*``: int8 x int8 ``lax.dot_general(preferred_element_type=int32)`` plus exact integer
zero-point corrections, dequantized once at the end. ``_slow_*`` / ``fake_quant_*``: dequantize the
operands, then a float32 matmul (the oracle, = the official fake-quant forward).

Integer algebra. With stored codes ``q`` and shifted zero points ``z`` (``quant._qarray``),
``Σ_i (q_x - z_x)(q_w - z_w) = (Σ q_x q_w - z_w Σ_i q_x) - z_x (Σ_i q_w - I z_w)``, evaluated in
int32. Every intermediate is bounded by ``I·(2**(b-1) + |z_x|)·(2**(b-1) + |z_w|)``; with zero
points inside the code range (``|z| <= 2**(b-1)``, the case whenever the calibration range
contains 0) that is ``I·2**16`` at 8 bits, so ``I <= 32767`` is safe. Larger I raises; zero
points are range-checked against the general bound whenever they are concrete (not traced).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax.linen.dtypes import promote_dtype
from jax import lax

from quant._oracle import OracleKernel
from quant._packed import PackedKernel, packed_dense
from quant._qarray import ActQuant, LogSqrt2Quant, QArray

__all__ = ["dense", "fake_quant_dense", "fake_quant_matmul", "quantized_matmul"]

_INT32_MAX = 2**31 - 1
_HIGHEST = lax.Precision.HIGHEST


def _check_int32_bound(contract: int, bits_a: int, za, bits_b: int, zb, what: str) -> None:
    """Raises if ``contract·(2**(ba-1) + |za|)·(2**(bb-1) + |zb|)`` can overflow int32."""
    ma = 2 ** (bits_a - 1)
    mb = 2 ** (bits_b - 1)
    if contract * ma * mb * 4 > _INT32_MAX:  # the bound with in-range zero points
        raise ValueError(
            f"{what}: contraction size {contract} can overflow the int32 accumulator at "
            f"{bits_a}x{bits_b} bits (limit {_INT32_MAX // (ma * mb * 4)})"
        )
    if isinstance(za, jax.core.Tracer) or isinstance(zb, jax.core.Tracer):
        return
    za_max = float(np.max(np.abs(np.asarray(za)))) if np.size(za) else 0.0
    zb_max = float(np.max(np.abs(np.asarray(zb)))) if np.size(zb) else 0.0
    if contract * (ma + za_max) * (mb + zb_max) > _INT32_MAX:
        raise ValueError(
            f"{what}: zero points |z| up to {za_max:g} / {zb_max:g} with contraction {contract} "
            f"can overflow int32; use the weight-only/dequantized path for this layer"
        )


def _zero_point_corrected(acc, sum_a, sum_b, za, zb, contract: int):
    """``Σ (qa - za)(qb - zb)`` from ``acc = Σ qa qb`` (all int32; see module doc)."""
    za = za.astype(jnp.int32)
    zb = zb.astype(jnp.int32)
    return (acc - zb * sum_a) - za * (sum_b - contract * zb)


# ----------------------------------------------------------------------------------------------
# Dense.


def _contract_last_first(x_ndim: int):
    return (((x_ndim - 1,), (0,)), ((), ()))


# XLA:GPU sends small s8 x s8 -> s32 dots to its Triton GEMM emitter, whose autotuner found no
# candidate that compiles for a contracted size that is not a multiple of 32 (K = 26 of the tiny
# test models on H100, jax 0.11.2: "No candidates could be compiled"). Zero codes appended to both
# operands change no product; the zero-point corrections keep the true size.
GPU_CONTRACT_MULTIPLE = 32


def pad_contracted(a, a_axis: int, b, b_axis: int):
    """(a, b) with their contracted axes zero-padded to a multiple of `GPU_CONTRACT_MULTIPLE` on
    GPU backends (unchanged elsewhere, and when already a multiple)."""
    k = a.shape[a_axis]
    pad = -k % GPU_CONTRACT_MULTIPLE
    if not pad or jax.default_backend() != "gpu":
        return a, b

    def padded(x, axis):
        widths = [(0, 0)] * x.ndim
        widths[axis % x.ndim] = (0, pad)
        return jnp.pad(x, widths)

    return padded(a, a_axis), padded(b, b_axis)


def _dense_int32(q_x, z_x, kernel: QArray):
    """Exact ``Σ_i (q_x - z_x)(q_w - z_w)`` in int32: q_x int8 [..., L, I] -> [..., L, O]."""
    a, w = pad_contracted(q_x, -1, kernel.qvalue, 0)
    acc = lax.dot_general(
        a, w, _contract_last_first(q_x.ndim), preferred_element_type=jnp.int32
    )  # [..., L, O]
    sum_x = jnp.sum(q_x, axis=-1, keepdims=True, dtype=jnp.int32)  # [..., L, 1]
    sum_w = jnp.sum(kernel.qvalue, axis=0, keepdims=True, dtype=jnp.int32)  # [1, O]
    return _zero_point_corrected(acc, sum_x, sum_w, z_x, kernel.zero_point, q_x.shape[-1])


def _fast_dense(x, kernel: QArray, bias, input_quant: ActQuant, positions):
    """int8 x int8 -> int32 Dense: x [..., L, I], kernel [I, O] -> [..., L, O] in x.dtype."""
    s_x, z_x = input_quant.for_positions(positions)  # [L, 1] or [1, 1], float32
    _check_int32_bound(x.shape[-1], input_quant.bits, z_x, kernel.bits, kernel.zero_point, "dense")
    q_x = input_quant.quantize(x, positions)  # int8 [..., L, I]
    y = _dense_int32(q_x, z_x, kernel).astype(jnp.float32) * (s_x * kernel.scale)
    if bias is not None:
        y = y + bias.astype(jnp.float32)
    return y.astype(x.dtype)


def _slow_dense(x, kernel, bias, input_quant, positions):
    """Dequantize-then-float32 Dense (the oracle); returns x.dtype for a quantized kernel."""
    xf = x.astype(jnp.float32)
    if input_quant is not None:
        xf = input_quant.fake_quant(xf, positions)
    w = kernel.dequantize(jnp.float32) if isinstance(kernel, QArray) else kernel
    w = w.astype(jnp.float32)
    y = lax.dot_general(xf, w, _contract_last_first(xf.ndim), precision=_HIGHEST)
    if bias is not None:
        y = y + bias.astype(jnp.float32)
    return y.astype(x.dtype)


def dense(
    x, kernel, bias=None, input_quant: ActQuant | None = None, positions=None, out_dtype=None
):
    """``x @ kernel + bias`` for a float or quantized Flax kernel ``[I, O]``.

    Args:
      x: [..., L, I] float32 or bfloat16.
      kernel: float ``[I, O]`` or ``QArray`` (per-output-channel scale/zero point ``[1, O]``).
      bias: [O] or None.
      input_quant: ``ActQuant`` of the input (requires a ``QArray`` kernel) or None.
      positions: int [L] absolute positions of the tokens (STWQ group lookup); ignored for a
        per-tensor ``input_quant``.
      out_dtype: the dtype the caller casts the result to (``Dense.dtype``); lets a
        ``PackedKernel`` take the bf16-output fused GPU kernel for a float32 input. The result
        is still returned in x.dtype.

    Returns:
      float kernel: ``x @ kernel + bias`` in the promoted dtype (as ``flax.linen.Dense``).
      ``QArray`` + ``ActQuant``: the int8 path (``_fast_dense``), in x.dtype.
      ``QArray`` alone: weight-only, dequantize then matmul in x.dtype (float32 accumulation).
    """
    if isinstance(kernel, OracleKernel):
        return fake_quant_dense(x, kernel.q, bias, input_quant, positions)
    if isinstance(kernel, PackedKernel):  # inference layout (quant._packed)
        return packed_dense(x, kernel, bias, input_quant, positions, out_dtype=out_dtype)
    if not isinstance(kernel, QArray):
        if input_quant is not None:
            raise ValueError("input_quant needs a QArray kernel (quantize the weight too)")
        x, kernel, bias = promote_dtype(x, kernel, bias)
        y = lax.dot_general(x, kernel, _contract_last_first(x.ndim))
        return y if bias is None else y + bias
    if x.shape[-1] != kernel.shape[0]:
        raise ValueError(f"dense: x [..., {x.shape[-1]}] does not match kernel {kernel.shape}")
    if input_quant is not None:
        return _fast_dense(x, kernel, bias, input_quant, positions)
    w = kernel.dequantize(jnp.float32).astype(x.dtype)
    y = lax.dot_general(x, w, _contract_last_first(x.ndim), preferred_element_type=jnp.float32)
    if bias is not None:
        y = y + bias.astype(jnp.float32)
    return y.astype(x.dtype)


def fake_quant_dense(x, kernel, bias=None, input_quant: ActQuant | None = None, positions=None):
    """The oracle of ``dense``: fake-quantize x and dequantize the kernel in float32, then a
    float32 (HIGHEST precision) matmul; the result is cast to x.dtype."""
    return _slow_dense(x, kernel, bias, input_quant, positions)


# ----------------------------------------------------------------------------------------------
# Attention matmuls (both operands are activations; static per-tensor quantizers).


def _require_per_tensor(q, name: str) -> None:
    if isinstance(q, ActQuant) and not q.per_tensor:
        raise ValueError(
            f"{name}: attention operands use per-tensor quantizers, got {q.num_groups} groups"
        )


# XLA:GPU (jax 0.11.2 on H100, 2026-12-07) miscompiles the batched s8 x s8 -> s32 attention dots
# inside RAR's calibration program: rar-tiny's q·kᵀ and softmax·v came out wrong by about the size
# of the result (softmax·v off by 89 where the true values stay below 3.1), while the same shapes
# compiled alone, the Dense int8 dots and every CPU run were exact; turning off XLA's Triton GEMM
# emitter (`--xla_gpu_enable_triton_gemm=false`) or accumulating the same codes in float32 made the
# calibration equal the CPU's. So CUDA programs accumulate the integer codes in float32, exactly:
# every product |q_a q_b| <= 2**14, hence a sum of at most `GPU_F32_CHUNK` of them is an integer
# below 2**24, which float32 holds exactly whatever the summation order; longer contractions add
# their chunks in int32. The operands, codes, zero-point corrections and result are unchanged; only
# the dot's instruction differs (CPU and TPU programs keep the s8 dot).
GPU_F32_CHUNK = 1024


def _int_matmul(qa, qb, dims):
    """``Σ_k qa[..., m, k] qb[..., k, n]`` in int32 for int8 codes qa [..., M, K], qb [..., K, N]:
    the s8 dot, except in programs lowered for CUDA (`lax.platform_dependent` picks by the
    lowering platform, so a TPU export made on a GPU host keeps the s8 dot)."""

    def s8(a, b):
        return lax.dot_general(a, b, dims, preferred_element_type=jnp.int32)

    def f32_chunks(a, b):
        k = a.shape[-1]
        acc = None
        for lo in range(0, k, GPU_F32_CHUNK):
            hi = min(lo + GPU_F32_CHUNK, k)
            part = lax.dot_general(
                a[..., lo:hi].astype(jnp.float32),
                b[..., lo:hi, :].astype(jnp.float32),
                dims,
                precision=_HIGHEST,
                preferred_element_type=jnp.float32,
            ).astype(jnp.int32)
            acc = part if acc is None else acc + part
        return acc

    return lax.platform_dependent(qa, qb, cuda=f32_chunks, default=s8)


def _matmul_dims(a, b):
    if a.ndim != b.ndim or a.shape[:-2] != b.shape[:-2] or a.shape[-1] != b.shape[-2]:
        raise ValueError(
            f"quantized_matmul: need a [..., M, K] and b [..., K, N], got {a.shape}, {b.shape}"
        )
    batch = tuple(range(a.ndim - 2))
    return (((a.ndim - 1,), (b.ndim - 2,)), (batch, batch))


def _fake(x, q):
    xf = x.astype(jnp.float32)
    return xf if q is None else q.fake_quant(xf)


def fake_quant_matmul(a, b, a_quant=None, b_quant=None):
    """Oracle: ``Q(a) @ Q(b)`` in float32 (HIGHEST) for a [..., M, K], b [..., K, N]; a.dtype out.

    ``a_quant``/``b_quant``: per-tensor ``ActQuant``, ``LogSqrt2Quant`` (post-softmax a) or None.
    """
    _require_per_tensor(a_quant, "a_quant")
    _require_per_tensor(b_quant, "b_quant")
    dims = _matmul_dims(a, b)
    y = lax.dot_general(_fake(a, a_quant), _fake(b, b_quant), dims, precision=_HIGHEST)
    return y.astype(a.dtype)


def quantized_matmul(a, b, a_quant=None, b_quant=None):
    """Attention matmul (q·kᵀ, P·v) with static per-tensor quantized operands.

    Both operands ``ActQuant`` (per tensor): int8 x int8 -> int32 with zero-point corrections
    (on GPU the same integer sum in exact float32 chunks, see ``_int_matmul``).
    A ``LogSqrt2Quant`` operand (PAR's post-softmax P) has no integer kernel, and a missing
    quantizer means a float operand: these dequantize and run the float32 oracle.

    Args:
      a: [..., M, K]; b: [..., K, N] (equal leading batch dims).

    Returns:
      [..., M, N] in a.dtype.
    """
    if not (isinstance(a_quant, ActQuant) and isinstance(b_quant, ActQuant)):
        if isinstance(a_quant, (ActQuant, LogSqrt2Quant, type(None))) and isinstance(
            b_quant, (ActQuant, LogSqrt2Quant, type(None))
        ):
            return fake_quant_matmul(a, b, a_quant, b_quant)
        raise TypeError(f"unsupported quantizers {type(a_quant)}, {type(b_quant)}")
    _require_per_tensor(a_quant, "a_quant")
    _require_per_tensor(b_quant, "b_quant")
    dims = _matmul_dims(a, b)
    contract = a.shape[-1]
    za = a_quant.zero_point.reshape(())
    zb = b_quant.zero_point.reshape(())
    _check_int32_bound(contract, a_quant.bits, za, b_quant.bits, zb, "quantized_matmul")
    qa = a_quant.quantize(a)  # int8 [..., M, K]
    qb = b_quant.quantize(b)  # int8 [..., K, N]
    acc = _int_matmul(qa, qb, dims)  # [..., M, N] int32
    sum_a = jnp.sum(qa, axis=-1, keepdims=True, dtype=jnp.int32)  # [..., M, 1]
    sum_b = jnp.sum(qb, axis=-2, keepdims=True, dtype=jnp.int32)  # [..., 1, N]
    y_int = _zero_point_corrected(acc, sum_a, sum_b, za, zb, contract)
    scale = a_quant.scale.reshape(()) * b_quant.scale.reshape(())
    return (y_int.astype(jnp.float32) * scale).astype(a.dtype)
