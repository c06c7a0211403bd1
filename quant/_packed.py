"""Inference layout of int8 Dense kernels: ``PackedKernel`` and its int8 x int8 -> int32 path.

A ``QArray`` kernel is stored in Flax layout ``[I, O]`` (the checkpoint contract). cuBLASLt's int8
GEMM wants both operands K-major ("TN": ``x [M, I]`` and ``w [O, I]``); with ``[I, O]`` XLA
transposes the int8 weight on every call (a ``wrapped_transpose`` fusion before
``__cublas$lt$matmul``), which costs a full read and write of the weight per layer and scale
step. ``pack(params)`` converts every ``QArray`` kernel once, outside jit, into a ``PackedKernel``:

  * ``qvalue_t`` int8 ``[O, I]`` (the torch Linear layout);
  * ``col_sum`` int32 ``[1, O]`` = Σ_i q_w, the weight term of the zero-point correction, so it is
    not recomputed (another pass over the weight) inside every generation step;
  * ``scale`` / ``zero_point`` exactly as in the ``QArray``.

``quant.dense`` routes a ``PackedKernel`` to ``packed_dense``, which evaluates the same integer
algebra as ``quant._dot_general._fast_dense`` (exact int32 zero-point corrections, one float32
dequantization) and therefore returns the same values (tested against it and against the
fake-quant oracle on CPU).

Backends (``jax.default_backend()``, chosen when the function is traced; the kernel's static
``impl`` field or the ``impl=`` argument overrides):
  * ``"gpu"``: ``"barrier"``: ``lax.optimization_barrier`` around the int8 operands and the int32
    accumulator. It keeps the dot alone, so XLA gives it to cuBLASLt instead of fusing the
    quantization (prologue) and dequantization (epilogue) into a Triton GEMM, which was measured
    slower than cuBLASLt plus separate elementwise kernels on H100 (``docs/../jax_int8.md`` §8);
    the dequantization then fuses into the consumers (bias, reshape, l2-norm, GELU, the next
    quantization) instead of adding a pass.
  * ``"pallas"`` (the GPU default where ``quant._pallas_gpu.available()``: Hopper, jax >= 0.11):
    a Pallas Mosaic GPU int8 GEMM whose epilogue applies the zero-point corrections, scales and
    bias to the int32 accumulator in registers and writes bf16 once, so the accumulator never
    goes through HBM (1.7-1.9x bf16 at VAR-d30's large layers on H100, where the ``"barrier"``
    layer runs at 0.9-1.6x; BENCHMARKS.md). Used for bfloat16 activations with at least
    ``PALLAS_MIN_ROWS`` rows and a contraction that is a multiple of 128; other calls of the
    same layer take ``"barrier"``.
  * anything else (CPU, TPU): ``"xla"``, the plain expression; XLA fuses as it likes.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax import lax

from quant import _tree
from quant._qarray import ActQuant, QArray

__all__ = ["IMPLS", "PackedKernel", "default_impl", "pack", "pack_kernel", "packed_dense", "unpack"]

IMPLS = ("xla", "barrier", "pallas")
# The GPU fallback when the Pallas kernel is unavailable; chosen by the H100 measurements.
GPU_IMPL = "barrier"
# Below this many rows the fused kernel's 256-row tiles are mostly padding (VAR's first scales,
# the AdaLN linears on 2B rows); cuBLASLt handles those.
PALLAS_MIN_ROWS = 1024


@struct.dataclass
class PackedKernel:
    """A quantized Dense kernel in inference layout (see module doc). ``shape`` is ``(I, O)``."""

    qvalue_t: jax.Array  # int8 [O, I]
    scale: jax.Array  # float32 [1, O]
    zero_point: jax.Array  # float32 [1, O], integer-valued, shifted (as QArray)
    col_sum: jax.Array  # int32 [1, O]: sum over I of the stored codes
    bits: int = struct.field(pytree_node=False, default=8)
    # "auto" (default_impl() when traced) or one of IMPLS; static, so it is part of jit's key.
    impl: str = struct.field(pytree_node=False, default="auto")

    @property
    def shape(self) -> tuple[int, ...]:
        return (int(self.qvalue_t.shape[1]), int(self.qvalue_t.shape[0]))

    @property
    def ndim(self) -> int:
        return 2

    def to_qarray(self) -> QArray:
        return QArray(
            qvalue=self.qvalue_t.T, scale=self.scale, zero_point=self.zero_point, bits=self.bits
        )

    def dequantize(self, dtype=jnp.float32) -> jax.Array:
        """Float ``[I, O]`` kernel, equal to ``to_qarray().dequantize(dtype)``."""
        return self.to_qarray().dequantize(dtype)


@jax.jit
def _pack_arrays(qvalue):
    """([O, I] codes, [1, O] int32 column sums) of [I, O] codes."""
    return jnp.transpose(qvalue), jnp.sum(qvalue, axis=0, keepdims=True, dtype=jnp.int32)


def pack_kernel(kernel: QArray, impl: str = "auto") -> PackedKernel:
    """QArray ``[I, O]`` with per-output-channel ``[1, O]`` scale/zero point -> PackedKernel."""
    if impl != "auto" and impl not in IMPLS:
        raise ValueError(f"pack_kernel: impl must be 'auto' or one of {IMPLS}, got {impl!r}")
    if kernel.ndim != 2:
        raise ValueError(f"pack_kernel: need a 2-D [in, out] kernel, got {kernel.shape}")
    _, o = kernel.shape
    for name in ("scale", "zero_point"):
        shp = tuple(getattr(kernel, name).shape)
        if shp not in ((1, o), (1, 1)):
            raise ValueError(f"pack_kernel: {name} {shp} is not per output channel [1, {o}]")
    scale = jnp.broadcast_to(kernel.scale, (1, o)).astype(jnp.float32)
    zp = jnp.broadcast_to(kernel.zero_point, (1, o)).astype(jnp.float32)
    qt, col_sum = _pack_arrays(kernel.qvalue)
    return PackedKernel(
        qvalue_t=qt, scale=scale, zero_point=zp, col_sum=col_sum, bits=kernel.bits, impl=impl
    )


def pack(params: dict[str, Any], impl: str = "auto") -> dict[str, Any]:
    """Returns params with every 2-D ``QArray`` leaf replaced by its ``PackedKernel``."""
    return _tree.map_named(
        lambda name, v: pack_kernel(v, impl) if isinstance(v, QArray) and v.ndim == 2 else v,
        params,
    )


def unpack(params: dict[str, Any]) -> dict[str, Any]:
    """Inverse of ``pack`` (PackedKernel -> QArray)."""
    return _tree.map_named(
        lambda name, v: v.to_qarray() if isinstance(v, PackedKernel) else v, params
    )


def default_impl() -> str:
    """ "pallas" on Hopper GPUs (jax >= 0.11), "barrier" on other GPUs, "xla" elsewhere."""
    if jax.default_backend() not in ("gpu", "cuda", "rocm"):
        return "xla"
    from quant import _pallas_gpu

    return "pallas" if _pallas_gpu.available() else GPU_IMPL


def packed_dense(
    x,
    kernel: PackedKernel,
    bias=None,
    input_quant: ActQuant | None = None,
    positions=None,
    *,
    impl: str | None = None,
    out_dtype=None,
):
    """``x @ kernel + bias`` for a ``PackedKernel``: x [..., L, I] -> [..., L, O] in x.dtype.

    With ``input_quant``: the int8 path (same values as ``quant.dense`` on the ``QArray``).
    Without: weight-only (dequantize, then a float matmul with float32 accumulation).
    ``out_dtype``: the dtype the caller keeps (default x.dtype); the "pallas" kernel, which
    writes bfloat16, is used only when that is bfloat16.
    """
    from quant._dot_general import _check_int32_bound, _zero_point_corrected

    i, o = kernel.shape
    if x.shape[-1] != i:
        raise ValueError(f"dense: x [..., {x.shape[-1]}] does not match kernel ({i}, {o})")
    contract = (((x.ndim - 1,), (1,)), ((), ()))  # x [..., I] . w [O, I]
    if input_quant is None:
        w_t = kernel.to_qarray().dequantize(jnp.float32).T.astype(x.dtype)  # [O, I]
        y = lax.dot_general(x, w_t, contract, preferred_element_type=jnp.float32)
        if bias is not None:
            y = y + bias.astype(jnp.float32)
        return y.astype(x.dtype)
    impl = impl or (kernel.impl if kernel.impl != "auto" else default_impl())
    if impl not in IMPLS:
        raise ValueError(f"packed_dense: impl must be one of {IMPLS}, got {impl!r}")
    s_x, z_x = input_quant.for_positions(positions)  # [L, 1] or [1, 1]
    _check_int32_bound(i, input_quant.bits, z_x, kernel.bits, kernel.zero_point, "dense")
    q_x = input_quant.quantize(x, positions)  # int8 [..., L, I]
    sum_x = jnp.sum(q_x, axis=-1, keepdims=True, dtype=jnp.int32)  # [..., L, 1]
    rows = int(np.prod(q_x.shape[:-1]))
    if impl == "pallas":
        keep = jnp.dtype(out_dtype or x.dtype)
        if keep == jnp.bfloat16 and rows >= PALLAS_MIN_ROWS and i % 128 == 0:
            return _pallas_dense(q_x, sum_x, s_x, z_x, kernel, bias).astype(x.dtype)
        impl = GPU_IMPL
    if impl == "barrier":
        q_x, sum_x = lax.optimization_barrier((q_x, sum_x))
    acc = lax.dot_general(q_x, kernel.qvalue_t, contract, preferred_element_type=jnp.int32)
    if impl == "barrier":
        acc = lax.optimization_barrier(acc)
    y_int = _zero_point_corrected(acc, sum_x, kernel.col_sum, z_x, kernel.zero_point, i)
    y = y_int.astype(jnp.float32) * (s_x * kernel.scale)
    if bias is not None:
        y = y + bias.astype(jnp.float32)
    return y.astype(x.dtype)


def _pallas_dense(q_x, sum_x, s_x, z_x, kernel: PackedKernel, bias):
    """The fused Hopper kernel on [..., L, I] codes; per-token (s_x, z_x) broadcast to rows."""
    from quant import _pallas_gpu

    lead = q_x.shape[:-1]
    m = int(np.prod(lead))
    row_shape = lead + (1,)
    y = _pallas_gpu.int8_dense_fused(
        q_x.reshape(m, q_x.shape[-1]),
        kernel.qvalue_t,
        jnp.broadcast_to(s_x, row_shape).reshape(m),
        jnp.broadcast_to(z_x, row_shape).reshape(m),
        sum_x.reshape(m),
        kernel.scale,
        kernel.zero_point,
        kernel.col_sum,
        bias,
    )
    return y.reshape(lead + (kernel.shape[1],))
