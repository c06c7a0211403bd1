"""Teacher-forced RAR training on MaskGIT-VQGAN tokens: next-token cross-entropy in raster order.

The loss is bytedance/1d-tokenizer `modeling/rar.py` `forward_fn` + `modeling/modules/losses.py`
`ARLoss` at random_ratio 0: the model's output j (sequence position j + 1) predicts image token j,
the last output predicts nothing; labels are dropped to the null class with probability
`cond_drop` (`preprocess_condition`, class_label_dropout 0.1) so CFG has an unconditional model.
RAR's random orders annealed to raster (`randomness_anneal_start/end`) are not used: at this size
and schedule the model trains raster only (the order it samples in).

The forward is `RAR(cfg).apply` itself (families/rar/model.py), the one
`RARFamily.teacher_forced_logits` and the sampler use.

Dims: B batch, n image tokens, V codebook size, C width.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

from arvg_jax.families.rar.config import RARConfig
from arvg_jax.families.rar.model import RAR
from arvg_jax.train._common import StageHParams, make_optimizer, sample_batch

_INIT_STD = 0.02  # rar.py init_weights: trunc_normal_(std 0.02) on every Linear and Embedding


def init_rar_params(cfg: RARConfig, key: jax.Array) -> dict:
    """RAR params as rar.py initialises them: Linear kernels and the embedding table
    trunc_normal(0.02) with zero biases, the position tables trunc_normal(0.02) (the model's own
    init), LayerNorms (1, 0), cls_token 0, and adaLN-Zero: every block's and the final layer's
    adaLN_modulation kernel and bias zero."""
    k_init, k_tn = jax.random.split(key)
    tokens = jnp.zeros((1, cfg.image_seq_len), jnp.int32)
    cond = jnp.zeros((1,), jnp.int32)
    params = RAR(cfg).init(k_init, tokens, cond)["params"]
    flat = traverse_util.flatten_dict(params, sep="/")
    tn = jax.nn.initializers.truncated_normal(_INIT_STD)
    for i, (path, val) in enumerate(sorted(flat.items())):
        if "adaLN_modulation" in path:
            flat[path] = jnp.zeros_like(val)
        elif path.endswith("/kernel") or path == "embeddings/embedding":
            flat[path] = tn(jax.random.fold_in(k_tn, i), val.shape, val.dtype)
        elif path.endswith("/bias"):  # Linear biases; the LayerNorm biases start at 0 anyway
            flat[path] = jnp.zeros_like(val)
    return traverse_util.unflatten_dict(flat, sep="/")


def rar_loss(
    params: dict, cfg: RARConfig, tokens: jax.Array, condition: jax.Array
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean next-token cross-entropy of the raster teacher-forced logits.

    Args:
        params: RAR params.
        cfg: the architecture.
        tokens: int32 [B, n] image tokens (raster).
        condition: int32 [B] condition ids (`cfg.condition_id(label)` or `cfg.null_condition_id`).

    Returns:
        (loss, metrics {loss, acc (token accuracy)}).
    """
    logits = RAR(cfg).apply({"params": params}, tokens, condition)[:, :-1]  # [B, n, V]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, tokens)  # [B, n]
    loss = jnp.mean(ce)
    acc = jnp.mean((jnp.argmax(logits, axis=-1) == tokens).astype(jnp.float32))
    return loss, {"loss": loss, "acc": acc}


def drop_labels(key: jax.Array, cfg: RARConfig, labels: jax.Array, p: float) -> jax.Array:
    """rar.py preprocess_condition: labels -> condition ids, each dropped to the null id w.p. p."""
    drop = jax.random.bernoulli(key, p, labels.shape)
    return jnp.where(drop, cfg.null_condition_id, cfg.condition_id(labels.astype(jnp.int32)))


def init_rar_state(cfg: RARConfig, hp: StageHParams, key: jax.Array) -> dict[str, Any]:
    """`init_rar_params`, AdamW state and a step counter."""
    params = init_rar_params(cfg, key)
    return {
        "params": params,
        "opt_state": make_optimizer(hp).init(params),
        "step": jnp.zeros((), jnp.int32),
    }


@functools.partial(jax.jit, static_argnames=("cfg", "hp", "cond_drop"), donate_argnums=(0,))
def rar_train_step(
    state: dict[str, Any],
    tokens_all: jax.Array,
    labels_all: jax.Array,
    key: jax.Array,
    *,
    cfg: RARConfig,
    hp: StageHParams,
    cond_drop: float,
) -> tuple[dict[str, Any], dict[str, jax.Array]]:
    """One AdamW step on a random batch of the tokenized dataset.

    Args:
        state: {"params", "opt_state", "step"}.
        tokens_all: int32 [N, n] dataset tokens; labels_all: int32 [N] class ids.
        key: the stage's PRNG key (folded with the step count: batch and label dropout).
        cfg, hp: static configs; cond_drop: label dropout probability.

    Returns:
        (new state, metrics {loss, acc, grad_norm}).
    """
    k_batch, k_drop = jax.random.split(jax.random.fold_in(key, state["step"]))
    tokens, labels = sample_batch(k_batch, (tokens_all, labels_all), hp.batch)
    condition = drop_labels(k_drop, cfg, labels, cond_drop)
    (_, metrics), grads = jax.value_and_grad(rar_loss, has_aux=True)(
        state["params"], cfg, tokens, condition
    )
    tx = make_optimizer(hp)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics["grad_norm"] = optax.tree.norm(grads)
    return {"params": params, "opt_state": opt_state, "step": state["step"] + 1}, metrics


@functools.partial(jax.jit, static_argnames=("cfg",))
def rar_eval_loss(
    params: dict, tokens: jax.Array, labels: jax.Array, *, cfg: RARConfig
) -> dict[str, jax.Array]:
    """Teacher-forced metrics (no label dropout) of tokens [B, n] with class labels [B]."""
    return rar_loss(params, cfg, tokens, cfg.condition_id(labels.astype(jnp.int32)))[1]
