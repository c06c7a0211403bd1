"""VAR's multi-scale VQVAE (tokenizer): encoder, decoder and residual quantizer, NHWC.

Matches FoundationVision/VAR `models/vqvae.py`, `models/basic_vae.py` and `models/quant.py`
(commit 78b9539). Params are a plain dict with top-level keys `encoder`, `decoder`, `quant_conv`,
`post_quant_conv` and `quantize`; `converters/var_vae.py` builds it from the official state dict.

Dims: B batch, H/W spatial, C channels, Cv = z_channels (Cvae), V vocab size, K scales,
pn side of a scale's token map, L = sum(pn^2) tokens, N = B * pn^2 flattened positions.

Layout: `_config` (`VQVAEConfig`, the φ tick rule), `_nets` (basic_vae.py:
`Encoder`, `Decoder` and their blocks), `_quant` (quant.py: `VectorQuantizer` and the
functions between tokens and f̂); this module holds vqvae.py's level (the latent convs, the params,
image <-> latent <-> tokens) and re-exports the pieces' names, so `var_vqvae` stays the one import.
"""

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from arvg_jax.tokenizers.var_vqvae._config import (  # noqa: F401  (re-exported)
    VQVAEConfig,
    phi_index_table,
)
from arvg_jax.tokenizers.var_vqvae._nets import (  # noqa: F401  (re-exported)
    AttnBlock,
    Decoder,
    Downsample,
    Encoder,
    ResnetBlock,
    Upsample,
    _conv,
)
from arvg_jax.tokenizers.var_vqvae._quant import (  # noqa: F401  (re-exported)
    VectorQuantizer,
    embed_scale,
    idx_to_fhat,
    idx_to_var_input,
    latent_to_idx,
    next_scale_input,
    split_idx,
)


def _latent_conv(cfg: VQVAEConfig, dtype: Any = jnp.float32) -> nn.Conv:
    """vqvae.py `quant_conv` / `post_quant_conv`: Cv -> Cv, kernel quant_conv_ks, same padding."""
    return _conv(cfg.z_channels, cfg.quant_conv_ks, None, dtype, jnp.float32)


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
# Pure functions of (params, cfg, ...): image <-> latent (the token side is `_quant`)
# ------------------------------------------------------------------------------------------------


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


def img_to_idx(params: dict, cfg: VQVAEConfig, img: jax.Array) -> list[jax.Array]:
    """vqvae.py `img_to_idxBl`: image `[B, H, W, in_channels]` in [-1, 1] -> K `[B, pn^2]` int32."""
    return latent_to_idx(params, cfg, encode(params, cfg, img))[0]
