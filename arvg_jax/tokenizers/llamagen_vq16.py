"""LlamaGen VQ-16 (PAR's tokenizer), NHWC, plus PAR's evaluation post-processing.

Matches YuqingWang1029/PAR `tokenizer/tokenizer_image/vq_model.py` (LlamaGen's; commit b1dd994):
`VQModel.decode_code` = l2-normalised codebook lookup -> `post_quant_conv` -> `Decoder`, and
`autoregressive/sample/sample_c2i_ddp.py`'s bicubic resize to the evaluation size and uint8
conversion. The encode path (`Encoder`, `quant_conv`, the nearest-code lookup of
`VectorQuantizer.forward`) is here to train the tiny tokenizer (`families/par/train`); release
checkpoints are converted for decoding only.

Params (plain dict; `converters/llamagen_vq16.py` builds it from `vq_ds16_c2i.pt`):
    quantize/embedding [codebook_size, D]    post_quant_conv/{kernel [1,1,D,Z], bias}
    (trained tokenizers also hold encoder/... and quant_conv/{kernel [1,1,Z,D], bias})
    decoder/conv_in, decoder/mid_{0,2} (ResnetBlock), decoder/mid_1 (AttnBlock),
    decoder/conv_blocks_{i}_res_{j}, decoder/conv_blocks_0_attn_{j},
    decoder/conv_blocks_{i}_upsample/conv (i < n - 1), decoder/norm_out, decoder/conv_out
    (torch `decoder.conv_blocks.{i}.res.{j}` is `decoder/conv_blocks_{i}_res_{j}`, and so on)

Dims: B batch, h/w token grid, H/W image, D codebook dim, Z z_channels, C channels.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from arvg_jax import resample
from arvg_jax.nn.layers import l2_normalize
from arvg_jax.tokenizers.var_vqvae import Downsample, ResnetBlock

Array = jax.Array

_GN_GROUPS = 32  # vq_model.py `Normalize`: GroupNorm(32, eps=1e-6, affine=True)
_GN_EPS = 1e-6


@dataclasses.dataclass(frozen=True, kw_only=True)
class VQ16Config:
    """VQ-16 settings (vq_model.py `ModelArgs` decode-relevant fields plus the Decoder's `ch`).

    Defaults are the release `vq_ds16_c2i.pt` (`VQ_16(codebook_size=16384, codebook_embed_dim=8)`).
    """

    codebook_size: int = 16384
    codebook_embed_dim: int = 8  # D
    codebook_l2_norm: bool = True  # rows are l2-normalised before lookup
    decoder_ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    z_channels: int = 256  # Z
    ch: int = 128  # Decoder(ch=...) base width
    num_res_blocks: int = 2  # Encoder / Decoder default; decoder levels have one more
    image_size: int = 384  # generated image side (sample_c2i_ddp.py --image-size)
    image_size_eval: int = 256  # side after the evaluation resize (--image-size-eval)

    def __post_init__(self):
        object.__setattr__(self, "decoder_ch_mult", tuple(int(m) for m in self.decoder_ch_mult))
        for m in self.decoder_ch_mult:
            if (self.ch * m) % _GN_GROUPS:
                raise ValueError(f"ch * ch_mult = {self.ch * m} is not divisible by 32 groups")

    @classmethod
    def release(cls, **kw) -> VQ16Config:
        """`vq_ds16_c2i.pt`, the tokenizer of every PAR release."""
        return cls(**kw)

    @classmethod
    def tiny(cls, **kw) -> VQ16Config:
        """The reference fixture's VQ (`reference/par/config.json`): ch 32, z_channels 64."""
        return cls(**{"ch": 32, "z_channels": 64, **kw})

    @classmethod
    def from_fixture(cls, vq: Mapping[str, Any], **kw) -> VQ16Config:
        """From a fixture's `config.json["vq"]` ({"model": "VQ-16", codebook_*, ch, ch_mult, ...})."""
        if vq.get("model", "VQ-16") != "VQ-16":
            raise ValueError(f"only VQ-16 is ported, got {vq.get('model')!r}")
        known = {"model", "codebook_size", "codebook_embed_dim", "ch", "ch_mult", "z_channels"}
        unknown = sorted(set(vq) - known)
        if unknown:
            raise ValueError(f"unknown VQ config keys {unknown}")
        fields = {k: vq[k] for k in ("codebook_size", "codebook_embed_dim", "ch", "z_channels")}
        if "ch_mult" in vq:
            fields["decoder_ch_mult"] = tuple(vq["ch_mult"])
        return cls(**{**fields, **kw})

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.decoder_ch_mult) - 1)

    @property
    def grid_size(self) -> int:
        """Token grid side of an `image_size` image."""
        return self.image_size // self.downsample


def _conv(features: int, kernel: int, name: str | None = None) -> nn.Conv:
    # vq_model.py: every conv has a bias; 3x3 convs pad 1, 1x1 convs pad 0.
    return nn.Conv(features, (kernel, kernel), padding=kernel // 2, name=name)


def _group_norm(name: str) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=_GN_GROUPS, epsilon=_GN_EPS, use_fast_variance=False, name=name)


class AttnBlock(nn.Module):
    """vq_model.py `AttnBlock`: single-head spatial attention with separate 1x1 q, k, v convs."""

    @nn.compact
    def __call__(self, x: Array) -> Array:
        b, h, w, c = x.shape
        hn = _group_norm("norm")(x)
        q = _conv(c, 1, "q")(hn).reshape(b, h * w, c)  # [B, HW, C]
        k = _conv(c, 1, "k")(hn).reshape(b, h * w, c)
        v = _conv(c, 1, "v")(hn).reshape(b, h * w, c)
        # bmm(q, k) * c^-0.5, softmax over keys.
        logits = jnp.einsum(
            "BIC,BJC->BIJ", q, k, preferred_element_type=jnp.promote_types(q.dtype, jnp.float32)
        )
        attn = jax.nn.softmax(logits * (int(c) ** -0.5), axis=-1)  # [B, HW, HW]
        out = jnp.einsum("BIJ,BJC->BIC", attn, v).reshape(b, h, w, c)
        return x + _conv(c, 1, "proj_out")(out)


class Upsample(nn.Module):
    """vq_model.py `Upsample` (with_conv): nearest x2, then a 3x3 conv."""

    @nn.compact
    def __call__(self, x: Array) -> Array:
        return _conv(x.shape[-1], 3, "conv")(resample.upsample_nearest_2x(x))


class Encoder(nn.Module):
    """vq_model.py `Encoder` (encoder_ch_mult = decoder_ch_mult as in `VQ_16`): image -> latent.

    `conv_blocks_{i}` is level i, highest resolution first: num_res_blocks res blocks (attention
    after each at the last level), then a downsample except at the last level; mid (Res, Attn,
    Res), GroupNorm, SiLU, conv_out to z_channels.
    """

    cfg: VQ16Config

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """[B, H, W, 3] -> [B, H / 2^(n-1), W / 2^(n-1), Z]."""
        cfg = self.cfg
        mult = cfg.decoder_ch_mult
        n = len(mult)
        h = _conv(cfg.ch, 3, "conv_in")(x)
        for i in range(n):
            for j in range(cfg.num_res_blocks):
                h = ResnetBlock(cfg.ch * mult[i], name=f"conv_blocks_{i}_res_{j}")(h)
                if i == n - 1:
                    h = AttnBlock(name=f"conv_blocks_{i}_attn_{j}")(h)
            if i != n - 1:
                h = Downsample(name=f"conv_blocks_{i}_downsample")(h)
        c = h.shape[-1]
        h = ResnetBlock(c, name="mid_0")(h)
        h = AttnBlock(name="mid_1")(h)
        h = ResnetBlock(c, name="mid_2")(h)
        h = nn.silu(_group_norm("norm_out")(h))
        return _conv(cfg.z_channels, 3, "conv_out")(h)


class Decoder(nn.Module):
    """vq_model.py `Decoder`: conv_in, mid (Res, Attn, Res), conv_blocks low-res first, out.

    `conv_blocks_{i}` is level n-1-i: block 0 is the widest and lowest-resolution one and the
    only one with attention (after each res block); blocks 0 .. n-2 end with an upsample.
    """

    cfg: VQ16Config

    @nn.compact
    def __call__(self, z: Array) -> Array:
        """[B, h, w, Z] -> [B, h * 2^(n-1), w * 2^(n-1), 3], not clamped."""
        cfg = self.cfg
        mult = cfg.decoder_ch_mult
        n = len(mult)
        block_in = cfg.ch * mult[-1]
        h = _conv(block_in, 3, "conv_in")(z)
        h = ResnetBlock(block_in, name="mid_0")(h)
        h = AttnBlock(name="mid_1")(h)
        h = ResnetBlock(block_in, name="mid_2")(h)
        for i, lvl in enumerate(reversed(range(n))):
            for j in range(cfg.num_res_blocks + 1):
                h = ResnetBlock(cfg.ch * mult[lvl], name=f"conv_blocks_{i}_res_{j}")(h)
                if lvl == n - 1:
                    h = AttnBlock(name=f"conv_blocks_{i}_attn_{j}")(h)
            if i != n - 1:
                h = Upsample(name=f"conv_blocks_{i}_upsample")(h)
        h = nn.silu(_group_norm("norm_out")(h))
        return _conv(3, 3, "conv_out")(h)


class VQ16(nn.Module):
    """vq_model.py `VQModel.decode_code` (decode path only)."""

    cfg: VQ16Config

    def setup(self):
        cfg = self.cfg
        self.embedding = self.param(
            "embedding",
            nn.initializers.normal(1.0),
            (cfg.codebook_size, cfg.codebook_embed_dim),
            jnp.float32,
        )
        self.post_quant_conv = _conv(cfg.z_channels, 1)
        self.decoder = Decoder(cfg)

    def __call__(self, tokens: Array, grid: tuple[int, int]) -> Array:
        """Raster-order ids [B, h*w] -> image [B, H, W, 3] (nominally [-1, 1], not clamped).

        `get_codebook_entry`: F.normalize(codebook) rows (when codebook_l2_norm), viewed
        (B, h, w, D); then post_quant_conv and the decoder.
        """
        emb = self.embedding
        if self.cfg.codebook_l2_norm:
            emb = l2_normalize(emb)
        z = jnp.take(emb, tokens, axis=0).reshape(tokens.shape[0], *grid, emb.shape[-1])
        return self.decoder(self.post_quant_conv(z))


# `VQ16` keeps its codebook as a param of the top module; the tree nests it under "quantize" to
# mirror the torch key `quantize.embedding.weight`.
def _to_module(params: dict) -> dict:
    p = dict(params)
    quantize = p.pop("quantize")
    return {**p, "embedding": quantize["embedding"]}


def _from_module(params: dict) -> dict:
    p = dict(params)
    embedding = p.pop("embedding")
    return {**p, "quantize": {"embedding": embedding}}


_ENCODE_KEYS = ("encoder", "quant_conv")


def decode_tree(params: dict) -> dict:
    """The decode-path params (`abstract_params`' tree) of a tree that may hold the encoder."""
    return {k: v for k, v in params.items() if k not in _ENCODE_KEYS}


def init_train_params(cfg: VQ16Config, rng: Array) -> dict:
    """Random params of the whole tokenizer (decode tree + encoder/ + quant_conv/), flax init."""
    k_enc, k_qc, k_dec = jax.random.split(rng, 3)
    size = cfg.image_size
    x = jnp.zeros((1, size, size, 3), jnp.float32)
    z = jnp.zeros((1, cfg.grid_size, cfg.grid_size, cfg.z_channels), jnp.float32)
    tokens = jnp.zeros((1, cfg.grid_size**2), jnp.int32)
    grid = (cfg.grid_size, cfg.grid_size)
    dec = _from_module(VQ16(cfg).init(k_dec, tokens, grid)["params"])
    return {
        **dec,
        "encoder": Encoder(cfg).init(k_enc, x)["params"],
        "quant_conv": _conv(cfg.codebook_embed_dim, 1).init(k_qc, z)["params"],
    }


def encode(params: dict, cfg: VQ16Config, images: Array) -> Array:
    """vq_model.py `VQModel.encode` up to the quantizer input: quant_conv(encoder(x)).

    Args:
        images: float [B, H, W, 3] in [-1, 1].

    Returns:
        float32 [B, h, w, D] (not yet l2-normalised).
    """
    h = Encoder(cfg).apply({"params": params["encoder"]}, images)
    return _conv(cfg.codebook_embed_dim, 1).apply({"params": params["quant_conv"]}, h)


def nearest_codes(z: Array, codebook: Array, cfg: VQ16Config) -> tuple[Array, Array, Array]:
    """vq_model.py `VectorQuantizer.forward`'s lookup: l2-normalise z and the codebook (when
    codebook_l2_norm), then argmin of |z|² + |e|² − 2 z·e.

    Args:
        z: [..., D] quantizer inputs; codebook: [V, D].

    Returns:
        (ids int32 [...], z_q [..., D] the chosen (normalised) rows, z [..., D] normalised).
    """
    if cfg.codebook_l2_norm:
        z, codebook = l2_normalize(z), l2_normalize(codebook)
    flat = z.reshape(-1, z.shape[-1])
    dot = jnp.einsum("ND,VD->NV", flat, codebook, precision=jax.lax.Precision.HIGHEST)
    dist = jnp.sum(flat**2, axis=1, keepdims=True) + jnp.sum(codebook**2, axis=1) - 2.0 * dot
    ids = jnp.argmin(dist, axis=1).astype(jnp.int32)
    z_q = jnp.take(codebook, ids, axis=0).reshape(z.shape)
    return ids.reshape(z.shape[:-1]), z_q, z


def decode_latent(params: dict, cfg: VQ16Config, z_q: Array) -> Array:
    """`VQModel.decode`: post_quant_conv and the decoder on a quantized latent [B, h, w, D]."""
    h = _conv(cfg.z_channels, 1).apply({"params": params["post_quant_conv"]}, z_q)
    return Decoder(cfg).apply({"params": params["decoder"]}, h)


def abstract_params(cfg: VQ16Config) -> dict:
    """The decode param tree as `jax.ShapeDtypeStruct`s (nothing allocated)."""
    tokens = jax.ShapeDtypeStruct((1, 4), jnp.int32)
    tree = jax.eval_shape(lambda t: VQ16(cfg).init(jax.random.key(0), t, (2, 2)), tokens)
    return _from_module(tree["params"])


def decode_code(params: dict, cfg: VQ16Config, tokens: Array, grid: tuple[int, int]) -> Array:
    """`vq_model.decode_code(tokens, (B, D, h, w))` in NHWC.

    Args:
        params: the tree of `abstract_params` (converted weights).
        cfg: the VQ config.
        tokens: int [B, h*w] raster-order ids.
        grid: (h, w), static.

    Returns:
        float32 [B, 16h, 16w, 3] (for VQ-16), not clamped.
    """
    return VQ16(cfg).apply({"params": _to_module(decode_tree(params))}, tokens, grid)


def resize_for_eval(images: Array, size: int) -> Array:
    """sample_c2i_ddp.py: `F.interpolate(samples, size=(size, size), mode='bicubic')` on NHWC.

    PyTorch bicubic (A = -0.75, align_corners False, no antialias), as exact matrices.
    """
    if images.shape[1] == size and images.shape[2] == size:
        return images  # the official code skips the resize when image_size_eval == image_size
    return resample.bicubic_resize_nhwc(images, (size, size))


def to_uint8(images: Array) -> Array:
    """sample_c2i_ddp.py: clamp(127.5 x + 128, 0, 255).to(uint8) (truncating), NHWC."""
    x = jnp.clip(127.5 * images.astype(jnp.float32) + 128.0, 0.0, 255.0)
    return x.astype(jnp.uint8)
