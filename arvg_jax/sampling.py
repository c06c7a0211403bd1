"""Token sampling helpers: top-k / top-p filtering, CFG mixing, categorical or greedy draws.

Dims: B batch, l tokens, V vocabulary (the last axis of every logits array).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def top_k_top_p_filter(logits: Array, top_k: int = 0, top_p: float = 0.0) -> Array:
    """FoundationVision/VAR models/helpers.py `sample_with_top_k_top_p_`, the filtering part.

    * top_k > 0: logits below the k-th largest value become -inf (ties with it are all kept).
      top_k ≥ V keeps everything (torch's topk would raise there).
    * top_p > 0: sort ascending; entries whose cumulative softmax is ≤ 1 - top_p become -inf;
      the largest entry is always kept. Runs after the top-k mask, as the official code does.
    * top_k = 0 / top_p = 0 (or below) disable the respective filter.

    Tied logits straddling the top-p cut are resolved by a stable ascending sort (lower index
    first, so removed first); torch's unstable sort may order ties differently.

    Args:
        logits: [..., V] float.
        top_k: static int.
        top_p: static float.

    Returns:
        Logits of the same shape and dtype with removed entries at -inf.
    """
    v = logits.shape[-1]
    if top_k > 0 and top_k < v:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]  # the k-th largest value, [..., 1]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p > 0:
        order = jnp.argsort(logits, axis=-1, stable=True)  # ascending
        sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
        cum = jnp.cumsum(jax.nn.softmax(sorted_logits.astype(jnp.float32), axis=-1), axis=-1)
        # torch compares a float32 tensor with a Python float in float32.
        remove = cum <= np.float32(1 - top_p)
        remove = remove.at[..., -1].set(False)  # the largest logit always survives
        # sorted_idx_to_remove.scatter(-1, sorted_idx, sorted_idx_to_remove)
        remove = jnp.put_along_axis(jnp.zeros_like(remove), order, remove, axis=-1, inplace=False)
        logits = jnp.where(remove, -jnp.inf, logits)
    return logits


def cfg_mix(
    cond: Array, uncond: Array, t: float | Array, *, one_plus_t: float | Array | None = None
) -> Array:
    """Classifier-free guidance of models/var.py: (1 + t)·cond − t·uncond.

    `one_plus_t` may pass 1 + t rounded from higher precision (the official code forms it in
    Python double); by default it is computed in the dtype of `t`.
    """
    if one_plus_t is None:
        one_plus_t = 1 + t
    return one_plus_t * cond - t * uncond


def sample_tokens(
    key: Array,
    logits: Array,
    *,
    top_k: int = 0,
    top_p: float = 0.0,
    greedy: bool = False,
) -> Array:
    """Draws one token per position after top-k / top-p filtering.

    Args:
        key: PRNG key (unused when greedy).
        logits: [..., V] float.
        top_k, top_p: see `top_k_top_p_filter` (static).
        greedy: argmax of the filtered logits (first index on ties) instead of a draw.

    Returns:
        int32 [...] token ids.
    """
    logits = top_k_top_p_filter(logits, top_k, top_p)
    if greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return jax.random.categorical(key, logits.astype(jnp.float32), axis=-1).astype(jnp.int32)


def top2_margin(logits: Array) -> Array:
    """Best minus second-best logit along the last axis: [...] float32 (near-tie detector)."""
    top2 = jax.lax.top_k(logits.astype(jnp.float32), 2)[0]
    return top2[..., 0] - top2[..., 1]
