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

Weights of at most 4 bits (W4A8) are stored two codes per byte (``nibbles=True``: ``qvalue_t``
uint8 ``[O, I / 2]``, code ``2j`` in the low and ``2j + 1`` in the high four bits, each offset by
8 into ``[0, 15]``), which halves their bytes. The int8 GEMMs take int8 operands, so
``PackedKernel.codes()`` unpacks them to int8 ``[O, I]`` where they are used (an elementwise
pass over the weight per call that XLA may fuse into the GEMM's operand).

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

IMPLS = ("xla", "barrier", "pallas", "pallas_ws", "pallas_pp")
# The impls that run the Hopper kernel, and the `int8_dense_fused` variant each pins (None: the
# defaults below).
PALLAS_IMPLS = {"pallas": None, "pallas_ws": "ws", "pallas_pp": "pp"}
# Impl "pallas"'s kernel variants, by H100 measurements (2026-11-27, VAR-d30 shapes,
# BENCHMARKS.md): layers with a bf16 output run "ws" (fc1 32768x1920x7680: 829 us, "pp" 877;
# fc2 699 against 937); fc1's GELU + quantizing epilogue runs "pp", whose other consumer keeps
# the tensor cores busy during it (1128 -> 1011 us at the last scale, 745 -> 666 at 13x13).
PALLAS_VARIANT = "ws"
PALLAS_ACT_QUANT_VARIANT = "pp"
# The GPU fallback when the Pallas kernel is unavailable; chosen by the H100 measurements.
GPU_IMPL = "barrier"
# Below this many rows the fused kernel's 256-row tiles are mostly padding (VAR's first scales,
# the AdaLN linears on 2B rows); cuBLASLt handles those.
PALLAS_MIN_ROWS = 1024
# The kernel's quantizing epilogue (``packed_dense_act_quant``) needs the output features to be a
# multiple of its column tile (``int8_dense_fused``'s default ``block_n``); VAR's fc1 (O = 4C) is.
PALLAS_OUT_QUANT_COLUMNS = 128
# Off: the epilogue's GELU uses libdevice's tanhf, the function the official PyTorch GELU calls,
# and the fused codes equal an IEEE float32 reference on H100 (`quant._pallas_gpu.
# epilogue_divides`). On, the hardware tanh (`tanh.approx.f32`) makes fc1 at VAR-d30's last
# scale 991 us instead of 1125 us (H100, 2026-11-27; unfused bf16 kernel + XLA pass: 1287 us)
# and moved 2e-6 of the codes by one there (its ~2^-11 relative error crosses a bf16 rounding
# boundary). (With a true division in the epilogue, approximate math would also turn it into
# `div.approx`; the default epilogue multiplies by the reciprocal.) Exactness wins.
PALLAS_ACT_APPROX_MATH = False


@struct.dataclass
class PackedKernel:
    """A quantized Dense kernel in inference layout (see module doc). ``shape`` is ``(I, O)``."""

    qvalue_t: jax.Array  # int8 [O, I]; uint8 [O, I / 2] (two 4-bit codes per byte) if nibbles
    scale: jax.Array  # float32 [1, O]
    zero_point: jax.Array  # float32 [1, O], integer-valued, shifted (as QArray)
    col_sum: jax.Array  # int32 [1, O]: sum over I of the stored codes
    bits: int = struct.field(pytree_node=False, default=8)
    # "auto" (default_impl() when traced) or one of IMPLS; static, so it is part of jit's key.
    impl: str = struct.field(pytree_node=False, default="auto")
    nibbles: bool = struct.field(pytree_node=False, default=False)

    @property
    def shape(self) -> tuple[int, ...]:
        per_byte = 2 if self.nibbles else 1
        return (int(self.qvalue_t.shape[1]) * per_byte, int(self.qvalue_t.shape[0]))

    def codes(self) -> jax.Array:
        """The weight codes as int8 ``[O, I]`` (unpacked from nibbles where stored so)."""
        return unpack_nibbles(self.qvalue_t) if self.nibbles else self.qvalue_t

    @property
    def ndim(self) -> int:
        return 2

    def to_qarray(self) -> QArray:
        return QArray(
            qvalue=self.codes().T, scale=self.scale, zero_point=self.zero_point, bits=self.bits
        )

    def dequantize(self, dtype=jnp.float32) -> jax.Array:
        """Float ``[I, O]`` kernel, equal to ``to_qarray().dequantize(dtype)``."""
        return self.to_qarray().dequantize(dtype)


@jax.jit
def _pack_arrays(qvalue):
    """([O, I] codes, [1, O] int32 column sums) of [I, O] codes."""
    return jnp.transpose(qvalue), jnp.sum(qvalue, axis=0, keepdims=True, dtype=jnp.int32)


def pack_nibbles(codes: jax.Array) -> jax.Array:
    """int8 ``[..., I]`` codes in ``[-8, 7]`` (I even) -> uint8 ``[..., I / 2]``, two per byte."""
    u = (codes.astype(jnp.int16) + 8).astype(jnp.uint8)
    return u[..., 0::2] | (u[..., 1::2] << 4)


def unpack_nibbles(packed: jax.Array) -> jax.Array:
    """Inverse of `pack_nibbles`: uint8 ``[..., I / 2]`` -> int8 ``[..., I]``."""
    lo = (packed & 15).astype(jnp.int8) - 8
    hi = (packed >> 4).astype(jnp.int8) - 8
    return jnp.stack([lo, hi], axis=-1).reshape(*packed.shape[:-1], 2 * packed.shape[-1])


def unpack_nibble_storage(params: dict[str, Any]) -> dict[str, Any]:
    """``params`` with every nibble-stored ``PackedKernel`` expanded to one int8 code per byte
    (``nibbles=False``; the same codes, scales and column sums). Works on layer-stacked kernels
    (leading block axis) too. Inside a jitted sampler this unpacks once per call what
    ``PackedKernel.codes()`` would otherwise unpack at every layer call."""

    def expand(v):
        if isinstance(v, PackedKernel) and v.nibbles:
            return v.replace(qvalue_t=unpack_nibbles(v.qvalue_t), nibbles=False)
        return v

    return jax.tree_util.tree_map(expand, params, is_leaf=lambda v: isinstance(v, PackedKernel))


def pack_kernel(kernel: QArray, impl: str = "auto", nibbles: bool | None = None) -> PackedKernel:
    """QArray ``[I, O]`` with per-output-channel ``[1, O]`` scale/zero point -> PackedKernel.

    ``nibbles``: store two codes per byte (module doc); default: for kernels of at most 4 bits
    with an even input size.
    """
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
    i = kernel.shape[0]
    if nibbles is None:
        nibbles = kernel.bits <= 4 and i % 2 == 0
    if nibbles and (kernel.bits > 4 or i % 2):
        raise ValueError(
            f"pack_kernel: nibble storage needs at most 4 bits and an even input size, got "
            f"{kernel.bits} bits and kernel {kernel.shape}"
        )
    qt, col_sum = _pack_arrays(kernel.qvalue)
    if nibbles:
        qt = pack_nibbles(qt)
    return PackedKernel(
        qvalue_t=qt,
        scale=scale,
        zero_point=zp,
        col_sum=col_sum,
        bits=kernel.bits,
        impl=impl,
        nibbles=bool(nibbles),
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


def _runtime_platform() -> str:
    backend = jax.default_backend()
    return "gpu" if backend in ("gpu", "cuda", "rocm") else backend


def default_impl(platform: str | None = None) -> str:
    """What "auto" stands for on `platform` ("cpu", "gpu", "tpu"; default: the runtime backend):
    "pallas" on Hopper GPUs (jax >= 0.11), "barrier" on other GPUs and for a GPU program built on a
    host without one (no GPU to query), "xla" elsewhere (CPU, TPU)."""
    runtime = _runtime_platform()
    if (platform or runtime) != "gpu":
        return "xla"
    if runtime != "gpu":
        return GPU_IMPL
    from quant import _pallas_gpu

    return "pallas" if _pallas_gpu.available() else GPU_IMPL


def resolve_impls(params: dict[str, Any], platform: str) -> dict[str, Any]:
    """``params`` with every ``PackedKernel``'s impl made concrete for the target ``platform``
    (outside tracing, so a program is built for the target, not for the host): "auto" becomes
    ``default_impl(platform)``; an explicit impl is checked.

    Raises:
      ValueError: a Pallas impl (the Mosaic GPU kernel) for a platform other than "gpu".
    """
    auto = default_impl(platform)

    def concrete(v):
        if not isinstance(v, PackedKernel):
            return v
        if v.impl == "auto":
            return v.replace(impl=auto)
        if v.impl in PALLAS_IMPLS:
            _check_pallas_target(v.impl, platform)
        return v

    return jax.tree_util.tree_map(concrete, params, is_leaf=lambda v: isinstance(v, PackedKernel))


def _check_pallas_target(impl: str, platform: str) -> None:
    # On a GPU target the kernel itself refuses a jax without its API (`int8_dense_fused`), and
    # only for calls that take it (`_pallas_eligible`); the other calls run the portable route.
    if platform != "gpu":
        raise ValueError(
            f"int8 impl {impl!r} cannot run on platform {platform!r} (a Mosaic GPU kernel for"
            " Hopper GPUs); use 'xla' or 'auto'"
        )


def _resolve_impl(kernel: PackedKernel, impl: str | None) -> str:
    impl = impl or (kernel.impl if kernel.impl != "auto" else default_impl())
    if impl not in IMPLS:
        raise ValueError(f"packed_dense: impl must be one of {IMPLS}, got {impl!r}")
    return impl


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


def _rows(v, lead):
    """A per-token [..., L, 1] or per-tensor [1, 1] vector as [prod(lead)] rows."""
    return jnp.broadcast_to(v, lead + (1,)).reshape(-1)


def _kernel_args(q_x, sum_x, s_x, z_x, kernel: PackedKernel, bias):
    """``int8_dense_fused``'s positional arguments for [..., L, I] codes, flattened to rows."""
    lead = q_x.shape[:-1]
    m = int(np.prod(lead))
    return (
        q_x.reshape(m, q_x.shape[-1]),
        kernel.codes(),
        _rows(s_x, lead),
        _rows(z_x, lead),
        sum_x.reshape(m),
        kernel.scale,
        kernel.zero_point,
        kernel.col_sum,
        bias,
    )


def _pallas_variant(impl: str, act_quant: bool = False) -> str:
    """The ``int8_dense_fused`` variant a Pallas impl runs (``PALLAS_IMPLS``); ``act_quant``: for
    the quantizing epilogue."""
    if pinned := PALLAS_IMPLS[impl]:
        return pinned
    return PALLAS_ACT_QUANT_VARIANT if act_quant else PALLAS_VARIANT


def _pallas_dense(q_x, sum_x, s_x, z_x, kernel: PackedKernel, bias, variant: str):
    """The fused Hopper kernel on [..., L, I] codes; per-token (s_x, z_x) broadcast to rows."""
    from quant import _pallas_gpu

    y = _pallas_gpu.int8_dense_fused(
        *_kernel_args(q_x, sum_x, s_x, z_x, kernel, bias), variant=variant
    )
    return y.reshape(q_x.shape[:-1] + (kernel.shape[1],))


def _pallas_dense_act_quant(
    q_x,
    sum_x,
    s_x,
    z_x,
    kernel: PackedKernel,
    bias,
    next_quant: ActQuant,
    positions,
    activation,
    variant: str,
):
    """``packed_dense_act_quant`` through the kernel's quantizing epilogue."""
    from quant import _pallas_gpu

    lead = q_x.shape[:-1]
    s_next, z_next = next_quant.for_positions(positions)
    q, partial_sums = _pallas_gpu.int8_dense_fused(
        *_kernel_args(q_x, sum_x, s_x, z_x, kernel, bias),
        out_quant=(_rows(s_next, lead), _rows(z_next, lead), next_quant.bits),
        activation=activation,
        approx_math=PALLAS_ACT_APPROX_MATH and activation is not None,
        variant=variant,
    )
    # partial_sums [O / 128, rows]: one row per output column tile (its TMA-friendly layout).
    sums = jnp.sum(partial_sums, axis=0, dtype=jnp.int32)
    return q.reshape(lead + (kernel.shape[1],)), sums.reshape(lead + (1,))
