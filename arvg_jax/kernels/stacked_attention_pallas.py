"""Attention over one block of the layer-stacked KV cache, read in place (Pallas, Triton backend).

Why
---
VAR's stacked sampler (`arvg_jax.families.var.sampler`, a ``lax.scan`` over blocks) keeps every
block's keys in one carry ``[D, B, Lp, H, K]``. Handing block ``i``'s written prefix to a
library attention (cuDNN through `jax.nn.dot_product_attention`) needs it as its own buffer: XLA
copies the prefix out of the carry before every call (``loop_dynamic_slice_fusion`` kernels,
~36 ms of a 545 ms VAR-d30 batch of 64 on an H100, BENCHMARKS.md). This kernel takes the whole
carry and the block index instead and reads block ``i``'s keys where they lie, so the only cache
traffic left is writing each scale's new keys once (`arvg_jax.nn.stacked_kv.write`, in place).

It is flash attention (online softmax, FlashAttention-2's loop): a program owns ``block_q``
queries of one sequence and one head, walks the block's keys ``[0, kv_len)`` in tiles of
``block_k``, keeps the running row maximum, the running sum of ``exp`` and the unnormalised
output in float32 registers, and divides once at the end. Keys past ``kv_len`` (the unwritten
tail of the last tile) are masked. VAR's attention is block-causal over scales (a scale sees
every earlier key and all of its own), so no causal mask is needed: the prefix is the mask.

Numerics: scores and the softmax statistics are float32; the probabilities are cast to the value
dtype for the second matmul (as the XLA path and cuDNN do), but relative to the running maximum
rather than the final one, so 16-bit outputs equal the XLA path's to within a few roundings of
the dtype, not bit for bit.

Runs compiled with the Triton backend on CUDA GPUs, and in Pallas interpret mode only where asked
(``interpret=True``: how the CPU tests check it). Status: opt-in (``ExecOptions.attention =
"pallas"``); so far checked in interpret mode on the CPU only, so "auto" does not pick it until it
has been compiled and timed on a GPU (``tests/stacked_kv_test.py``'s GPU cases and
``scripts/sampler_variants.py --variants baseline,kv_stacked_pallas,kv_stacked``).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from arvg_jax.kernels import _triton, sampling_pallas

Array = jax.Array

BLOCK_Q = 64  # queries per program (fewer at the small scales: next power of two, at least 16)
BLOCK_K = 64  # keys per tile: divides every stacked cache length (a multiple of kv_page >= 64)
NUM_WARPS = 4
NUM_STAGES = 2

__all__ = ["BLOCK_K", "attention", "available", "unsupported_reason"]


# Whether the compiled kernel can run here (a CUDA GPU with Pallas's Triton backend), and why
# heads of a size cannot be tiled (None when they can): as every Triton kernel of the samplers.
available = sampling_pallas.available
unsupported_reason = _triton.head_dim_reason


def _kernel(
    layer_ref,
    q_ref,
    k_ref,
    v_ref,
    o_ref,
    *,
    length: int,
    kv_len: int,
    block_q: int,
    block_k: int,
    head_dim: int,
    scale: float,
    exact_f32: bool,
):
    plt = _triton.triton()
    # Query tiles vary fastest across the launch: programs resident together read the same
    # (sequence, head) keys, which then come from L2.
    qt, h, b = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    q0 = qt * block_q
    rows = q0 + lax.broadcasted_iota(jnp.int32, (block_q, head_dim), 0)
    in_rows = rows < length  # masks have the tile's shape
    q = plt.load(q_ref.at[b, pl.ds(q0, block_q), h, :], mask=in_rows, other=0)
    layer = layer_ref[0]
    # float32 inputs (the tests, a float32 sampler): IEEE products, not TF32.
    precision = lax.Precision.HIGHEST if exact_f32 else None

    def dot(a, b, contract_b: int):  # a [m, k] · b, contracting b's axis `contract_b`
        dims = (((1,), (contract_b,)), ((), ()))
        return lax.dot_general(a, b, dims, precision=precision, preferred_element_type=jnp.float32)

    def tile(j, carry, masked: bool):
        m, s_sum, acc = carry
        at = (layer, b, pl.ds(j * block_k, block_k), h, slice(None))
        k = plt.load(k_ref.at[at])  # in bounds: the cache length is a multiple of block_k
        v = plt.load(v_ref.at[at])
        s = dot(q, k, 1)  # [block_q, block_k]
        if scale != 1.0:
            s = s * scale
        if masked:  # the last tile: keys at kv_len and past are unwritten
            cols = j * block_k + lax.broadcasted_iota(jnp.int32, (block_q, block_k), 1)
            s = jnp.where(cols < kv_len, s, -jnp.inf)
        m_new = jnp.maximum(m, jnp.max(s, axis=1))
        alpha = jnp.exp(m - m_new)  # 0 on the first tile (m = -inf, m_new finite)
        p = jnp.exp(s - m_new[:, None])
        s_sum = s_sum * alpha + jnp.sum(p, axis=1)
        acc = acc * alpha[:, None] + dot(p.astype(v.dtype), v, 0)
        return m_new, s_sum, acc

    carry = (
        jnp.full((block_q,), -jnp.inf, jnp.float32),
        jnp.zeros((block_q,), jnp.float32),
        jnp.zeros((block_q, head_dim), jnp.float32),
    )
    full_tiles, rest = divmod(kv_len, block_k)
    if full_tiles:
        carry = lax.fori_loop(0, full_tiles, functools.partial(tile, masked=False), carry)
    if rest:
        carry = tile(full_tiles, carry, masked=True)
    _, s_sum, acc = carry
    out = acc / s_sum[:, None]
    plt.store(o_ref.at[b, pl.ds(q0, block_q), h, :], out.astype(o_ref.dtype), mask=in_rows)


@functools.partial(
    jax.jit,
    static_argnames=(
        "kv_len",
        "scale",
        "block_q",
        "block_k",
        "num_warps",
        "num_stages",
        "interpret",
    ),
)
def attention(
    q: Array,
    k_cache: Array,
    v_cache: Array,
    layer,
    *,
    kv_len: int,
    scale: float,
    block_q: int = BLOCK_Q,
    block_k: int = BLOCK_K,
    num_warps: int = NUM_WARPS,
    num_stages: int = NUM_STAGES,
    interpret: bool = False,
) -> Array:
    """softmax(q kᵀ · scale) v over keys ``[0, kv_len)`` of block ``layer`` of the caches.

    Args:
        q: ``[B, l, H, K]`` queries, in the caches' dtype.
        k_cache, v_cache: ``[D, B, Lp, H, K]`` stacked caches, ``Lp`` a multiple of ``block_k``.
        layer: int32 scalar (traced inside the scan), the block.
        kv_len: static int, the written prefix (``0 < kv_len <= Lp``).
        scale: static softmax scale.
        block_q: queries per program (a power of two ≥ 16; capped at the next power of two of l).
        block_k: keys per tile (a power of two ≥ 16 dividing ``Lp``).
        num_warps, num_stages: Triton launch parameters.
        interpret: Pallas interpret mode (the CPU tests ask for it); default off: the Triton
            kernel, which lowers for CUDA GPUs only.

    Returns ``[B, l, H, K]`` in ``q.dtype``.
    """
    b, length, h, kd = q.shape
    _, bc, lp, hc, kc = k_cache.shape
    if v_cache.shape != k_cache.shape or v_cache.dtype != k_cache.dtype:
        raise ValueError(f"k cache {k_cache.shape} and v cache {v_cache.shape} differ")
    if (bc, hc, kc) != (b, h, kd):
        raise ValueError(f"queries {q.shape} do not match the cache {k_cache.shape} ([D,B,L,H,K])")
    if q.dtype != k_cache.dtype:
        raise ValueError(f"queries are {q.dtype}, the caches {k_cache.dtype}: cast one")
    if (reason := unsupported_reason(kd)) is not None:
        raise ValueError(reason)
    for name, n in (("block_q", block_q), ("block_k", block_k)):
        if n < 16 or n & (n - 1):
            raise ValueError(f"{name} must be a power of two ≥ 16, got {n}")
    if lp % block_k:
        raise ValueError(f"stacked KV cache length {lp} is not a multiple of block_k {block_k}")
    if not 0 < kv_len <= lp:
        raise ValueError(f"kv_len {kv_len} outside (0, {lp}]")
    block_q = min(block_q, max(16, 1 << max(0, (length - 1).bit_length())))
    kwargs = {}
    if not interpret:
        plt = _triton.triton()
        kwargs["compiler_params"] = plt.CompilerParams(num_warps=num_warps, num_stages=num_stages)
    kernel = functools.partial(
        _kernel,
        length=length,
        kv_len=kv_len,
        block_q=block_q,
        block_k=block_k,
        head_dim=kd,
        scale=float(scale),
        exact_f32=q.dtype == jnp.float32,
    )
    return pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
        grid=(math.ceil(length / block_q), h, b),
        interpret=interpret,
        **kwargs,
    )(jnp.asarray(layer, jnp.int32).reshape(1), q, k_cache, v_cache)
