"""Vector-quantizer training pieces shared by every family's tokenizer stage (family-free).

The losses follow the VQ-VAE recipe every family's tokenizer was trained with (FoundationVision/VAR
`models/quant.py` `VectorQuantizer2.forward`, bytedance/1d-tokenizer
`modeling/modules/maskgit_vqgan.py` `VectorQuantizer.forward`): codebook loss ‖ẑ − sg(z)‖² plus
β‖sg(ẑ) − z‖² commitment, the decoder fed z + sg(ẑ − z) (straight-through), L1 + L2
reconstruction. Codebook upkeep: an EMA of each code's share of the hits; every `restart_every`
steps the codes whose share fell below `dead_ratio / V` are re-seeded from random quantizer inputs
of the batch.

A family supplies its own forward as `loss_fn(params, images) -> (loss, aux)` with
aux = {"metrics": {...}, "idx": int codes (any shape), "z": [N, C] quantizer inputs}; the codebook
is the [V, C] leaf at `codebook_path` of the param tree.

Dims: B batch, N quantizer inputs, V vocab, C code width.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from arvg_jax.train._common import StageHParams, make_optimizer, sample_batch

CODEBOOK_PATH = ("quantize", "embedding")  # where VAR's and MaskGIT-VQGAN's codebooks live


@dataclasses.dataclass(frozen=True, kw_only=True)
class VQLossConfig:
    """Loss weights and codebook upkeep of a tokenizer stage."""

    beta: float = 0.25  # commitment weight (quant.py `beta`, maskgit_vqgan.py commitment_cost)
    vq_weight: float = 1.0  # weight of the (codebook + commitment) term
    l1_weight: float = 1.0  # reconstruction L1
    l2_weight: float = 1.0  # reconstruction L2
    usage_decay: float = 0.99  # EMA of each code's share of the hits
    restart_every: int = 100  # steps between dead-code re-seeding (0 = never)
    dead_ratio: float = 0.03  # a code is dead when its usage share < dead_ratio / V
    codebook_init_std: float = 0.02  # the codebook is re-initialised to N(0, std²)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def nearest_codes(z: jax.Array, emb: jax.Array) -> jax.Array:
    """int32 [N]: argmin_v |z|² + |e_v|² − 2 z·e_v of z [N, C] over the codebook emb [V, C].

    No gradient; the dot product at HIGHEST precision (the inference quantizers' argmin)."""
    z, emb = jax.lax.stop_gradient(z), jax.lax.stop_gradient(emb)
    dot = jnp.einsum("NC,VC->NV", z, emb, precision=jax.lax.Precision.HIGHEST)
    emb_sq = jnp.sum(jnp.square(emb), axis=1)  # [V]
    dist = (jnp.sum(jnp.square(z), axis=1, keepdims=True) + emb_sq) + (-2.0) * dot  # [N, V]
    return jnp.argmin(dist, axis=1).astype(jnp.int32)


def codebook_commitment_loss(z_q: jax.Array, z: jax.Array, beta: float) -> jax.Array:
    """‖z_q − sg(z)‖² (moves the codebook) + β‖sg(z_q) − z‖² (commits the encoder), means."""
    sg = jax.lax.stop_gradient
    return jnp.mean(jnp.square(z_q - sg(z))) + beta * jnp.mean(jnp.square(sg(z_q) - z))


def straight_through(z: jax.Array, z_q: jax.Array) -> jax.Array:
    """z + sg(z_q − z): the value of z_q, the gradient of z."""
    return z + jax.lax.stop_gradient(z_q - z)


def reconstruction_loss(
    recon: jax.Array, images: jax.Array, loss_cfg: VQLossConfig
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(l1_weight·L1 + l2_weight·L2, L1, L2) of recon vs images (same shape, means)."""
    l1 = jnp.mean(jnp.abs(recon - images))
    l2 = jnp.mean(jnp.square(recon - images))
    return loss_cfg.l1_weight * l1 + loss_cfg.l2_weight * l2, l1, l2


def _get(tree: dict, path: tuple[str, ...]):
    for k in path:
        tree = tree[k]
    return tree


def _set(tree: dict, path: tuple[str, ...], value) -> dict:
    """A copy of the nested dict with the leaf at `path` replaced (other subtrees shared)."""
    if not path:
        return value
    return {**tree, path[0]: _set(tree[path[0]], path[1:], value)}


def init_state(
    params: dict,
    hp: StageHParams,
    loss_cfg: VQLossConfig,
    key: jax.Array,
    codebook_path: tuple[str, ...] = CODEBOOK_PATH,
) -> dict[str, Any]:
    """Training state of fresh tokenizer params: the codebook drawn N(0, codebook_init_std²),
    AdamW state, uniform code usage, step 0."""
    v, c = _get(params, codebook_path).shape
    emb = loss_cfg.codebook_init_std * jax.random.normal(key, (v, c), jnp.float32)
    params = _set(params, codebook_path, emb)
    return {
        "params": params,
        "opt_state": make_optimizer(hp).init(params),
        "usage": jnp.full((v,), 1.0 / v, jnp.float32),
        "step": jnp.zeros((), jnp.int32),
    }


def restart_dead_codes(
    key: jax.Array,
    emb: jax.Array,
    usage: jax.Array,
    z: jax.Array,
    loss_cfg: VQLossConfig,
    do_restart: jax.Array,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Re-seeds dead codes [V, C] from random rows of z [N, C] when `do_restart` is true.

    Returns:
        (codebook [V, C], usage [V] (re-seeded codes reset to 1/V), number re-seeded).
    """
    v = emb.shape[0]
    dead = (usage < loss_cfg.dead_ratio / v) & do_restart  # [V]
    pick = jax.random.randint(key, (v,), 0, z.shape[0])
    emb = jnp.where(dead[:, None], jnp.take(z, pick, axis=0), emb)
    usage = jnp.where(dead, 1.0 / v, usage)
    return emb, usage, jnp.sum(dead)


def train_step(
    state: dict[str, Any],
    images_all: jax.Array,
    key: jax.Array,
    *,
    loss_fn: Callable[[dict, jax.Array], tuple[jax.Array, dict[str, Any]]],
    hp: StageHParams,
    loss_cfg: VQLossConfig,
    codebook_path: tuple[str, ...] = CODEBOOK_PATH,
) -> tuple[dict[str, Any], dict[str, jax.Array]]:
    """One AdamW step plus codebook upkeep on a random batch of `images_all` [N, H, W, 3].

    Not jitted: a family wraps it in its own `jax.jit` with its configs static (`loss_fn` closes
    over them). `key` is the stage's PRNG key; each step folds in its step count.

    Returns:
        (new state, metrics = loss_fn's plus used (codes hit in this batch), restarted).
    """
    k_batch, k_restart = jax.random.split(jax.random.fold_in(key, state["step"]))
    (images,) = sample_batch(k_batch, (images_all,), hp.batch)
    (_, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"], images)
    tx = make_optimizer(hp)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)

    emb = _get(params, codebook_path)
    v = emb.shape[0]
    idx = aux["idx"].reshape(-1)
    hits = jnp.zeros((v,), jnp.float32).at[idx].add(1.0) / idx.shape[0]
    usage = loss_cfg.usage_decay * state["usage"] + (1 - loss_cfg.usage_decay) * hits
    step = state["step"] + 1
    do_restart = (loss_cfg.restart_every > 0) & (step % max(loss_cfg.restart_every, 1) == 0)
    emb, usage, n_restart = restart_dead_codes(
        k_restart, emb, usage, aux["z"], loss_cfg, do_restart
    )
    params = _set(params, codebook_path, emb)
    metrics = {**aux["metrics"], "used": jnp.sum(hits > 0), "restarted": n_restart}
    return {"params": params, "opt_state": opt_state, "usage": usage, "step": step}, metrics


def batched_apply(fn: Callable[[jax.Array], Any], x: np.ndarray, batch: int) -> np.ndarray:
    """Applies a jitted fn to [N, ...] in equal batches (the last padded, so one compiled shape),
    concatenating the numpy results (e.g. tokenizing a dataset: fn = images -> tokens)."""
    n, outs = x.shape[0], []
    for s in range(0, n, batch):
        xb = x[s : s + batch]
        pad = batch - xb.shape[0] if n > batch else 0
        if pad:
            xb = np.concatenate([xb, np.repeat(xb[-1:], pad, 0)])
        outs.append(np.asarray(fn(jnp.asarray(xb)))[: xb.shape[0] - pad])
    return np.concatenate(outs)
