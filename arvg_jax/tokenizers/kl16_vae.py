"""MAR's KL-16 VAE (LDM `AutoencoderKL`, `kl16.ckpt`): the decode path, NHWC.

Matches LTH14/mar `models/vae.py` (commit fe470ac) `AutoencoderKL.decode` = `post_quant_conv`
then `Decoder` (LDM `Decoder` with temb_ch 0, attention only in the middle block since
`attn_resolutions=()`, nearest x2 + 3x3 conv upsampling, GroupNorm(32, eps 1e-6), swish).
`decode` takes latents as the VAE sees them: MAR's sampler divides its tokens by 0.2325 first
(`arvg_jax.families.mar.sampler.tokens_to_image`), as `engine_mar.py` does.

Params: `{"post_quant_conv", "decoder"}` (`converters/kl16_vae.py`).

Dims: B batch, H/W spatial, C channels, E = embed_dim latent channels.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array

_GN_GROUPS = 32  # vae.py `Normalize`: GroupNorm(32, eps=1e-6, affine=True)
_GN_EPS = 1e-6


@dataclasses.dataclass(frozen=True, kw_only=True)
class KL16Config:
    """`AutoencoderKL(embed_dim, ch_mult)` with the Encoder/Decoder defaults it relies on."""

    embed_dim: int = 16  # E, latent channels (z_channels)
    ch: int = 128  # base width (Decoder default; not an AutoencoderKL argument)
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2  # the decoder runs num_res_blocks + 1 per level
    out_ch: int = 3
    # The image side (MAR's img_size): informational, the decoder is fully convolutional; the
    # tiny shapes model records its 32 here (`arvg demo` sizes its real-image reference by it).
    image_size: int = 256

    def __post_init__(self):
        for m in self.ch_mult:
            if (self.ch * m) % _GN_GROUPS:
                raise ValueError(f"ch * ch_mult = {self.ch * m} is not divisible by 32 groups")

    @classmethod
    def release(cls, **overrides) -> KL16Config:
        """`kl16.ckpt`: AutoencoderKL(embed_dim=16, ch_mult=(1, 1, 2, 2, 4)), ch 128."""
        return cls(**overrides)

    @classmethod
    def tiny(cls, **overrides) -> KL16Config:
        """The reference fixture (`reference/mar/kl16.ckpt`): the release with ch = 32."""
        return cls(**{"ch": 32, **overrides})

    @classmethod
    def from_fixture(cls, vae_json: Mapping[str, Any]) -> KL16Config:
        """From the `"vae"` entry of MAR's fixture `config.json`."""
        known = {"cls", "note", "embed_dim", "ch_mult", "ch"}
        unknown = sorted(set(vae_json) - known)
        if unknown:
            raise ValueError(f"unknown KL-16 VAE config keys {unknown}")
        kw = {k: vae_json[k] for k in ("embed_dim", "ch") if k in vae_json}
        if "ch_mult" in vae_json:
            kw["ch_mult"] = tuple(int(m) for m in vae_json["ch_mult"])
        return cls(**kw)

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


def _conv(features: int, kernel: int, name: str) -> nn.Conv:
    # Every conv of vae.py's decode path has a bias; 3x3 convs pad 1, 1x1 convs pad 0.
    return nn.Conv(features, (kernel, kernel), padding=kernel // 2, name=name)


def _group_norm(name: str) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=_GN_GROUPS, epsilon=_GN_EPS, use_fast_variance=False, name=name)


class ResnetBlock(nn.Module):
    """vae.py `ResnetBlock` (temb None, dropout off): GN-swish-conv twice + 1x1 shortcut."""

    out_channels: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        h = _conv(self.out_channels, 3, "conv1")(nn.swish(_group_norm("norm1")(x)))
        h = _conv(self.out_channels, 3, "conv2")(nn.swish(_group_norm("norm2")(h)))
        if x.shape[-1] != self.out_channels:
            x = _conv(self.out_channels, 1, "nin_shortcut")(x)
        return x + h


class AttnBlock(nn.Module):
    """vae.py `AttnBlock`: single-head spatial attention with separate q/k/v/proj_out 1x1 convs."""

    @nn.compact
    def __call__(self, x: Array) -> Array:
        b, h, w, c = x.shape
        hn = _group_norm("norm")(x)
        q = _conv(c, 1, "q")(hn).reshape(b, h * w, c)  # [B, HW, C]
        k = _conv(c, 1, "k")(hn).reshape(b, h * w, c)
        v = _conv(c, 1, "v")(hn).reshape(b, h * w, c)
        # w_ = bmm(q, k) * C^-0.5, softmax over keys.
        logits = jnp.einsum("BIC,BJC->BIJ", q, k) * (int(c) ** (-0.5))
        attn = jax.nn.softmax(logits, axis=-1)  # [B, HW, HW]
        out = jnp.einsum("BIJ,BJC->BIC", attn, v).reshape(b, h, w, c)
        return x + _conv(c, 1, "proj_out")(out)


class Upsample(nn.Module):
    """vae.py `Upsample(with_conv=True)`: nearest x2, then a 3x3 conv."""

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)  # [B, 2H, 2W, C]
        return _conv(x.shape[-1], 3, "conv")(x)


class Decoder(nn.Module):
    """vae.py `Decoder`: conv_in, mid (block, attn, block), up levels n-1..0, norm, conv_out.

    Sows the output of `mid.block_2` as `intermediates/mid`.
    """

    config: KL16Config

    @nn.compact
    def __call__(self, z: Array) -> Array:
        cfg = self.config
        n = len(cfg.ch_mult)
        block_in = cfg.ch * cfg.ch_mult[-1]
        h = _conv(block_in, 3, "conv_in")(z)
        h = ResnetBlock(block_in, name="mid_block_1")(h)
        h = AttnBlock(name="mid_attn_1")(h)
        h = ResnetBlock(block_in, name="mid_block_2")(h)
        self.sow("intermediates", "mid", h)
        for lvl in reversed(range(n)):
            block_out = cfg.ch * cfg.ch_mult[lvl]
            for blk in range(cfg.num_res_blocks + 1):
                h = ResnetBlock(block_out, name=f"up_{lvl}_block_{blk}")(h)
            if lvl != 0:
                h = Upsample(name=f"up_{lvl}_upsample")(h)
        h = nn.swish(_group_norm("norm_out")(h))
        return _conv(cfg.out_ch, 3, "conv_out")(h)


class KL16Decode(nn.Module):
    """`AutoencoderKL.decode`: post_quant_conv (1x1) then the decoder."""

    config: KL16Config

    @nn.compact
    def __call__(self, z: Array) -> Array:
        z = _conv(self.config.embed_dim, 1, "post_quant_conv")(z)
        return Decoder(self.config, name="decoder")(z)


@functools.partial(jax.jit, static_argnames=("cfg",))
def decode(params: dict, z: Array, *, cfg: KL16Config) -> Array:
    """Latents NHWC [B, h, w, E] (VAE scale, i.e. MAR tokens / 0.2325) -> image [B, H, W, 3].

    The image is nominally in [-1, 1] (no clamp, as `vae.decode`).
    """
    return KL16Decode(cfg).apply({"params": params}, z.astype(jnp.float32))


@functools.partial(jax.jit, static_argnames=("cfg",))
def decode_with_mid(params: dict, z: Array, *, cfg: KL16Config) -> tuple[Array, Array]:
    """`decode` plus the `decoder.mid.block_2` output [B, h, w, C] (a parity checkpoint)."""
    img, state = KL16Decode(cfg).apply(
        {"params": params}, z.astype(jnp.float32), mutable=["intermediates"]
    )
    return img, state["intermediates"]["decoder"]["mid"][0]


def abstract_params(cfg: KL16Config) -> dict:
    """The decode-path param tree as `jax.ShapeDtypeStruct`s (nothing allocated)."""
    h = 1  # any latent side works for shapes
    z = jax.ShapeDtypeStruct((1, h, h, cfg.embed_dim), jnp.float32)
    tree = jax.eval_shape(lambda z: KL16Decode(cfg).init(jax.random.key(0), z), z)
    return tree["params"]
