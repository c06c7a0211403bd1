"""VAR's multi-scale VQVAE (tokenizer): encoder, decoder and residual quantizer, NHWC.

Matches FoundationVision/VAR `models/vqvae.py`, `models/basic_vae.py` and `models/quant.py`
(commit 78b9539). Params are a plain dict with top-level keys `encoder`, `decoder`, `quant_conv`,
`post_quant_conv` and `quantize`; `converters/var_vae.py` builds it from the official state dict.

Dims: B batch, H/W spatial, C channels, Cv = z_channels (Cvae), V vocab size, K scales,
pn side of a scale's token map, L = sum(pn^2) tokens, N = B * pn^2 flattened positions.
"""

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from arvg_jax import resample

_GN_GROUPS = 32  # basic_vae.py `Normalize`: GroupNorm(32, eps=1e-6, affine=True)
_GN_EPS = 1e-6


def phi_index_table(
    num_scales: int, share_quant_resi: int, default_qresi_counts: int = 0
) -> tuple[int, ...]:
    """Which φ conv each scale uses, derived from the official tick rule.

    quant.py: `quant_resi[si / (SN - 1)]` picks the φ whose tick is nearest to si / (SN - 1), with
    `ticks = linspace(1/3/K, 1 - 1/3/K, K)` for K == 4 else `linspace(1/2/K, 1 - 1/2/K, K)`
    (`PhiPartiallyShared`, `PhiNonShared`), first index on ties (`np.argmin`). 10 scales with 4 φ
    have exact ties (si = 2 and 7): the float64 rounding of numpy decides them, so the same numpy
    expressions are evaluated here.

    Args:
        num_scales: K scales (at least 2, since the official code divides by K - 1).
        share_quant_resi: 0 = one φ per scale (or `default_qresi_counts`), 1 = one shared φ,
            n > 1 = n partially shared φ.
        default_qresi_counts: φ count when `share_quant_resi == 0` (0 = num_scales).

    Returns:
        The φ index of each scale; (0, 0, 1, 1, 1, 2, 2, 3, 3, 3) for the release.
    """
    if num_scales < 2:
        raise ValueError(f"need at least 2 scales, got {num_scales}")
    if share_quant_resi == 1:  # PhiShared: every scale uses the same φ
        return (0,) * num_scales
    k = share_quant_resi if share_quant_resi > 1 else (default_qresi_counts or num_scales)
    ticks = (
        np.linspace(1 / 3 / k, 1 - 1 / 3 / k, k)
        if k == 4
        else np.linspace(1 / 2 / k, 1 - 1 / 2 / k, k)
    )
    return tuple(
        int(np.argmin(np.abs(ticks - si / (num_scales - 1))).item()) for si in range(num_scales)
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class VQVAEConfig:
    """VAR VQVAE settings; the defaults are the release `vae_ch160v4096z32.pth`."""

    vocab_size: int = 4096  # V, codebook rows
    z_channels: int = 32  # Cvae, latent and codebook width
    ch: int = 160  # base width; level widths are ch * ch_mult
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)  # vq-f16 ddconfig; downsampling 2^(len - 1)
    num_res_blocks: int = 2  # per encoder level (the decoder has one more)
    in_channels: int = 3  # image channels
    dropout: float = 0.0  # training only; ignored (inference port)
    quant_conv_ks: int = 3  # kernel of quant_conv / post_quant_conv
    quant_resi: float = 0.5  # φ(h) = (1 - |r|) h + |r| conv(h)
    share_quant_resi: int = 4  # 0 non-shared, 1 shared, n > 1 partially shared (n φ)
    default_qresi_counts: int = 0  # φ count for share_quant_resi == 0 (0 = one per scale)
    patch_nums: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)  # pn of each scale

    def __post_init__(self):
        if len(self.patch_nums) < 2:
            raise ValueError(f"patch_nums needs at least 2 scales, got {self.patch_nums}")
        if abs(self.quant_resi) <= 1e-6:
            # quant.py then uses nn.Identity for φ; no release does.
            raise NotImplementedError("quant_resi == 0 (identity φ) is not supported")
        for m in self.ch_mult:
            if (self.ch * m) % _GN_GROUPS:
                raise ValueError(f"ch * ch_mult = {self.ch * m} is not divisible by 32 groups")

    @classmethod
    def release(cls, **overrides) -> "VQVAEConfig":
        """`vae_ch160v4096z32.pth`, the VQVAE of every released VAR model (256 px)."""
        return cls(**overrides)

    @classmethod
    def tiny(cls, **overrides) -> "VQVAEConfig":
        """The reference fixture (`reference/var/vae.pth`): the release with ch = 32."""
        return cls(**{"ch": 32, **overrides})

    @property
    def num_scales(self) -> int:
        return len(self.patch_nums)

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def latent_size(self) -> int:
        """Side of f̂ (the last patch num)."""
        return self.patch_nums[-1]

    @property
    def image_size(self) -> int:
        return self.latent_size * self.downsample

    @property
    def seq_len(self) -> int:
        """L = sum(pn^2)."""
        return sum(pn * pn for pn in self.patch_nums)

    @property
    def num_phi(self) -> int:
        if self.share_quant_resi == 1:
            return 1
        if self.share_quant_resi == 0:
            return self.default_qresi_counts or self.num_scales
        return self.share_quant_resi

    @property
    def phi_table(self) -> tuple[int, ...]:
        """φ index of each scale."""
        return phi_index_table(self.num_scales, self.share_quant_resi, self.default_qresi_counts)


# ------------------------------------------------------------------------------------------------
# Linen modules (basic_vae.py)
# ------------------------------------------------------------------------------------------------


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


def _latent_conv(cfg: VQVAEConfig, dtype: Any = jnp.float32) -> nn.Conv:
    """vqvae.py `quant_conv` / `post_quant_conv`: Cv -> Cv, kernel quant_conv_ks, same padding."""
    return _conv(cfg.z_channels, cfg.quant_conv_ks, None, dtype, jnp.float32)


class VectorQuantizer(nn.Module):
    """quant.py `VectorQuantizer2` params: the codebook and the φ convs (`phi_{k}`).

    Runs in float32 whatever the decoder's compute dtype: the official f̂ accumulation is float32.
    """

    cfg: VQVAEConfig

    def setup(self):
        cfg = self.cfg
        self.embedding = self.param(
            "embedding",
            nn.initializers.normal(1.0),
            (cfg.vocab_size, cfg.z_channels),
            jnp.float32,
        )
        # quant.py `Phi` is a 3x3 conv Cv -> Cv with bias and padding 1.
        self.phi = [
            _conv(cfg.z_channels, 3, None, jnp.float32, jnp.float32) for _ in range(cfg.num_phi)
        ]

    def lookup(self, idx: jax.Array) -> jax.Array:
        """Codebook rows of int indices `[...]` -> `[..., Cv]` float32 (plain lookup, no l2-norm)."""
        return jnp.take(self.embedding, idx, axis=0).astype(jnp.float32)

    def apply_phi(self, h: jax.Array, si: int) -> jax.Array:
        """quant.py `Phi.forward` of scale si's φ: `h * (1 - r) + conv(h) * r` on `[B, H, W, Cv]`."""
        r = abs(self.cfg.quant_resi)
        h = h.astype(jnp.float32)
        return h * (1 - r) + self.phi[self.cfg.phi_table[si]](h) * r

    def codebook(self) -> jax.Array:
        """The codebook `[V, Cv]` float32."""
        return self.embedding.astype(jnp.float32)

    def __call__(self, h: jax.Array) -> jax.Array:
        """Touches every param (used by init): sum of all φ(h) plus the codebook's first row."""
        out = self.lookup(jnp.zeros(h.shape[:-1], jnp.int32))
        for phi in self.phi:
            out = out + phi(h)
        return out


# ------------------------------------------------------------------------------------------------
# Params
# ------------------------------------------------------------------------------------------------


def init_params(cfg: VQVAEConfig, rng: jax.Array) -> dict:
    """Random params (flax default initialisers), the layout `converters/var_vae.py` produces.

    Args:
        cfg: the VQVAE config.
        rng: a PRNG key.

    Returns:
        `{'encoder', 'decoder', 'quant_conv', 'post_quant_conv', 'quantize'}` plain nested dicts.
    """
    keys = jax.random.split(rng, 5)
    z = jnp.zeros((1, 1, 1, cfg.z_channels), jnp.float32)
    img = jnp.zeros((1, cfg.downsample, cfg.downsample, cfg.in_channels), jnp.float32)
    return {
        "encoder": Encoder(cfg).init(keys[0], img)["params"],
        "decoder": Decoder(cfg).init(keys[1], z)["params"],
        "quant_conv": _latent_conv(cfg).init(keys[2], z)["params"],
        "post_quant_conv": _latent_conv(cfg).init(keys[3], z)["params"],
        "quantize": VectorQuantizer(cfg).init(keys[4], z)["params"],
    }


def abstract_params(cfg: VQVAEConfig) -> dict:
    """The param tree as `jax.ShapeDtypeStruct` leaves, without allocating (`jax.eval_shape`)."""
    return jax.eval_shape(functools.partial(init_params, cfg), jax.random.key(0))


# ------------------------------------------------------------------------------------------------
# Pure functions of (params, cfg, ...)
# ------------------------------------------------------------------------------------------------


def _quantizer(params: dict, cfg: VQVAEConfig, method: str, *args) -> jax.Array:
    return VectorQuantizer(cfg).apply({"params": params["quantize"]}, *args, method=method)


def _scale_to_fhat(params: dict, cfg: VQVAEConfig, h: jax.Array, si: int) -> jax.Array:
    """φ_si of scale si's embedded token map `[B, pn, pn, Cv]`, upsampled to f̂ size first.

    quant.py `get_next_autoregressive_input` / `embed_to_fhat`: bicubic to the last patch num for
    every scale but the last (which has that size), then φ ("conv after upsample").
    """
    if si != cfg.num_scales - 1:
        h = resample.bicubic_resize_nhwc(h, (cfg.latent_size, cfg.latent_size))
    return _quantizer(params, cfg, "apply_phi", h, si)


def split_idx(cfg: VQVAEConfig, idx: jax.Array | np.ndarray) -> list[jax.Array]:
    """Splits scale-concatenated tokens `[B, L]` into per-scale `[B, pn^2]` pieces."""
    if idx.shape[-1] != cfg.seq_len:
        raise ValueError(f"expected {cfg.seq_len} tokens, got idx shape {idx.shape}")
    bounds = np.cumsum([pn * pn for pn in cfg.patch_nums])[:-1].tolist()
    return jnp.split(jnp.asarray(idx), bounds, axis=-1)


def embed_scale(params: dict, cfg: VQVAEConfig, idx_si: jax.Array, si: int) -> jax.Array:
    """Codebook lookup of scale si's tokens `[B, pn^2]` -> `[B, pn, pn, Cv]` float32 (row-major)."""
    pn = cfg.patch_nums[si]
    if idx_si.shape[-1] != pn * pn:
        raise ValueError(f"scale {si} (pn={pn}) needs {pn * pn} tokens, got {idx_si.shape}")
    h = _quantizer(params, cfg, "lookup", idx_si)  # [B, pn^2, Cv]
    # embedding(idx).transpose(1, 2).view(B, C, pn, pn): token l sits at row l // pn, col l % pn.
    return h.reshape(h.shape[0], pn, pn, cfg.z_channels)


def next_scale_input(
    params: dict, cfg: VQVAEConfig, f_hat: jax.Array, idx_si: jax.Array, si: int
) -> tuple[jax.Array, jax.Array | None]:
    """quant.py `get_next_autoregressive_input`: adds scale si to f̂ and builds the next input.

    `si` must be a static Python int (jit with `static_argnums`); `cfg` is static as well.

    Args:
        params: VQVAE params (only `quantize` is read).
        cfg: the VQVAE config.
        f_hat: `[B, H, W, Cv]` float32 running sum, H = W = patch_nums[-1] (zeros before scale 0).
        idx_si: `[B, pn_si^2]` int tokens of scale si, row-major.
        si: scale index.

    Returns:
        `(f_hat, x_next)`: the updated f̂ and, for si < K - 1, the next scale's VAR input
        `area_resize(f̂ -> pn_{si+1})` flattened row-major to `[B, pn_{si+1}^2, Cv]`
        (`.view(B, C, -1).transpose(1, 2)`); None after the last scale.
    """
    h = embed_scale(params, cfg, idx_si, si)
    f_hat = f_hat.astype(jnp.float32) + _scale_to_fhat(params, cfg, h, si)
    if si == cfg.num_scales - 1:
        return f_hat, None
    pn = cfg.patch_nums[si + 1]
    x_next = resample.area_resize_nhwc(f_hat, (pn, pn))  # [B, pn, pn, Cv]
    return f_hat, x_next.reshape(x_next.shape[0], pn * pn, cfg.z_channels)


def _zeros_fhat(cfg: VQVAEConfig, batch: int) -> jax.Array:
    return jnp.zeros((batch, cfg.latent_size, cfg.latent_size, cfg.z_channels), jnp.float32)


def idx_to_var_input(params: dict, cfg: VQVAEConfig, idx_list: Sequence[jax.Array]) -> jax.Array:
    """quant.py `idxBl_to_var_input`: the teacher-forcing VAR input of scales 1 .. K-1.

    Args:
        params: VQVAE params.
        cfg: the VQVAE config.
        idx_list: K (at least the first K - 1 are read) int arrays `[B, pn^2]`, row-major.

    Returns:
        `[B, L - pn_0^2, Cv]` float32: the next-scale inputs concatenated in scale order.
    """
    f_hat = _zeros_fhat(cfg, idx_list[0].shape[0])
    xs = []
    for si in range(cfg.num_scales - 1):
        f_hat, x_next = next_scale_input(params, cfg, f_hat, idx_list[si], si)
        xs.append(x_next)
    return jnp.concatenate(xs, axis=1)


def idx_to_fhat(params: dict, cfg: VQVAEConfig, idx_list: Sequence[jax.Array]) -> jax.Array:
    """quant.py `embed_to_fhat(all_to_max_scale=True, last_one=True)` of K token maps.

    Returns:
        f̂ `[B, H, W, Cv]` float32, H = W = patch_nums[-1].
    """
    if len(idx_list) != cfg.num_scales:
        raise ValueError(f"expected {cfg.num_scales} scales, got {len(idx_list)}")
    f_hat = _zeros_fhat(cfg, idx_list[0].shape[0])
    for si in range(cfg.num_scales):
        f_hat = f_hat + _scale_to_fhat(params, cfg, embed_scale(params, cfg, idx_list[si], si), si)
    return f_hat


def fhat_to_img(
    params: dict, cfg: VQVAEConfig, f_hat: jax.Array, *, dtype: Any = jnp.float32
) -> jax.Array:
    """vqvae.py `fhat_to_img`: `decoder(post_quant_conv(f̂)).clamp(-1, 1)`.

    Args:
        params: VQVAE params (`post_quant_conv` and `decoder` are read).
        cfg: the VQVAE config.
        f_hat: `[B, h, w, Cv]`.
        dtype: compute dtype of post_quant_conv and the decoder (`ExecOptions.decode_dtype`).

    Returns:
        `[B, h * downsample, w * downsample, in_channels]` float32 image in [-1, 1].
    """
    z = _latent_conv(cfg, dtype).apply({"params": params["post_quant_conv"]}, f_hat.astype(dtype))
    img = Decoder(cfg, dtype).apply({"params": params["decoder"]}, z)
    return jnp.clip(img.astype(jnp.float32), -1.0, 1.0)


def idx_to_img(params: dict, cfg: VQVAEConfig, idx_list: Sequence[jax.Array]) -> jax.Array:
    """vqvae.py `idxBl_to_img(ms_idx_Bl, same_shape=True, last_one=True)`.

    Args:
        params: VQVAE params.
        cfg: the VQVAE config.
        idx_list: K int arrays `[B, pn^2]` (see `split_idx`).

    Returns:
        `[B, image_size, image_size, in_channels]` float32 image in [-1, 1].
    """
    return fhat_to_img(params, cfg, idx_to_fhat(params, cfg, idx_list))


def encode(params: dict, cfg: VQVAEConfig, img: jax.Array) -> jax.Array:
    """`quant_conv(encoder(img))`: `[B, H, W, in_channels]` in [-1, 1] -> f `[B, h, w, Cv]` float32."""
    h = Encoder(cfg).apply({"params": params["encoder"]}, img)
    f = _latent_conv(cfg).apply({"params": params["quant_conv"]}, h)
    return f.astype(jnp.float32)


def latent_to_idx(
    params: dict, cfg: VQVAEConfig, f: jax.Array
) -> tuple[list[jax.Array], jax.Array]:
    """quant.py `VectorQuantizer2.f_to_idxBl_or_fhat` (using_znorm=False): residual quantization.

    For each scale: area-resize the residual to pn x pn (not for the last scale), take the nearest
    codebook row by `|z|^2 + |e|^2 - 2 z.e` (first index on ties, as `torch.argmin`), embed,
    bicubic-upsample (not for the last scale), φ, then `f̂ += h` and `residual -= h`.

    Args:
        params: VQVAE params (only `quantize` is read).
        cfg: the VQVAE config.
        f: `[B, H, W, Cv]` latent, H = W = patch_nums[-1].

    Returns:
        `(idx_list, f_hat)`: K int32 arrays `[B, pn^2]` (row-major) and the final f̂
        `[B, H, W, Cv]` float32 (the last entry of `to_fhat=True`).
    """
    b, hh, ww, c = f.shape
    if (hh, ww) != (cfg.latent_size, cfg.latent_size):
        raise ValueError(f"latent is {hh}x{ww}, expected patch_nums[-1]={cfg.latent_size}")
    f_rest = f.astype(jnp.float32)
    f_hat = jnp.zeros_like(f_rest)
    emb = _quantizer(params, cfg, "codebook")  # [V, Cv]
    emb_sq = jnp.sum(jnp.square(emb), axis=1)  # [V]
    idx_list = []
    for si, pn in enumerate(cfg.patch_nums):
        z = f_rest if si == cfg.num_scales - 1 else resample.area_resize_nhwc(f_rest, (pn, pn))
        z = z.reshape(-1, c)  # [N, Cv]; N = B * pn^2, row-major as permute(0, 2, 3, 1)
        dot = jnp.einsum("NC,VC->NV", z, emb, precision=jax.lax.Precision.HIGHEST)
        # d = sum(z^2, 1, keepdim) + sum(e^2, 1); d.addmm_(z, e.T, alpha=-2, beta=1)
        dist = (jnp.sum(jnp.square(z), axis=1, keepdims=True) + emb_sq) + (-2.0) * dot  # [N, V]
        idx = jnp.argmin(dist, axis=1).astype(jnp.int32).reshape(b, pn * pn)
        h = _scale_to_fhat(params, cfg, embed_scale(params, cfg, idx, si), si)
        f_hat = f_hat + h
        f_rest = f_rest - h
        idx_list.append(idx)
    return idx_list, f_hat


def img_to_idx(params: dict, cfg: VQVAEConfig, img: jax.Array) -> list[jax.Array]:
    """vqvae.py `img_to_idxBl`: image `[B, H, W, in_channels]` in [-1, 1] -> K `[B, pn^2]` int32."""
    return latent_to_idx(params, cfg, encode(params, cfg, img))[0]
