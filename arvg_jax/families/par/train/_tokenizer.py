"""Training the tiny LlamaGen VQ tokenizer: nearest l2-normalised code, straight-through, L1 + L2.

The forward is the inference one (`llamagen_vq16.encode` / `nearest_codes` / the decoder), so the
tokens the GPT is trained on are the tokens `tokenize` gives. The VQ loss follows
YuqingWang1029/PAR `tokenizer/tokenizer_image/vq_model.py` `VectorQuantizer.forward` (LlamaGen):
with `codebook_l2_norm`, z and the codebook are l2-normalised before the lookup, the codebook
loss is ‖z_q − sg(z)‖², the commitment β‖sg(z_q) − z‖² (β 0.25), and the decoder gets
z + sg(z_q − z). Reconstruction is L1 + L2 (the perceptual and GAN terms of `vq_loss.py` are left
out at 32 px); dead codes are re-seeded as in every tiny recipe (`arvg_jax.train.vq`).

Dims: B batch, H/W image side, h/w token grid, D code width, V vocabulary.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from arvg_jax.tokenizers import llamagen_vq16
from arvg_jax.tokenizers.llamagen_vq16 import VQ16Config
from arvg_jax.train import vq
from arvg_jax.train._common import StageHParams


def tokenizer_loss(
    params: dict, images: jax.Array, *, cfg: VQ16Config, loss_cfg: vq.VQLossConfig
) -> tuple[jax.Array, dict[str, Any]]:
    """Loss of a batch [B, H, W, 3] in [-1, 1]: reconstruction + vq_weight x (codebook + commit).

    Returns:
        (loss, aux) with aux = {"metrics", "idx" int32 [B, h, w], "z" [B·h·w, D] normalised
        quantizer inputs (stop-gradient, for dead-code re-seeding)}: `arvg_jax.train.vq`'s
        `loss_fn` contract.
    """
    z = llamagen_vq16.encode(params, cfg, images)  # [B, h, w, D]
    ids, z_q, z = llamagen_vq16.nearest_codes(z, params["quantize"]["embedding"], cfg)
    vq_loss = vq.codebook_commitment_loss(z_q, z, loss_cfg.beta)
    recon = llamagen_vq16.decode_latent(params, cfg, vq.straight_through(z, z_q))
    rec_loss, l1, l2 = vq.reconstruction_loss(recon, images, loss_cfg)
    loss = rec_loss + loss_cfg.vq_weight * vq_loss
    aux = {
        "metrics": {"loss": loss, "l1": l1, "l2": l2, "vq": vq_loss},
        "idx": ids,
        "z": jax.lax.stop_gradient(z).reshape(-1, z.shape[-1]),
    }
    return loss, aux


def init_tokenizer_state(
    cfg: VQ16Config, hp: StageHParams, loss_cfg: vq.VQLossConfig, rng: jax.Array
) -> dict[str, Any]:
    """Fresh tokenizer params (encoder included), AdamW state, code usage, step 0."""
    k_init, k_code = jax.random.split(rng)
    return vq.init_state(llamagen_vq16.init_train_params(cfg, k_init), hp, loss_cfg, k_code)


@functools.partial(jax.jit, static_argnames=("cfg", "hp", "loss_cfg"), donate_argnums=(0,))
def tokenizer_train_step(
    state: dict[str, Any],
    images_all: jax.Array,
    key: jax.Array,
    *,
    cfg: VQ16Config,
    hp: StageHParams,
    loss_cfg: vq.VQLossConfig,
) -> tuple[dict[str, Any], dict[str, jax.Array]]:
    """One AdamW step plus codebook upkeep on a random batch of `images_all` [N, H, W, 3]."""
    loss_fn = functools.partial(tokenizer_loss, cfg=cfg, loss_cfg=loss_cfg)
    return vq.train_step(state, images_all, key, loss_fn=loss_fn, hp=hp, loss_cfg=loss_cfg)


@functools.partial(jax.jit, static_argnames=("cfg",))
def tokenize(params: dict, cfg: VQ16Config, images: jax.Array) -> jax.Array:
    """Raster-order token ids int32 [B, h·w] of images [B, H, W, 3] in [-1, 1]."""
    z = llamagen_vq16.encode(params, cfg, images)
    ids, _, _ = llamagen_vq16.nearest_codes(z, params["quantize"]["embedding"], cfg)
    return ids.reshape(ids.shape[0], -1)


@functools.partial(jax.jit, static_argnames=("cfg",))
def reconstruct(params: dict, cfg: VQ16Config, images: jax.Array) -> jax.Array:
    """`decode_code(tokenize(x))` clipped to [-1, 1]: what the generator can reproduce at best."""
    ids = tokenize(params, cfg, images)
    out = llamagen_vq16.decode_code(params, cfg, ids, (cfg.grid_size, cfg.grid_size))
    return jnp.clip(out, -1.0, 1.0)
