"""The stacked sampler's attention prologue as one GPU kernel (Pallas, Triton backend).

What it replaces
----------------
Between the qkv linear layer and the paged attention, `var.SelfAttention` (sampler_kv
"stacked") adds the qkv bias, rounds to the compute dtype, l2-normalises q and k
(``models/basic_var.py``: ``F.normalize(q, dim=-1) * scale_mul``, ``F.normalize(k, dim=-1)``)
and writes k and v into the layer-stacked cache (`arvg_jax.nn.stacked_kv.write`). XLA compiles
that into separate fusions (the q and k normalisations tiled ``[1, 256, 1, 1, 64]``) and two
cache writes that read k and v again.

This kernel does all of it in one pass: a program owns ``rows`` tokens of one sequence and one
head, loads that head's q, k and v slices of the fused qkv row (``[rows, K]`` each), adds the
bias, rounds, normalises q and k in registers, writes q, and stores k and v straight into the
cache at ``[layer, b, offset + t, h]`` (the cache buffers are aliased in and out, so the rest of
the cache is untouched and nothing is copied).

Measured on H100 (`scripts/probe_attn_prologue.py`, BENCHMARKS.md) for one VAR-d30 block at
the last scale of batch 64 (qkv ``[128, 256, 5760]``): the XLA ops take 758 µs with float32 qkv
(the bf16 sampler's matmul output) and 371 µs with bf16 qkv; the kernel 413 and 289 µs, i.e.
2.7 and 2.6 TB/s of HBM traffic (it moves 1.13 and 0.75 GB). Rows per program (32-128), warps
(2-8) and heads per program change little; launching head groups fastest (CUDA's x) gained
≈ 10 %.

Numerics: the sum of squares adds in a different order than XLA's reduction; the square root
and the division are IEEE (``sqrt.rn`` / ``div.rn`` in PTX; Triton's own f32 division is the
approximate ``div.full``), as torch's normalize is. So results equal the XLA path's up to the
reduction order: within one rounding of the compute dtype.

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

ROWS = 64  # tokens per program: [64, 64] tiles, 32 values per thread of 4 warps per tile
NUM_WARPS = 4
EPS = 1e-12  # torch.nn.functional.normalize's default eps


__all__ = ["available", "prologue", "reference", "unsupported_reason"]


def available() -> bool:
    """Whether the compiled kernel can run here (a CUDA GPU with Pallas's Triton backend)."""
    return sampling_pallas.available()


unsupported_reason = _triton.head_dim_reason  # why heads of a size cannot be tiled (or None)


def _attn_prologue(
    layer_ref,
    scale_ref,
    bias_ref,
    qkv_ref,
    k_in,
    v_in,
    q_ref,
    k_ref,
    v_ref,
    *,
    length: int,
    offset: int,
    channels: int,
    head_dim: int,
    rows: int,
    heads: int,
    round_dtype,
    normalize: bool,
    interpret: bool,
):
    del k_in, v_in  # aliased to k_ref / v_ref
    plt = _triton.triton()
    # Head groups vary fastest across the launch (CUDA's x): CTAs resident together read
    # neighbouring 128-byte pieces of the same qkv rows and write neighbouring cache rows.
    hg, tb, b = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    t0 = tb * rows
    t = t0 + lax.broadcasted_iota(jnp.int32, (rows, 1), 0)
    valid = jnp.broadcast_to(t < length, (rows, head_dim))  # masks have the tile's shape
    layer = layer_ref[0]

    def l2_normalize(x):  # x / max(‖x‖₂, eps), as torch's F.normalize
        norm = ieee.sqrt(jnp.sum(x * x, axis=1, keepdims=True), interpret=interpret)
        den = jnp.broadcast_to(jnp.maximum(norm, EPS), x.shape)
        return ieee.div(x, den, interpret=interpret)

    def one_head(h):
        def part(i):  # q (0), k (1) or v (2) of head h: [rows, K] float32, bias added, rounded
            col = i * channels + h * head_dim
            x = plt.load(
                qkv_ref.at[b, pl.ds(t0, rows), pl.ds(col, head_dim)], mask=valid, other=0
            ).astype(jnp.float32)
            if bias_ref is not None:
                x = x + bias_ref[pl.ds(col, head_dim)].astype(jnp.float32)[None, :]
            # The float model rounds the linear layer's output to the compute dtype here.
            return x.astype(round_dtype).astype(jnp.float32)

        q, k, v = part(0), part(1), part(2)
        if normalize:
            q = l2_normalize(q) * scale_ref[h]
            k = l2_normalize(k)
        plt.store(q_ref.at[b, pl.ds(t0, rows), h, :], q.astype(q_ref.dtype), mask=valid)
        at = (layer, b, pl.ds(offset + t0, rows), h, slice(None))
        plt.store(k_ref.at[at], k.astype(k_ref.dtype), mask=valid)
        plt.store(v_ref.at[at], v.astype(v_ref.dtype), mask=valid)

    if heads == 1:
        one_head(hg)
    else:  # `heads` heads per program: fewer, longer programs

        def body(j, carry):
            one_head(hg * heads + j)
            return carry

        lax.fori_loop(0, heads, body, 0)


@functools.partial(
    jax.jit,
    static_argnames=(
        "offset",
        "round_dtype",
        "normalize",
        "rows",
        "heads",
        "num_warps",
        "interpret",
    ),
)
def prologue(
    qkv: Array,
    bias: Array | None,
    head_scale: Array,
    k_cache: Array,
    v_cache: Array,
    layer,
    *,
    offset: int,
    round_dtype=jnp.bfloat16,
    normalize: bool = True,
    rows: int = ROWS,
    heads: int = 1,
    num_warps: int = NUM_WARPS,
    interpret: bool = False,
) -> tuple[Array, Array, Array]:
    """Splits qkv, normalises q and k and writes k, v into block ``layer`` of the caches.

    Args:
        qkv: ``[B, l, 3C]`` output of the fused qkv layer (any float dtype; float32 when the
            bias is still to be added), ``C = H * K``.
        bias: ``[3C]`` bias to add in float32 before rounding, or None (already added).
        head_scale: float32 ``[H]``, q's per-head temperature (``exp(clamped scale_mul)``).
        k_cache, v_cache: ``[D, B, Lp, H, K]`` stacked caches, aliased to the outputs (updated
            in place inside a jitted caller that does not reuse them).
        layer: int32 scalar (traced inside the scan), the block.
        offset: static int, the cache position of token 0 of this scale.
        round_dtype: the compute dtype the float model rounds the layer output to.
        normalize: l2-normalise q (× head_scale) and k; off: split and write only.
        rows: tokens per program (a power of two).
        heads: heads per program (a divisor of H), looped over inside the program.
        num_warps: Triton warps per program.
        interpret: Pallas interpret mode (the CPU tests ask for it); default off: the
            Triton kernel, which lowers for CUDA GPUs only.

    Returns:
        q ``[B, l, H, K]`` in the cache dtype, and the updated k and v caches.
    """
    b, length, c3 = qkv.shape
    _, bc, lp, h, kd = k_cache.shape
    if v_cache.shape != k_cache.shape or v_cache.dtype != k_cache.dtype:
        raise ValueError(f"k cache {k_cache.shape} and v cache {v_cache.shape} differ")
    if bc != b or c3 != 3 * h * kd:
        raise ValueError(
            f"qkv {qkv.shape} does not match the cache {k_cache.shape} ([D, B, Lp, H, K]: "
            f"expected [{bc}, l, {3 * h * kd}])"
        )
    if (reason := unsupported_reason(kd)) is not None:
        raise ValueError(reason)
    if rows < 1 or rows & (rows - 1):
        raise ValueError(f"rows must be a power of two, got {rows}")
    if heads < 1 or h % heads:
        raise ValueError(f"heads per program {heads} does not divide the {h} heads")
    if not 0 <= offset <= lp - length:
        raise ValueError(f"{length} tokens at offset {offset} do not fit the cache length {lp}")
    rows = min(rows, max(16, 1 << max(0, (length - 1).bit_length())))
    kwargs = {}
    if not interpret:
        plt = _triton.triton()
        kwargs["compiler_params"] = plt.CompilerParams(num_warps=num_warps, num_stages=1)
    has_bias = bias is not None
    kernel = functools.partial(
        _attn_prologue if has_bias else _attn_prologue_no_bias,
        length=length,
        offset=offset,
        channels=h * kd,
        head_dim=kd,
        rows=rows,
        heads=heads,
        round_dtype=jnp.dtype(round_dtype),
        normalize=normalize,
        interpret=interpret,
    )
    args = [jnp.asarray(layer, jnp.int32).reshape(1), head_scale.astype(jnp.float32)]
    if has_bias:
        args.append(bias)
    args += [qkv, k_cache, v_cache]
    first_cache = len(args) - 2
    q, k_cache, v_cache = pl.pallas_call(
        kernel,
        out_shape=(
            jax.ShapeDtypeStruct((b, length, h, kd), k_cache.dtype),
            jax.ShapeDtypeStruct(k_cache.shape, k_cache.dtype),
            jax.ShapeDtypeStruct(v_cache.shape, v_cache.dtype),
        ),
        grid=(h // heads, math.ceil(length / rows), b),
        input_output_aliases={first_cache: 1, first_cache + 1: 2},
        interpret=interpret,
        **kwargs,
    )(*args)
    return q, k_cache, v_cache


def _attn_prologue_no_bias(layer_ref, scale_ref, qkv_ref, k_in, v_in, q_ref, k_ref, v_ref, **kw):
    _attn_prologue(layer_ref, scale_ref, None, qkv_ref, k_in, v_in, q_ref, k_ref, v_ref, **kw)


def reference(
    qkv: Array,
    bias: Array | None,
    head_scale: Array,
    k_cache: Array,
    v_cache: Array,
    layer,
    *,
    offset: int,
    round_dtype=jnp.bfloat16,
    normalize: bool = True,
) -> tuple[Array, Array, Array]:
    """What `prologue` computes, with XLA ops (the path `var.SelfAttention` takes without it)."""
    from arvg_jax.nn import stacked_kv
    from arvg_jax.nn.layers import l2_normalize

    b, length, _ = qkv.shape
    _, _, _, h, kd = k_cache.shape
    x = qkv.astype(jnp.float32)
    if bias is not None:
        x = x + bias.astype(jnp.float32)
    x = x.astype(round_dtype).reshape(b, length, 3, h, kd)
    q, k, v = x[:, :, 0], x[:, :, 1], x[:, :, 2]
    if normalize:
        q = l2_normalize(q) * head_scale[:, None]
        k = l2_normalize(k)
    k_cache = stacked_kv.write(k_cache, k, layer, offset)
    v_cache = stacked_kv.write(v_cache, v, layer, offset)
    return q.astype(k_cache.dtype), k_cache, v_cache
