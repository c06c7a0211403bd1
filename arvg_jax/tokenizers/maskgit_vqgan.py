"""MaskGIT-VQGAN decoder (RAR's tokenizer), NHWC.

Matches bytedance/1d-tokenizer (commit 942a96f) `modeling/modules/maskgit_vqgan.py` `Decoder` and
`VectorQuantizer.get_codebook_entry`, as wrapped by `modeling/titok.py` `PretrainedTokenizer`
(`decode_tokens` = clamp(decoder(codebook[ids]), 0, 1)). Only the decode path is ported.

Params (plain dict): `quantize/embedding` [V, Z] (official `quantize.embedding.weight`) and
`decoder/...`: conv_in, mid_{j}, up_{L}/block_{j}, up_{L}/upsample_conv (L >= 1), norm_out,
conv_out; a ResnetBlock has norm1, conv1, norm2, conv2 and, when its widths differ, nin_shortcut.
`converters/maskgit_vqgan.py` builds it from the official state dict.

Dims: B batch, n tokens (h·w, raster), h/w latent side, H/W image side, Z z_channels, V codebook.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

_GN_GROUPS = 32  # nn.GroupNorm(num_groups=32, eps=1e-6, affine=True) everywhere
_GN_EPS = 1e-6

# PretrainedTokenizer keys with no effect on decoding (dropout is 0 and inactive in eval()).
IGNORED_TOKENIZER_KEYS = frozenset({"dropout"})


@dataclasses.dataclass(frozen=True, kw_only=True)
class MaskGITVQGANConfig:
    """The `PretrainedTokenizer` OmegaConf (titok.py) plus its quantizer size (hashable)."""

    channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_resolutions: int = 5
    hidden_channels: int = 128
    num_channels: int = 3
    num_res_blocks: int = 2
    resolution: int = 256
    z_channels: int = 256
    codebook_size: int = 1024  # VectorQuantizer num_embeddings
    token_size: int = 256  # VectorQuantizer embedding_dim (= z_channels for the decoder)

    def __post_init__(self):
        object.__setattr__(self, "channel_mult", tuple(int(m) for m in self.channel_mult))
        if len(self.channel_mult) != self.num_resolutions:
            raise ValueError(
                f"channel_mult {self.channel_mult} has not num_resolutions={self.num_resolutions} entries"
            )
        if self.token_size != self.z_channels:
            raise ValueError(f"token_size {self.token_size} != z_channels {self.z_channels}")
        bad = [m for m in self.channel_mult if (self.hidden_channels * m) % _GN_GROUPS]
        if bad:
            raise ValueError(
                f"GroupNorm(32) needs widths divisible by 32: {self.hidden_channels}x{bad}"
            )

    @classmethod
    def release(cls, **kw) -> MaskGITVQGANConfig:
        """`maskgit-vqgan-imagenet-f16-256.bin` (titok.py PretrainedTokenizer)."""
        return cls(**kw)

    @classmethod
    def tiny(cls, **kw) -> MaskGITVQGANConfig:
        """Test size: widths 32/64, 1 res block, 2 levels (latent 3 x 3 -> 6 x 6), Z 7, V 11."""
        kw = {
            "channel_mult": (1, 2),
            "num_resolutions": 2,
            "hidden_channels": 32,
            "num_res_blocks": 1,
            "resolution": 6,
            "z_channels": 7,
            "token_size": 7,
            "codebook_size": 11,
            **kw,
        }
        return cls(**kw)

    @classmethod
    def from_official(
        cls, tokenizer: Mapping[str, Any], codebook: Sequence[int] | None = None
    ) -> MaskGITVQGANConfig:
        """From the PretrainedTokenizer OmegaConf dict and (num_embeddings, embedding_dim).

        Raises:
            ValueError: on an unknown key.
        """
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(tokenizer) - fields - IGNORED_TOKENIZER_KEYS)
        if unknown:
            raise ValueError(f"unknown MaskGIT-VQGAN config keys: {unknown}")
        kw = {k: v for k, v in tokenizer.items() if k in fields}
        if codebook is not None:
            kw["codebook_size"], kw["token_size"] = int(codebook[0]), int(codebook[1])
        return cls(**kw)

    @property
    def latent_size(self) -> int:
        """Side of the token map (resolution / 2^(num_resolutions - 1)); 16 at release."""
        return self.resolution // 2 ** (self.num_resolutions - 1)

    @property
    def num_tokens(self) -> int:
        return self.latent_size**2

    @property
    def image_size(self) -> int:
        """Side of the decoded images (= resolution; the name every tokenizer config shares)."""
        return self.resolution


def _conv(features: int, kernel: int, name: str, *, bias: bool = True) -> nn.Conv:
    # Conv2dSame at stride 1: total padding k - 1, left (k - 1) // 2 (1 each side for 3x3).
    lo = (kernel - 1) // 2
    pad = ((lo, kernel - 1 - lo), (lo, kernel - 1 - lo))
    return nn.Conv(features, (kernel, kernel), padding=pad, use_bias=bias, name=name)


def _group_norm(name: str) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=_GN_GROUPS, epsilon=_GN_EPS, use_fast_variance=False, name=name)


class ResnetBlock(nn.Module):
    """maskgit_vqgan.py ResnetBlock: GN-SiLU-conv3x3 (no bias) twice, plus a residual.

    Quirk kept from the original MaskGIT: when the widths differ, the residual is
    nin_shortcut (1x1, no bias, out -> out) applied to the block's OUTPUT h, not to its input,
    so the block returns h + nin_shortcut(h).
    """

    out_channels: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = _conv(self.out_channels, 3, "conv1", bias=False)(nn.silu(_group_norm("norm1")(x)))
        h = _conv(self.out_channels, 3, "conv2", bias=False)(nn.silu(_group_norm("norm2")(h)))
        if x.shape[-1] != self.out_channels:
            return h + _conv(self.out_channels, 1, "nin_shortcut", bias=False)(h)
        return h + x


class UpBlock(nn.Module):
    """maskgit_vqgan.py UpsamplingBlock `level`: ResnetBlocks, then (level >= 1) nearest x2 and
    upsample_conv (3x3 with bias)."""

    cfg: MaskGITVQGANConfig
    level: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.cfg
        block_out = cfg.hidden_channels * cfg.channel_mult[self.level]
        for j in range(cfg.num_res_blocks):
            x = ResnetBlock(block_out, name=f"block_{j}")(x)
        if self.level != 0:
            x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)  # F.interpolate nearest x2
            x = _conv(block_out, 3, "upsample_conv")(x)
        return x


class Decoder(nn.Module):
    """maskgit_vqgan.py Decoder: conv_in, mid blocks, levels L = num_resolutions-1 .. 0 (each
    num_res_blocks ResnetBlocks, then nearest x2 + upsample_conv for L >= 1), GN-SiLU-conv_out."""

    cfg: MaskGITVQGANConfig

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        """z float32 [B, h, w, Z] -> [B, H, W, num_channels] (not clamped)."""
        cfg = self.cfg
        mult = cfg.channel_mult
        block_in = cfg.hidden_channels * mult[-1]
        x = _conv(block_in, 3, "conv_in")(z)
        for j in range(cfg.num_res_blocks):
            x = ResnetBlock(block_in, name=f"mid_{j}")(x)
        for level in reversed(range(cfg.num_resolutions)):
            x = UpBlock(cfg, level, name=f"up_{level}")(x)
        x = nn.silu(_group_norm("norm_out")(x))
        return _conv(cfg.num_channels, 3, "conv_out")(x)


class MaskGITVQGAN(nn.Module):
    """PretrainedTokenizer's decode path: codebook lookup, decoder, clamp."""

    cfg: MaskGITVQGANConfig

    def setup(self):
        cfg = self.cfg
        self.quantize = nn.Embed(
            cfg.codebook_size, cfg.token_size, embedding_init=nn.initializers.normal(1.0)
        )
        self.decoder = Decoder(cfg)

    def lookup(self, tokens: jax.Array) -> jax.Array:
        """get_codebook_entry: int [B, n] raster ids -> float32 [B, h, w, Z] (h = w = sqrt n)."""
        b, n = tokens.shape
        side = round(n**0.5)
        if side * side != n:
            raise ValueError(f"{n} tokens are not a square map")
        z = self.quantize(tokens).astype(jnp.float32)  # [B, n, Z]
        return z.reshape(b, side, side, -1)  # [B, h, w, Z]

    def __call__(self, tokens: jax.Array, *, clamp: bool = True) -> jax.Array:
        """decode_tokens: int [B, n] -> float32 [B, H, W, 3], clamped to [0, 1] unless asked."""
        img = self.decoder(self.lookup(tokens))
        return jnp.clip(img, 0.0, 1.0) if clamp else img


def decode_tokens(params: dict, cfg: MaskGITVQGANConfig, tokens, *, clamp: bool = True):
    """`PretrainedTokenizer.decode_tokens`: [B, n] ids -> float32 [B, H, W, 3] NHWC in [0, 1]."""
    return MaskGITVQGAN(cfg).apply({"params": params}, jnp.asarray(tokens), clamp=clamp)


@functools.cache
def abstract_params(cfg: MaskGITVQGANConfig) -> dict:
    """The param tree as `jax.ShapeDtypeStruct`s (nothing allocated)."""
    tokens = jax.ShapeDtypeStruct((1, cfg.num_tokens), jnp.int32)
    return jax.eval_shape(MaskGITVQGAN(cfg).init, jax.random.key(0), tokens)["params"]
