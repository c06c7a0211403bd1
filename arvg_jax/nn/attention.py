"""Masked multi-head attention and a KV cache written at a (possibly traced) offset.

Dims: B batch, L query tokens, S key tokens (cache length), H query heads, G key/value heads
(H % G == 0; query head h reads kv head h // (H / G), torch `repeat_interleave`), K head dim.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array


def dot_product_attention(
    q: Array, k: Array, v: Array, *, mask: Array | None = None, scale: float | None = None
) -> Array:
    """softmax(q kᵀ · scale + mask) v, as torch `F.scaled_dot_product_attention` (no dropout).

    Scores and softmax are float32; the probabilities are cast to v's dtype for the second
    matmul (accumulated in float32).

    Args:
        q: [B, L, H, K].
        k, v: [B, S, G, K].
        mask: broadcastable to [B, H, L, S]: bool (True = may attend; every row needs one True)
            or an additive float bias. None attends everywhere.
        scale: default K^-1/2.

    Returns:
        [B, L, H, K] in q's dtype.
    """
    b, l, h, kd = q.shape
    g = k.shape[2]
    if h % g:
        raise ValueError(f"{h} query heads are not a multiple of {g} kv heads")
    scale = kd**-0.5 if scale is None else scale
    qg = q.reshape(b, l, g, h // g, kd)  # [B, L, G, R, K]: head h = (h // R, h % R)
    scores = jnp.einsum("BLGRK,BSGK->BGRLS", qg, k, preferred_element_type=jnp.float32)
    scores = scores.reshape(b, h, l, k.shape[1]) * jnp.float32(scale)  # [B, H, L, S]
    if mask is not None:
        if mask.dtype == jnp.bool_:
            scores = jnp.where(mask, scores, -jnp.inf)
        else:
            scores = scores + mask.astype(jnp.float32)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)  # [B, H, L, S]
    probs = probs.reshape(b, g, h // g, l, k.shape[1])
    out = jnp.einsum("BGRLS,BSGK->BLGRK", probs, v, preferred_element_type=jnp.float32)
    return out.reshape(b, l, h, kd).astype(q.dtype)


def init_cache(batch: int, length: int, kv_heads: int, head_dim: int, dtype) -> dict[str, Array]:
    """A zero KV cache {"k", "v"}: [B, S, G, K] each."""
    shape = (batch, length, kv_heads, head_dim)
    return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}


def cache_write(
    cache: dict[str, Array], k: Array, v: Array, offset: int | Array
) -> dict[str, Array]:
    """Writes k, v [B, L, G, K] at cache positions [offset, offset + L) (offset may be traced).

    Like `lax.dynamic_update_slice`, an offset past S - L is clamped to S - L; callers keep
    offset + L <= S.
    """
    return {
        "k": lax.dynamic_update_slice_in_dim(cache["k"], k.astype(cache["k"].dtype), offset, 1),
        "v": lax.dynamic_update_slice_in_dim(cache["v"], v.astype(cache["v"].dtype), offset, 1),
    }
