"""Storage of int8 Dense kernels in inference layout: ``PackedKernel``, ``pack`` / ``unpack``.

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

Why a module of its own: this is the data every other piece of ``quant._packed`` consumes (the
impl choice in ``quant._packed_impls``, the Hopper kernel calls in ``quant._packed_pallas``, the
Dense in ``quant._packed``), and building or converting it needs none of them. ``IMPLS`` lives
here as the set of values of ``PackedKernel.impl`` (``pack_kernel`` checks it). Import these names
from ``quant._packed``, which re-exports them.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from quant import _tree
from quant._qarray import QArray

# The values of `PackedKernel.impl` besides "auto" (`quant._packed`'s module doc describes each).
IMPLS = ("xla", "barrier", "pallas", "pallas_ws", "pallas_pp")


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
