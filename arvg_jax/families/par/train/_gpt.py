"""Teacher-forced PAR training: next-token cross-entropy on the PAR-order sequence.

The forward is the family's own (`PAR.__call__`, i.e. the official training forward of
YuqingWang1029/PAR `autoregressive/models/gpt.py` on `idx = z_indices[:, :-1]`): the sequence
[cls, t_0 .. t_{A-1}, spe_0 .. spe_{E-1}, t_A .. t_{N-2}] under the group attention mask with
PAR's RoPE rows; output position p predicts PAR token p. Tokens are permuted from raster to PAR
order as `autoregressive/train/train_c2i.py` does (`layout.par_index_to_raster`). Labels are
dropped to the null class (`num_classes`) with probability `cond_drop` (gpt.py `LabelEmbedder`
in training: the CFG unconditional row).

Dims: B batch, N tokens, V vocabulary.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax

from arvg_jax.families.par import layout
from arvg_jax.families.par.config import PARConfig
from arvg_jax.families.par.model import PAR
from arvg_jax.train._common import StageHParams, make_optimizer, sample_batch


def init_gpt_params(cfg: PARConfig, tok_cfg, seed: int) -> dict:
    """The family's `init_params` GPT (gpt.py `_init_weights`: N(0, 0.02), norms 1) with the
    output head zeroed, as gpt.py `initialize_weights` does (uniform first predictions)."""
    from arvg_jax.families.par.family import PARFamily

    params, _ = PARFamily().init_params(cfg, tok_cfg, seed)
    return {**params, "output": {"kernel": jnp.zeros_like(params["output"]["kernel"])}}


def raster_to_par(tokens: jax.Array, cfg: PARConfig) -> jax.Array:
    """[B, N] raster-order ids -> PAR order (train_c2i.py's z_indices permutation)."""
    return tokens[:, layout.par_index_to_raster(cfg)]


def gpt_loss(
    params: dict, cfg: PARConfig, labels: jax.Array, tokens: jax.Array
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean next-token cross-entropy of the teacher-forced logits.

    Args:
        labels: int32 [B] (already dropped to the null class where wanted).
        tokens: int32 [B, N] in PAR order.

    Returns:
        (loss, metrics {loss, acc, acc_parallel (tokens emitted A at a time)}).
    """
    logits = PAR(cfg).apply({"params": params}, labels, tokens)  # [B, N, V]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, tokens)  # [B, N]
    loss = jnp.mean(ce)
    hit = (jnp.argmax(logits, axis=-1) == tokens).astype(jnp.float32)
    a = cfg.ar_token_num
    return loss, {"loss": loss, "acc": jnp.mean(hit), "acc_parallel": jnp.mean(hit[:, a:])}


def init_gpt_state(cfg: PARConfig, tok_cfg, hp: StageHParams, seed: int) -> dict[str, Any]:
    params = init_gpt_params(cfg, tok_cfg, seed)
    return {
        "params": params,
        "opt_state": make_optimizer(hp).init(params),
        "step": jnp.zeros((), jnp.int32),
    }


@functools.partial(jax.jit, static_argnames=("cfg", "hp", "cond_drop"), donate_argnums=(0,))
def gpt_train_step(
    state: dict[str, Any],
    tokens_all: jax.Array,
    labels_all: jax.Array,
    key: jax.Array,
    *,
    cfg: PARConfig,
    hp: StageHParams,
    cond_drop: float,
) -> tuple[dict[str, Any], dict[str, jax.Array]]:
    """One AdamW step on a random batch of PAR-order tokens [N, L] with labels [N].

    `key` is the stage's key, folded with the step count (batch draw and label dropout).
    """
    k_batch, k_drop = jax.random.split(jax.random.fold_in(key, state["step"]))
    tokens, labels = sample_batch(k_batch, (tokens_all, labels_all), hp.batch)
    drop = jax.random.bernoulli(k_drop, cond_drop, labels.shape)
    labels = jnp.where(drop, cfg.num_classes, labels)
    (_, metrics), grads = jax.value_and_grad(gpt_loss, has_aux=True)(
        state["params"], cfg, labels, tokens
    )
    tx = make_optimizer(hp)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics["grad_norm"] = optax.tree.norm(grads)
    return {"params": params, "opt_state": opt_state, "step": state["step"] + 1}, metrics


@functools.partial(jax.jit, static_argnames=("cfg",))
def gpt_eval(params: dict, labels: jax.Array, tokens: jax.Array, *, cfg: PARConfig) -> dict:
    """Teacher-forced metrics (no label dropout) of PAR-order tokens [B, N] with labels [B]."""
    return gpt_loss(params, cfg, labels, tokens)[1]
