"""VAR's residual add + AdaLN + input quantization as one GPU kernel (Pallas, Triton backend).

What it replaces
----------------
`var.VARBlock` computes, per block (``models/basic_var.py`` AdaLNSelfAttn)::

    h1 = LN(x) * (s1 + 1) + b1            -> attention (qkv quantizes h1)
    x1 = x + attn * γ1
    h2 = LN(x1) * (s2 + 1) + b2           -> FFN (fc1 quantizes h2)

In the int8 sampler XLA compiles each ``h`` into a fusion that writes int8 codes, the codes'
row sums (the zero-point correction of the int8 GEMM) into a separate reduction, and the
residual add into a third fusion whose output the ``h2`` fusion does not reuse (it adds again
from the inputs). On H100 at VAR-d30 batch 64, last scale, per block: residual add 243 µs,
``h2`` codes 230 µs, ``h1`` codes 160 µs, row sums ≈ 26 µs each (BENCHMARKS.md, run 4), where
reading and writing each tensor once would take about half.

This kernel does one ``h`` in one pass: a program owns ``rows`` tokens of one sequence, loads
their residual rows (and, for ``h2``, the attention output and γ1, writing ``x1`` back), computes
the LayerNorm statistics in registers, modulates, and writes either the codes of the next
layer's static input quantizer (per-token scale and zero point, `quant.ActQuant`) and their row
sums, or ``h`` in the compute dtype (the float path).

Measured on H100 (BENCHMARKS.md, runs 5-7): per call at that shape the kernel takes 180 µs for
``h1`` (XLA's ops alone: 188 µs) and 268 µs for ``h2`` (396 µs), at 1 row and 8 warps per
program; more rows per program were slower (register pressure: 392 µs for ``h2`` at 4 rows).
End to end it gained nothing measurable (VAR-d30 batch 64: W8A8 453.3 → 451.6 ms, bf16 646.0 →
652.2 ms), so `ExecOptions.adaln_kernel` stays "xla" by default.

Numerics follow the XLA ops of `var.VARBlock` and `quant.ActQuant.quantize`: two-pass mean and
(biased) variance in float32, ``rsqrt(var + eps)`` (libdevice's, as XLA's), dtype promotion of the
modulations as in the jnp expression (``s + 1`` and ``attn * γ`` round to the modulation dtype),
an IEEE division by the token scale and round-half-to-even (PTX ``div.rn``, ``cvt.rni``). The
sums add in a different order than XLA's reductions, so the LayerNorm output may differ by an
ulp, and a code sitting within that of a rounding boundary may differ by one.

Runs compiled with the Triton backend on CUDA GPUs, and in Pallas interpret mode only where asked
(``interpret=True``: how the CPU tests check it; `ExecOptions.interpret` in the sampler).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from arvg_jax.kernels import _triton, sampling_pallas
from arvg_jax.kernels import triton_ieee as ieee

Array = jax.Array

ROWS = 1  # tokens per program: [1, 2048] tiles for VAR-d30 (C = 1920); scripts/probe_adaln.py
NUM_WARPS = 8


__all__ = ["adaln", "available", "reference"]


def available() -> bool:
    """Whether the compiled kernel can run here (a CUDA GPU with Pallas's Triton backend)."""
    return sampling_pallas.available()


def _adaln_kernel(*refs, length, channels, rows, eps, has_delta, quant, mod_dtype, interpret):
    """refs: x, scale, shift, [delta, gamma], [qscale, qzero] | outputs: [x_new], h | q, sums."""
    plt = _triton.triton()
    it = iter(refs)
    x_ref, scale_ref, shift_ref = next(it), next(it), next(it)
    delta_ref, gamma_ref = (next(it), next(it)) if has_delta else (None, None)
    qs_ref, qz_ref = (next(it), next(it)) if quant is not None else (None, None)
    xo_ref = next(it) if has_delta else None
    out_ref = next(it)
    sum_ref = next(it) if quant is not None else None

    tb, b = pl.program_id(0), pl.program_id(1)
    t0 = tb * rows
    cp = 1 << max(0, (channels - 1).bit_length())  # columns padded to a power of two
    t = t0 + lax.broadcasted_iota(jnp.int32, (rows, 1), 0)
    col = lax.broadcasted_iota(jnp.int32, (1, cp), 1)
    row_ok = t < length
    ok = jnp.broadcast_to(row_ok & (col < channels), (rows, cp))
    col_ok = jnp.broadcast_to(col < channels, (1, cp))

    def load_rows(ref):
        return plt.load(ref.at[b, pl.ds(t0, rows), pl.ds(0, cp)], mask=ok, other=0)

    def load_mod(ref):  # [1, cp] of batch row b, in the modulation dtype
        return plt.load(ref.at[pl.ds(b, 1), pl.ds(0, cp)], mask=col_ok, other=0)

    x = load_rows(x_ref).astype(jnp.float32)
    if has_delta:
        # x + attn * γ: the product in the promoted dtype of attn and γ (bf16 for the bf16 and
        # int8 samplers), then added to the float32 residual.
        d = load_rows(delta_ref)
        g = load_mod(gamma_ref)
        prod_dtype = jnp.result_type(d.dtype, g.dtype)
        prod = (d.astype(jnp.float32) * g.astype(jnp.float32)).astype(prod_dtype)
        x = x + prod.astype(jnp.float32)
        plt.store(xo_ref.at[b, pl.ds(t0, rows), pl.ds(0, cp)], x, mask=ok)
    n = jnp.float32(channels)
    mean = ieee.div(jnp.sum(x, axis=1, keepdims=True), n, interpret=interpret)
    xc = jnp.where(ok, x - mean, 0.0)
    var = ieee.div(jnp.sum(xc * xc, axis=1, keepdims=True), n, interpret=interpret)
    y = xc * lax.rsqrt(var + jnp.float32(eps))
    # LN(x) * (s + 1) + b with s, b in the modulation dtype: s + 1 rounds to it.
    s1 = (load_mod(scale_ref).astype(jnp.float32) + 1.0).astype(mod_dtype).astype(jnp.float32)
    h = y * s1 + load_mod(shift_ref).astype(jnp.float32)
    if quant is None:
        plt.store(out_ref.at[b, pl.ds(t0, rows), pl.ds(0, cp)], h.astype(out_ref.dtype), mask=ok)
        return
    bits = quant
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    qs = plt.load(qs_ref.at[pl.ds(t0, rows)], mask=row_ok[:, 0], other=1)[:, None]
    qz = plt.load(qz_ref.at[pl.ds(t0, rows)], mask=row_ok[:, 0], other=0)[:, None]
    codes = jnp.clip(
        ieee.rint(ieee.div(h, qs, interpret=interpret), interpret=interpret) + qz, lo, hi
    )
    codes = jnp.where(ok, codes, 0.0)
    plt.store(out_ref.at[b, pl.ds(t0, rows), pl.ds(0, cp)], codes.astype(jnp.int8), mask=ok)
    sums = jnp.sum(codes, axis=1).astype(jnp.int32)  # |codes| ≤ 128 · C: exact in float32
    plt.store(sum_ref.at[b, pl.ds(t0, rows)], sums, mask=row_ok[:, 0])


@functools.partial(
    jax.jit, static_argnames=("eps", "quant_bits", "out_dtype", "rows", "num_warps", "interpret")
)
def adaln(
    x: Array,
    scale: Array,
    shift: Array,
    *,
    eps: float,
    delta: Array | None = None,
    gamma: Array | None = None,
    quant_scale: Array | None = None,
    quant_zero: Array | None = None,
    quant_bits: int | None = None,
    out_dtype=jnp.bfloat16,
    rows: int = ROWS,
    num_warps: int = NUM_WARPS,
    interpret: bool = False,
):
    """``h = LN(x') * (scale + 1) + shift`` with ``x' = x + delta * gamma`` (or ``x``).

    Args:
        x: float32 ``[B, l, C]`` residual stream.
        scale, shift: ``[B, C]`` modulations (bf16 or float32; ``scale + 1`` rounds to their
            dtype, as the jnp expression does).
        eps: LayerNorm epsilon.
        delta, gamma: optional ``[B, l, C]`` branch output and ``[B, C]`` its gain: the residual
            add before the norm; ``x'`` is then returned too.
        quant_scale, quant_zero, quant_bits: the next layer's static input quantizer at these
            tokens (``quant.ActQuant.for_positions``: float32 ``[l]`` scale and shifted zero
            point, bits): ``h`` is returned as its int8 codes and their int32 row sums.
        out_dtype: dtype of ``h`` without a quantizer.
        rows, num_warps: tokens and Triton warps per program.
        interpret: Pallas interpret mode (the CPU tests ask for it); default off: the
            Triton kernel, which lowers for CUDA GPUs only.

    Returns:
        ``(x' or None, h)`` with ``h`` either ``[B, l, C]`` in ``out_dtype`` or
        ``(codes int8 [B, l, C], sums int32 [B, l, 1])``.
    """
    b, length, c = x.shape
    if x.dtype != jnp.float32:
        raise ValueError(f"adaln: the residual x must be float32, got {x.dtype} {x.shape}")
    for name, m in (("scale", scale), ("shift", shift), ("gamma", gamma)):
        if m is not None and m.shape != (b, c):
            raise ValueError(f"adaln: {name} {m.shape} must be [B, C] = {(b, c)} for x {x.shape}")
    if (delta is None) != (gamma is None):
        raise ValueError("adaln: delta and gamma come together")
    if delta is not None and delta.shape != x.shape:
        raise ValueError(f"adaln: delta {delta.shape} must have x's shape {x.shape}")
    quantized = quant_bits is not None
    if quantized:
        if quant_scale is None or quant_zero is None:
            raise ValueError("adaln: quant_bits needs quant_scale and quant_zero")
        if quant_scale.shape != (length,) or quant_zero.shape != (length,):
            raise ValueError(
                f"adaln: quantizer scale {quant_scale.shape} / zero point {quant_zero.shape} "
                f"must be per token [{length}]"
            )
    if rows < 1 or rows & (rows - 1):
        raise ValueError(f"rows must be a power of two, got {rows}")
    rows = min(rows, 1 << max(0, (length - 1).bit_length()))
    mod_dtype = scale.dtype
    kernel = functools.partial(
        _adaln_kernel,
        length=length,
        channels=c,
        rows=rows,
        eps=float(eps),
        has_delta=delta is not None,
        quant=quant_bits,
        mod_dtype=jnp.dtype(mod_dtype),
        interpret=interpret,
    )
    args = [x, scale, shift]
    if delta is not None:
        args += [delta, gamma]
    out_shape = []
    if delta is not None:
        out_shape.append(jax.ShapeDtypeStruct(x.shape, jnp.float32))
    if quantized:
        args += [quant_scale.astype(jnp.float32), quant_zero.astype(jnp.float32)]
        out_shape += [
            jax.ShapeDtypeStruct(x.shape, jnp.int8),
            jax.ShapeDtypeStruct((b, length), jnp.int32),
        ]
    else:
        out_shape.append(jax.ShapeDtypeStruct(x.shape, out_dtype))
    kwargs = {}
    if not interpret:
        plt = _triton.triton()
        kwargs["compiler_params"] = plt.CompilerParams(num_warps=num_warps, num_stages=1)
    outs = pl.pallas_call(
        kernel,
        out_shape=tuple(out_shape),
        grid=(math.ceil(length / rows), b),
        interpret=interpret,
        **kwargs,
    )(*args)
    outs = list(outs)
    x_new = outs.pop(0) if delta is not None else None
    if quantized:
        codes, sums = outs
        return x_new, (codes, sums[..., None])
    return x_new, outs[0]


def reference(
    x,
    scale,
    shift,
    *,
    eps,
    delta=None,
    gamma=None,
    quant_scale=None,
    quant_zero=None,
    quant_bits=None,
    out_dtype=jnp.bfloat16,
):
    """What `adaln` computes, with the XLA ops of `var.VARBlock` and `quant.ActQuant`."""
    from arvg_jax.nn.layers import layer_norm

    if delta is not None:
        x = x + delta * gamma[:, None]
    h = layer_norm(x, eps) * (scale[:, None] + 1) + shift[:, None]
    x_new = x if delta is not None else None
    if quant_bits is None:
        return x_new, h.astype(out_dtype)
    lo, hi = -(2 ** (quant_bits - 1)), 2 ** (quant_bits - 1) - 1
    s, z = quant_scale[:, None], quant_zero[:, None]
    codes = jnp.clip(jnp.round(h.astype(jnp.float32) / s) + z, lo, hi).astype(jnp.int8)
    return x_new, (codes, jnp.sum(codes, axis=-1, keepdims=True, dtype=jnp.int32))
