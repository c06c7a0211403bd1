"""RAR transformer (bytedance/1d-tokenizer `modeling/rar.py`, commit 942a96f) in Flax linen.

Dims: B batch, n image tokens (image_seq_len), L = n + 2 sequence length ([cls, cond, img...]),
l tokens of one call, C width, H heads, K head dim, F FFN width, V codebook size,
S KV-cache length (L), P rows of the position tables.

Sequence position p: 0 is the cls token, 1 the condition token, 2 + k the image slot k. With a
generation order o (a permutation of range(n) per sample; raster = arange, the only order used at
inference), slot k holds image token o[k] and position p adds
    pos_embed[p] (p < 2) or pos_embed[2 + o[p - 2]] (p >= 2),
    target_aware_pos_embed[2 + o[p - 1]] for 1 <= p <= n (the position it predicts), else nothing,
and every block and the head are conditioned per token on c_p = embeddings[cond] +
timesteps_embeddings[p] (not permuted).

Param tree (plain dicts; `/`-joined paths; official key in brackets):
    cls_token [C]                    [cls_token (1, 1, C)]
    pos_embed [P, C]                 [pos_embed (1, P, C)]
    target_aware_pos_embed [P, C]    [target_aware_pos_embed (1, P, C)]
    timesteps_embeddings [n+100, C]  [timesteps_embeddings (1, n+100, C)]
    embeddings/embedding [V+1+classes+1, C]
    blocks_{i}/norm1/{scale, bias}, blocks_{i}/norm2/{scale, bias}
    blocks_{i}/attn/qkv/{kernel [C, 3C], bias}   blocks_{i}/attn/{q_norm, k_norm}/{scale, bias} [K]
    blocks_{i}/attn/proj/{kernel, bias}          blocks_{i}/mlp/{fc1, fc2}/{kernel, bias}
    blocks_{i}/adaLN_modulation/{kernel [C, 6C], bias}
    adaln_before_head/adaLN_modulation/{kernel [C, 2C], bias}
    lm_head/{kernel [C, V], bias}
Quantized trees add `input_quant` leaves (Dense) and, for the attention matmuls (q·kᵀ, softmax·v),
`blocks_{i}/attn/attn_quant/{q, k, p, v}/input_quant` (`arvg_jax.nn.attention`).

Every linear layer PTQ4ARVG quantizes (qkv, proj, fc1, fc2, the adaLN linears, lm_head) is an
`arvg_jax.nn.layers.Dense` and receives the absolute sequence positions of its tokens, so token-group
activation quantizers (STWQ: cls / cond / image tokens; per-position adaLN) can pick their group.

Entry points (`RAR(cfg).apply({"params": params}, ..., method=...)`):
    * `__call__(tokens, condition, orders=None)`: teacher-forced logits [B, n + 1, V]
      (`RAR.forward_fn(..., is_sampling=False)`; orders None = raster = `RAR.forward` at
      random_ratio 0).
    * `decode(ids, condition, caches, offset=...)`: cached decoding of the l tokens at sequence
      positions [offset, offset + l); offset may be a traced int (`lax.fori_loop`).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from arvg_jax.families.rar.config import NUM_PREFIX, RARConfig
from arvg_jax.nn import attention
from arvg_jax.nn.layers import Dense, layer_norm

Array = jax.Array

_LN_EPS = 1e-6  # partial(nn.LayerNorm, eps=1e-6) for norm1/2, q/k norms and the final norm
_TABLE_INIT = nn.initializers.truncated_normal(0.02)  # rar.py init_weights / trunc_normal_


def _layer_norm(name: str) -> nn.LayerNorm:
    """torch.nn.LayerNorm(eps=1e-6) with affine params, two-pass variance, float32."""
    return nn.LayerNorm(epsilon=_LN_EPS, use_fast_variance=False, dtype=jnp.float32, name=name)


def _modulate(x: Array, shift: Array, scale: Array) -> Array:
    """rar.py modulate: x * (1 + scale) + shift."""
    return x * (1 + scale) + shift


class Attention(nn.Module):
    """rar.py Attention: qkv (bias) -> per-head LayerNorm on q and k -> SDPA (scale K^-½) -> proj."""

    cfg: RARConfig
    dtype: Any = jnp.float32
    qkv_shards: int = 1  # qkv's column layout (`ExecOptions.qkv_shards`)

    @nn.compact
    def __call__(self, x, *, positions, cache=None, cache_offset=0):
        """Causal self-attention of x, optionally through a KV cache.

        Args:
            x: [B, l, C].
            positions: int32 [l] absolute sequence positions of x's tokens (may be traced).
            cache: None (x is the whole sequence from position 0), or {"k", "v"} [B, S, H, K]:
                x's keys/values are written at cache_offset and the queries attend to the cache.
            cache_offset: int or traced int32 scalar, position of x[:, 0] in the cache.

        Returns:
            [B, l, C] in self.dtype, and the updated cache when one was given.
        """
        cfg = self.cfg
        b, l, c = x.shape
        h, k_dim = cfg.num_attention_heads, cfg.head_dim
        qkv = Dense(3 * c, dtype=self.dtype, name="qkv")(x, positions)
        q, k, v = attention.split_qkv(qkv, h, h, k_dim, self.qkv_shards)  # [B, l, H, K] each
        q = _layer_norm("q_norm")(q)
        k = _layer_norm("k_norm")(k)
        q, k, v = (t.astype(self.dtype) for t in (q, k, v))
        if cache is not None:
            cache = attention.cache_write(cache, k, v, cache_offset)
            k, v = cache["k"], cache["v"]
        # Scores and softmax in float32; q·kᵀ and softmax·v quantized where the params hold
        # their quantizers (PTQ4ARVG `RAR/modeling/rar.py:122-128`, `matmul1` / `matmul2`).
        out = attention.dot_product_attention(  # [B, l, H, K]
            q,
            k,
            v,
            mask=attention.causal_mask(positions, k.shape[1])[None, None],
            scale=k_dim**-0.5,
            quant=attention.matmul_quantizers(self),
            on_fit=attention.sow_matmul_fit(self),
        )
        out = out.astype(self.dtype).reshape(b, l, c)  # [B, l, C]
        out = Dense(c, dtype=self.dtype, name="proj")(out, positions)
        return out if cache is None else (out, cache)


class Mlp(nn.Module):
    """timm Mlp: fc1 -> GELU (exact erf) -> fc2, both with bias."""

    cfg: RARConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, *, positions):
        x = Dense(self.cfg.mlp_dim, dtype=self.dtype, name="fc1")(x, positions)
        x = jax.nn.gelu(x, approximate=False)
        return Dense(self.cfg.hidden_size, dtype=self.dtype, name="fc2")(x, positions)


class Block(nn.Module):
    """rar.py Block (DiT adaLN-Zero; the norms keep their affine parameters).

    (shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp) = adaLN_modulation(SiLU(c)),
    per token; x += gate_msa ⊙ attn(modulate(norm1(x))); x += gate_mlp ⊙ mlp(modulate(norm2(x))).
    """

    cfg: RARConfig
    dtype: Any = jnp.float32
    qkv_shards: int = 1

    @nn.compact
    def __call__(self, x, c, *, positions, cache=None, cache_offset=0):
        """Args: x float32 [B, l, C] residual stream; c float32 [B, l, C] per-token condition;
        positions, cache, cache_offset as in `Attention`. Returns float32 [B, l, C] (and cache)."""
        width = self.cfg.hidden_size
        mods = Dense(6 * width, dtype=self.dtype, name="adaLN_modulation")(
            jax.nn.silu(c), positions
        )
        mods = mods.astype(jnp.float32)  # [B, l, 6C]
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = jnp.split(mods, 6, -1)
        h = _modulate(_layer_norm("norm1")(x), shift_msa, scale_msa)
        attn = Attention(self.cfg, self.dtype, self.qkv_shards, name="attn")(
            h, positions=positions, cache=cache, cache_offset=cache_offset
        )
        if cache is not None:
            attn, cache = attn
        x = x + gate_msa * attn.astype(jnp.float32)
        h = _modulate(_layer_norm("norm2")(x), shift_mlp, scale_mlp)
        x = x + gate_mlp * Mlp(self.cfg, self.dtype, name="mlp")(h, positions=positions).astype(
            jnp.float32
        )
        return x if cache is None else (x, cache)


class FinalLayer(nn.Module):
    """rar.py FinalLayer: (scale, shift) = adaLN_modulation(SiLU(c)) (scale FIRST), then
    modulate(LayerNorm_noaffine(x), shift, scale)."""

    cfg: RARConfig

    @nn.compact
    def __call__(self, x, c, *, positions):
        width = self.cfg.hidden_size
        mods = Dense(2 * width, dtype=jnp.float32, name="adaLN_modulation")(
            jax.nn.silu(c), positions
        )
        scale, shift = jnp.split(mods.astype(jnp.float32), 2, -1)
        return _modulate(layer_norm(x, _LN_EPS), shift, scale)


def raster_orders(batch: int, n: int) -> np.ndarray:
    """int32 [B, n]: the raster order of every sample (RAR.get_raster_orders)."""
    return np.broadcast_to(np.arange(n, dtype=np.int32), (batch, n))


def shuffle(x: Array, orders: Array) -> Array:
    """RAR.shuffle: x[b, orders[b]] for x [B, n, ...] and orders int [B, n]."""
    idx = orders.reshape(orders.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, idx, axis=1)


def position_rows(positions: Array, orders: Array | None, n: int) -> tuple[Array, Array]:
    """Rows of pos_embed and target_aware_pos_embed for sequence positions under an order.

    Args:
        positions: int32 [l] sequence positions (may be traced).
        orders: int [B, n] generation orders, or None for raster.
        n: image_seq_len.

    Returns:
        (pos_rows, ta_rows), int32 [B or 1, l]; ta_rows is -1 where nothing is added
        (position 0 and position n + 1).
    """
    p = positions.astype(jnp.int32)[None, :]  # [1, l]
    if orders is None:
        slot_pos = p - NUM_PREFIX  # image slot of position p (raster: its token index)
        slot_ta = p - 1  # slot whose token position p predicts
    else:
        orders = orders.astype(jnp.int32)
        slot_pos = jnp.take_along_axis(
            orders,
            jnp.broadcast_to(jnp.clip(p - NUM_PREFIX, 0, n - 1), (orders.shape[0], p.shape[1])),
            1,
        )
        slot_ta = jnp.take_along_axis(
            orders, jnp.broadcast_to(jnp.clip(p - 1, 0, n - 1), (orders.shape[0], p.shape[1])), 1
        )
    pos_rows = jnp.where(p < NUM_PREFIX, p, NUM_PREFIX + slot_pos)
    ta_rows = jnp.where((p >= 1) & (p <= n), NUM_PREFIX + slot_ta, -1)
    return pos_rows.astype(jnp.int32), ta_rows.astype(jnp.int32)


class RAR(nn.Module):
    """rar.py RAR (the generator; the MaskGIT-VQGAN lives in arvg_jax.tokenizers).

    Attributes:
        cfg: the architecture.
        dtype: compute dtype of the block matmuls (and KV cache); the residual stream,
            embeddings, norms and the head run in float32.
        qkv_shards: the fused qkv columns' layout (`ExecOptions.qkv_shards`).
    """

    cfg: RARConfig
    dtype: Any = jnp.float32
    qkv_shards: int = 1

    def setup(self):
        cfg = self.cfg
        c = cfg.hidden_size
        self.cls_token = self.param("cls_token", nn.initializers.zeros, (c,), jnp.float32)
        self.pos_embed = self.param("pos_embed", _TABLE_INIT, (cfg.pos_rows, c), jnp.float32)
        self.target_aware_pos_embed = self.param(
            "target_aware_pos_embed", _TABLE_INIT, (cfg.pos_rows, c), jnp.float32
        )
        self.timesteps_embeddings = self.param(
            "timesteps_embeddings", _TABLE_INIT, (cfg.timestep_rows, c), jnp.float32
        )
        self.embeddings = nn.Embed(cfg.num_embeddings, c, embedding_init=_TABLE_INIT)
        # A list attribute: linen names the blocks blocks_0 … blocks_{D-1}.
        self.blocks = [
            Block(cfg, self.dtype, self.qkv_shards) for _ in range(cfg.num_hidden_layers)
        ]
        self.adaln_before_head = FinalLayer(cfg)
        self.lm_head = Dense(cfg.codebook_size, dtype=jnp.float32)

    # ---- pieces --------------------------------------------------------------------------------
    def embed(self, seq_ids: Array, positions: Array, orders: Array | None = None) -> Array:
        """Block input of the tokens at `positions` (rar.py forward_fn, before the blocks).

        Args:
            seq_ids: int [B, l] embedding row of each token (anything at position 0, the cls
                token; the condition id at position 1; image token ids after).
            positions: int32 [l] sequence positions (may be traced).
            orders: int [B, n] or None (raster).

        Returns:
            float32 [B, l, C].
        """
        n = self.cfg.image_seq_len
        tok = self.embeddings(jnp.clip(seq_ids, 0, self.cfg.num_embeddings - 1))
        x = jnp.where((positions == 0)[None, :, None], self.cls_token, tok.astype(jnp.float32))
        pos_rows, ta_rows = position_rows(positions, orders, n)
        x = x + jnp.take(self.pos_embed, pos_rows, axis=0)
        ta = jnp.take(self.target_aware_pos_embed, jnp.maximum(ta_rows, 0), axis=0)
        # Position 0 gets no target-aware term, position n + 1 a zero one (x + 0 == x exactly).
        return jnp.where((ta_rows >= 0)[..., None], x + ta, x)

    def condition_tokens(self, condition: Array, positions: Array) -> Array:
        """c [B, l, C] = embeddings[condition] + timesteps_embeddings[positions]."""
        cond = self.embeddings(condition).astype(jnp.float32)  # [B, C]
        return cond[:, None, :] + jnp.take(self.timesteps_embeddings, positions, axis=0)[None]

    def apply_block(self, x, c, *, i: int, positions, cache=None, cache_offset=0):
        """Block i alone (calibration one block at a time)."""
        return self.blocks[i](x, c, positions=positions, cache=cache, cache_offset=cache_offset)

    def head_logits(self, x: Array, c: Array, positions: Array) -> Array:
        """float32 logits [B, l, V] of the final hidden states x [B, l, C] (condition c)."""
        h = self.adaln_before_head(x, c, positions=positions)
        return self.lm_head(h, positions).astype(jnp.float32)

    # ---- teacher forcing -----------------------------------------------------------------------
    def __call__(self, tokens: Array, condition: Array, orders: Array | None = None) -> Array:
        """Teacher-forced logits (rar.py forward_fn, is_sampling=False, no KV cache).

        Args:
            tokens: int [B, n] image tokens in raster order.
            condition: int [B] condition ids (`cfg.condition_id(label)`, or the null id).
            orders: int [B, n] generation orders (slot k holds tokens[o[k]]), None = raster.

        Returns:
            float32 [B, n + 1, V]: output j (sequence position j + 1) predicts the token of
            slot j, i.e. `shuffle(tokens, orders)[:, j]`; output n predicts nothing.
        """
        cfg = self.cfg
        b = tokens.shape[0]
        slots = tokens if orders is None else shuffle(tokens, orders)
        seq_ids = jnp.concatenate(
            [jnp.zeros((b, 1), tokens.dtype), condition[:, None].astype(tokens.dtype), slots], 1
        )  # [B, L]
        positions = jnp.arange(cfg.seq_len, dtype=jnp.int32)
        x = self.embed(seq_ids, positions, orders)
        c = self.condition_tokens(condition, positions)
        for blk in self.blocks:
            x = blk(x, c, positions=positions)
        # The cls output is dropped before the head.
        return self.head_logits(x[:, 1:], c[:, 1:], positions[1:])

    # ---- cached decoding -----------------------------------------------------------------------
    def decode(
        self,
        seq_ids: Array,
        condition: Array,
        caches: tuple[dict, ...],
        *,
        offset: int | Array,
        orders: Array | None = None,
    ) -> tuple[Array, tuple[dict, ...]]:
        """Runs the l tokens at sequence positions [offset, offset + l) through the KV caches.

        rar.py generate with kv_cache: step 0 feeds [cls, cond] (offset 0, l = 2), step s >= 1
        feeds image token s - 1 at position s + 1 (l = 1).

        Args:
            seq_ids: int [B, l] embedding rows (see `embed`).
            condition: int [B] condition ids.
            caches: per-block {"k", "v"} [B, S, H, K] (`init_caches`).
            offset: int or traced int32 scalar.
            orders: int [B, n] or None (raster, as the official sampler).

        Returns:
            float32 logits [B, l, V] (the last row predicts the next token) and the caches.
        """
        l = seq_ids.shape[1]
        positions = jnp.asarray(offset, jnp.int32) + jnp.arange(l, dtype=jnp.int32)
        x = self.embed(seq_ids, positions, orders)
        c = self.condition_tokens(condition, positions)
        new = []
        for blk, cache in zip(self.blocks, caches, strict=True):
            x, cache = blk(x, c, positions=positions, cache=cache, cache_offset=offset)
            new.append(cache)
        return self.head_logits(x, c, positions), tuple(new)


def init_caches(cfg: RARConfig, batch: int, dtype=jnp.float32) -> tuple[dict, ...]:
    """Zero KV caches: per block {"k", "v"} [batch, L, H, K]."""
    return tuple(
        attention.init_cache(batch, cfg.seq_len, cfg.num_attention_heads, cfg.head_dim, dtype)
        for _ in range(cfg.num_hidden_layers)
    )


@functools.cache
def abstract_params(cfg: RARConfig) -> dict:
    """The param tree of `RAR(cfg)` as `jax.ShapeDtypeStruct`s (nothing allocated)."""
    tokens = jax.ShapeDtypeStruct((1, cfg.image_seq_len), jnp.int32)
    cond = jax.ShapeDtypeStruct((1,), jnp.int32)
    return jax.eval_shape(RAR(cfg).init, jax.random.key(0), tokens, cond)["params"]
