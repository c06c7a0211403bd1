"""Teacher-forced VAR training on VQVAE tokens, with class dropout to the null class (for CFG).

Dims: B batch, L tokens of all scales, V vocabulary, E Cvae, C width.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from arvg_jax.families.var.model import VAR, VARConfig
from arvg_jax.tokenizers import var_vqvae
from arvg_jax.tokenizers.var_vqvae import VQVAEConfig
from arvg_jax.train._common import StageHParams, make_optimizer, sample_batch


def init_var_params(
    cfg: VARConfig,
    rng: jax.Array,
    *,
    head_scale: float = 0.02,
    ada_scale: float = 0.5,
    gamma_scale: float = 1e-5,
) -> dict:
    """VAR params with a training-friendly init, in the spirit of the official `init_weights`.

    Starting from the linen init: the output head is scaled by `head_scale` (near-uniform first
    logits); every block's `ada_lin` kernel by `ada_scale`, and its γ1/γ2 columns (the first 2C,
    the residual-branch gains) by `gamma_scale` (blocks start close to the identity); `attn/proj`
    and `ffn/fc2` by 1/√(2·depth).
    """
    c, e = cfg.embed_dim, cfg.cvae
    labels = jnp.zeros((1,), jnp.int32)
    x = jnp.zeros((1, cfg.seq_len - cfg.first_l, e), jnp.float32)
    params = VAR(cfg).init(rng, labels, x)["params"]
    flat = traverse_util.flatten_dict(params, sep="/")
    depth_scale = 1.0 / math.sqrt(2 * cfg.depth)
    for path, val in flat.items():
        if path == "head/kernel":
            flat[path] = val * head_scale
        elif path.endswith("ada_lin/kernel") and path.startswith("blocks_"):
            scale = np.full((val.shape[-1],), ada_scale, np.float32)
            scale[: 2 * c] *= gamma_scale
            flat[path] = val * scale
        elif path.endswith("ada_lin/kernel"):
            flat[path] = val * ada_scale
        elif path.endswith(("attn/proj/kernel", "ffn/fc2/kernel")):
            flat[path] = val * depth_scale
    return traverse_util.unflatten_dict(flat, sep="/")


def var_inputs(vae_params: dict, vae_cfg: VQVAEConfig, tokens: jax.Array) -> jax.Array:
    """Teacher-forcing input `idx_to_var_input` of scale-concatenated tokens [B, L]: [B, L-1, E]."""
    return var_vqvae.idx_to_var_input(vae_params, vae_cfg, var_vqvae.split_idx(vae_cfg, tokens))


def var_loss(
    params: dict,
    cfg: VARConfig,
    x_in: jax.Array,
    tokens: jax.Array,
    labels: jax.Array,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean token cross-entropy of the block-causal teacher-forced logits.

    Args:
        params: VAR params.
        cfg: VAR config.
        x_in: float32 [B, L - first_l, E] teacher-forcing inputs.
        tokens: int32 [B, L] targets.
        labels: int32 [B] (already dropped to the null class where wanted).

    Returns:
        (loss, metrics {loss, acc (all tokens), acc_last (last scale)}).
    """
    logits = VAR(cfg).apply({"params": params}, labels, x_in)  # [B, L, V]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, tokens)  # [B, L]
    loss = jnp.mean(ce)
    hit = (jnp.argmax(logits, axis=-1) == tokens).astype(jnp.float32)
    last = cfg.patch_nums[-1] ** 2
    return loss, {"loss": loss, "acc": jnp.mean(hit), "acc_last": jnp.mean(hit[:, -last:])}


def init_var_state(cfg: VARConfig, hp: StageHParams, rng: jax.Array) -> dict[str, Any]:
    """`init_var_params`, AdamW state and a step counter."""
    params = init_var_params(cfg, rng)
    return {
        "params": params,
        "opt_state": make_optimizer(hp).init(params),
        "step": jnp.zeros((), jnp.int32),
    }


@functools.partial(
    jax.jit, static_argnames=("cfg", "vae_cfg", "hp", "cond_drop"), donate_argnums=(0,)
)
def var_train_step(
    state: dict[str, Any],
    tokens_all: jax.Array,
    labels_all: jax.Array,
    vae_params: dict,
    key: jax.Array,
    *,
    cfg: VARConfig,
    vae_cfg: VQVAEConfig,
    hp: StageHParams,
    cond_drop: float,
) -> tuple[dict[str, Any], dict[str, jax.Array]]:
    """One AdamW step on a random batch of the tokenized dataset.

    Args:
        state: {"params", "opt_state", "step"}.
        tokens_all: int32 [N, L] dataset tokens (`tokenize`).
        labels_all: int32 [N] class ids.
        vae_params: frozen VQVAE params (builds the teacher-forcing inputs).
        key: the stage's PRNG key (folded with the step count: batch and label dropout).
        cfg, vae_cfg, hp: static configs.
        cond_drop: probability of replacing a label by the null class `cfg.num_classes`.

    Returns:
        (new state, metrics).
    """
    k_batch, k_drop = jax.random.split(jax.random.fold_in(key, state["step"]))
    tokens, labels = sample_batch(k_batch, (tokens_all, labels_all), hp.batch)
    drop = jax.random.bernoulli(k_drop, cond_drop, labels.shape)
    labels = jnp.where(drop, cfg.num_classes, labels)
    x_in = jax.lax.stop_gradient(var_inputs(vae_params, vae_cfg, tokens))
    (_, metrics), grads = jax.value_and_grad(var_loss, has_aux=True)(
        state["params"], cfg, x_in, tokens, labels
    )
    tx = make_optimizer(hp)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics["grad_norm"] = jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(grads)))
    return {"params": params, "opt_state": opt_state, "step": state["step"] + 1}, metrics


@functools.partial(jax.jit, static_argnames=("cfg", "vae_cfg"))
def var_eval_loss(
    params: dict,
    vae_params: dict,
    tokens: jax.Array,
    labels: jax.Array,
    *,
    cfg: VARConfig,
    vae_cfg: VQVAEConfig,
) -> dict[str, jax.Array]:
    """Teacher-forced metrics (no label dropout) of a batch of tokens [B, L] with labels [B]."""
    x_in = var_inputs(vae_params, vae_cfg, tokens)
    return var_loss(params, cfg, x_in, tokens, labels)[1]
