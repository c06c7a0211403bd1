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

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax

from arvg_jax import resample
from arvg_jax.tokenizers import var_vqvae
from arvg_jax.tokenizers.var_vqvae import VectorQuantizer, VQVAEConfig
from arvg_jax.train._common import StageHParams, make_optimizer, sample_batch


@dataclasses.dataclass(frozen=True, kw_only=True)
class VQLossConfig:
    """Loss weights and codebook upkeep of the tokenizer stage."""

    beta: float = 0.25  # commitment weight (quant.py `beta`)
    vq_weight: float = 1.0  # weight of the (codebook + commitment) term
    l1_weight: float = 1.0  # reconstruction L1
    l2_weight: float = 1.0  # reconstruction L2
    usage_decay: float = 0.99  # EMA of each code's share of the hits
    restart_every: int = 100  # steps between dead-code re-seeding (0 = never)
    dead_ratio: float = 0.03  # a code is dead when its usage share < dead_ratio / V
    codebook_init_std: float = 0.02  # the codebook is re-initialised to N(0, std²)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


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
    vq = VectorQuantizer(cfg)
    variables = {"params": q_params}
    emb = vq.apply(variables, method="codebook")  # [V, Cv]
    emb_sq = jnp.sum(jnp.square(jax.lax.stop_gradient(emb)), axis=1)  # [V]
    f = f.astype(jnp.float32)
    f_sg = jax.lax.stop_gradient(f)
    f_rest, f_hat = f_sg, jnp.zeros_like(f_sg)
    vq_loss = 0.0
    idx_list, zs = [], []
    k = cfg.num_scales
    for si, pn in enumerate(cfg.patch_nums):
        z = f_rest if si == k - 1 else resample.area_resize_nhwc(f_rest, (pn, pn))
        z = jax.lax.stop_gradient(z).reshape(-1, c)  # [N, Cv], row-major
        dot = jnp.einsum(
            "NC,VC->NV", z, jax.lax.stop_gradient(emb), precision=jax.lax.Precision.HIGHEST
        )
        dist = (jnp.sum(jnp.square(z), axis=1, keepdims=True) + emb_sq) + (-2.0) * dot  # [N, V]
        idx = jnp.argmin(dist, axis=1).astype(jnp.int32)  # [N]
        h = jnp.take(emb, idx, axis=0).reshape(b, pn, pn, c)  # gradient reaches the codebook
        if si != k - 1:
            h = resample.bicubic_resize_nhwc(h, (hh, ww))
        h = vq.apply(variables, h, si, method="apply_phi")
        f_hat = f_hat + h
        f_rest = f_rest - h
        vq_loss = vq_loss + jnp.mean(jnp.square(f_hat - f_sg))
        vq_loss = vq_loss + beta * jnp.mean(jnp.square(jax.lax.stop_gradient(f_hat) - f))
        idx_list.append(idx.reshape(b, pn * pn))
        zs.append(z)
    f_hat_st = f + jax.lax.stop_gradient(f_hat - f)
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
    l1 = jnp.mean(jnp.abs(recon - images))
    l2 = jnp.mean(jnp.square(recon - images))
    loss = loss_cfg.l1_weight * l1 + loss_cfg.l2_weight * l2 + loss_cfg.vq_weight * vq_loss
    metrics = {"loss": loss, "l1": l1, "l2": l2, "vq": vq_loss}
    return loss, {"metrics": metrics, "idx": idx_list, "z": z}


def init_vqvae_state(
    cfg: VQVAEConfig, hp: StageHParams, loss_cfg: VQLossConfig, rng: jax.Array
) -> dict[str, Any]:
    """Fresh params (codebook N(0, codebook_init_std²)), optimizer state and code usage."""
    k_init, k_code = jax.random.split(rng)
    params = var_vqvae.init_params(cfg, k_init)
    params["quantize"]["embedding"] = loss_cfg.codebook_init_std * jax.random.normal(
        k_code, (cfg.vocab_size, cfg.z_channels), jnp.float32
    )
    return {
        "params": params,
        "opt_state": make_optimizer(hp).init(params),
        "usage": jnp.full((cfg.vocab_size,), 1.0 / cfg.vocab_size, jnp.float32),
        "step": jnp.zeros((), jnp.int32),
    }


def _restart_dead_codes(
    key: jax.Array,
    emb: jax.Array,
    usage: jax.Array,
    z: jax.Array,
    loss_cfg: VQLossConfig,
    do_restart: jax.Array,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Re-seeds dead codes [V, Cv] from random rows of z [N, Cv] when `do_restart` is true."""
    v = emb.shape[0]
    dead = (usage < loss_cfg.dead_ratio / v) & do_restart  # [V]
    pick = jax.random.randint(key, (v,), 0, z.shape[0])
    emb = jnp.where(dead[:, None], jnp.take(z, pick, axis=0), emb)
    usage = jnp.where(dead, 1.0 / v, usage)
    return emb, usage, jnp.sum(dead)


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
    """One AdamW step on a random batch of `images_all` [N, H, W, 3] (on device).

    `key` is the stage's PRNG key; each step folds in its step count.

    Returns:
        (new state, metrics {loss, l1, l2, vq, used (codes hit in this batch), restarted}).
    """
    k_batch, k_restart = jax.random.split(jax.random.fold_in(key, state["step"]))
    (images,) = sample_batch(k_batch, (images_all,), hp.batch)
    grad_fn = jax.value_and_grad(vqvae_loss, has_aux=True)
    (_, aux), grads = grad_fn(state["params"], cfg, images, loss_cfg)
    tx = make_optimizer(hp)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)

    v = cfg.vocab_size
    idx = jnp.concatenate([i.reshape(-1) for i in aux["idx"]])
    hits = jnp.zeros((v,), jnp.float32).at[idx].add(1.0) / idx.shape[0]
    usage = loss_cfg.usage_decay * state["usage"] + (1 - loss_cfg.usage_decay) * hits
    step = state["step"] + 1
    do_restart = (loss_cfg.restart_every > 0) & (step % max(loss_cfg.restart_every, 1) == 0)
    emb, usage, n_restart = _restart_dead_codes(
        k_restart, params["quantize"]["embedding"], usage, aux["z"], loss_cfg, do_restart
    )
    params = {**params, "quantize": {**params["quantize"], "embedding": emb}}
    metrics = {**aux["metrics"], "used": jnp.sum(hits > 0), "restarted": n_restart}
    return {"params": params, "opt_state": opt_state, "usage": usage, "step": step}, metrics


@functools.partial(jax.jit, static_argnames=("cfg",))
def tokenize(params: dict, cfg: VQVAEConfig, images: jax.Array) -> jax.Array:
    """Inference tokens `img_to_idx` of [B, H, W, 3] images, concatenated: int32 [B, L]."""
    return jnp.concatenate(var_vqvae.img_to_idx(params, cfg, images), axis=1)


@functools.partial(jax.jit, static_argnames=("cfg",))
def reconstruct(params: dict, cfg: VQVAEConfig, images: jax.Array) -> jax.Array:
    """Inference reconstruction `fhat_to_img(latent_to_idx(encode(x)))`, [-1, 1]."""
    _, f_hat = var_vqvae.latent_to_idx(params, cfg, var_vqvae.encode(params, cfg, images))
    return var_vqvae.fhat_to_img(params, cfg, f_hat)
