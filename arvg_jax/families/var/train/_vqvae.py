"""Training the VAR multi-scale VQVAE: residual quantization with a straight-through estimator.

The quantizer forward is `var_vqvae.latent_to_idx` step for step (area-resize the residual,
nearest code by |z|² + |e|² − 2 z·e at HIGHEST precision, embed, bicubic-upsample, φ, accumulate),
so the tokens the trained model gives at inference are the tokens it was trained with. The losses
follow FoundationVision/VAR `models/quant.py` `VectorQuantizer2.forward`: after each scale,
codebook loss ‖f̂ − sg(f)‖² plus β‖sg(f̂) − f‖² commitment, averaged over scales; the decoder gets
f + sg(f̂ − f). Dead codes (running usage far below 1/V) are re-seeded from random quantizer
inputs of the batch every `restart_every` steps.

Dims: B batch, H/W image side, h/w latent side, Cv latent channels, V vocab, N quantizer inputs.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from arvg_jax import resample
from arvg_jax.tokenizers import var_vqvae
from arvg_jax.tokenizers.var_vqvae import VectorQuantizer, VQVAEConfig
from arvg_jax.train import vq
from arvg_jax.train._common import StageHParams
from arvg_jax.train.vq import VQLossConfig


def quantize_multiscale(
    q_params: dict, cfg: VQVAEConfig, f: jax.Array, beta: float
) -> tuple[jax.Array, jax.Array, list[jax.Array], jax.Array]:
    """Differentiable multi-scale residual quantization (training forward).

    Args:
        q_params: the `quantize` params (codebook `embedding` [V, Cv] and the φ convs).
        cfg: the VQVAE config.
        f: [B, h, w, Cv] encoder latent, h = w = patch_nums[-1].
        beta: commitment weight.

    Returns:
        (f_hat_st [B, h, w, Cv] = f + sg(f̂ − f), vq_loss scalar, idx_list of K int32 [B, pn²],
        quantizer inputs z [N, Cv] of all scales (stop-gradient; for dead-code re-seeding)).
    """
    b, hh, ww, c = f.shape
    if (hh, ww) != (cfg.latent_size, cfg.latent_size):
        raise ValueError(f"latent is {hh}x{ww}, expected {cfg.latent_size}")
    quantizer = VectorQuantizer(cfg)
    variables = {"params": q_params}
    emb = quantizer.apply(variables, method="codebook")  # [V, Cv]
    f = f.astype(jnp.float32)
    f_sg = jax.lax.stop_gradient(f)
    f_rest, f_hat = f_sg, jnp.zeros_like(f_sg)
    vq_loss = 0.0
    idx_list, zs = [], []
    k = cfg.num_scales
    for si, pn in enumerate(cfg.patch_nums):
        z = f_rest if si == k - 1 else resample.area_resize_nhwc(f_rest, (pn, pn))
        z = jax.lax.stop_gradient(z).reshape(-1, c)  # [N, Cv], row-major
        idx = vq.nearest_codes(z, emb)  # [N]
        h = jnp.take(emb, idx, axis=0).reshape(b, pn, pn, c)  # gradient reaches the codebook
        if si != k - 1:
            h = resample.bicubic_resize_nhwc(h, (hh, ww))
        h = quantizer.apply(variables, h, si, method="apply_phi")
        f_hat = f_hat + h
        f_rest = f_rest - h
        vq_loss = vq_loss + vq.codebook_commitment_loss(f_hat, f, beta)
        idx_list.append(idx.reshape(b, pn * pn))
        zs.append(z)
    f_hat_st = vq.straight_through(f, f_hat)
    return f_hat_st, vq_loss / k, idx_list, jnp.concatenate(zs, axis=0)


def decode_unclamped(params: dict, cfg: VQVAEConfig, f_hat: jax.Array) -> jax.Array:
    """`decoder(post_quant_conv(f̂))` without the inference clamp (so gradients never vanish)."""
    z = var_vqvae._latent_conv(cfg).apply({"params": params["post_quant_conv"]}, f_hat)
    return var_vqvae.Decoder(cfg).apply({"params": params["decoder"]}, z).astype(jnp.float32)


def vqvae_loss(
    params: dict, cfg: VQVAEConfig, images: jax.Array, loss_cfg: VQLossConfig
) -> tuple[jax.Array, dict[str, Any]]:
    """Reconstruction (L1 + L2) plus the weighted VQ loss of a batch [B, H, W, 3] in [-1, 1].

    Returns:
        (loss, aux) with aux = {"metrics": {...}, "idx": idx_list, "z": quantizer inputs}.
    """
    f = var_vqvae.encode(params, cfg, images)
    f_hat_st, vq_loss, idx_list, z = quantize_multiscale(params["quantize"], cfg, f, loss_cfg.beta)
    recon = decode_unclamped(params, cfg, f_hat_st)
    rec_loss, l1, l2 = vq.reconstruction_loss(recon, images, loss_cfg)
    loss = rec_loss + loss_cfg.vq_weight * vq_loss
    metrics = {"loss": loss, "l1": l1, "l2": l2, "vq": vq_loss}
    return loss, {"metrics": metrics, "idx": idx_list, "z": z}


def init_vqvae_state(
    cfg: VQVAEConfig, hp: StageHParams, loss_cfg: VQLossConfig, rng: jax.Array
) -> dict[str, Any]:
    """Fresh params (codebook N(0, codebook_init_std²)), optimizer state and code usage."""
    k_init, k_code = jax.random.split(rng)
    return vq.init_state(var_vqvae.init_params(cfg, k_init), hp, loss_cfg, k_code)


@functools.partial(jax.jit, static_argnames=("cfg", "hp", "loss_cfg"), donate_argnums=(0,))
def vqvae_train_step(
    state: dict[str, Any],
    images_all: jax.Array,
    key: jax.Array,
    *,
    cfg: VQVAEConfig,
    hp: StageHParams,
    loss_cfg: VQLossConfig,
) -> tuple[dict[str, Any], dict[str, jax.Array]]:
    """One AdamW step and codebook upkeep (`arvg_jax.train.vq.train_step`) on a random batch of
    `images_all` [N, H, W, 3] (on device); metrics {loss, l1, l2, vq, used, restarted}."""

    def loss_fn(params, images):
        loss, aux = vqvae_loss(params, cfg, images, loss_cfg)
        return loss, {**aux, "idx": jnp.concatenate([i.reshape(-1) for i in aux["idx"]])}

    return vq.train_step(state, images_all, key, loss_fn=loss_fn, hp=hp, loss_cfg=loss_cfg)


@functools.partial(jax.jit, static_argnames=("cfg",))
def tokenize(params: dict, cfg: VQVAEConfig, images: jax.Array) -> jax.Array:
    """Inference tokens `img_to_idx` of [B, H, W, 3] images, concatenated: int32 [B, L]."""
    return jnp.concatenate(var_vqvae.img_to_idx(params, cfg, images), axis=1)


@functools.partial(jax.jit, static_argnames=("cfg",))
def reconstruct(params: dict, cfg: VQVAEConfig, images: jax.Array) -> jax.Array:
    """Inference reconstruction `fhat_to_img(latent_to_idx(encode(x)))`, [-1, 1]."""
    _, f_hat = var_vqvae.latent_to_idx(params, cfg, var_vqvae.encode(params, cfg, images))
    return var_vqvae.fhat_to_img(params, cfg, f_hat)
