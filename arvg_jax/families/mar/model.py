"""MAR's bidirectional MAE-style encoder-decoder (everything but the diffusion head).

Matches LTH14/mar `models/mar.py` (commit fe470ac) `forward_mae_encoder` / `forward_mae_decoder`
with timm `vision_transformer.Block` (pre-norm, qkv with bias, exact-erf GELU MLP, no layer scale).

Fixed shapes under jit: the official encoder gathers the known tokens (sequence length changes
every AR step) and the decoder scatters them back among mask tokens. Here the encoder keeps all
buffer + L positions and masks the unknown ones out as attention *keys*; every per-token op (LN,
MLP, projections) leaves the known rows exactly as in the gathered form, so the encoder output
at known rows and everything downstream equal the official values. The decoder then replaces the
unknown rows by `mask_token`, which is what the scatter produces.

Dims: B batch, L image tokens, P = buffer_size + L encoder/decoder positions, D token channels,
C model width, H heads, K head dim.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from arvg_jax.families.mar.config import MARConfig
from arvg_jax.families.mar.diffloss import SimpleMLPAdaLN
from arvg_jax.nn.attention import split_qkv
from arvg_jax.nn.layers import Dense

Array = jax.Array


def _layer_norm(eps: float, name: str | None, dtype: Any) -> nn.LayerNorm:
    # torch.nn.LayerNorm: two-pass biased variance, affine.
    return nn.LayerNorm(epsilon=eps, use_fast_variance=False, dtype=dtype, name=name)


class Attention(nn.Module):
    """timm `Attention` (qkv_bias=True, no qk-norm), with an optional key mask.

    Attributes:
        dim: C.
        num_heads: H.
    """

    dim: int
    num_heads: int
    dtype: Any = jnp.float32
    qkv_shards: int = 1  # qkv's column layout (`ExecOptions.qkv_shards`)

    @nn.compact
    def __call__(self, x: Array, key_keep: Array | None, positions: np.ndarray) -> Array:
        """x [B, P, C]; key_keep bool [B, P] (False = not attendable) or None; -> [B, P, C]."""
        b, p, c = x.shape
        h = self.num_heads
        k_dim = c // h
        qkv = Dense(3 * c, dtype=self.dtype, name="qkv")(x, positions)
        # torch: qkv.reshape(B, N, 3, H, K): [q | k | v], each third head-major.
        q, k, v = split_qkv(qkv, h, h, k_dim, self.qkv_shards)  # [B, P, H, K] each
        logits = jnp.einsum("BQHK,BTHK->BHQT", q, k, preferred_element_type=jnp.float32)
        logits = logits * (k_dim**-0.5)
        if key_keep is not None:
            # The buffer slots are always kept, so no row is all -inf.
            logits = jnp.where(key_keep[:, None, None, :], logits, -jnp.inf)
        attn = jax.nn.softmax(logits, axis=-1).astype(v.dtype)  # [B, H, P, P]
        out = jnp.einsum("BHQT,BTHK->BQHK", attn, v).reshape(b, p, c)  # [B, P, C]
        return Dense(c, dtype=self.dtype, name="proj")(out, positions)


class Mlp(nn.Module):
    """timm `Mlp`: fc1 -> exact GELU -> fc2."""

    hidden: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, positions: np.ndarray) -> Array:
        c = x.shape[-1]
        x = Dense(self.hidden, dtype=self.dtype, name="fc1")(x, positions)
        x = jax.nn.gelu(x, approximate=False)
        return Dense(c, dtype=self.dtype, name="fc2")(x, positions)


class Block(nn.Module):
    """timm `Block`: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    dim: int
    num_heads: int
    mlp_dim: int
    eps: float
    dtype: Any = jnp.float32
    qkv_shards: int = 1

    @nn.compact
    def __call__(self, x: Array, key_keep: Array | None, positions: np.ndarray) -> Array:
        d = self.dtype
        h = _layer_norm(self.eps, "norm1", d)(x)
        attn = Attention(self.dim, self.num_heads, d, self.qkv_shards, name="attn")
        x = x + attn(h, key_keep, positions)
        h = _layer_norm(self.eps, "norm2", d)(x)
        return x + Mlp(self.mlp_dim, d, name="mlp")(h, positions)


class MAR(nn.Module):
    """The MAR transformer: tokens + mask + class vector -> per-token condition z.

    Params (plain dict): `class_emb/embedding` [1000, Ce], `fake_latent` [Ce], `mask_token` [Cd],
    `encoder_pos_embed_learned` [P, Ce], `decoder_pos_embed_learned` [P, Cd],
    `diffusion_pos_embed_learned` [L, Cd], `z_proj`, `z_proj_ln`, `encoder_blocks_{i}`,
    `encoder_norm`, `decoder_embed`, `decoder_blocks_{i}`, `decoder_norm`.

    Attributes:
        config: the architecture.
        dtype: compute dtype (float32 for parity).
        qkv_shards: the qkv columns' layout (`ExecOptions.qkv_shards`).
    """

    config: MARConfig
    dtype: Any = jnp.float32
    qkv_shards: int = 1

    def setup(self):
        cfg, d = self.config, self.dtype
        ce, cd = cfg.encoder_embed_dim, cfg.decoder_embed_dim
        p = cfg.buffer_size + cfg.seq_len
        normal = nn.initializers.normal(0.02)  # mar.py initialize_weights
        self.class_emb = nn.Embed(cfg.class_num, ce, embedding_init=normal)
        self.fake_latent = self.param("fake_latent", normal, (ce,), jnp.float32)
        self.mask_token = self.param("mask_token", normal, (cd,), jnp.float32)
        self.encoder_pos_embed_learned = self.param(
            "encoder_pos_embed_learned", normal, (p, ce), jnp.float32
        )
        self.decoder_pos_embed_learned = self.param(
            "decoder_pos_embed_learned", normal, (p, cd), jnp.float32
        )
        self.diffusion_pos_embed_learned = self.param(
            "diffusion_pos_embed_learned", normal, (cfg.seq_len, cd), jnp.float32
        )
        self.z_proj = Dense(ce, dtype=d)
        self.z_proj_ln = _layer_norm(1e-6, None, d)  # hard-coded eps in mar.py
        self.encoder_blocks = [
            Block(ce, cfg.encoder_num_heads, cfg.encoder_mlp_dim, cfg.norm_eps, d, self.qkv_shards)
            for _ in range(cfg.encoder_depth)
        ]
        self.encoder_norm = _layer_norm(cfg.norm_eps, None, d)
        self.decoder_embed = Dense(cd, dtype=d)
        self.decoder_blocks = [
            Block(cd, cfg.decoder_num_heads, cfg.decoder_mlp_dim, cfg.norm_eps, d, self.qkv_shards)
            for _ in range(cfg.decoder_depth)
        ]
        self.decoder_norm = _layer_norm(cfg.norm_eps, None, d)

    def class_vectors(self, labels: Array, drop: Array) -> Array:
        """labels int [B], drop bool [B] (True = CFG null `fake_latent`) -> [B, Ce]."""
        emb = self.class_emb(jnp.clip(labels, 0, self.config.class_num - 1))
        return jnp.where(drop[:, None], self.fake_latent[None].astype(emb.dtype), emb)

    def _keep(self, mask: Array) -> Array:
        # mask [B, L], 1/True = unknown -> keep [B, P] (buffer slots are never masked).
        b = mask.shape[0]
        known = jnp.logical_not(mask.astype(bool))
        return jnp.concatenate([jnp.ones((b, self.config.buffer_size), bool), known], axis=1)

    def encoder_input(self, tokens: Array, mask: Array, class_vec: Array) -> tuple[Array, Array]:
        """The encoder's first-block input: (x [B, P, Ce], keep bool [B, P]).

        tokens [B, L, D], mask [B, L] (1 = unknown), class_vec [B, Ce]; `keep` marks the rows the
        official encoder gathers (buffer slots and known tokens).
        """
        cfg = self.config
        x = self.z_proj(tokens.astype(self.dtype))  # [B, L, Ce]
        b, _, ce = x.shape
        # All buffer slots are overwritten by the class vector (`x[:, :buffer_size] = ...`).
        buf = jnp.broadcast_to(class_vec.astype(x.dtype)[:, None], (b, cfg.buffer_size, ce))
        x = jnp.concatenate([buf, x], axis=1)  # [B, P, Ce]
        x = x + self.encoder_pos_embed_learned[None].astype(x.dtype)
        return self.z_proj_ln(x), self._keep(mask)

    def encode(self, tokens: Array, mask: Array, class_vec: Array) -> Array:
        """`forward_mae_encoder` (eval): tokens [B, L, D], mask [B, L], class_vec [B, Ce].

        Returns:
            [B, P, Ce] after `encoder_norm`; rows of unknown positions hold values that nothing
            downstream reads (the official code drops them).
        """
        cfg = self.config
        positions = np.arange(cfg.buffer_size + cfg.seq_len)
        x, keep = self.encoder_input(tokens, mask, class_vec)
        for block in self.encoder_blocks:
            x = block(x, keep, positions)
        return self.encoder_norm(x)

    def decoder_input(self, x: Array, mask: Array) -> Array:
        """Encoder blocks' output [B, P, Ce] (before `encoder_norm`) -> first decoder-block input
        [B, P, Cd]: `encoder_norm`, `decoder_embed`, `mask_token` at unknown rows, positions."""
        x = self.decoder_embed(self.encoder_norm(x))  # [B, P, Cd]
        x = jnp.where(self._keep(mask)[..., None], x, self.mask_token.astype(x.dtype))
        return x + self.decoder_pos_embed_learned[None].astype(x.dtype)

    def decoder_output(self, x: Array) -> Array:
        """Last decoder block's output [B, P, Cd] -> z [B, L, Cd] (`decoder_norm`, buffer
        dropped, diffusion positions added)."""
        x = self.decoder_norm(x)[:, self.config.buffer_size :]  # [B, L, Cd]
        return x + self.diffusion_pos_embed_learned[None].astype(x.dtype)

    def decode(self, x: Array, mask: Array) -> Array:
        """`forward_mae_decoder`: encoder output [B, P, Ce], mask [B, L] -> z [B, L, Cd]."""
        cfg = self.config
        positions = np.arange(cfg.buffer_size + cfg.seq_len)
        x = self.decoder_embed(x)  # [B, P, Cd]
        keep = self._keep(mask)
        x = jnp.where(keep[..., None], x, self.mask_token.astype(x.dtype))
        x = x + self.decoder_pos_embed_learned[None].astype(x.dtype)
        for block in self.decoder_blocks:
            x = block(x, None, positions)  # the decoder attends to every position
        return self.decoder_output(x)

    def __call__(self, tokens: Array, mask: Array, labels: Array, drop: Array) -> Array:
        """tokens [B, L, D], mask [B, L] (1 = unknown), labels int [B], drop bool [B] -> z."""
        return self.decode(self.encode(tokens, mask, self.class_vectors(labels, drop)), mask)


def abstract_params(cfg: MARConfig) -> dict:
    """`{"transformer": MAR params, "diffloss": head params}` as `jax.ShapeDtypeStruct`s."""
    b, l, d = 1, cfg.seq_len, cfg.token_embed_dim
    head = SimpleMLPAdaLN(width=cfg.diffloss_w, depth=cfg.diffloss_d, out_channels=2 * d)

    def init():
        key = jax.random.key(0)
        transformer = MAR(cfg).init(
            key,
            jnp.zeros((b, l, d)),
            jnp.zeros((b, l)),
            jnp.zeros((b,), jnp.int32),
            jnp.zeros((b,), bool),
        )
        net = head.init(
            key,
            jnp.zeros((b, d)),
            jnp.zeros((b,), jnp.int32),
            jnp.zeros((b, cfg.decoder_embed_dim)),
        )
        return {"transformer": transformer["params"], "diffloss": net["params"]}

    return jax.eval_shape(init)
