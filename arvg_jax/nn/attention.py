"""Masked multi-head attention and a KV cache written at a (possibly traced) offset.

Shared by the token-by-token decoders run inside `lax.fori_loop` / `lax.scan` (RAR, PAR): the
cache has a fixed length S, new keys/values are written at an offset that may be traced, and the
unwritten tail is masked instead of sliced (shapes stay static).

Quantized attention matmuls (PTQ4ARVG's `QuantMatMul`s): a module keeps their quantizers in its
params under `attn_quant/<operand>/input_quant` (operands "q", "k", "p", "v"); `matmul_quantizers`
reads them and `sow_matmul_fit` reports calibration fits under the sow name
`attn_quant_<operand>` of the `calibration` collection (`quant._calibrate.sown_by_layer` maps it
back to the params path).

Fused q|k|v layers (`split_qkv`): the official column order is [q heads | k heads | v heads],
each head-major; on a tensor-parallel mesh with M model shards the columns may instead be laid out
model-shard-major (`arvg_jax.parallel.heads`), so that a plain split of the columns gives each
device the q, k and v of its own heads.

Dims: B batch, L query tokens, S key tokens (cache length), H query heads, G key/value heads
(H % G == 0; query head h reads kv head h // (H / G), torch `repeat_interleave`), K head dim,
M model shards.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array

MATMUL_QUANT = "attn_quant"  # params node of a module's attention-matmul quantizers


def head_shards(shards: int, q_heads: int, kv_heads: int) -> int:
    """The model shards a fused q|k|v layer's columns are laid out over: `shards` where it divides
    both head counts, else 1 (the official layout; that attention then stays replicated)."""
    ok = shards > 1 and q_heads % shards == 0 and kv_heads % shards == 0
    return shards if ok else 1


def split_qkv(
    qkv: Array, q_heads: int, kv_heads: int, head_dim: int, shards: int = 1
) -> tuple[Array, Array, Array]:
    """q [..., H, K], k [..., G, K], v [..., G, K] of a fused layer's output [..., (H + 2G) K].

    With `head_shards(shards, H, G)` = 1 the columns are in the official order [q | k | v], each
    head-major. With M > 1 they are model-shard-major, [M, (H/M q | G/M k | G/M v), K]: shard m
    holds q heads [m H/M, (m + 1) H/M) and kv heads [m G/M, (m + 1) G/M), the kv heads its q heads
    read (h // (H / G)). Either way the heads come back in their official order, so per-head
    params, the KV caches and the output projection's input rows keep their layout; with the
    columns split over a "model" axis, jit (GSPMD) keeps every head on the device holding it.
    """
    m = head_shards(shards, q_heads, kv_heads)
    lead = qkv.shape[:-1]
    hq, g = q_heads // m, kv_heads // m
    x = qkv.reshape(*lead, m, hq + 2 * g, head_dim)
    q, k, v = x[..., :hq, :], x[..., hq : hq + g, :], x[..., hq + g :, :]
    return tuple(t.reshape(*lead, t.shape[-3] * t.shape[-2], head_dim) for t in (q, k, v))


def dot_product_attention(
    q: Array,
    k: Array,
    v: Array,
    *,
    mask: Array | None = None,
    scale: float | None = None,
    quant: Mapping[str, Any] | None = None,
    on_fit: Callable[[str, Any], None] | None = None,
) -> Array:
    """softmax(q kᵀ · scale + mask) v, as torch `F.scaled_dot_product_attention` (no dropout).

    Scores and softmax are float32; the probabilities are cast to v's dtype for the second
    matmul (accumulated in float32).

    Optional static quantizers of the two matmuls (PTQ4ARVG's `QuantMatMul`s, e.g.
    `PAR/autoregressive/models/gpt.py:261-265`: `matmul1(q, kᵀ)` then the scale,
    `matmul2(softmax, v)`): `quant` maps "q", "k", "p" (the post-softmax probabilities) and
    "v" to quantizers (`quant.ActQuant` per tensor, `quant.LogSqrt2Quant` for "p"); a missing
    key leaves that operand float, `quant=None` is the float function above. Both operands of a
    matmul `ActQuant`: an int8 x int8 -> int32 matmul (`quant.quantized_matmul`); otherwise the
    dequantized operands in float32. A quantizer with `fit_input` (`quant.FitInput`, calibration)
    is first fitted on its operand and reported as `on_fit(name, fitted)`.

    Args:
        q: [B, L, H, K].
        k, v: [B, S, G, K].
        mask: broadcastable to [B, H, L, S]: bool (True = may attend; every row needs one True)
            or an additive float bias. None attends everywhere.
        scale: default K^-1/2.
        quant: None, or {"q", "k", "p", "v"} -> quantizer (any subset).
        on_fit: receives (name, fitted quantizer) for each fitted placeholder.

    Returns:
        [B, L, H, K] in q's dtype.
    """
    b, l, h, kd = q.shape
    g = k.shape[2]
    if h % g:
        raise ValueError(f"{h} query heads are not a multiple of {g} kv heads")
    scale = kd**-0.5 if scale is None else scale
    qg = q.reshape(b, l, g, h // g, kd)  # [B, L, G, R, K]: head h = (h // R, h % R)
    if quant is not None:
        return _quantized_attention(qg, k, v, mask, scale, quant, on_fit).astype(q.dtype)
    scores = jnp.einsum("BLGRK,BSGK->BGRLS", qg, k, preferred_element_type=jnp.float32)
    scores = scores.reshape(b, h, l, k.shape[1]) * jnp.float32(scale)  # [B, H, L, S]
    scores = _masked(scores, mask)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)  # [B, H, L, S]
    probs = probs.reshape(b, g, h // g, l, k.shape[1])
    out = jnp.einsum("BGRLS,BSGK->BLGRK", probs, v, preferred_element_type=jnp.float32)
    return out.reshape(b, l, h, kd).astype(q.dtype)


def _masked(scores: Array, mask: Array | None) -> Array:
    if mask is None:
        return scores
    if mask.dtype == jnp.bool_:
        return jnp.where(mask, scores, -jnp.inf)
    return scores + mask.astype(jnp.float32)


def _quantized_attention(qg, k, v, mask, scale, quantizers, on_fit) -> Array:
    """`dot_product_attention` with quantized matmul operands: qg [B, L, G, R, K], k, v
    [B, S, G, K] -> [B, L, H, K] float32. Each matmul runs on [B, G, R·L, ·] operands."""
    from quant import quantized_matmul  # lazily: the float model needs no quant package

    b, l, g, r, kd = qg.shape
    s = k.shape[1]

    def fitted(name, x):
        qz = quantizers.get(name)
        if qz is not None and hasattr(qz, "fit_input"):
            qz = qz.fit_input(x)
            if on_fit is not None:
                on_fit(name, qz)
        return qz

    a = jnp.transpose(qg, (0, 2, 3, 1, 4)).reshape(b, g, r * l, kd).astype(jnp.float32)
    kt = jnp.transpose(k, (0, 2, 3, 1)).astype(jnp.float32)  # [B, G, K, S]
    scores = quantized_matmul(a, kt, fitted("q", a), fitted("k", kt))  # [B, G, R·L, S]
    scores = _masked(scores.reshape(b, g * r, l, s) * jnp.float32(scale), mask)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype).astype(jnp.float32)
    probs = probs.reshape(b, g, r * l, s)
    vt = jnp.transpose(v, (0, 2, 1, 3)).astype(jnp.float32)  # [B, G, S, K]
    out = quantized_matmul(probs, vt, fitted("p", probs), fitted("v", vt))  # [B, G, R·L, K]
    return jnp.transpose(out.reshape(b, g, r, l, kd), (0, 3, 1, 2, 4)).reshape(b, l, g * r, kd)


def causal_mask(q_positions: Array, length: int) -> Array:
    """bool [L, S]: key j visible to a query at absolute position p iff j <= p.

    With k, v the whole cache this is cached decoding (the unwritten tail lies beyond every
    query's position); with q_positions = arange(L) and S = L the usual causal mask.

    Args:
        q_positions: int [L] (traced allowed).
        length: S.
    """
    return jnp.arange(length, dtype=jnp.int32)[None, :] <= q_positions[:, None]


def matmul_quantizers(module) -> dict[str, Any] | None:
    """The attention matmuls' quantizers {"q", "k", "p", "v"} of a linen module (any subset; params
    `attn_quant/<operand>/input_quant`, written by quantization), or None: float attention."""
    if not module.has_variable("params", MATMUL_QUANT):
        return None
    tree = module.get_variable("params", MATMUL_QUANT)
    # Between PTQ4ARVG stages B and F a node may hold only its (ignored) `calib_quant`.
    found = {n: leaf["input_quant"] for n, leaf in tree.items() if "input_quant" in leaf}
    return found or None


def sow_matmul_fit(module) -> Callable[[str, Any], None]:
    """`on_fit` for `dot_product_attention` inside a linen module: sows each fitted quantizer as
    `attn_quant_<operand>` in the `calibration` collection."""

    def sow(name: str, quantizer: Any) -> None:
        module.sow("calibration", f"{MATMUL_QUANT}_{name}", quantizer)

    return sow


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
