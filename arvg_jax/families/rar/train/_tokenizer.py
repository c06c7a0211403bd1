"""Training RAR's MaskGIT-VQGAN tokenizer: encoder, nearest-code VQ, the (unchanged) decoder.

The inference tokenizer (`arvg_jax.tokenizers.maskgit_vqgan`) ports only the decode path; the
encoder lives here, for training and tokenizing the dataset. It mirrors bytedance/1d-tokenizer
`modeling/modules/maskgit_vqgan.py` `Encoder` (conv_in 3x3 no bias; per level `num_res_blocks`
ResnetBlocks (the same output-shortcut quirk) then 2x2 average pooling except at the last level;
mid ResnetBlocks; GroupNorm-SiLU-conv_out 1x1 to z_channels). The quantizer is
`VectorQuantizer.forward`'s nearest code by |z|² + |e|² − 2 z·e; the loss uses the VQ-VAE
convention of `arvg_jax.train.vq` (codebook ‖ẑ − sg z‖² + β‖sg ẑ − z‖², β 0.25; the official
MaskGIT code puts β on the codebook term instead) plus L1 + L2 reconstruction of the image in
[0, 1] (the decoder's range). GAN and perceptual losses of the official tokenizer are left out.

Training params: {"encoder", "quantize": {"embedding" [V, Z]}, "decoder"}; the inference
tokenizer's params are the same tree without "encoder" (`decode_params`).

Dims: B batch, H/W image side, h/w latent side, Z code width, V codebook size, n = h·w.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from arvg_jax.tokenizers import maskgit_vqgan
from arvg_jax.tokenizers.maskgit_vqgan import MaskGITVQGANConfig, ResnetBlock
from arvg_jax.train import vq
from arvg_jax.train._common import StageHParams
from arvg_jax.train.vq import VQLossConfig


class Encoder(nn.Module):
    """maskgit_vqgan.py Encoder: [B, H, W, 3] in [0, 1] -> [B, h, w, Z] (h = H / 2^(levels-1))."""

    cfg: MaskGITVQGANConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.cfg
        x = maskgit_vqgan._conv(cfg.hidden_channels, 3, "conv_in", bias=False)(x)
        for level in range(cfg.num_resolutions):
            width = cfg.hidden_channels * cfg.channel_mult[level]
            for j in range(cfg.num_res_blocks):
                x = ResnetBlock(width, name=f"down_{level}_block_{j}")(x)
            if level != cfg.num_resolutions - 1:  # F.avg_pool2d(kernel 2, stride 2)
                x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        width = cfg.hidden_channels * cfg.channel_mult[-1]
        for j in range(cfg.num_res_blocks):
            x = ResnetBlock(width, name=f"mid_{j}")(x)
        x = nn.silu(maskgit_vqgan._group_norm("norm_out")(x))
        return maskgit_vqgan._conv(cfg.z_channels, 1, "conv_out")(x)


def init_params(cfg: MaskGITVQGANConfig, key: jax.Array) -> dict:
    """Training params: the inference tokenizer's tree plus "encoder"."""
    k_enc, k_dec = jax.random.split(key)
    img = jnp.zeros((1, cfg.resolution, cfg.resolution, cfg.num_channels), jnp.float32)
    enc = Encoder(cfg).init(k_enc, img)["params"]
    tokens = jnp.zeros((1, cfg.num_tokens), jnp.int32)
    dec = maskgit_vqgan.MaskGITVQGAN(cfg).init(k_dec, tokens)["params"]
    return {"encoder": enc, **dec}


def decode_params(params: dict) -> dict:
    """The inference tokenizer's params (`maskgit_vqgan.decode_tokens`): no encoder."""
    return {k: v for k, v in params.items() if k != "encoder"}


def encode(params: dict, cfg: MaskGITVQGANConfig, images: jax.Array) -> jax.Array:
    """[B, H, W, 3] in [-1, 1] (the dataset's range) -> latents [B, h, w, Z]."""
    return Encoder(cfg).apply({"params": params["encoder"]}, (images + 1.0) * 0.5)


def tokenizer_loss(
    params: dict, cfg: MaskGITVQGANConfig, images: jax.Array, loss_cfg: VQLossConfig
) -> tuple[jax.Array, dict[str, Any]]:
    """Reconstruction (L1 + L2 in [0, 1]) plus the weighted VQ loss of images [B, H, W, 3] in
    [-1, 1]; aux = {"metrics", "idx" int32 [B·n], "z" [B·n, Z]} (`arvg_jax.train.vq`)."""
    z = encode(params, cfg, images).astype(jnp.float32)  # [B, h, w, Z]
    b, h, w, c = z.shape
    emb = params["quantize"]["embedding"]
    z_flat = jax.lax.stop_gradient(z).reshape(-1, c)
    idx = vq.nearest_codes(z_flat, emb)  # [B·n]
    z_q = jnp.take(emb, idx, axis=0).reshape(b, h, w, c)  # gradient reaches the codebook
    vq_loss = vq.codebook_commitment_loss(z_q, z, loss_cfg.beta)
    dec = maskgit_vqgan.Decoder(cfg)
    recon = dec.apply({"params": params["decoder"]}, vq.straight_through(z, z_q))
    rec_loss, l1, l2 = vq.reconstruction_loss(recon, (images + 1.0) * 0.5, loss_cfg)
    loss = rec_loss + loss_cfg.vq_weight * vq_loss
    metrics = {"loss": loss, "l1": l1, "l2": l2, "vq": vq_loss}
    return loss, {"metrics": metrics, "idx": idx, "z": z_flat}


def init_tokenizer_state(
    cfg: MaskGITVQGANConfig, hp: StageHParams, loss_cfg: VQLossConfig, key: jax.Array
) -> dict[str, Any]:
    """Fresh params (codebook N(0, codebook_init_std²)), AdamW state, code usage, step."""
    k_init, k_code = jax.random.split(key)
    return vq.init_state(init_params(cfg, k_init), hp, loss_cfg, k_code)


@functools.partial(jax.jit, static_argnames=("cfg", "hp", "loss_cfg"), donate_argnums=(0,))
def tokenizer_train_step(
    state: dict[str, Any],
    images_all: jax.Array,
    key: jax.Array,
    *,
    cfg: MaskGITVQGANConfig,
    hp: StageHParams,
    loss_cfg: VQLossConfig,
) -> tuple[dict[str, Any], dict[str, jax.Array]]:
    """`arvg_jax.train.vq.train_step` with `tokenizer_loss` on a batch of images_all [N, H, W, 3]."""
    loss_fn = lambda p, x: tokenizer_loss(p, cfg, x, loss_cfg)
    return vq.train_step(state, images_all, key, loss_fn=loss_fn, hp=hp, loss_cfg=loss_cfg)


@functools.partial(jax.jit, static_argnames=("cfg",))
def tokenize(params: dict, cfg: MaskGITVQGANConfig, images: jax.Array) -> jax.Array:
    """int32 [B, n] raster tokens of images [B, H, W, 3] in [-1, 1]."""
    z = encode(params, cfg, images).astype(jnp.float32)
    b = z.shape[0]
    return vq.nearest_codes(z.reshape(-1, z.shape[-1]), params["quantize"]["embedding"]).reshape(
        b, -1
    )


@functools.partial(jax.jit, static_argnames=("cfg",))
def reconstruct(params: dict, cfg: MaskGITVQGANConfig, images: jax.Array) -> jax.Array:
    """The inference round trip `decode_tokens(tokenize(x))`, mapped back to [-1, 1]."""
    out = maskgit_vqgan.decode_tokens(decode_params(params), cfg, tokenize(params, cfg, images))
    return out * 2.0 - 1.0
