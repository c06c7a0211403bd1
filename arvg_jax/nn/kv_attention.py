"""Causal multi-head attention over a preallocated KV cache written at a (traced) offset.

A generic piece for token-by-token decoders run inside `lax.fori_loop` / `lax.scan`: the cache has
a fixed length S, new keys/values are written at `offset` (a Python int or a traced int32 scalar)
and every query attends to the keys at positions <= its own, so the unwritten tail is masked
instead of sliced (shapes stay static).

Dims: B batch, l new tokens, S cache length, H heads, K head dim.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array


def init_cache(batch: int, length: int, heads: int, head_dim: int, dtype=jnp.float32) -> dict:
    """Zero cache {"k", "v"}: [B, S, H, K] each."""
    shape = (batch, length, heads, head_dim)
    return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}


def write(cache: dict, k: Array, v: Array, offset: int | Array) -> dict:
    """Writes k, v [B, l, H, K] into the cache at positions [offset, offset + l).

    Args:
        cache: {"k", "v"} [B, S, H, K].
        k, v: the new keys and values.
        offset: int or traced int32 scalar; offset + l must not exceed S (dynamic_update_slice
            would clamp the start silently).
    """
    offset = jnp.asarray(offset, jnp.int32)
    zero = jnp.zeros((), jnp.int32)
    start = (zero, offset, zero, zero)
    return {
        "k": lax.dynamic_update_slice(cache["k"], k.astype(cache["k"].dtype), start),
        "v": lax.dynamic_update_slice(cache["v"], v.astype(cache["v"].dtype), start),
    }


def causal_attention(q: Array, k: Array, v: Array, *, q_positions: Array, scale: float) -> Array:
    """softmax(q kᵀ · scale + causal mask) v, with key j visible to a query at position p iff j <= p.

    With k, v the whole cache this is cached decoding (the unwritten tail sits beyond every query's
    position); with k, v of the same tokens as q and q_positions = arange(l) it is the usual
    causal self-attention. Scores and softmax run in float32.

    Args:
        q: [B, l, H, K].
        k, v: [B, S, H, K].
        q_positions: int [l] (traced allowed) absolute position of each query.
        scale: softmax scale (K^-0.5 for torch's scaled_dot_product_attention default).

    Returns:
        float32 [B, l, H, K].
    """
    s_len = k.shape[1]
    scores = jnp.einsum("BqHK,BkHK->BHqk", q, k, preferred_element_type=jnp.float32) * scale
    visible = jnp.arange(s_len, dtype=jnp.int32)[None, :] <= q_positions[:, None]  # [l, S]
    scores = jnp.where(visible, scores, -jnp.inf)
    probs = jax.nn.softmax(scores, axis=-1)  # [B, H, l, S]
    return jnp.einsum(
        "BHqk,BkHK->BqHK", probs.astype(v.dtype), v, preferred_element_type=jnp.float32
    )
