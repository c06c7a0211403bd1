"""Attention over one layer of a layer-stacked KV cache.

Why
---
The stacked-blocks sampler (`arvg_jax.families.var.sampler`, a ``lax.scan`` over blocks) keeps the KV
cache of all blocks in one array ``[D, B, Lp, H, K]`` carried by the scan. Each scale writes its new
keys into block ``i`` in place (`write`, a ``dynamic_update_slice`` of the carry) and attends to
that block's written prefix ``[0, kv_len)``:

* "pallas": `arvg_jax.kernels.stacked_attention_pallas` reads the block's keys where they lie in
  the carry (the block index is a kernel argument), so nothing is copied;
* "cudnn": the public `jax.nn.dot_product_attention` (cuDNN flash attention) on the block's
  prefix; a custom call reads whole buffers, so XLA first copies the prefix out of the carry
  (on H100 at VAR-d30 batch 64 those copies cost ~36 ms of a 545 ms batch, BENCHMARKS.md);
* "xla": the same prefix, einsum + float32 softmax: the portable path the CPU tests compare
  against.

The cache length ``Lp`` is padded to whole pages (`padded_len`, ``ExecOptions.kv_page``, a multiple
of 64) so the kernel's 64-key tiles never leave the buffer; keys past ``kv_len`` are never read
into the softmax.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

Array = jax.Array

# Positions per cache page. A multiple of 64 keeps the kernel's 64-key tiles inside the buffer;
# VAR's L = 680 pads to 704 (3.5 % more cache).
PAGE = 64

__all__ = ["PAGE", "padded_len", "prefix", "stacked_attention", "write"]


def padded_len(seq_len: int, page: int = PAGE) -> int:
    """Cache length rounded up to whole pages."""
    return math.ceil(seq_len / page) * page


def prefix(cache: Array, layer, kv_len: int) -> Array:
    """``cache[layer, :, :kv_len]`` as its own ``[B, kv_len, H, K]`` array (a copy under jit)."""
    _, b, _, h, k = cache.shape
    zero = jnp.zeros((), jnp.int32)
    at = (jnp.asarray(layer, jnp.int32), zero, zero, zero, zero)
    return jax.lax.dynamic_slice(cache, at, (1, b, kv_len, h, k))[0]


def stacked_attention(
    q: Array,
    k_cache: Array,
    v_cache: Array,
    layer,
    kv_len: int,
    *,
    scale: float,
    page: int = PAGE,
    implementation: str = "xla",
    interpret: bool = False,
) -> Array:
    """Softmax attention of ``q`` over keys ``[0, kv_len)`` of block ``layer`` of the caches.

    Args:
      q: ``[B, l, H, K]`` queries (16-bit for cuDNN).
      k_cache, v_cache: ``[D, B, Lp, H, K]`` stacked caches, ``Lp`` a multiple of ``page``.
      layer: int32 scalar (traced inside the scan), the block.
      kv_len: static int, the written prefix length (``<= Lp``).
      scale: softmax scale.
      implementation: "pallas" (the in-place kernel; CUDA GPUs, or Pallas interpret mode with
        ``interpret``), "cudnn" (`jax.nn.dot_product_attention` on the copied prefix) or "xla"
        (the copied prefix, einsum + float32 softmax).
      interpret: run the "pallas" kernel in Pallas interpret mode (the CPU tests).

    Returns ``[B, l, H, K]`` in ``q.dtype``.
    """
    _, b, lp, h, k = k_cache.shape
    if v_cache.shape != k_cache.shape:
        raise ValueError(f"k cache {k_cache.shape} and v cache {v_cache.shape} differ")
    if q.shape[0] != b or q.shape[2:] != (h, k):
        raise ValueError(f"queries {q.shape} do not match the cache {k_cache.shape} ([D,B,L,H,K])")
    if lp % page:
        raise ValueError(f"stacked KV cache length {lp} is not a multiple of the page {page}")
    if not 0 < kv_len <= lp:
        raise ValueError(f"kv_len {kv_len} outside (0, {lp}]")
    if implementation == "pallas":
        from arvg_jax.kernels import stacked_attention_pallas

        out = stacked_attention_pallas.attention(
            q,
            k_cache.astype(q.dtype),
            v_cache.astype(q.dtype),
            layer,
            kv_len=kv_len,
            scale=scale,
            interpret=interpret,
        )
        return out.astype(q.dtype)
    keys, vals = prefix(k_cache, layer, kv_len), prefix(v_cache, layer, kv_len)
    if implementation == "cudnn":
        out = jax.nn.dot_product_attention(
            q, keys.astype(q.dtype), vals.astype(q.dtype), scale=scale, implementation="cudnn"
        )
        return out.astype(q.dtype)
    if implementation != "xla":
        raise ValueError(
            f"implementation must be 'pallas', 'cudnn' or 'xla', got {implementation!r}"
        )
    s = jnp.einsum("BqHK,BkHK->BHqk", q, keys, preferred_element_type=jnp.float32) * scale
    p = jax.nn.softmax(s, axis=-1)
    out = jnp.einsum(
        "BHqk,BkHK->BqHK", p.astype(vals.dtype), vals, preferred_element_type=jnp.float32
    )
    return out.astype(q.dtype)


def write(cache: Array, new: Array, layer, offset: int) -> Array:
    """``cache[layer, :, offset:offset + l] = new`` (in place inside the scan carry)."""
    zero = jnp.zeros((), jnp.int32)
    at = (jnp.asarray(layer, jnp.int32), zero, jnp.asarray(offset, jnp.int32), zero, zero)
    return jax.lax.dynamic_update_slice(cache, new[None].astype(cache.dtype), at)
