"""Training MAR's KL-16-architecture VAE on the shapes: encoder, Gaussian posterior, the decoder.

The shipped tokenizer is the decode path only (`tokenizers.kl16_vae`, unchanged); the encoder
lives here because only training needs it. It is LDM's `Encoder` (LTH14/mar `models/vae.py`,
commit fe470ac: conv_in, per level `num_res_blocks` ResnetBlocks and a stride-2 conv
downsample padded (0, 1, 0, 1), mid block-attn-block, GroupNorm-swish-conv_out to 2E
(`double_z`), then `quant_conv`), and `DiagonalGaussianDistribution` (logvar clamped to
[-30, 20]). Loss: L1 + L2 reconstruction plus `kl_weight` x the per-image KL summed over latent
elements divided by the image's values (LDM's ratio: its reconstruction term is a per-image sum,
its KL weight 1e-6); no perceptual or GAN term at this size.

Token space: MAR's sampler decodes `tokens / 0.2325` (engine_mar.py). `fold_token_scale`
multiplies `post_quant_conv`'s kernel (a 1x1 conv, linear) by 0.2325 x latent_std, so the
shipped decoder maps `tokens / 0.2325` to the image of latent `tokens x latent_std`: MAR tokens
are latents / latent_std, unit variance over the training set.

Dims: B batch, H/W image side, h/w latent side, E latent channels.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from arvg_jax.families.mar.family import TOKEN_SCALE
from arvg_jax.tokenizers import kl16_vae
from arvg_jax.tokenizers.kl16_vae import AttnBlock, KL16Config, KL16Decode, ResnetBlock
from arvg_jax.train._common import StageHParams, make_optimizer, sample_batch

Array = jax.Array


@dataclasses.dataclass(frozen=True, kw_only=True)
class VAELossConfig:
    l1_weight: float = 1.0
    l2_weight: float = 1.0
    kl_weight: float = 1e-5  # x KL sum / image values (LDM: 1e-6 on per-image sums)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Encoder(nn.Module):
    """LDM `Encoder(double_z=True)` + `quant_conv`: image [B, H, W, 3] -> moments [B, h, w, 2E]."""

    config: KL16Config

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        conv = lambda f, k, name, **kw: nn.Conv(f, (k, k), padding=k // 2, name=name, **kw)
        h = conv(cfg.ch, 3, "conv_in")(x)
        n = len(cfg.ch_mult)
        for lvl in range(n):
            for blk in range(cfg.num_res_blocks):
                h = ResnetBlock(cfg.ch * cfg.ch_mult[lvl], name=f"down_{lvl}_block_{blk}")(h)
            if lvl != n - 1:
                h = jnp.pad(h, ((0, 0), (0, 1), (0, 1), (0, 0)))  # vae.py Downsample pad
                h = nn.Conv(h.shape[-1], (3, 3), (2, 2), "VALID", name=f"down_{lvl}_down")(h)
        block_in = cfg.ch * cfg.ch_mult[-1]
        h = ResnetBlock(block_in, name="mid_block_1")(h)
        h = AttnBlock(name="mid_attn_1")(h)
        h = ResnetBlock(block_in, name="mid_block_2")(h)
        h = nn.GroupNorm(num_groups=32, epsilon=1e-6, use_fast_variance=False, name="norm_out")(h)
        h = conv(2 * cfg.embed_dim, 3, "conv_out")(nn.swish(h))
        return conv(2 * cfg.embed_dim, 1, "quant_conv")(h)


def posterior(enc_params: dict, cfg: KL16Config, images: Array) -> tuple[Array, Array]:
    """(mean, std) [B, h, w, E] of `DiagonalGaussianDistribution(moments)`."""
    moments = Encoder(cfg).apply({"params": enc_params}, images)
    mean, logvar = jnp.split(moments, 2, axis=-1)
    logvar = jnp.clip(logvar, -30.0, 20.0)
    return mean, jnp.exp(0.5 * logvar)


def vae_loss(
    params: dict, cfg: KL16Config, images: Array, key: Array, loss_cfg: VAELossConfig
) -> tuple[Array, dict[str, Array]]:
    """params {"encoder", "decoder" (the KL16Decode tree)}; images [B, H, W, 3] in [-1, 1]."""
    mean, std = posterior(params["encoder"], cfg, images)
    z = mean + std * jax.random.normal(key, mean.shape)
    recon = KL16Decode(cfg).apply({"params": params["decoder"]}, z)
    l1 = jnp.mean(jnp.abs(recon - images))
    l2 = jnp.mean(jnp.square(recon - images))
    var = jnp.square(std)
    kl = 0.5 * jnp.sum(jnp.square(mean) + var - 1.0 - jnp.log(var), axis=(1, 2, 3))  # [B]
    kl_term = jnp.mean(kl) / (images[0].size)
    loss = loss_cfg.l1_weight * l1 + loss_cfg.l2_weight * l2 + loss_cfg.kl_weight * kl_term
    return loss, {"loss": loss, "l1": l1, "l2": l2, "kl": jnp.mean(kl), "z_std": jnp.std(mean)}


def init_vae_state(cfg: KL16Config, hp: StageHParams, image_size: int, rng: Array) -> dict:
    k_enc, k_dec = jax.random.split(rng)
    x = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
    enc = Encoder(cfg).init(k_enc, x)["params"]
    z = jnp.zeros((1, image_size // cfg.downsample, image_size // cfg.downsample, cfg.embed_dim))
    dec = KL16Decode(cfg).init(k_dec, z)["params"]
    params = {"encoder": enc, "decoder": dec}
    return {"params": params, "opt_state": make_optimizer(hp).init(params), "step": jnp.int32(0)}


@functools.partial(jax.jit, static_argnames=("cfg", "hp", "loss_cfg"), donate_argnums=(0,))
def vae_train_step(
    state: dict, images_all: Array, key: Array, *, cfg: KL16Config, hp: StageHParams, loss_cfg
) -> tuple[dict, dict[str, Array]]:
    """One AdamW step on a random batch of `images_all` [N, H, W, 3]; `key` folds in the step."""
    k_batch, k_z = jax.random.split(jax.random.fold_in(key, state["step"]))
    (images,) = sample_batch(k_batch, (images_all,), hp.batch)
    grad_fn = jax.value_and_grad(vae_loss, has_aux=True)
    (_, metrics), grads = grad_fn(state["params"], cfg, images, k_z, loss_cfg)
    updates, opt_state = make_optimizer(hp).update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    return {"params": params, "opt_state": opt_state, "step": state["step"] + 1}, metrics


@functools.partial(jax.jit, static_argnames=("cfg",))
def encode_moments(enc_params: dict, cfg: KL16Config, images: Array) -> tuple[Array, Array]:
    """Posterior (mean, std), each [B, h*w, E] in MAR's token order (patch 1: row-major)."""
    mean, std = posterior(enc_params, cfg, images)
    b, h, w, e = mean.shape
    return mean.reshape(b, h * w, e), std.reshape(b, h * w, e)


@functools.partial(jax.jit, static_argnames=("cfg",))
def reconstruct(params: dict, cfg: KL16Config, images: Array) -> Array:
    """Posterior-mean reconstruction through the shipped decode path (`kl16_vae.decode`)."""
    mean, _ = posterior(params["encoder"], cfg, images)
    return kl16_vae.decode(params["decoder"], mean, cfg=cfg)


def fold_token_scale(dec_params: dict, latent_std: float) -> dict:
    """The decoder whose input `tokens / 0.2325` decodes like latent `tokens * latent_std`."""
    c = TOKEN_SCALE * latent_std
    pq = dec_params["post_quant_conv"]
    return {**dec_params, "post_quant_conv": {**pq, "kernel": pq["kernel"] * c}}
