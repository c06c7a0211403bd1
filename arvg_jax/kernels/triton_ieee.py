"""IEEE float32 arithmetic inside Pallas Triton kernels.

Triton compiles ``a / b`` on float32 to PTX ``div.full.f32`` (approximate, up to 2 ulp) and has
no round-to-integer primitive in Pallas's lowering; the official PyTorch ops (and XLA's) are
correctly rounded. These helpers emit the correctly rounded PTX instructions through inline
assembly, and fall back to the same jnp ops in interpret mode (the CPU tests), where XLA
computes them exactly. Arguments are broadcast to the first one's shape (inline assembly is
elementwise).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

__all__ = ["div", "rint", "sqrt"]


def _asm(asm: str, constraints: str, *args: Array) -> Array:
    from jax.experimental.pallas import triton as plt

    shape = args[0].shape
    (out,) = plt.elementwise_inline_asm(
        asm,
        args=[jnp.broadcast_to(a, shape) for a in args],
        constraints=constraints,
        pack=1,
        result_shape_dtypes=[jax.ShapeDtypeStruct(shape, jnp.float32)],
    )
    return out


def div(a: Array, b: Array, *, interpret: bool) -> Array:
    """``a / b`` rounded to nearest (PTX ``div.rn.f32``)."""
    return a / b if interpret else _asm("div.rn.f32 $0, $1, $2;", "=r,r,r", a, b)


def sqrt(a: Array, *, interpret: bool) -> Array:
    """``sqrt(a)`` rounded to nearest (PTX ``sqrt.rn.f32``)."""
    return jnp.sqrt(a) if interpret else _asm("sqrt.rn.f32 $0, $1;", "=r,r", a)


def rint(a: Array, *, interpret: bool) -> Array:
    """Round half to even, as ``jnp.round`` (PTX ``cvt.rni.f32.f32``)."""
    return jnp.round(a) if interpret else _asm("cvt.rni.f32.f32 $0, $1;", "=r,r", a)
