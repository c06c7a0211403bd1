"""MAR generation (`MAR.sample_tokens`) as one jit-compiled function, and token -> image decoding.

Matches LTH14/mar `models/mar.py` `sample_tokens` (commit fe470ac): per AR step the transformer
runs on all tokens with the current mask, the next mask keeps the first `mask_len` entries of a
random order (cosine schedule, clamped to [1, #unknown - 1]; the last step predicts every
remaining position), the diffusion head samples the predicted positions (linear or constant CFG
schedule, CFG halves share their noise), and the samples are written back.

Randomness is per image: image i draws its order and all its noise from `keys[i]` alone
(`random_orders`, `_image_noise`), so its tokens never depend on the batch it is generated in.

Fixed shapes: the number of tokens predicted at step k depends only on k (the schedule is the
same for every sample), so each step samples `n_max` = max_k n_k rows per image (padding rows are
computed and dropped), and the AR loop is one `lax.scan`. The predicted rows of an image are its
positions in ASCENDING order (the official `z[mask_to_pred.nonzero()]`), so injected noise lines
up with the official row order.

Dims: B images, L tokens, D token channels, C decoder width, K AR steps, S diffusion steps,
N = B * n_max rows of one CFG half.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from arvg_jax.families.mar import diffloss
from arvg_jax.families.mar.config import MARConfig
from arvg_jax.families.mar.model import MAR
from arvg_jax.sampling import per_image_keys
from arvg_jax.tokenizers import kl16_vae

Array = jax.Array

CFG_SCHEDULES = ("linear", "constant")


@dataclasses.dataclass(frozen=True)
class MaskSchedule:
    """Per AR step k: which generation-order ranks are unknown and which are predicted.

    After step k the unknown set is `orders[b, :mask_len[k]]`; step k predicts ranks
    `[lo[k], unknown[k])` (lo = mask_len except at the last step, where it is 0).
    """

    seq_len: int
    unknown: tuple[int, ...]  # #unknown entering step k
    mask_len: tuple[int, ...]  # the clamped official mask_len of step k
    lo: tuple[int, ...]

    @property
    def num_iter(self) -> int:
        return len(self.unknown)

    @property
    def counts(self) -> tuple[int, ...]:
        """n_k, tokens predicted per image at step k."""
        return tuple(u - lo for u, lo in zip(self.unknown, self.lo, strict=True))

    @property
    def n_max(self) -> int:
        return max(max(self.counts), 1)


def mask_schedule(seq_len: int, num_iter: int) -> MaskSchedule:
    """The official cosine mask schedule, evaluated in float64 numpy as `sample_tokens` does.

    mask_len_k = max(1, min(#unknown - 1, floor(L cos(pi/2 (k+1)/K)))).
    """
    unknown, mask_len, lo = [], [], []
    cur = seq_len
    for step in range(num_iter):
        ratio = np.cos(math.pi / 2.0 * (step + 1) / num_iter)
        ml = int(max(1, min(cur - 1, np.floor(seq_len * ratio))))
        unknown.append(cur)
        mask_len.append(ml)
        lo.append(0 if step >= num_iter - 1 else min(ml, cur))
        cur = ml
    return MaskSchedule(seq_len, tuple(unknown), tuple(mask_len), tuple(lo))


def unpatchify(tokens: Array, cfg: MARConfig) -> Array:
    """mar.py `unpatchify`: tokens [B, L, D] -> latents NCHW [B, Cv, h p, w p]."""
    b, p, c, h = tokens.shape[0], cfg.patch_size, cfg.vae_embed_dim, cfg.seq_h
    x = tokens.reshape(b, h, h, c, p, p)
    x = jnp.einsum("nhwcpq->nchpwq", x)
    return x.reshape(b, c, h * p, h * p)


def split_image_keys(keys: Array) -> tuple[Array, Array]:
    """Per image key [B, 2] -> (order keys, noise keys), each uint32 [B, 2]."""
    both = jax.vmap(lambda k: jax.random.split(k))(keys)  # [B, 2, 2]
    return both[:, 0], both[:, 1]


def random_orders(order_keys: Array, seq_len: int) -> Array:
    """A random permutation of 0..L-1 per image (`sample_orders`), int32 [B, L]; row i is drawn
    from `order_keys[i]` alone."""
    perm = jax.vmap(lambda k: jax.random.permutation(k, seq_len))(order_keys)
    return perm.astype(jnp.int32)


def _image_noise(
    noise_keys: Array, step: Array, n_max: int, halves: int, steps: int, d: int
) -> tuple[Array, Array]:
    """The head's draws of AR step `step` in the padded row layout, image i's from
    `fold_in(noise_keys[i], step)` only.

    Returns:
        noise0 [B n_max, D] (x_T, rows image-major) and noise [S, halves B n_max, D] (rows
        half-major, then image, as `z_rows`).
    """

    def one(k):
        k0, k1 = jax.random.split(jax.random.fold_in(k, step))
        n0 = jax.random.normal(k0, (n_max, d), jnp.float32)
        nz = jax.random.normal(k1, (steps, halves, n_max, d), jnp.float32)
        return n0, nz

    n0, nz = jax.vmap(one)(noise_keys)  # [B, n_max, D], [B, S, halves, n_max, D]
    b = n0.shape[0]
    nz = jnp.transpose(nz, (1, 2, 0, 3, 4)).reshape(steps, halves * b * n_max, d)
    return n0.reshape(b * n_max, d), nz


def _ascending_positions(sel: Array, size: int, fill: int) -> Array:
    # sel bool [B, L] -> int32 [B, size]: the selected positions in ascending order, then `fill`.
    return jax.vmap(lambda s: jnp.nonzero(s, size=size, fill_value=fill)[0])(sel).astype(jnp.int32)


STATIC_ARGNAMES = (
    "cfg",
    "num_iter",
    "num_sampling_steps",
    "use_cfg",
    "cfg_schedule",
    "conditional",
    "inject_noise",
    "record",
    "dtype",
    "qkv_shards",
)


@functools.partial(jax.jit, static_argnames=STATIC_ARGNAMES)
def _sample(
    params: dict,
    labels: Array,
    orders: Array,
    noise_keys: Array,
    cfg_value: Array,
    cfg_minus_one: Array,
    temperature: Array,
    noise0: Array | None,
    noise: Array | None,
    *,
    cfg: MARConfig,
    num_iter: int,
    num_sampling_steps: str,
    use_cfg: bool,
    cfg_schedule: str,
    conditional: bool,
    inject_noise: bool,
    record: bool,
    dtype: Any = jnp.float32,
    qkv_shards: int = 1,
) -> tuple[Array, Any]:
    model = MAR(cfg, dtype=dtype, qkv_shards=qkv_shards)
    schedule = diffloss.make_schedule(num_sampling_steps)
    ms = mask_schedule(cfg.seq_len, num_iter)
    b, l, d = orders.shape[0], cfg.seq_len, cfg.token_embed_dim
    n_max = ms.n_max
    rows = b * n_max  # N, one CFG half
    # rank[b, orders[b, i]] = i: position p is unknown entering step k iff rank < unknown_k.
    rank = (
        jnp.zeros((b, l), jnp.int32)
        .at[jnp.arange(b)[:, None], orders]
        .set(jnp.arange(l, dtype=jnp.int32)[None])
    )
    cond_drop = jnp.full((b,), not conditional)
    labels2, drop2 = labels, cond_drop
    if use_cfg:  # rows [cond; uncond], the uncond half uses fake_latent
        labels2 = jnp.concatenate([labels, labels])
        drop2 = jnp.concatenate([cond_drop, jnp.ones((b,), bool)])
    head = {"schedule": schedule, "width": cfg.diffloss_w, "depth": cfg.diffloss_d}
    xs = {
        "k": jnp.arange(num_iter, dtype=jnp.int32),
        "unknown": jnp.asarray(ms.unknown, jnp.int32),
        "lo": jnp.asarray(ms.lo, jnp.int32),
        # sample_tokens: cfg_iter = 1 + (cfg - 1) * (L - mask_len) / L, all float32.
        "remaining": jnp.asarray([l - m for m in ms.mask_len], jnp.float32),
    }
    if inject_noise:
        xs["noise0"], xs["noise"] = noise0, noise

    def step(tokens, x):
        unknown_mask = rank < x["unknown"]  # [B, L]
        pred = unknown_mask & (rank >= x["lo"])
        tok2, mask2 = tokens, unknown_mask
        if use_cfg:
            tok2 = jnp.concatenate([tokens, tokens])
            mask2 = jnp.concatenate([unknown_mask, unknown_mask])
        z = model.apply({"params": params["transformer"]}, tok2, mask2, labels2, drop2)
        pos = _ascending_positions(pred, n_max, l)  # [B, n_max]; l marks padding
        take = jnp.minimum(pos, l - 1)[..., None]
        z = z.astype(jnp.float32)  # the head runs in float32 whatever the transformer's dtype
        z_rows = jnp.take_along_axis(z[:b], take, axis=1).reshape(rows, -1)  # [N, C]
        if use_cfg:
            z_un = jnp.take_along_axis(z[b:], take, axis=1).reshape(rows, -1)
            z_rows = jnp.concatenate([z_rows, z_un])  # [2N, C]
        if inject_noise:
            n0, nz = x["noise0"], x["noise"]
        else:
            halves = 2 if use_cfg else 1
            n0, nz = _image_noise(noise_keys, x["k"], n_max, halves, schedule.num_steps, d)
        if not use_cfg:
            cfg_iter, scale = jnp.float32(1.0), None
        elif cfg_schedule == "linear":
            cfg_iter = 1 + cfg_minus_one * x["remaining"] / l
            scale = cfg_iter
        else:
            cfg_iter = scale = cfg_value
        sampled = diffloss.sample(params["diffloss"], z_rows, n0, nz, temperature, scale, **head)
        new = sampled[:rows].reshape(b, n_max, d)  # the cond half
        tokens_next = tokens.at[jnp.arange(b)[:, None], pos].set(new, mode="drop")
        out = None
        if record:
            out = {
                "mask": unknown_mask,
                "pred_mask": pred,
                "tokens": tokens_next,
                "cfg_iter": jnp.asarray(cfg_iter, jnp.float32),
                "positions": pos,
                "z": z_rows,
                "noise0": n0,
                "noise": nz,
                "sample": sampled,
            }
        return tokens_next, out

    tokens0 = jnp.zeros((b, l, d), jnp.float32)
    return jax.lax.scan(step, tokens0, xs)


def sample_tokens(
    params: dict,
    labels: Array | None,
    keys: Array,
    *,
    cfg: MARConfig,
    batch: int | None = None,
    num_iter: int = 64,
    cfg_scale: float = 1.0,
    cfg_schedule: str = "linear",
    temperature: float = 1.0,
    num_sampling_steps: str | None = None,
    orders: Array | None = None,
    noise0: Array | None = None,
    noise: Array | None = None,
    record: bool = False,
    dtype: Any = jnp.float32,
    qkv_shards: int = 1,
) -> tuple[Array, dict | None]:
    """`MAR.sample_tokens(bsz, num_iter, cfg, cfg_schedule, labels, temperature)`.

    Args:
        params: `{"transformer", "diffloss"}` (`converters.mar`).
        labels: int [B] class labels, or None for unconditional (`fake_latent`) generation.
        keys: one PRNG key per image ([B] keys, `arvg_jax.families.image_keys`), or one key
            standing for images 0..B-1 of it (`fold_in(key, i)`). Image i draws its order (when
            not given) and its head noise (when not injected) from `keys[i]` alone.
        cfg: the architecture.
        batch: B when `labels` is None.
        num_iter: AR steps K.
        cfg_scale: the CFG scale; exactly 1.0 disables CFG (as the official `cfg == 1.0`).
        cfg_schedule: "linear" (1 + (cfg - 1)(L - mask_len)/L per step) or "constant".
        temperature: multiplies the head's noise.
        num_sampling_steps: respacing of the head's diffusion (default `cfg.num_sampling_steps`).
        orders: int [B, L] generation orders to use instead of random ones.
        noise0: [K, N, D] x_T draws (N = B n_max, padded row layout; `mask_schedule`).
        noise: [K, S, R, D] per-step head draws (R = 2N under CFG, else N); with `noise0`.
        record: also return the per-step record (masks, rows, noise, samples).
        dtype: compute dtype of the transformer (the diffusion head runs in float32).
        qkv_shards: the qkv columns' layout (`arvg_jax.options.ExecOptions.qkv_shards`).

    Returns:
        tokens [B, L, D] (MAR token space; `unpatchify` for latents) and the record or None.
    """
    if cfg_schedule not in CFG_SCHEDULES:
        raise NotImplementedError(f"cfg_schedule {cfg_schedule!r}, expected {CFG_SCHEDULES}")
    if labels is None and batch is None:
        raise ValueError("give labels or batch")
    b = batch if labels is None else int(labels.shape[0])
    k_orders, k_noise = split_image_keys(per_image_keys(keys, b))
    if orders is None:
        orders = random_orders(k_orders, cfg.seq_len)
    if (noise0 is None) != (noise is None):
        raise ValueError("inject noise0 and noise together")
    labels_arr = jnp.zeros((b,), jnp.int32) if labels is None else jnp.asarray(labels, jnp.int32)
    tokens, rec = _sample(
        params,
        labels_arr,
        jnp.asarray(orders, jnp.int32),
        k_noise,
        jnp.float32(cfg_scale),
        # Python float64 (cfg - 1), rounded once, as torch multiplies a Python scalar.
        jnp.float32(cfg_scale - 1.0),
        jnp.float32(temperature),
        noise0,
        noise,
        cfg=cfg,
        num_iter=num_iter,
        num_sampling_steps=str(num_sampling_steps or cfg.num_sampling_steps),
        use_cfg=cfg_scale != 1.0,
        cfg_schedule=cfg_schedule,
        conditional=labels is not None,
        inject_noise=noise0 is not None,
        record=record,
        dtype=dtype,
        qkv_shards=int(qkv_shards),
    )
    return tokens, rec


def tokens_to_image(
    vae_params: dict,
    tokens: Array,
    *,
    cfg: MARConfig,
    vae_cfg: kl16_vae.KL16Config,
    token_scale: float = 0.2325,
) -> Array:
    """`vae.decode(sampled_tokens / 0.2325)` (engine_mar.py): tokens [B, L, D] -> NHWC image.

    The KL-16 latents were scaled by `token_scale` for MAR's token space; decoding divides here,
    where the official pipeline does, not inside the VAE.
    """
    latents = jnp.transpose(unpatchify(tokens, cfg), (0, 2, 3, 1))  # [B, h, w, Cv]
    return kl16_vae.decode(vae_params, latents / token_scale, cfg=vae_cfg)
