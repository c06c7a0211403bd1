"""MAR's training objective: random-order masking, the MAE encoder-decoder, the diffusion loss.

Matches LTH14/mar (commit fe470ac) `models/mar.py` `forward` (`sample_orders`, `random_masking`
with one mask ratio per batch from `truncnorm((mask_ratio_min - 1) / 0.25, 0, loc=1, scale=0.25)`
and `ceil(L * ratio)` masked tokens, label dropout to `fake_latent`, `forward_mae_encoder` /
`forward_mae_decoder`, `forward_loss` repeating every row `diffusion_batch_mul` times) and
`models/diffloss.py` `DiffLoss.forward` (t uniform in [0, 1000), the loss averaged over masked
rows) with `diffusion/gaussian_diffusion.py` `training_losses` for the cosine schedule,
epsilon prediction and LEARNED_RANGE variance: MSE(eps) + the VLB term of the variance
(`_vb_terms_bpd` on the detached mean, decoder NLL at t = 0), in bits.

The transformer is `model.MAR` unchanged (masking by attention keys: fixed shapes), the head
`diffloss.SimpleMLPAdaLN`, and the schedule tables `diffloss.make_schedule` (the sampler's). Not
ported: attention / projection dropout (the tiny model has none) and grad checkpointing.

Dims: B batch, L tokens, D token channels, M = B L diffusion_batch_mul head rows.
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

from arvg_jax.families.mar import diffloss
from arvg_jax.families.mar.config import MARConfig
from arvg_jax.families.mar.model import MAR
from arvg_jax.train._common import StageHParams, make_optimizer, sample_batch

Array = jax.Array
NUM_TIMESTEPS = 1000


def init_mar_params(cfg: MARConfig, rng: Array) -> dict:
    """`{"transformer", "diffloss"}` with the official init.

    mar.py `initialize_weights`: embeddings / tokens N(0, 0.02²), Linear xavier-uniform with
    zero bias, LayerNorm (1, 0). diffloss.py `SimpleMLPAdaLN.initialize_weights`: Linear
    xavier-uniform, the timestep MLP N(0, 0.02²), adaLN modulations and the output layer zero.
    """
    b, l, d = 1, cfg.seq_len, cfg.token_embed_dim
    k_t, k_h, k_x = jax.random.split(rng, 3)
    transformer = MAR(cfg).init(
        k_t,
        jnp.zeros((b, l, d)),
        jnp.zeros((b, l)),
        jnp.zeros((b,), jnp.int32),
        jnp.zeros((b,), bool),
    )["params"]
    head = diffloss.SimpleMLPAdaLN(width=cfg.diffloss_w, depth=cfg.diffloss_d, out_channels=2 * d)
    head_p = head.init(
        k_h, jnp.zeros((b, d)), jnp.zeros((b,), jnp.int32), jnp.zeros((b, cfg.decoder_embed_dim))
    )["params"]
    xavier = jax.nn.initializers.xavier_uniform()
    normal = jax.nn.initializers.normal(0.02)

    def redo(tree: dict, key: Array, is_head: bool) -> dict:
        flat = traverse_util.flatten_dict(tree, sep="/")
        for i, (path, val) in enumerate(sorted(flat.items())):
            k = jax.random.fold_in(key, i)
            leaf = path.rsplit("/", 1)[-1]
            zero = is_head and ("adaLN_modulation" in path or path.startswith("final_layer_linear"))
            if zero:
                flat[path] = jnp.zeros_like(val)
            elif leaf == "kernel" and val.ndim == 2:
                timestep = is_head and path.startswith("time_embed")
                flat[path] = (normal if timestep else xavier)(k, val.shape, val.dtype)
            elif leaf == "bias":
                flat[path] = jnp.zeros_like(val)
        return traverse_util.unflatten_dict(flat, sep="/")

    k1, k2 = jax.random.split(k_x)
    return {"transformer": redo(transformer, k1, False), "diffloss": redo(head_p, k2, True)}


def diffusion_tables() -> dict[str, np.ndarray]:
    """float32 [1000] tables of the training diffusion (`create_diffusion("")`: every step)."""
    s = diffloss.make_schedule("")
    ac = s.alphas_cumprod
    f32 = lambda a: np.asarray(a, np.float64).astype(np.float32)
    return {
        "sqrt_ac": f32(np.sqrt(ac)),
        "sqrt_1m_ac": f32(np.sqrt(1.0 - ac)),
        "coef1": f32(s.posterior_mean_coef1),
        "coef2": f32(s.posterior_mean_coef2),
        "post_logvar": f32(s.posterior_log_variance_clipped),
        "max_log": f32(np.log(s.betas)),
        "recip": f32(s.sqrt_recip_alphas_cumprod),
        "recipm1": f32(s.sqrt_recipm1_alphas_cumprod),
    }


def _normal_kl(mean1, logvar1, mean2, logvar2):
    # gaussian_diffusion.py normal_kl.
    return 0.5 * (
        -1.0
        + logvar2
        - logvar1
        + jnp.exp(logvar1 - logvar2)
        + jnp.square(mean1 - mean2) * jnp.exp(-logvar2)
    )


def _approx_std_normal_cdf(x):
    return 0.5 * (1.0 + jnp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def _discretized_gaussian_loglik(x, means, log_scales):
    # gaussian_diffusion.py discretized_gaussian_log_likelihood (8-bit bins on [-1, 1]).
    centered = x - means
    inv_stdv = jnp.exp(-log_scales)
    cdf_plus = _approx_std_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = _approx_std_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = jnp.log(jnp.maximum(cdf_plus, 1e-12))
    log_one_minus_cdf_min = jnp.log(jnp.maximum(1.0 - cdf_min, 1e-12))
    log_delta = jnp.log(jnp.maximum(cdf_plus - cdf_min, 1e-12))
    return jnp.where(
        x < -0.999, log_cdf_plus, jnp.where(x > 0.999, log_one_minus_cdf_min, log_delta)
    )


def diffusion_loss_terms(
    head_params: dict, cfg: MARConfig, x0: Array, z: Array, t: Array, noise: Array
) -> dict[str, Array]:
    """`training_losses` per row: x0 [M, D] targets, z [M, Cz], t int [M], noise [M, D].

    Returns:
        {"mse" [M], "vb" [M] (bits), "loss" [M] = mse + vb}.
    """
    tab = {k: jnp.asarray(v)[t][:, None] for k, v in diffusion_tables().items()}
    x_t = tab["sqrt_ac"] * x0 + tab["sqrt_1m_ac"] * noise  # q_sample
    out = diffloss.head_apply(head_params, x_t, t, z, width=cfg.diffloss_w, depth=cfg.diffloss_d)
    d = x0.shape[-1]
    return loss_terms_from_output(x0, x_t, t, noise, out[:, :d], out[:, d:])


def p_mean_logvar(x_t: Array, t: Array, eps: Array, v: Array) -> tuple[Array, Array]:
    """`p_mean_variance` (LEARNED_RANGE, EPSILON, no clipping): model mean and log variance
    [M, D] of x_{t-1} given x_t [M, D], t int [M], the head's eps and v [M, D]."""
    tab = {k: jnp.asarray(v)[t][:, None] for k, v in diffusion_tables().items()}
    frac = (v + 1.0) / 2.0
    log_var = frac * tab["max_log"] + (1.0 - frac) * tab["post_logvar"]
    pred_x0 = tab["recip"] * x_t - tab["recipm1"] * eps
    return tab["coef1"] * pred_x0 + tab["coef2"] * x_t, log_var


def loss_terms_from_output(
    x0: Array, x_t: Array, t: Array, noise: Array, eps: Array, v: Array
) -> dict[str, Array]:
    """MSE on eps + `_vb_terms_bpd` on the frozen mean (only the variance learns from it)."""
    tab = {k: jnp.asarray(v)[t][:, None] for k, v in diffusion_tables().items()}
    mse = jnp.mean(jnp.square(noise - eps), axis=-1)
    mean, log_var = p_mean_logvar(x_t, t, jax.lax.stop_gradient(eps), v)
    true_mean = tab["coef1"] * x0 + tab["coef2"] * x_t  # q_posterior_mean_variance
    kl = jnp.mean(_normal_kl(true_mean, tab["post_logvar"], mean, log_var), -1) / math.log(2.0)
    nll = -jnp.mean(_discretized_gaussian_loglik(x0, mean, 0.5 * log_var), -1) / math.log(2.0)
    vb = jnp.where(t == 0, nll, kl)
    return {"mse": mse, "vb": vb, "loss": mse + vb}


def random_mask(key: Array, b: int, seq_len: int, mask_ratio_min: float) -> tuple[Array, Array]:
    """`sample_orders` + `random_masking`: (mask float [B, L], 1 = masked; the ratio)."""
    k_order, k_ratio = jax.random.split(key)
    orders = jax.vmap(lambda k: jax.random.permutation(k, seq_len))(jax.random.split(k_order, b))
    rank = (
        jnp.zeros((b, seq_len), jnp.int32)
        .at[jnp.arange(b)[:, None], orders]
        .set(jnp.arange(seq_len, dtype=jnp.int32)[None])
    )
    lower = (mask_ratio_min - 1.0) / 0.25
    ratio = 1.0 + 0.25 * jax.random.truncated_normal(k_ratio, lower, 0.0)
    num_masked = jnp.ceil(seq_len * ratio).astype(jnp.int32)
    return (rank < num_masked).astype(jnp.float32), ratio


def mar_loss(
    params: dict,
    cfg: MARConfig,
    tokens: Array,
    labels: Array,
    key: Array,
    *,
    label_drop: float | None = None,
) -> tuple[Array, dict[str, Array]]:
    """MAR's `forward(imgs, labels)` loss on tokens [B, L, D] (MAR token space), labels int [B].

    `label_drop` defaults to `cfg.label_drop_prob` (0 for evaluation).
    """
    b, l, _ = tokens.shape
    k_mask, k_drop, k_t, k_noise = jax.random.split(key, 4)
    mask, ratio = random_mask(k_mask, b, l, cfg.mask_ratio_min)
    p = cfg.label_drop_prob if label_drop is None else label_drop
    drop = jax.random.bernoulli(k_drop, p, (b,))
    z = MAR(cfg).apply({"params": params["transformer"]}, tokens, mask, labels, drop)  # [B, L, C]
    mul = cfg.diffusion_batch_mul
    rows = lambda a: jnp.tile(a.reshape(b * l, *a.shape[2:]), (mul,) + (1,) * (a.ndim - 2))
    x0, zr, m = rows(tokens), rows(z), rows(mask)  # torch .repeat(mul, 1): whole copies
    t = jax.random.randint(k_t, (x0.shape[0],), 0, NUM_TIMESTEPS)
    noise = jax.random.normal(k_noise, x0.shape)
    terms = diffusion_loss_terms(params["diffloss"], cfg, x0, zr, t, noise)
    denom = jnp.sum(m)
    loss = jnp.sum(terms["loss"] * m) / denom
    metrics = {
        "loss": loss,
        "mse": jnp.sum(terms["mse"] * m) / denom,
        "vb": jnp.sum(terms["vb"] * m) / denom,
        "mask_ratio": ratio,
    }
    return loss, metrics


def init_mar_state(cfg: MARConfig, hp: StageHParams, rng: Array, *, ema: bool) -> dict[str, Any]:
    params = init_mar_params(cfg, rng)
    state = {"params": params, "opt_state": make_optimizer(hp).init(params), "step": jnp.int32(0)}
    if ema:
        state["ema"] = jax.tree.map(lambda p: jnp.array(p, copy=True), params)  # own buffers
    return state


@functools.partial(jax.jit, static_argnames=("cfg", "hp", "ema_decay"), donate_argnums=(0,))
def mar_train_step(
    state: dict[str, Any],
    moments: tuple[Array, Array],
    labels_all: Array,
    key: Array,
    *,
    cfg: MARConfig,
    hp: StageHParams,
    ema_decay: float,
) -> tuple[dict[str, Any], dict[str, Array]]:
    """One AdamW step on a random batch; tokens are posterior samples (the official cached-moments
    path: `mean + std * eps`), already in token units. `moments` = (mean, std) [N, L, D]."""
    k_batch, k_eps, k_loss = jax.random.split(jax.random.fold_in(key, state["step"]), 3)
    mean, std, labels = sample_batch(k_batch, (*moments, labels_all), hp.batch)
    tokens = mean + std * jax.random.normal(k_eps, mean.shape)
    (_, metrics), grads = jax.value_and_grad(mar_loss, has_aux=True)(
        state["params"], cfg, tokens, labels, k_loss
    )
    updates, opt_state = make_optimizer(hp).update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    new = {"params": params, "opt_state": opt_state, "step": state["step"] + 1}
    if "ema" in state:  # engine_mar.update_ema
        new["ema"] = jax.tree.map(
            lambda e, p: ema_decay * e + (1 - ema_decay) * p, state["ema"], params
        )
    metrics["grad_norm"] = optax.tree.norm(grads)
    return new, metrics


@functools.partial(jax.jit, static_argnames=("cfg",))
def mar_eval_loss(
    params: dict, tokens: Array, labels: Array, key: Array, *, cfg: MARConfig
) -> dict[str, Array]:
    """Held-out loss metrics (no label dropout) of tokens [B, L, D] with labels [B]."""
    return mar_loss(params, cfg, tokens, labels, key, label_drop=0.0)[1]
