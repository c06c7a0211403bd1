"""``quant._packed``'s calls of the fused Hopper int8 GEMM (``quant._pallas_gpu.int8_dense_fused``).

Once ``packed_dense_codes`` or ``packed_dense_act_quant`` has decided that a call takes the kernel
(a Pallas impl, ``quant._packed._pallas_eligible``), it hands it here: the codes ``[..., L, I]``
and the per-token scales and zero points are flattened to the kernel's rows, the kernel variant is
chosen (``_pallas_variant``: ``PALLAS_VARIANT`` for bf16 outputs, ``PALLAS_ACT_QUANT_VARIANT`` for
fc1's GELU + quantizing epilogue, unless the impl pins one) and the results are reshaped back; for
the quantizing epilogue the kernel's per-tile partial row sums are added up into the next layer's
``sum_x``.

Why a module of its own: it is the adapter between two layouts (the Dense's ``[..., L, I]``
tokens and the kernel's flat rows) plus the measured per-variant defaults; the routing in
``quant._packed`` does not depend on how the kernel is called. The defaults below are read here:
to change one at run time, set it on this module, not on its re-export in ``quant._packed``.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from quant._packed_impls import PALLAS_IMPLS
from quant._packed_layout import PackedKernel
from quant._qarray import ActQuant

# Impl "pallas"'s kernel variants, by H100 measurements (2026-11-27, VAR-d30 shapes,
# BENCHMARKS.md): layers with a bf16 output run "ws" (fc1 32768x1920x7680: 829 us, "pp" 877;
# fc2 699 against 937); fc1's GELU + quantizing epilogue runs "pp", whose other consumer keeps
# the tensor cores busy during it (1128 -> 1011 us at the last scale, 745 -> 666 at 13x13).
PALLAS_VARIANT = "ws"
PALLAS_ACT_QUANT_VARIANT = "pp"
# Off: the epilogue's GELU uses libdevice's tanhf, the function the official PyTorch GELU calls,
# and the fused codes equal an IEEE float32 reference on H100 (`quant._pallas_gpu.
# epilogue_divides`). On, the hardware tanh (`tanh.approx.f32`) makes fc1 at VAR-d30's last
# scale 991 us instead of 1125 us (H100, 2026-11-27; unfused bf16 kernel + XLA pass: 1287 us)
# and moved 2e-6 of the codes by one there (its ~2^-11 relative error crosses a bf16 rounding
# boundary). (With a true division in the epilogue, approximate math would also turn it into
# `div.approx`; the default epilogue multiplies by the reciprocal.) Exactness wins.
PALLAS_ACT_APPROX_MATH = False


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
