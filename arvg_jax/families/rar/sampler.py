"""RAR class-conditional generation: raster order, KV cache, CFG, one compiled program.

Matches bytedance/1d-tokenizer (commit 942a96f) `modeling/rar.py` `RAR.generate` with its
default kv_cache=True: step 0 runs [cls, cond], step s >= 1 runs image token s - 1 at sequence
position s + 1 against the cache; the last position's logits are CFG-mixed with the power-cosine
schedule, divided by the temperature and sampled (no top-k / top-p). Here one `lax.fori_loop`
feeds the n + 1 sequence positions one token at a time (fixed-shape caches, traced offsets), so
the whole generation is one jit program holding one copy of the model; the tokenizer decode can
run inside it too.

Dims: B images, n image tokens, V codebook size, R recorded steps.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from arvg_jax import sampling
from arvg_jax.families.rar.config import RARConfig, SamplingSettings
from arvg_jax.families.rar.model import RAR, init_caches
from arvg_jax.sampling import top2_margin
from arvg_jax.tokenizers import maskgit_vqgan

Array = jax.Array


def guidance_schedule(guidance_scale: float, guidance_scale_pow: float, n: int) -> np.ndarray:
    """float32 [n]: the per-step CFG scale of RAR.generate, evaluated as the official float32
    torch expression (MDT power-cosine):

        scale_pow = ones(1) * pow                                   (float32)
        scale_step = (1 - cos(((step / n) ** scale_pow) * pi)) * 1 / 2
        cfg_scale = (guidance_scale - 1) * scale_step + 1

    Python scalars meet a float32 tensor, so each is rounded to float32 and every op is float32.
    g(0) = 1 for pow > 0; pow = 0 gives the constant guidance_scale (0 ** 0 = 1).
    """
    f32 = np.float32
    steps = np.arange(n, dtype=np.float64) / n  # step / image_seq_len in Python double
    base = steps.astype(f32)
    with np.errstate(divide="ignore"):
        powed = np.power(base, f32(guidance_scale_pow), dtype=f32)
    scale_step = (f32(1) - np.cos(powed * f32(math.pi), dtype=f32)) * f32(1) / f32(2)
    return (f32(guidance_scale - 1) * scale_step + f32(1)).astype(f32)


def _mix(logits: Array, b: int, use_cfg: bool, g: Array, temperature: Array) -> Array:
    """[rows, V] last-position logits -> the sampler input [B, V] (softmax input)."""
    if use_cfg:
        cond, uncond = logits[:b], logits[b:]
        logits = uncond + (cond - uncond) * g  # rar.py: uncond + (cond - uncond) * cfg_scale
    return logits / temperature


def _generate_impl(
    params: dict,
    vq_params: dict | None,
    labels: Array,
    keys: Array,
    schedule: Array,
    temperature: Array,
    *,
    cfg: RARConfig,
    vq_cfg: Any,
    use_cfg: bool,
    greedy: bool,
    record: int,
    dtype: Any,
    qkv_shards: int = 1,
) -> dict[str, Array]:
    model = RAR(cfg, dtype, qkv_shards)
    variables = {"params": params}
    b, n, v = labels.shape[0], cfg.image_seq_len, cfg.codebook_size
    cond = cfg.condition_id(labels.astype(jnp.int32))
    if use_cfg:  # rows [0, B) conditional, [B, 2B) the null class (input token and adaLN)
        cond = jnp.concatenate([cond, jnp.full_like(cond, cfg.null_condition_id)])
    rows = cond.shape[0]
    caches = init_caches(cfg, rows, dtype)

    def pick(step, logits_last, state, valid=True):
        """Samples token `step` from the [rows, V] logits and records what was asked; writes
        nothing where `valid` is False."""
        mixed = _mix(logits_last, b, use_cfg, schedule[step], temperature)  # [B, V]
        if greedy:
            tok = jnp.argmax(mixed, axis=-1).astype(jnp.int32)
        else:  # row i draws step s with fold_in(keys[i], s): independent of the batch
            sub = jax.vmap(lambda k: jax.random.fold_in(k, step))(keys)
            draw = jax.vmap(lambda k, lg: jax.random.categorical(k, lg.astype(jnp.float32)))
            tok = draw(sub, mixed).astype(jnp.int32)

        def put(buf, x, where):  # buf [B, T, ...] gets x at column `step` where `where`
            col = jnp.minimum(step, buf.shape[1] - 1)
            return buf.at[:, col].set(jnp.where(where, x.astype(buf.dtype), buf[:, col]))

        state = dict(state)
        state["tokens"] = put(state["tokens"], tok, valid)
        # NaN logits still give a token (argmax / categorical of NaN): flag the image instead.
        rows_ok = jnp.isfinite(logits_last).reshape(-1, b, logits_last.shape[-1]).all(axis=(0, 2))
        state["finite"] = state["finite"] & (rows_ok | ~valid)
        state["top2_margin"] = put(state["top2_margin"], top2_margin(mixed), valid)
        if record:
            keep = valid & (step < record)
            state["logits_first"] = put(state["logits_first"], mixed, keep)
            state["cond_logits_first"] = put(state["cond_logits_first"], logits_last[:b], keep)
            if use_cfg:
                state["uncond_logits_first"] = put(
                    state["uncond_logits_first"], logits_last[b:], keep
                )
        return state

    state = {
        "tokens": jnp.zeros((b, n), jnp.int32),
        "top2_margin": jnp.zeros((b, n), jnp.float32),
        "finite": jnp.ones((b,), bool),  # every logit of the image's rows was finite
    }
    if record:
        state["logits_first"] = jnp.zeros((b, record, v), jnp.float32)
        state["cond_logits_first"] = jnp.zeros((b, record, v), jnp.float32)
        if use_cfg:
            state["uncond_logits_first"] = jnp.zeros((b, record, v), jnp.float32)

    def body(pos, carry):
        """Runs sequence position `pos` (one token) through the cache; from pos 1 on, its
        logits give image token pos - 1 (= the official step pos - 1)."""
        state, caches = carry
        # pos 0: cls (its id is ignored by `embed`), pos 1: the condition, pos >= 2: the image
        # token sampled at step pos - 2 (both CFG halves feed the same token).
        prev = state["tokens"][:, jnp.maximum(pos - 2, 0)]  # [B]
        if use_cfg:
            prev = jnp.concatenate([prev, prev])
        ids = jnp.where(pos == 1, cond, prev)  # [rows]
        logits, caches = model.apply(
            variables, ids[:, None], cond, caches, offset=pos, method=RAR.decode
        )
        state = pick(jnp.maximum(pos - 1, 0), logits[:, -1], state, valid=pos >= 1)
        return state, caches

    # The official step 0 runs [cls, cond] as one causal 2-token call; here they are two
    # 1-token steps of the same loop (the same function: one compiled copy of the model).
    state, _ = lax.fori_loop(0, n + 1, body, (state, caches))
    if vq_params is not None:
        img = maskgit_vqgan.decode_tokens(vq_params, vq_cfg, state["tokens"])
        state["images"] = img
    return state


_generate_jit = jax.jit(
    _generate_impl,
    static_argnames=("cfg", "vq_cfg", "use_cfg", "greedy", "record", "dtype", "qkv_shards"),
)


def generate(
    params: dict,
    cfg: RARConfig,
    labels: Array | np.ndarray,
    keys: Array,
    *,
    settings: SamplingSettings | None = None,
    greedy: bool = False,
    vq_params: dict | None = None,
    vq_cfg: Any = None,
    record_steps: int = 0,
    dtype: Any = jnp.float32,
    qkv_shards: int = 1,
) -> dict[str, Array]:
    """Generates images for class labels (official `RAR.generate` + `decode_tokens`).

    One compiled program per (config, batch size, CFG on/off, greedy, record_steps, dtype); the
    guidance values, temperature, labels, key and params are traced.

    Args:
        params: RAR params (float or quantized).
        cfg: the architecture.
        labels: int [B] class ids in [0, condition_num_classes).
        keys: one PRNG key per image ([B] keys, `arvg_jax.families.image_keys`) or one key
            standing for images 0..B-1 of it; image i draws step s with `fold_in(keys[i], s)`
            (unused when greedy), so its tokens never depend on the batch it is in.
        settings: guidance_scale (0 = the official no-CFG branch: B rows, no uncond half),
            guidance_scale_pow, randomize_temperature. None: RAR-B's (`SamplingSettings()`).
        greedy: argmax instead of a draw (the reference fixture's patched multinomial).
        vq_params, vq_cfg: MaskGIT-VQGAN params/config; when given, also decode the images.
        record_steps: R > 0 also returns the first R steps' logits (see Returns).
        dtype: compute dtype of the block matmuls and the KV cache.
        qkv_shards: the qkv columns' layout (`arvg_jax.options.ExecOptions.qkv_shards`).

    Returns:
        {"tokens": int32 [B, n] (raster), "top2_margin": float32 [B, n] (top-1 minus top-2 of
        the sampler input at each step), "finite": bool [B] (every logit of the image's cond and
        uncond rows was finite: one reduction per step), "images": float32 [B, H, W, 3] in [0, 1] when decoding,
        and with record_steps: "logits_first" [B, R, V] (the softmax input: CFG-mixed logits /
        temperature), "cond_logits_first" [B, R, V] (raw logits of the conditional rows) and,
        under CFG, "uncond_logits_first" [B, R, V]}.
    """
    settings = SamplingSettings() if settings is None else settings
    if vq_params is not None and (
        vq_cfg.codebook_size != cfg.codebook_size or vq_cfg.num_tokens != cfg.image_seq_len
    ):
        raise ValueError(
            f"tokenizer (codebook {vq_cfg.codebook_size}, {vq_cfg.num_tokens} tokens) does not fit "
            f"RAR (codebook {cfg.codebook_size}, image_seq_len {cfg.image_seq_len})"
        )
    n = cfg.image_seq_len
    use_cfg = settings.guidance_scale != 0  # rar.py: `if guidance_scale != 0`
    schedule = guidance_schedule(settings.guidance_scale, settings.guidance_scale_pow, n)
    labels = jnp.asarray(labels, jnp.int32)
    with jax.threefry_partitionable(True):  # pinned: key derivation independent of the default
        return _generate_jit(
            params,
            vq_params,
            labels,
            sampling.per_image_keys(keys, labels.shape[0]),
            jnp.asarray(schedule),
            jnp.float32(settings.randomize_temperature),
            cfg=cfg,
            vq_cfg=vq_cfg,
            use_cfg=bool(use_cfg),
            greedy=bool(greedy),
            record=int(record_steps),
            dtype=dtype,
            qkv_shards=int(qkv_shards),
        )
