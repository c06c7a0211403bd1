"""Training the shapes classifier (`arvg_jax.eval.Classifier`) with cross-entropy.

Dims: N dataset size, B batch, K classes.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax

from arvg_jax.eval._classifier import Classifier, ClassifierConfig, init_classifier
from arvg_jax.train._common import StageHParams, make_optimizer, sample_batch


def init_classifier_state(
    cfg: ClassifierConfig, hp: StageHParams, rng: jax.Array, image_size: int
) -> dict[str, Any]:
    """Random classifier params, AdamW state and a step counter."""
    params = init_classifier(cfg, rng, image_size)
    return {
        "params": params,
        "opt_state": make_optimizer(hp).init(params),
        "step": jnp.zeros((), jnp.int32),
    }


def _augment(key: jax.Array, images: jax.Array) -> jax.Array:
    """Per-image random colour gain and offset (the dataset's colours vary; the shape decides)."""
    b = images.shape[0]
    k1, k2 = jax.random.split(key)
    gain = jax.random.uniform(k1, (b, 1, 1, 3), minval=0.8, maxval=1.2)
    shift = jax.random.uniform(k2, (b, 1, 1, 3), minval=-0.1, maxval=0.1)
    return jnp.clip((images + 1) * gain - 1 + shift, -1, 1)


@functools.partial(jax.jit, static_argnames=("cfg", "hp"), donate_argnums=(0,))
def classifier_train_step(
    state: dict[str, Any],
    images_all: jax.Array,
    labels_all: jax.Array,
    key: jax.Array,
    *,
    cfg: ClassifierConfig,
    hp: StageHParams,
) -> tuple[dict[str, Any], dict[str, jax.Array]]:
    """One AdamW step on a random, colour-jittered batch; metrics {loss, acc}.

    `key` is the stage's PRNG key; each step folds in its step count.
    """
    k_batch, k_aug = jax.random.split(jax.random.fold_in(key, state["step"]))
    images, labels = sample_batch(k_batch, (images_all, labels_all), hp.batch)
    images = _augment(k_aug, images)

    def loss_fn(params):
        logits, _ = Classifier(cfg).apply({"params": params}, images)
        loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
        return loss, jnp.mean(jnp.argmax(logits, -1) == labels)

    (loss, acc), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    tx = make_optimizer(hp)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    new_state = {"params": params, "opt_state": opt_state, "step": state["step"] + 1}
    return new_state, {"loss": loss, "acc": acc}
