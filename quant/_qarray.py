"""Quantized-array leaves: ``QArray`` (weights), ``ActQuant`` and ``LogSqrt2Quant`` (static inputs).

Dims: ``I`` input features, ``O`` output features, ``G`` token groups, ``T`` positions covered by
the group table, ``L`` tokens of the current call.

Storage convention (shared by all three): the official quantizer's unsigned asymmetric code
``q = clamp(round(x / scale) + z, 0, 2**bits - 1)`` is stored as ``q - 2**(bits - 1)``, so that it
fits an int8 container for every ``bits <= 8``; the zero point is stored shifted the same way,
``zero_point = z - 2**(bits - 1)``. Then ``dequant = (qvalue - zero_point) * scale`` in both
conventions, and the int8 x int8 matmul sees signed codes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

__all__ = ["ActQuant", "LogSqrt2Quant", "QArray", "offset_for_bits"]


def offset_for_bits(bits: int) -> int:
    """The shift between the official unsigned code and the stored signed code: 2**(bits-1)."""
    _check_bits(bits)
    return 2 ** (bits - 1)


def _check_bits(bits: int) -> None:
    if not isinstance(bits, (int, np.integer)) or not 2 <= int(bits) <= 8:
        raise ValueError(f"bits must be an int in [2, 8], got {bits!r}")


def _is_concrete(a) -> bool:
    return not isinstance(a, jax.core.Tracer)


@struct.dataclass
class QArray:
    """A uniformly quantized tensor (in this project: a Dense kernel in Flax layout ``[I, O]``).

    Invariants (checked by ``validate``):
      * ``qvalue`` is int8 with values in ``[-2**(bits-1), 2**(bits-1) - 1]``;
      * ``scale`` and ``zero_point`` are float32 and broadcast against ``qvalue`` (a kernel has
        per-output-channel ``[1, O]``: the official per-output-row quantizer of the torch
        ``[O, I]`` weight);
      * ``zero_point`` is integer-valued and stored shifted by ``-2**(bits-1)`` (module doc);
      * ``scale`` is finite and > 0.
    ``dequantize() == (qvalue - zero_point) * scale``.
    """

    qvalue: jax.Array  # int8, e.g. [I, O]
    scale: jax.Array  # float32, e.g. [1, O]
    zero_point: jax.Array  # float32, integer-valued, shifted, e.g. [1, O]
    bits: int = struct.field(pytree_node=False, default=8)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.qvalue.shape)

    @property
    def ndim(self) -> int:
        return len(self.qvalue.shape)

    def dequantize(self, dtype=jnp.float32) -> jax.Array:
        """``(qvalue - zero_point) * scale`` computed in float32, then cast to ``dtype``."""
        q = self.qvalue.astype(jnp.float32)
        return ((q - self.zero_point) * self.scale).astype(dtype)

    @classmethod
    def quantize(cls, x, scale, zero_point, bits: int) -> QArray:
        """Quantizes ``x`` with the official asymmetric rule.

        Args:
          x: float array.
          scale: Δ, broadcastable to ``x``.
          zero_point: the official **unshifted** integer zero point z (broadcastable).
          bits: 2..8.

        Returns:
          ``QArray`` with ``qvalue = clamp(round(x/Δ) + z, 0, 2**b-1) - 2**(b-1)`` and the
          shifted zero point, so that ``dequantize()`` equals the official fake-quant output.
        """
        off = offset_for_bits(bits)
        xp = jnp if isinstance(x, jax.Array) else np
        x = xp.asarray(x, dtype=np.float32)
        scale = xp.asarray(scale, dtype=np.float32)
        zero_point = xp.asarray(zero_point, dtype=np.float32)
        q = xp.clip(xp.round(x / scale) + zero_point, 0, 2**bits - 1) - np.float32(off)
        return cls(
            qvalue=jnp.asarray(q.astype(np.int8)),
            scale=jnp.asarray(scale),
            zero_point=jnp.asarray(zero_point - np.float32(off)),
            bits=int(bits),
        )

    def validate(self) -> None:
        """Raises ``ValueError`` naming the shapes/values when an invariant is broken."""
        _check_bits(self.bits)
        shapes = (
            f"qvalue {self.qvalue.dtype}{list(self.qvalue.shape)}, "
            f"scale {self.scale.dtype}{list(self.scale.shape)}, "
            f"zero_point {self.zero_point.dtype}{list(self.zero_point.shape)}"
        )
        if self.qvalue.dtype != jnp.int8:
            raise ValueError(f"QArray.qvalue must be int8 ({shapes})")
        if self.scale.dtype != jnp.float32 or self.zero_point.dtype != jnp.float32:
            raise ValueError(f"QArray.scale and zero_point must be float32 ({shapes})")
        try:
            np.broadcast_shapes(self.qvalue.shape, self.scale.shape, self.zero_point.shape)
        except ValueError:
            raise ValueError(f"QArray scale/zero_point do not broadcast to qvalue ({shapes})")
        if self.scale.ndim != self.qvalue.ndim or self.zero_point.ndim != self.qvalue.ndim:
            raise ValueError(f"QArray scale/zero_point must have the rank of qvalue ({shapes})")
        if not all(_is_concrete(a) for a in (self.qvalue, self.scale, self.zero_point)):
            return
        lo, hi = -(2 ** (self.bits - 1)), 2 ** (self.bits - 1) - 1
        q = np.asarray(self.qvalue)
        if q.size and (q.min() < lo or q.max() > hi):
            raise ValueError(
                f"QArray.qvalue outside [{lo}, {hi}] for bits={self.bits}: "
                f"[{q.min()}, {q.max()}] ({shapes})"
            )
        _check_scale_zp(np.asarray(self.scale), np.asarray(self.zero_point), "QArray", shapes)


def _check_scale_zp(scale: np.ndarray, zp: np.ndarray, what: str, shapes: str) -> None:
    if not np.all(np.isfinite(scale)) or np.any(scale <= 0):
        raise ValueError(f"{what}.scale must be finite and > 0 ({shapes})")
    if not np.all(np.isfinite(zp)) or np.any(zp != np.round(zp)):
        bad = zp[~(np.isfinite(zp) & (zp == np.round(zp)))].ravel()[:4]
        raise ValueError(f"{what}.zero_point must be integer-valued, got e.g. {bad} ({shapes})")


@struct.dataclass
class ActQuant:
    """Static asymmetric quantizer of a layer input, per tensor or per token group (STWQ).

    Invariants (checked by ``validate``):
      * ``scale`` [G] float32 > 0 and ``zero_point`` [G] float32 integer-valued, shifted by
        ``-2**(bits-1)`` like ``QArray`` (stored code ``clamp(round(x/s) + zero_point,
        -2**(bits-1), 2**(bits-1)-1)``);
      * ``group_of_position`` int32 [T] with values in ``[0, G)``: absolute sequence position ->
        token group;
      * ``G == 1 and T == 1`` means per-tensor; positions are then ignored.
    """

    scale: jax.Array  # float32 [G]
    zero_point: jax.Array  # float32 [G], integer-valued, shifted
    group_of_position: jax.Array  # int32 [T]
    bits: int = struct.field(pytree_node=False, default=8)

    @property
    def num_groups(self) -> int:
        return int(self.scale.shape[0])

    @property
    def per_tensor(self) -> bool:
        return self.scale.shape[0] == 1 and self.group_of_position.shape[0] == 1

    @classmethod
    def from_official(cls, scale, zero_point, bits: int, group_of_position=None) -> ActQuant:
        """Builds an ``ActQuant`` from per-group Δ and **unshifted** official zero points."""
        off = offset_for_bits(bits)
        scale = jnp.asarray(np.asarray(scale, np.float32).reshape(-1))
        zp = jnp.asarray(np.asarray(zero_point, np.float32).reshape(-1) - np.float32(off))
        if group_of_position is None:
            if scale.shape[0] != 1:
                raise ValueError(f"{scale.shape[0]} groups need a group_of_position table")
            group_of_position = np.zeros((1,), np.int32)
        gop = jnp.asarray(np.asarray(group_of_position, np.int32).reshape(-1))
        return cls(scale=scale, zero_point=zp, group_of_position=gop, bits=int(bits))

    def for_positions(self, positions=None) -> tuple[jax.Array, jax.Array]:
        """Per-token (scale, zero_point) broadcastable against ``[..., L, C]`` inputs.

        Args:
          positions: int [L] (or [..., L]) absolute sequence positions of the tokens; ignored
            (may be None) for a per-tensor quantizer. A concrete (numpy) array is range-checked;
            traced positions outside ``[0, T)`` are clamped.

        Returns:
          ``(scale, zero_point)``, float32, shape ``[1, 1]`` (per tensor) or ``[..., L, 1]``.
        """
        if self.per_tensor:
            return self.scale.reshape(1, 1), self.zero_point.reshape(1, 1)
        if positions is None:
            raise ValueError(
                f"ActQuant with {self.num_groups} token groups over "
                f"{self.group_of_position.shape[0]} positions needs `positions`"
            )
        t = self.group_of_position.shape[0]
        if isinstance(positions, (np.ndarray, list, tuple, range)):
            p = np.asarray(positions)
            if p.size and (p.min() < 0 or p.max() >= t):
                raise ValueError(
                    f"positions [{p.min()}, {p.max()}] outside the group table [0, {t})"
                )
        g = jnp.take(self.group_of_position, jnp.asarray(positions), mode="clip")
        return self.scale[g][..., None], self.zero_point[g][..., None]

    def quantize(self, x, positions=None) -> jax.Array:
        """Stored int8 codes of ``x`` [..., L, C] (computed in float32)."""
        s, z = self.for_positions(positions)
        lo, hi = -(2 ** (self.bits - 1)), 2 ** (self.bits - 1) - 1
        q = jnp.clip(jnp.round(x.astype(jnp.float32) / s) + z, lo, hi)
        return q.astype(jnp.int8)

    def fake_quant(self, x, positions=None) -> jax.Array:
        """Float32 ``(codes - zero_point) * scale``: the official fake-quantized input."""
        s, z = self.for_positions(positions)
        lo, hi = -(2 ** (self.bits - 1)), 2 ** (self.bits - 1) - 1
        q = jnp.clip(jnp.round(x.astype(jnp.float32) / s) + z, lo, hi)
        return (q - z) * s

    def validate(self) -> None:
        """Raises ``ValueError`` naming the shapes/values when an invariant is broken."""
        _check_bits(self.bits)
        shapes = (
            f"scale {self.scale.dtype}{list(self.scale.shape)}, "
            f"zero_point {self.zero_point.dtype}{list(self.zero_point.shape)}, "
            f"group_of_position {self.group_of_position.dtype}"
            f"{list(self.group_of_position.shape)}"
        )
        if self.scale.ndim != 1 or self.zero_point.shape != self.scale.shape:
            raise ValueError(f"ActQuant.scale and zero_point must both be [G] ({shapes})")
        if self.group_of_position.ndim != 1 or self.group_of_position.dtype != jnp.int32:
            raise ValueError(f"ActQuant.group_of_position must be int32 [T] ({shapes})")
        if self.scale.dtype != jnp.float32 or self.zero_point.dtype != jnp.float32:
            raise ValueError(f"ActQuant.scale and zero_point must be float32 ({shapes})")
        if not all(_is_concrete(a) for a in (self.scale, self.zero_point, self.group_of_position)):
            return
        gop = np.asarray(self.group_of_position)
        if gop.size and (gop.min() < 0 or gop.max() >= self.scale.shape[0]):
            raise ValueError(
                f"ActQuant.group_of_position values [{gop.min()}, {gop.max()}] outside "
                f"[0, {self.scale.shape[0]}) ({shapes})"
            )
        _check_scale_zp(np.asarray(self.scale), np.asarray(self.zero_point), "ActQuant", shapes)


@struct.dataclass
class LogSqrt2Quant:
    """Static log-√2 quantizer of post-softmax probabilities (PAR's ``LogSqrt2Quantizer``).

    ``q = round(-2 * log2(x / delta))``; ``q >= 2**bits`` (and x == 0) dequantizes to 0,
    otherwise ``q = clamp(q, 0, 2**bits - 1)`` and ``x̂ = delta * 2**(-ceil(q/2)) * (√2 if q odd
    else 1)``. There is no integer matmul for these codes: matmuls dequantize first.
    """

    delta: jax.Array  # float32 scalar []
    bits: int = struct.field(pytree_node=False, default=8)

    def fake_quant(self, x) -> jax.Array:
        from quant._quantizers import fake_quant_log2  # local: avoids an import cycle

        return fake_quant_log2(x.astype(jnp.float32), self.delta, self.bits)
