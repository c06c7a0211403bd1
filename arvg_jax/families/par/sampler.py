"""PAR class-conditional generation: KV cache, CFG, sequential-then-parallel schedule, one jit.

Matches YuqingWang1029/PAR `autoregressive/models/generate.py` `generate` (c2i):
  * passes 0 .. A-1 (one token each, `prefill` + `decode_n_tokens`): pass 0 feeds the class
    embedding at position 0, pass j feeds t_{j-1} at position j, and emits t_j;
  * passes A .. A+M-1 (`decode_n_tokens_multi`, M = (N - A) / A): pass A + m feeds A embeddings
    at positions A(m+1) .. A(m+1)+A-1 and emits PAR tokens A(m+1) .. A(m+1)+A-1. The first feeds
    [t_{A-1}, spe_0 .. spe_{E-1}] (the model's `self.start` switch), later ones the A tokens of the
    previous pass.
Both phases are `lax.fori_loop`s inside one compiled program (two loop bodies, static shapes);
the KV cache offset, mask rows and RoPE rows are picked with traced offsets.

Sampling (generate.py `sample` / `sample_multi`): CFG logits = uncond + (cond - uncond) · cfg
(batch [cond; uncond], uncond = class num_classes; applied iff cfg_scale > 1, constant unless
cfg_interval > -1), then / max(T, 1e-5), HF-style top-k / top-p filtering (`top_k_top_p_filter`),
softmax, a categorical draw (torch.multinomial) or, with greedy, the argmax of the probabilities
(`sample_logits=False`). Draws use explicit PRNG keys, one per image: image i draws pass p with
`fold_in(keys[i], p)`, so an image never depends on the batch it was generated in.

Dims: B images, N tokens, A tokens per parallel pass, V vocabulary, C width.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from arvg_jax.families.par import layout
from arvg_jax.families.par.config import PARConfig
from arvg_jax.families.par.model import PAR, init_caches
from arvg_jax.sampling import top2_margin
from arvg_jax.tokenizers import llamagen_vq16

Array = jax.Array

STATIC_ARGNAMES = (
    "cfg",
    "use_cfg",
    "top_k",
    "top_p",
    "greedy",
    "dtype",
    "return_margin",
    "return_first_logits",
    "qkv_shards",
)


def top_k_top_p_filter(logits: Array, top_k: int = 0, top_p: float = 1.0) -> Array:
    """generate.py `top_k_top_p_filtering` (the HF v3.2 version, min_tokens_to_keep 1).

    * top_k > 0: logits below the k-th largest (k clipped to [1, V]) become -inf.
    * top_p < 1: sorted descending, an entry is removed when the softmax mass of the entries
      before it (itself excluded) is > top_p; the top entry always stays. Ties are ordered by
      index (stable sort); torch's sort may order them differently.

    Args:
        logits: [..., V] float; top_k, top_p: static.

    Returns:
        Same shape and dtype, removed entries at -inf.
    """
    v = logits.shape[-1]
    if top_k > 0:
        k = min(max(top_k, 1), v)
        kth = lax.top_k(logits, k)[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p < 1.0:
        order = jnp.argsort(-logits, axis=-1, stable=True)  # descending
        sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
        cum = jnp.cumsum(jax.nn.softmax(sorted_logits.astype(jnp.float32), axis=-1), axis=-1)
        # torch compares the float32 cumsum with the Python float in float32.
        remove = cum > np.float32(top_p)
        # Shift right: keep the first entry that crosses the threshold, and always the top one.
        remove = jnp.concatenate([jnp.zeros_like(remove[..., :1]), remove[..., :-1]], axis=-1)
        remove = jnp.put_along_axis(jnp.zeros_like(remove), order, remove, axis=-1, inplace=False)
        logits = jnp.where(remove, -jnp.inf, logits)
    return logits


def _draw(keys: Array, logits: Array, *, top_k: int, top_p: float, greedy: bool) -> Array:
    """generate.py `sample` after the temperature: filter, softmax, multinomial / top-1.

    Args:
        keys: [B] PRNG keys (typed, or raw uint32 [B, 2]), one per row of `logits`.
        logits: [B, L, V].

    Returns:
        int32 [B, L]; row b drawn with keys[b] only.
    """
    logits = top_k_top_p_filter(logits.astype(jnp.float32), top_k, top_p)
    if greedy:
        # torch.topk(probs, 1): the argmax of the probabilities (first index on ties).
        return jnp.argmax(jax.nn.softmax(logits, axis=-1), axis=-1).astype(jnp.int32)
    draw = jax.vmap(lambda k, x: jax.random.categorical(k, x, axis=-1))
    return draw(keys, logits).astype(jnp.int32)


def _per_image_keys(key: Array, batch: int) -> Array:
    """[B] keys: `key` itself when it already holds one key per image, else fold_in(key, i).

    A single key is a typed key of shape () or a raw uint32 [2]; per-image keys are typed [B] or
    raw [B, 2].
    """
    key = jnp.asarray(key)
    typed = jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
    single = key.ndim == (0 if typed else 1)
    if single:
        return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(batch, dtype=jnp.uint32))
    if key.shape[0] != batch:
        raise ValueError(f"{key.shape[0]} PRNG keys for {batch} labels")
    return key


def cast_params(params: Any, dtype) -> Any:
    """Float array leaves of a nested dict cast to `dtype` (the official `model.to(dtype)`).

    Non-dict nodes that are not plain arrays (quantized kernels, activation quantizers) are kept.
    """
    if isinstance(params, dict):
        return {k: cast_params(v, dtype) for k, v in params.items()}
    if isinstance(params, (jax.Array, np.ndarray)) and jnp.issubdtype(params.dtype, jnp.floating):
        return jnp.asarray(params).astype(dtype)
    return params


def _generate_impl(
    params: dict,
    labels: Array,
    keys: Array,
    cfg_scale: Array,
    cfg_interval: Array,
    temperature: Array,
    *,
    cfg: PARConfig,
    use_cfg: bool,
    top_k: int,
    top_p: float,
    greedy: bool,
    dtype: str,
    return_margin: bool,
    return_first_logits: bool,
    qkv_shards: int = 1,
) -> dict[str, Array]:
    dtype = jnp.dtype(dtype)
    if dtype != jnp.float32:
        params = cast_params(params, dtype)
    model = PAR(cfg, dtype=dtype, qkv_shards=qkv_shards)
    variables = {"params": params}
    apply = functools.partial(model.apply, variables)
    b = labels.shape[0]
    a, n, v = cfg.ar_token_num, cfg.block_size, cfg.vocab_size
    labels = labels.astype(jnp.int32)
    if use_cfg:  # generate(): cond_combined = [cond; null class]
        labels = jnp.concatenate([labels, jnp.full_like(labels, cfg.num_classes)])
    rows = labels.shape[0]

    def sampler_input(logits: Array, cfg_on: Array) -> Array:
        """[rows, L, V] float32 model logits -> [B, L, V] sampler input."""
        if use_cfg:
            cond, uncond = logits[:b], logits[b:]
            logits = jnp.where(cfg_on, uncond + (cond - uncond) * cfg_scale, cond)
        # generate.py `sample`: logits / max(temperature, 1e-5), in float32.
        return logits / jnp.maximum(temperature.astype(jnp.float32), 1e-5)

    def cfg_active(i: Array) -> Array:
        """decode_n_tokens(_multi): cfg_flag turns False once i > cfg_interval (if > -1)."""
        return ~((cfg_interval > -1) & (i > cfg_interval))

    def dup(x: Array) -> Array:
        return jnp.concatenate([x, x]) if use_cfg else x

    def record(state, p, s, start, logits):
        """Writes tokens, margins and first logits of pass p (sampler input s [B, L, V]) and
        ANDs into each image's flag whether its model logits [rows, L, V] were all finite (NaN
        logits still give a token: argmax / categorical of NaN)."""
        tokens, margins, first, finite = state
        finite = finite & jnp.isfinite(logits).reshape(-1, b, logits[0].size).all(axis=(0, 2))
        subs = jax.vmap(lambda k: jax.random.fold_in(k, p))(keys)  # [B]: image i's pass p
        t = _draw(subs, s, top_k=top_k, top_p=top_p, greedy=greedy)  # [B, L]
        tokens = lax.dynamic_update_slice_in_dim(tokens, t, start, axis=1)
        if return_margin:
            margins = lax.dynamic_update_slice_in_dim(margins, top2_margin(s), start, axis=1)
        if return_first_logits:
            upd = lax.dynamic_update_slice_in_dim(first, s, jnp.minimum(start, a), axis=1)
            first = jnp.where(start < 2 * a, upd, first)
        return tokens, margins, first, finite

    tokens = jnp.zeros((b, n), jnp.int32)
    margins = jnp.zeros((b, n) if return_margin else (0,), jnp.float32)
    first = jnp.zeros((b, 2 * a, v) if return_first_logits else (0,), jnp.float32)
    caches = init_caches(cfg, rows, dtype)
    x_cls = apply(labels, method=PAR.class_input)  # [rows, 1, C]

    def sequential(j, carry):
        caches, state = carry
        prev = lax.dynamic_slice_in_dim(state[0], jnp.maximum(j - 1, 0), 1, axis=1)  # [B, 1]
        x_tok = apply(dup(prev), method=PAR.token_input)
        x = jnp.where(j == 0, x_cls, x_tok)  # prefill feeds the class embedding
        logits, caches = apply(x, caches, j, method=PAR.decode)
        s = sampler_input(logits, (j == 0) | cfg_active(j - 1))
        return caches, record(state, j, s, j, logits)

    def parallel(m, carry):
        caches, state = carry
        start = a * (m + 1)
        prev = lax.dynamic_slice_in_dim(state[0], a * m, a, axis=1)  # [B, A]: previous pass
        x_bridge = apply(dup(prev[:, -1]), method=PAR.bridge_input)
        x_tok = apply(dup(prev), method=PAR.token_input)
        x = jnp.where(m == 0, x_bridge, x_tok)
        logits, caches = apply(x, caches, start, method=PAR.decode)
        s = sampler_input(logits, cfg_active(m * a))
        return caches, record(state, a + m, s, start, logits)

    state = (tokens, margins, first, jnp.ones((b,), bool))
    caches, state = lax.fori_loop(0, a, sequential, (caches, state))
    _, state = lax.fori_loop(0, (n - a) // a, parallel, (caches, state))
    out = {"tokens": state[0], "finite": state[3]}
    if return_margin:
        out["top2_margin"] = state[1]
    if return_first_logits:
        out["logits_first"] = state[2]
    return out


_generate_jit = jax.jit(_generate_impl, static_argnames=STATIC_ARGNAMES)


def generate(
    params: dict,
    labels: Array,
    key: Array,
    *,
    cfg: PARConfig,
    cfg_scale: float = 1.5,
    cfg_interval: float = -1,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    greedy: bool = False,
    dtype: Any = "float32",
    return_margin: bool = False,
    return_first_logits: bool = False,
    qkv_shards: int = 1,
) -> dict[str, Array]:
    """Samples N tokens per label in PAR order (generate.py `generate`), as one jit program.

    Args:
        params: PAR params (`converters.par`); float or quantized leaves.
        labels: int [B] class ids.
        key: one PRNG key per image (typed [B] or raw uint32 [B, 2], e.g.
            `families.image_keys`): image i draws pass p with `fold_in(key[i], p)`; or a single
            key, standing for the per-image keys `fold_in(key, i)`. Unused when greedy.
        cfg: the model config (static).
        cfg_scale: CFG weight; > 1 doubles the batch with null-class rows (static decision,
            traced value). The PAR FID settings: 1.5 (XL-4x, 3B-16x), 1.435 (XXL-4x), 1.345 (3B-4x).
        cfg_interval: -1 = CFG at every pass; else CFG stops once the phase's counter passes it.
        temperature, top_k, top_p: generate.py sampling settings (top_k / top_p static).
        greedy: top-1 instead of a draw (the official `sample_logits=False`).
        dtype: execution dtype: "float32" (parity) or "bfloat16" (the official sampler casts
            the GPT to bf16).
        return_margin: also return "top2_margin" [B, N] of the sampler input (near-tie check).
        return_first_logits: also return "logits_first" [B, 2A, V]: the sampler input of PAR
            tokens 0 .. 2A-1 (the A one-token passes and the first parallel pass).
        qkv_shards: wqkv's column layout (`arvg_jax.options.ExecOptions.qkv_shards`).

    Returns:
        {"tokens": int32 [B, N] in PAR order (`layout.par_to_raster` for the decoder),
        "finite": bool [B] (every model logit of the image's cond and uncond rows was finite;
        one reduction per pass), ...}.
    """
    use_cfg = float(cfg_scale) > 1.0
    labels = jnp.asarray(labels)
    return _generate_jit(
        params,
        labels,
        _per_image_keys(key, labels.shape[0]),
        jnp.float32(cfg_scale),
        jnp.float32(cfg_interval),
        jnp.float32(temperature),
        cfg=cfg,
        use_cfg=use_cfg,
        top_k=int(top_k),
        top_p=float(top_p),
        greedy=bool(greedy),
        dtype=jnp.dtype(dtype).name,
        return_margin=return_margin,
        return_first_logits=return_first_logits,
        qkv_shards=int(qkv_shards),
    )


def decode_images(
    vq_params: dict, vq_cfg: Any, tokens: Array, *, cfg: PARConfig, eval_size: int | None = 256
) -> dict[str, Array]:
    """sample_c2i_ddp.py post-processing: PAR -> raster order, VQ decode, resize, uint8.

    Args:
        vq_params, vq_cfg: the LlamaGen VQ-16 decoder (`arvg_jax.tokenizers.llamagen_vq16`).
        tokens: int [B, N] in PAR order (`generate(...)["tokens"]`).
        cfg: the PAR config (grid and region layout).
        eval_size: side of the evaluation images (bicubic, as `--image-size-eval`); None keeps
            the decoder's size.

    Returns:
        {"images": float32 [B, S, S, 3] not clamped (nominally [-1, 1]),
         "uint8": uint8 [B, S, S, 3] = clamp(127.5 x + 128, 0, 255), truncated}.
    """
    g = cfg.grid_size
    raster = layout.par_to_raster(jnp.asarray(tokens, jnp.int32), cfg)
    images = llamagen_vq16.decode_code(vq_params, vq_cfg, raster, (g, g))
    if eval_size is not None:
        images = llamagen_vq16.resize_for_eval(images, eval_size)
    return {"images": images, "uint8": llamagen_vq16.to_uint8(images)}
