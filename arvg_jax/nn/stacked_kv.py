"""Attention over one layer of a layer-stacked KV cache, without slicing the layer out.

Why
---
The stacked-blocks sampler (`arvg_jax.families.var.sampler`, a ``lax.scan`` over blocks) keeps the KV
cache of all blocks in one array ``[D, B, L, H, K]`` carried by the scan. Attention needs block
``i``'s ``[B, end, H, K]`` keys; a ``lax.dynamic_slice`` of the carry is materialised by XLA as a
copy before the cuDNN attention custom call (custom calls read whole buffers). On H100 at VAR-d30
batch 64 those prefix copies and the write-backs cost ~60 ms of a 545 ms batch (BENCHMARKS.md,
``loop_dynamic_slice_fusion`` and ``dynamic_update_slice`` kernels).

cuDNN's paged attention reads keys through a page table instead: keys and values are a pool of
``[num_pages, page, H, K]`` pages and ``page_table[b, 0, p, 0]`` names the pool page holding
positions ``[p * page, (p + 1) * page)`` of sequence ``b``. The stacked cache *is* such a pool
once reshaped (a free bitcast: ``[D, B, Lp, H, K] -> [D * B * Lp / page, page, H, K]``, with the
cache length padded to a multiple of the page), and block ``i``'s table is arithmetic: page
``(i * B + b) * P + p`` with ``P = Lp / page``. So attention reads block ``i``'s keys in place and
the only cache traffic left is writing each scale's new keys once (a ``dynamic_update_slice`` of
the carry, in place).

jax checks that the pool holds exactly ``B * pages_per_sequence`` pages; the table therefore
lists ``D * P`` pages per sequence (block ``i``'s ``P`` real pages, then repeats of them) and the
key lengths (``key_value_seq_lengths`` = the written prefix ``end <= Lp``) keep the attention
inside block ``i``'s pages: cuDNN's padding mask stops the key loop at the length.

The cuDNN entry point is jax's ``jax._src.cudnn.fused_attention_stablehlo.paged_attention``
(private in jax 0.10-0.11; checked by `available`), so every caller keeps a fallback:
`stacked_attention` computes the same function with XLA ops from the same page table
(`gather_pages`), and is what CPU tests compare against.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

Array = jax.Array

# Positions per cache page. A multiple of 64 keeps cuDNN's 64/128-key tiles inside one page;
# VAR's L = 680 pads to 704 (3.5 % more cache).
PAGE = 64

__all__ = [
    "PAGE",
    "available",
    "gather_pages",
    "padded_len",
    "page_table",
    "stacked_attention",
    "unavailable_reason",
    "write",
]


def padded_len(seq_len: int, page: int = PAGE) -> int:
    """Cache length rounded up to whole pages."""
    return math.ceil(seq_len / page) * page


def unavailable_reason() -> str | None:
    """Why the cuDNN paged path cannot run here (None when it can)."""
    if jax.default_backend() not in ("gpu", "cuda"):
        return f"cuDNN paged attention needs an NVIDIA GPU backend, not {jax.default_backend()!r}"
    try:
        from jax._src.cudnn import fused_attention_stablehlo as fa
    except ImportError as e:  # pragma: no cover - depends on the jax build
        return f"jax has no cuDNN fused attention module ({e})"
    if not hasattr(fa, "paged_attention") or not hasattr(fa, "MaskType"):
        return f"jax {jax.__version__} has no cuDNN paged_attention"
    return None


def available() -> bool:
    return unavailable_reason() is None


def page_table(layer, batch: int, depth: int, pages: int) -> Array:
    """int32 ``[batch, 1, depth * pages, 1]``: block ``layer``'s pages of the reshaped pool.

    Entry ``p`` of sequence ``b`` is ``(layer * batch + b) * pages + p mod pages``: the first
    ``pages`` entries are the real ones; the rest repeat them (never read below the key length).
    """
    b = jnp.arange(batch, dtype=jnp.int32)[:, None]
    p = jnp.arange(depth * pages, dtype=jnp.int32)[None, :] % pages
    base = (jnp.asarray(layer, jnp.int32) * batch + b) * pages
    return (base + p)[:, None, :, None]


def _pool(cache: Array, page: int) -> Array:
    """``[D, B, Lp, H, K]`` -> ``[D * B * Lp / page, page, H, K]`` (a bitcast)."""
    d, b, lp, h, k = cache.shape
    if lp % page:
        raise ValueError(f"stacked KV cache length {lp} is not a multiple of the page {page}")
    return cache.reshape(d * b * (lp // page), page, h, k)


def gather_pages(pool: Array, table: Array, pages: int) -> Array:
    """``[B, pages * page, H, K]``: the first ``pages`` table entries of each sequence, gathered."""
    idx = table[:, 0, :pages, 0]  # [B, pages]
    got = jnp.take(pool, idx, axis=0)  # [B, pages, page, H, K]
    b, p, page, h, k = got.shape
    return got.reshape(b, p * page, h, k)


def stacked_attention(
    q: Array,
    k_cache: Array,
    v_cache: Array,
    layer,
    kv_len: int,
    *,
    scale: float,
    page: int = PAGE,
    implementation: str = "auto",
) -> Array:
    """Softmax attention of ``q`` over keys ``[0, kv_len)`` of block ``layer`` of the caches.

    Args:
      q: ``[B, l, H, K]`` queries (bf16/fp16 for cuDNN).
      k_cache, v_cache: ``[D, B, Lp, H, K]`` stacked caches, ``Lp`` a multiple of ``page``.
      layer: int32 scalar (traced inside the scan), the block.
      kv_len: static int, the written prefix length (``<= Lp``).
      scale: softmax scale.
      implementation: "cudnn" (paged cuDNN attention), "xla" (gather the same pages, then
        einsum + float32 softmax) or "auto" (cudnn where `available`).

    Returns ``[B, l, H, K]`` in ``q.dtype``.
    """
    d, b, lp, h, k = k_cache.shape
    if v_cache.shape != k_cache.shape:
        raise ValueError(f"k cache {k_cache.shape} and v cache {v_cache.shape} differ")
    if q.shape[0] != b or q.shape[2:] != (h, k):
        raise ValueError(f"queries {q.shape} do not match the cache {k_cache.shape} ([D,B,L,H,K])")
    if not 0 < kv_len <= lp:
        raise ValueError(f"kv_len {kv_len} outside (0, {lp}]")
    pages = lp // page
    table = page_table(layer, b, d, pages)
    k_pool, v_pool = _pool(k_cache, page), _pool(v_cache, page)
    if implementation == "auto":
        implementation = "cudnn" if available() else "xla"
    if implementation == "cudnn":
        from jax._src.cudnn import fused_attention_stablehlo as fa

        q_len = jnp.full((b,), q.shape[1], jnp.int32)
        k_len = jnp.full((b,), kv_len, jnp.int32)
        out = fa.paged_attention(
            q,
            k_pool.astype(q.dtype),
            v_pool.astype(q.dtype),
            q_len,
            k_len,
            table,
            table,
            scale=scale,
            mask_type=fa.MaskType.PADDING,
            qkv_layout="BTNH",
        )
        return out.astype(q.dtype)
    if implementation != "xla":
        raise ValueError(f"implementation must be 'auto', 'cudnn' or 'xla', got {implementation!r}")
    need = math.ceil(kv_len / page)
    keys = gather_pages(k_pool, table, need)[:, :kv_len]
    vals = gather_pages(v_pool, table, need)[:, :kv_len]
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
