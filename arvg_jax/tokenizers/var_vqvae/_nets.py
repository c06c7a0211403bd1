"""VAR VQVAE's convolutional networks (basic_vae.py): `Encoder`, `Decoder` and their blocks.

Matches FoundationVision/VAR `models/basic_vae.py` (commit 78b9539), NHWC: `ResnetBlock`,
`AttnBlock`, `Downsample` (`Downsample2x`), `Upsample` (`Upsample2x`), and the `Encoder` (image ->
latent) and `Decoder` (latent -> image) built from them. Submodule names mirror the torch keys
(see `Encoder` / `Decoder`), which `converters/var_vae.py` relies on; the blocks are also reused by
`arvg_jax.tokenizers.llamagen_vq16`.

Why a module of its own: these are the image-side Linen modules, independent of the multi-scale
quantizer (`_quant`); `arvg_jax.tokenizers.var_vqvae` composes the two and re-exports
these names (import them from there).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from arvg_jax import resample
from arvg_jax.tokenizers.var_vqvae._config import _GN_EPS, _GN_GROUPS, VQVAEConfig


def _conv(features: int, kernel: int, name: str, dtype: Any, param_dtype: Any, **kw) -> nn.Conv:
    # Every conv of basic_vae.py has a bias; 3x3 convs pad 1, 1x1 convs pad 0.
    kw.setdefault("padding", kernel // 2)
    return nn.Conv(
        features, (kernel, kernel), dtype=dtype, param_dtype=param_dtype, name=name, **kw
    )


def _group_norm(name: str, dtype: Any, param_dtype: Any) -> nn.GroupNorm:
    return nn.GroupNorm(
        num_groups=_GN_GROUPS,
        epsilon=_GN_EPS,
        use_fast_variance=False,
        dtype=dtype,
        param_dtype=param_dtype,
        name=name,
    )


class ResnetBlock(nn.Module):
    """basic_vae.py `ResnetBlock`: GN-SiLU-conv3x3 twice plus a (1x1 if widths differ) shortcut."""

    out_channels: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        d, p = self.dtype, self.param_dtype
        h = _conv(self.out_channels, 3, "conv1", d, p)(nn.silu(_group_norm("norm1", d, p)(x)))
        h = _conv(self.out_channels, 3, "conv2", d, p)(nn.silu(_group_norm("norm2", d, p)(h)))
        if x.shape[-1] != self.out_channels:
            x = _conv(self.out_channels, 1, "nin_shortcut", d, p)(x)
        return x + h


class AttnBlock(nn.Module):
    """basic_vae.py `AttnBlock`: single-head spatial self-attention with a fused [q|k|v] 1x1 conv."""

    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        d, p = self.dtype, self.param_dtype
        b, h, w, c = x.shape
        qkv = _conv(3 * c, 1, "qkv", d, p)(_group_norm("norm", d, p)(x))
        qkv = qkv.reshape(b, h * w, 3 * c)  # [B, HW, 3C]; channels are [q | k | v]
        q, k, v = jnp.split(qkv, 3, axis=-1)  # [B, HW, C] each
        # torch.bmm(q, k).mul_(C ** -0.5), softmax over keys (dim 2); the softmax runs in float32.
        logits = jnp.einsum("BIC,BJC->BIJ", q, k, preferred_element_type=jnp.float32)
        attn = jax.nn.softmax(logits * (c**-0.5), axis=-1).astype(v.dtype)  # [B, HW, HW]
        out = jnp.einsum("BIJ,BJC->BIC", attn, v).reshape(b, h, w, c)  # [B, H, W, C]
        return x + _conv(c, 1, "proj_out", d, p)(out)


class Downsample(nn.Module):
    """basic_vae.py `Downsample2x`: zero-pad right/bottom by 1, then a 3x3 stride-2 conv, no pad."""

    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))  # F.pad(x, (0, 1, 0, 1))
        conv = _conv(x.shape[-1], 3, "conv", self.dtype, self.param_dtype, strides=2, padding=0)
        return conv(x)


class Upsample(nn.Module):
    """basic_vae.py `Upsample2x`: nearest x2, then a 3x3 conv."""

    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = _conv(x.shape[-1], 3, "conv", self.dtype, self.param_dtype)
        return conv(resample.upsample_nearest_2x(x))


class Encoder(nn.Module):
    """basic_vae.py `Encoder` (double_z=False, using_sa=using_mid_sa=True): image -> latent.

    Submodule names mirror the torch keys: torch `down.{l}.block.{b}` is `down_{l}_block_{b}`,
    `mid.block_1` is `mid_block_1`, and so on.
    """

    cfg: VQVAEConfig
    dtype: Any = jnp.float32  # compute dtype (an execution choice; params are float32)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Maps `[B, H, W, in_channels]` to `[B, H / downsample, W / downsample, Cv]`."""
        cfg = self.cfg
        d, p = self.dtype, jnp.float32
        n = len(cfg.ch_mult)
        h = _conv(cfg.ch, 3, "conv_in", d, p)(x.astype(d))
        for lvl in range(n):
            for blk in range(cfg.num_res_blocks):
                h = ResnetBlock(cfg.ch * cfg.ch_mult[lvl], d, p, name=f"down_{lvl}_block_{blk}")(h)
                if lvl == n - 1:  # attention only at the lowest resolution
                    h = AttnBlock(d, p, name=f"down_{lvl}_attn_{blk}")(h)
            if lvl != n - 1:
                h = Downsample(d, p, name=f"down_{lvl}_downsample")(h)
        c = h.shape[-1]
        h = ResnetBlock(c, d, p, name="mid_block_1")(h)
        h = AttnBlock(d, p, name="mid_attn_1")(h)
        h = ResnetBlock(c, d, p, name="mid_block_2")(h)
        h = nn.silu(_group_norm("norm_out", d, p)(h))
        return _conv(cfg.z_channels, 3, "conv_out", d, p)(h)


class Decoder(nn.Module):
    """basic_vae.py `Decoder` (using_sa=using_mid_sa=True): latent -> image (not clamped).

    Levels run `up_{n-1}` ... `up_0`; torch `up.{l}.block.{b}` is `up_{l}_block_{b}`.
    """

    cfg: VQVAEConfig
    dtype: Any = jnp.float32  # compute dtype (an execution choice; params are float32)

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        """Maps `[B, h, w, Cv]` to `[B, h * downsample, w * downsample, in_channels]`."""
        cfg = self.cfg
        d, p = self.dtype, jnp.float32
        n = len(cfg.ch_mult)
        block_in = cfg.ch * cfg.ch_mult[-1]
        h = _conv(block_in, 3, "conv_in", d, p)(z.astype(d))
        h = ResnetBlock(block_in, d, p, name="mid_block_1")(h)
        h = AttnBlock(d, p, name="mid_attn_1")(h)
        h = ResnetBlock(block_in, d, p, name="mid_block_2")(h)
        for lvl in reversed(range(n)):
            for blk in range(cfg.num_res_blocks + 1):
                h = ResnetBlock(cfg.ch * cfg.ch_mult[lvl], d, p, name=f"up_{lvl}_block_{blk}")(h)
                if lvl == n - 1:
                    h = AttnBlock(d, p, name=f"up_{lvl}_attn_{blk}")(h)
            if lvl != 0:
                h = Upsample(d, p, name=f"up_{lvl}_upsample")(h)
        h = nn.silu(_group_norm("norm_out", d, p)(h))
        return _conv(cfg.in_channels, 3, "conv_out", d, p)(h)
