"""Inference layout of int8 Dense kernels: ``PackedKernel`` and its int8 x int8 -> int32 path.

A ``QArray`` kernel is stored in Flax layout ``[I, O]`` (the checkpoint contract); cuBLASLt's int8
GEMM wants both operands K-major, so ``pack(params)`` converts every ``QArray`` kernel once,
outside jit, into a ``PackedKernel`` (int8 codes ``[O, I]`` plus their column sums, W4A8 weights
two codes per byte; ``quant._packed_layout``'s module doc says why and how).

``quant.dense`` routes a ``PackedKernel`` to ``packed_dense``, which evaluates the same integer
algebra as ``quant._dot_general._fast_dense`` (exact int32 zero-point corrections, one float32
dequantization) and therefore returns the same values (tested against it and against the
fake-quant oracle on CPU).

Backends (``jax.default_backend()``, chosen when the function is traced; the kernel's static
``impl`` field or the ``impl=`` argument overrides; ``resolve_impls`` fixes them for another target
platform, e.g. a TPU program exported from any host, and refuses a Pallas impl off GPUs):
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
    same layer take ``"barrier"``. ``"pallas"`` runs the kernel variant ``PALLAS_VARIANT`` for
    bf16 outputs and ``PALLAS_ACT_QUANT_VARIANT`` for the quantizing epilogue;
    ``"pallas_ws"`` / ``"pallas_pp"`` pin one for both (``quant._pallas_gpu``: "ws", cooperative
    consumer warpgroups; "pp", ping-pong consumers), so they can be timed side by side.
  * anything else (CPU, TPU): ``"xla"``, the plain expression; XLA fuses as it likes.

``packed_dense`` is ``input_quant.quantize`` followed by ``packed_dense_codes`` (the int8 Dense
from codes and their row sums). For a quantized FFN (VAR's fc1 -> GELU(tanh) -> fc2),
``packed_dense_act_quant`` returns fc2's input codes and row sums directly: with "pallas", from
the kernel's quantizing epilogue, so fc1's bf16 activations never go through HBM (and XLA's
separate GELU + quantize pass disappears); otherwise the same values through XLA. fc2 then runs
``packed_dense_codes`` on them.

Layout: ``_packed_layout`` (``PackedKernel``, ``pack`` / ``unpack``, the nibble storage),
``_packed_impls`` (the impl names, what "auto" stands for on each platform), ``_packed_pallas``
(the Hopper kernel's calls and variant defaults); this module holds the Dense itself and the
per-call routing (``_pallas_eligible``, ``PALLAS_MIN_ROWS``: set or patch those here), and
re-exports the pieces' names, so ``quant._packed`` stays the one import for the rest of the code.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax import lax

from quant._packed_impls import (  # also re-exported
    GPU_IMPL,
    PALLAS_IMPLS,
    _resolve_impl,
    default_impl,
    resolve_impls,
)
from quant._packed_layout import (  # noqa: F401  (re-exported)
    IMPLS,
    PackedKernel,
    pack,
    pack_kernel,
    pack_nibbles,
    unpack,
    unpack_nibble_storage,
    unpack_nibbles,
)
from quant._packed_pallas import (  # noqa: F401  (re-exported)
    PALLAS_ACT_APPROX_MATH,
    PALLAS_ACT_QUANT_VARIANT,
    PALLAS_VARIANT,
    _pallas_dense,
    _pallas_dense_act_quant,
    _pallas_variant,
)
from quant._qarray import ActQuant

__all__ = [
    "IMPLS",
    "PackedKernel",
    "default_impl",
    "pack",
    "pack_kernel",
    "packed_dense",
    "packed_dense_act_quant",
    "packed_dense_codes",
    "resolve_impls",
    "unpack",
    "unpack_nibble_storage",
]

# Below this many rows the fused kernel's 256-row tiles are mostly padding (VAR's first scales,
# the AdaLN linears on 2B rows); cuBLASLt handles those.
PALLAS_MIN_ROWS = 1024
# The kernel's quantizing epilogue (``packed_dense_act_quant``) needs the output features to be a
# multiple of its column tile (``int8_dense_fused``'s default ``block_n``); VAR's fc1 (O = 4C) is.
PALLAS_OUT_QUANT_COLUMNS = 128


def _check_input(x, kernel: PackedKernel) -> None:
    i, o = kernel.shape
    if x.shape[-1] != i:
        raise ValueError(f"dense: x [..., {x.shape[-1]}] does not match kernel ({i}, {o})")


@struct.dataclass
class PreQuantized:
    """A layer input already quantized by that layer's own ``input_quant``: int8 ``codes``
    ``[..., L, I]`` and their int32 row sums ``sums`` ``[..., L, 1]`` (e.g. written by
    `arvg_jax.kernels.adaln_pallas` together with the LayerNorm that produces the input). ``dtype`` is
    the dtype the float input would have had (the result's). Accepted by `packed_dense` and
    `packed_dense_act_quant` in place of the float input."""

    codes: jax.Array
    sums: jax.Array
    dtype: Any = struct.field(pytree_node=False, default=jnp.bfloat16)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.codes.shape)


def _quantize_input(x, input_quant: ActQuant, positions):
    """(int8 codes [..., L, I], int32 Σ_i codes [..., L, 1]) of the layer input."""
    if isinstance(x, PreQuantized):
        return x.codes, x.sums
    q_x = input_quant.quantize(x, positions)
    return q_x, jnp.sum(q_x, axis=-1, keepdims=True, dtype=jnp.int32)


def _input_scales(kernel: PackedKernel, input_quant: ActQuant, positions):
    """Per-token (s_x, z_x) of the input quantizer ([L, 1] or [1, 1]), once the int32
    accumulator is known not to overflow."""
    from quant._dot_general import _check_int32_bound

    s_x, z_x = input_quant.for_positions(positions)
    i = kernel.shape[0]
    _check_int32_bound(i, input_quant.bits, z_x, kernel.bits, kernel.zero_point, "dense")
    return s_x, z_x


def _pallas_eligible(q_x, kernel: PackedKernel, keep_dtype) -> bool:
    """Whether the "pallas" impl takes the fused kernel for this call (module doc)."""
    rows = int(np.prod(q_x.shape[:-1]))
    return (
        jnp.dtype(keep_dtype) == jnp.bfloat16
        and rows >= PALLAS_MIN_ROWS
        and kernel.shape[0] % 128 == 0
    )


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

    With ``input_quant``: the int8 path (same values as ``quant.dense`` on the ``QArray``):
    quantize, then ``packed_dense_codes``.
    Without: weight-only (dequantize, then a float matmul with float32 accumulation).
    ``out_dtype``: the dtype the caller keeps (default x.dtype); the "pallas" kernel, which
    writes bfloat16, is used only when that is bfloat16.
    """
    _check_input(x, kernel)
    if input_quant is None and isinstance(x, PreQuantized):
        raise ValueError("packed_dense: a PreQuantized input needs the layer's input_quant")
    if input_quant is None:
        contract = (((x.ndim - 1,), (1,)), ((), ()))  # x [..., I] . w [O, I]
        w_t = kernel.to_qarray().dequantize(jnp.float32).T.astype(x.dtype)  # [O, I]
        y = lax.dot_general(x, w_t, contract, preferred_element_type=jnp.float32)
        if bias is not None:
            y = y + bias.astype(jnp.float32)
        return y.astype(x.dtype)
    impl = _resolve_impl(kernel, impl)
    q_x, sum_x = _quantize_input(x, input_quant, positions)
    return packed_dense_codes(
        q_x,
        sum_x,
        kernel,
        bias,
        input_quant,
        positions,
        x.dtype,
        impl=impl,
        keep_dtype=out_dtype or x.dtype,
    )


def packed_dense_codes(
    q_x,
    sum_x,
    kernel: PackedKernel,
    bias,
    input_quant: ActQuant,
    positions,
    out_dtype,
    *,
    impl: str | None = None,
    keep_dtype=None,
):
    """The int8 Dense from already-quantized inputs: ``[..., L, O]`` in ``out_dtype``.

    ``q_x`` int8 ``[..., L, I]`` are ``input_quant``'s codes of the input and ``sum_x`` int32
    ``[..., L, 1]`` their sum over I (e.g. from ``packed_dense_act_quant``, which produces both
    for the next layer: VAR's fc2). Same values and routing as ``packed_dense``;
    ``keep_dtype`` (default ``out_dtype``) is the dtype the caller keeps, and the "pallas"
    kernel (bf16 output) is used only when it is bfloat16.
    """
    from quant._dot_general import _zero_point_corrected, pad_contracted

    _check_input(q_x, kernel)
    i = kernel.shape[0]
    impl = _resolve_impl(kernel, impl)
    s_x, z_x = _input_scales(kernel, input_quant, positions)
    if impl in PALLAS_IMPLS:
        if _pallas_eligible(q_x, kernel, keep_dtype or out_dtype):
            y = _pallas_dense(q_x, sum_x, s_x, z_x, kernel, bias, _pallas_variant(impl))
            return y.astype(out_dtype)
        impl = GPU_IMPL
    if impl == "barrier":
        q_x, sum_x = lax.optimization_barrier((q_x, sum_x))
    contract = (((q_x.ndim - 1,), (1,)), ((), ()))  # q_x [..., I] . w [O, I]
    a, w = pad_contracted(q_x, -1, kernel.codes(), 1)
    acc = lax.dot_general(a, w, contract, preferred_element_type=jnp.int32)
    if impl == "barrier":
        acc = lax.optimization_barrier(acc)
    y_int = _zero_point_corrected(acc, sum_x, kernel.col_sum, z_x, kernel.zero_point, i)
    y = y_int.astype(jnp.float32) * (s_x * kernel.scale)
    if bias is not None:
        y = y + bias.astype(jnp.float32)
    return y.astype(out_dtype)


def packed_dense_act_quant(
    x,
    kernel: PackedKernel,
    bias,
    input_quant: ActQuant,
    positions,
    next_quant: ActQuant,
    activation: str | None = "gelu_tanh",
    *,
    impl: str | None = None,
):
    """A bf16 int8 Dense, its activation and the next layer's input quantization, as codes.

    For VAR's fc1 -> GELU(tanh) -> fc2: returns ``(q_next int8 [..., L, O], sum_next int32
    [..., L, 1])``, ``next_quant``'s codes of ``activation(bf16(x @ kernel + bias))`` and their
    sum over O, ready for ``packed_dense_codes`` (fc2). The values are those of the unfused
    sequence: this layer's output rounded to bf16, the activation in float32 rounded to bf16
    again (``quant._pallas_gpu._activation_input``), then ``next_quant.quantize``.

    With the "pallas" impl (and a call ``packed_dense`` would send to the kernel, with O a
    multiple of ``PALLAS_OUT_QUANT_COLUMNS``) the Hopper kernel's quantizing epilogue produces
    the codes and their sums without writing the bf16 activations to HBM. Otherwise:
    ``packed_dense_codes`` to bf16, then the activation and the quantization in XLA. The two
    give the same codes (exactly, on CPU in interpret mode) up to the GPU's float32 tanh (the
    kernel's libdevice ``tanhf`` and XLA's own approximation can differ in the last bit) and to
    how each GPU compiler contracts multiply-adds: a code moves by one, rarely.
    """
    from quant import _pallas_gpu

    if activation not in _pallas_gpu.ACTIVATIONS:
        raise ValueError(
            f"packed_dense_act_quant: activation must be one of {_pallas_gpu.ACTIVATIONS}, got"
            f" {activation!r}"
        )
    _check_input(x, kernel)
    impl = _resolve_impl(kernel, impl)
    q_x, sum_x = _quantize_input(x, input_quant, positions)
    if (
        impl in PALLAS_IMPLS
        and _pallas_eligible(q_x, kernel, jnp.bfloat16)
        and kernel.shape[1] % PALLAS_OUT_QUANT_COLUMNS == 0
    ):
        s_x, z_x = _input_scales(kernel, input_quant, positions)
        return _pallas_dense_act_quant(
            q_x,
            sum_x,
            s_x,
            z_x,
            kernel,
            bias,
            next_quant,
            positions,
            activation,
            _pallas_variant(impl, act_quant=True),
        )
    y = packed_dense_codes(
        q_x, sum_x, kernel, bias, input_quant, positions, jnp.bfloat16, impl=impl
    )
    q = next_quant.quantize(_pallas_gpu._activation_input(y, activation), positions)
    return q, jnp.sum(q, axis=-1, keepdims=True, dtype=jnp.int32)
