"""PAR's LlamaGen GPT in Flax linen (YuqingWang1029/PAR `autoregressive/models/gpt.py`, c2i).

Dims: B batch, L tokens of one call, N image tokens, C width, H heads, G kv heads, K head dim,
F SwiGLU hidden, V vocabulary, E bridge tokens, S KV-cache length.

Param tree (plain dicts; `/`-joined paths; every linear is an `arvg_jax.nn.layers.Dense`):
    cls_embedding/embedding [num_classes + 1, C]   tok_embeddings/embedding [V, C]
    spe_tok_embeddings/embedding [E, C]
    layers_{i}/attention_norm/scale [C]            layers_{i}/ffn_norm/scale [C]
    layers_{i}/attention/wqkv/kernel [C, (H + 2G) K]   layers_{i}/attention/wo/kernel [C, C]
    layers_{i}/feed_forward/{w1, w3}/kernel [C, F]     layers_{i}/feed_forward/w2/kernel [F, C]
    norm/scale [C]                                 output/kernel [C, V]
Quantized trees add `input_quant` / biases (norms and Dense, `quant._transforms`) and, when the
attention matmuls are quantized, `layers_{i}/attention/attn_quant/{q, k, p, v}/input_quant`.

Entry points (`PAR(cfg, dtype=...).apply({"params": params}, ..., method=...)`):
    * `__call__(labels, tokens)`: teacher-forced logits [B, N, V] in PAR order (the official
      training forward, `model(idx=tokens[:, :-1], cond_idx=labels, input_pos=arange(...))`).
      Piecewise (calibration): `embed(labels, tokens)`, then `apply_layer(x, i=i)` for each layer
      (with `mutable=["intermediates"]` every Dense input is sown), then `head(x)`.
    * Cached decoding for the sampler: `class_input(labels)`, `token_input(tokens)`,
      `bridge_input(last_token)` give a pass's input embeddings; `decode(x, caches, start)` runs
      one pass at sequence positions [start, start + L) (start may be traced) and returns logits
      and updated caches (`init_caches`).

`dtype` is an execution choice, not config: float32 for parity; bfloat16 reproduces the official
sampler, which casts the whole GPT to bf16 (`--precision bf16`): embeddings, residual stream,
matmuls and the KV cache in bf16, RMSNorm statistics and RoPE in float32, logits cast to float32.
Dense layers get `positions` = the tokens' sequence positions, for token-group quantizers.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax import lax

from arvg_jax.families.par import layout
from arvg_jax.families.par.config import PARConfig
from arvg_jax.nn.attention import (
    cache_write,
    dot_product_attention,
    init_cache,
    matmul_quantizers,
    sow_matmul_fit,
    split_qkv,
)
from arvg_jax.nn.layers import Dense
from arvg_jax.nn.rms_norm import RMSNorm
from arvg_jax.nn.rope import apply_rope
from arvg_jax.nn.swiglu import SwiGLU

Array = jax.Array

# gpt.py _init_weights: Linear / Embedding ~ N(0, 0.02) (any init serves shape planning).
_INIT = nn.initializers.normal(0.02)


class Attention(nn.Module):
    """gpt.py `Attention`: fused bias-free wqkv, 2-D RoPE on q and k, masked SDPA, wo."""

    cfg: PARConfig
    dtype: Any = jnp.float32
    qkv_shards: int = 1  # wqkv's column layout (`ExecOptions.qkv_shards`)

    @nn.compact
    def __call__(self, x, rope, mask, positions, cache=None, start=0):
        """Self-attention over the sequence or, with a cache, over the cache.

        Args:
            x: [B, L, C].
            rope: float32 [L, P, 2] table rows of the L positions.
            mask: bool [L, S] (S = L without a cache, the cache length with one).
            positions: int [L] sequence positions (Dense token groups).
            cache: None or {"k", "v"} [B, S, G, K]; x's keys / values are written at `start`.
            start: int (may be traced), sequence position of x[:, 0].

        Returns:
            [B, L, C] in dtype, and the updated cache when one was given.
        """
        cfg = self.cfg
        b, l, c = x.shape
        h, g, k_dim = cfg.n_head, cfg.kv_heads, cfg.head_dim
        qkv = Dense(
            (h + 2 * g) * k_dim, use_bias=False, dtype=self.dtype, kernel_init=_INIT, name="wqkv"
        )(x, positions)
        # split([dim, kv_size, kv_size]), each viewed head-major (B, L, heads, K).
        q, k, v = split_qkv(qkv, h, g, k_dim, self.qkv_shards)
        q, k = apply_rope(q, rope), apply_rope(k, rope)
        if cache is not None:
            cache = cache_write(cache, k, v, start)
            k, v = cache["k"], cache["v"]
        out = dot_product_attention(  # [B, L, H, K]; quantized matmuls where params hold them
            q,
            k,
            v,
            mask=mask[None, None],
            quant=matmul_quantizers(self),
            on_fit=sow_matmul_fit(self),
        )
        out = Dense(c, use_bias=False, dtype=self.dtype, kernel_init=_INIT, name="wo")(
            out.reshape(b, l, h * k_dim), positions
        )
        return out if cache is None else (out, cache)


class TransformerBlock(nn.Module):
    """gpt.py `TransformerBlock`: h = x + attn(norm(x)); out = h + ffn(norm(h))."""

    cfg: PARConfig
    dtype: Any = jnp.float32
    qkv_shards: int = 1

    @nn.compact
    def __call__(self, x, rope, mask, positions, cache=None, start=0):
        cfg, d = self.cfg, self.dtype
        a = Attention(cfg, d, self.qkv_shards, name="attention")(
            RMSNorm(cfg.norm_eps, d, name="attention_norm")(x), rope, mask, positions, cache, start
        )
        if cache is not None:
            a, cache = a
        h = x + a
        f = SwiGLU(cfg.ffn_dim, d, name="feed_forward")(
            RMSNorm(cfg.norm_eps, d, name="ffn_norm")(h), positions
        )
        out = h + f
        return out if cache is None else (out, cache)


def init_caches(cfg: PARConfig, batch: int, dtype=jnp.float32) -> tuple[dict[str, Array], ...]:
    """Zero KV caches of `cfg.cache_len` positions, one {"k", "v"} [B, S, G, K] per layer."""
    return tuple(
        init_cache(batch, cfg.cache_len, cfg.kv_heads, cfg.head_dim, dtype)
        for _ in range(cfg.n_layer)
    )


class PAR(nn.Module):
    """gpt.py `Transformer` (model_type "c2i") in eval mode."""

    cfg: PARConfig
    dtype: Any = jnp.float32
    qkv_shards: int = 1  # wqkv's column layout (`ExecOptions.qkv_shards`)

    def setup(self):
        cfg, d = self.cfg, self.dtype
        self.cls_embedding = nn.Embed(cfg.num_class_rows, cfg.dim, embedding_init=_INIT)
        self.tok_embeddings = nn.Embed(cfg.vocab_size, cfg.dim, embedding_init=_INIT)
        self.spe_tok_embeddings = nn.Embed(cfg.spe_token_num, cfg.dim, embedding_init=_INIT)
        # A list attribute: linen names the blocks layers_0 ... layers_{n_layer-1}.
        self.layers = [TransformerBlock(cfg, d, self.qkv_shards) for _ in range(cfg.n_layer)]
        self.norm = RMSNorm(cfg.norm_eps, d)
        self.output = Dense(cfg.vocab_size, use_bias=False, dtype=d, kernel_init=_INIT)

    # ---- embeddings ---------------------------------------------------------------------------
    def class_input(self, labels: Array) -> Array:
        """[B] class ids (num_classes = null class) -> [B, 1, C] (LabelEmbedder, no drop)."""
        return self.cls_embedding(labels)[:, None].astype(self.dtype)

    def token_input(self, tokens: Array) -> Array:
        """[B, L] token ids -> [B, L, C]."""
        return self.tok_embeddings(tokens).astype(self.dtype)

    def bridge_input(self, last_token: Array) -> Array:
        """Input of the first parallel pass: [embed(t_{A-1}), spe_0 .. spe_{E-1}], [B, A, C].

        gpt.py forward, `idx.shape[1] > 1 and not self.start`: keep the last token, prepend to
        the bridge embeddings.

        Args:
            last_token: [B] or [B, 1] ids of t_{A-1}.
        """
        t = self.token_input(last_token.reshape(-1, 1))  # [B, 1, C]
        spe = self.spe_tok_embeddings.embedding.astype(self.dtype)  # [E, C]
        spe = jnp.broadcast_to(spe[None], (t.shape[0], *spe.shape))
        return jnp.concatenate([t, spe], axis=1)

    # ---- teacher forcing ----------------------------------------------------------------------
    def __call__(self, labels: Array, tokens: Array) -> Array:
        """Teacher-forced logits in PAR order: position p predicts PAR token p.

        The official training forward on idx = tokens[:, :-1]: the sequence
        [cls, t_0..t_{A-1}, spe, t_A..t_{n-2}] (n + E positions) under the group mask, RoPE rows
        `freqs_cis[:n + E]`; the first n outputs are returned (gpt.py keeps block_size outputs).

        Args:
            labels: int [B] class ids.
            tokens: int [B, n] PAR-order tokens, A < n <= N.

        Returns:
            float32 [B, n, V].
        """
        n = tokens.shape[1]
        x = self.embed(labels, tokens)
        for i in range(self.cfg.n_layer):
            x = self.apply_layer(x, i=i)
        return self.head(x, np.arange(x.shape[1], dtype=np.int32))[:, :n]

    def embed(self, labels: Array, tokens: Array) -> Array:
        """The teacher-forcing input [B, n + E, C] (first-layer input `h`) of `__call__`."""
        return layout.assemble_sequence(
            self.class_input(labels),
            self.token_input(tokens[:, :-1]),
            self.spe_tok_embeddings.embedding.astype(self.dtype),
            self.cfg,
        )

    def apply_layer(self, x: Array, *, i: int, mask: str = "group") -> Array:
        """Runs layer i alone on a full sequence [B, L, C] from position 0 (for calibration).

        Args:
            x: [B, L, C], L <= 1 + N + E.
            i: static layer index.
            mask: "group" (the official forward) or "none" (bidirectional).
        """
        length = x.shape[1]
        rope = jnp.asarray(layout.rope_table(self.cfg)[:length])
        if mask == "group":
            m = jnp.asarray(layout.group_mask(self.cfg, length))
        elif mask == "none":
            m = jnp.ones((length, length), bool)
        else:
            raise ValueError(f"mask must be 'group' or 'none', got {mask!r}")
        return self.layers[i](x, rope, m, np.arange(length, dtype=np.int32))

    def head(self, x: Array, positions: Array | None = None) -> Array:
        """Final RMSNorm and `output`, cast to float32: [B, L, C] -> [B, L, V]."""
        return self.output(self.norm(x), positions).astype(jnp.float32)

    # ---- cached decoding ----------------------------------------------------------------------
    def decode(self, x: Array, caches, start: int | Array):
        """One generate() pass at sequence positions [start, start + L) with the KV caches.

        Mask rows are setup_caches' `causal_mask[input_pos]` (the group mask at the cache length)
        over the whole cache; unwritten slots are masked out, RoPE rows are `freqs_cis[input_pos]`.

        Args:
            x: [B, L, C] pass input (`class_input` / `token_input` / `bridge_input`).
            caches: per-layer {"k", "v"} [B, S, G, K] (`init_caches`).
            start: int, may be traced.

        Returns:
            float32 logits [B, L, V] and the updated caches.
        """
        cfg = self.cfg
        l = x.shape[1]
        rope = lax.dynamic_slice_in_dim(jnp.asarray(layout.rope_table(cfg)), start, l)
        mask = lax.dynamic_slice_in_dim(
            jnp.asarray(layout.group_mask(cfg, cfg.cache_len)), start, l
        )  # [L, S]
        positions = start + jnp.arange(l, dtype=jnp.int32)
        new = []
        for layer, cache in zip(self.layers, caches, strict=True):
            x, cache = layer(x, rope, mask, positions, cache, start)
            new.append(cache)
        return self.head(x, positions), tuple(new)


def abstract_params(cfg: PARConfig) -> dict:
    """The param tree of `PAR(cfg)` as `jax.ShapeDtypeStruct`s (nothing allocated)."""
    labels = jax.ShapeDtypeStruct((1,), jnp.int32)
    tokens = jax.ShapeDtypeStruct((1, cfg.block_size), jnp.int32)
    return jax.eval_shape(PAR(cfg).init, jax.random.key(0), labels, tokens)["params"]
