"""VAR class-conditional generation with CFG and a KV cache, as one jit-compiled function.

Matches FoundationVision/VAR models/var.py `autoregressive_infer_cfg` (more_smooth=False).

Dims: B images, L tokens (all scales), l tokens of one scale (pn²), V vocabulary, E Cvae.
"""

from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from arvg_jax import sampling
from arvg_jax.families.var.model import VAR, VARBlock, VARConfig, block_modulation, init_kv_caches
from arvg_jax.nn import stacked_kv
from arvg_jax.options import ExecOptions
from arvg_jax.tokenizers import var_vqvae

Array = jax.Array

STATIC_ARGNAMES = ("var_cfg", "opts", "vae_cfg", "top_k", "top_p", "greedy", "return_margin")


def _generate_impl(
    var_params: dict,
    vae_params: dict,
    labels: Array,
    keys: Array,
    cfg_weights: Array,
    *,
    var_cfg: VARConfig,
    opts: ExecOptions,
    vae_cfg: Any,
    top_k: int,
    top_p: float,
    greedy: bool,
    return_margin: bool,
) -> dict[str, Array]:
    """The traced body of `generate`; every scale is unrolled (shapes are static per scale)."""
    if opts.nibble_unpack == "call":  # once here instead of at every layer call
        from quant import _packed

        var_params = _packed.unpack_nibble_storage(var_params)
    model = VAR(var_cfg, opts)
    variables = {"params": var_params}
    b = labels.shape[0]
    k_scales = var_cfg.num_scales
    # Rows [0:B] are conditional, rows [B:2B] use the null class (models/var.py).
    labels2 = jnp.concatenate([labels, jnp.full_like(labels, var_cfg.num_classes)])
    x, cond = model.apply(variables, labels2, method=VAR.first_scale_input)  # [2B, first_l, C]
    ada = model.apply(variables, cond, method=VAR.condition)
    stacked = STACKED_KEY in var_params
    if stacked:  # `stack_blocks` layout: a lax.scan over blocks per scale
        blocks = var_params[STACKED_KEY]
        # The modulations depend on the condition only: once per generation, not per scale.
        mods_all = lax.map(
            lambda p: block_modulation(var_cfg, opts, p, ada), blocks
        )  # [D, 2B, 6, C]
        cache_len = var_cfg.seq_len
        if opts.sampler_kv == "stacked":  # whole pages (arvg_jax.nn.stacked_kv)
            cache_len = stacked_kv.padded_len(cache_len, opts.kv_page)
        kv_shape = (var_cfg.depth, 2 * b, cache_len, var_cfg.num_heads, var_cfg.head_dim)
        kc = jnp.zeros(kv_shape, opts.compute_dtype)
        vc = jnp.zeros(kv_shape, opts.compute_dtype)
    else:
        caches = init_kv_caches(var_cfg, 2 * b, opts)
    side = var_cfg.patch_nums[-1]
    f_hat = jnp.zeros((b, side, side, var_cfg.cvae), jnp.float32)
    tokens, margins = [], []
    # Per image: were all its logits (cond and uncond rows, every scale) finite? NaN logits still
    # give tokens (argmax / categorical of NaN), so the caller needs this to refuse the images.
    finite = jnp.ones((b,), bool)
    for si in range(k_scales):
        if stacked:
            x_out, kc, vc = _scan_blocks(var_cfg, opts, blocks, mods_all, x, kc, vc, si)
            begin, end = var_cfg.begin_ends[si]
            logits = model.apply(
                variables,
                x_out,
                cond,
                np.arange(begin, end, dtype=np.int32),
                method=VAR.head_logits,
            )
        else:
            logits, caches = model.apply(variables, x, ada, cond, caches, si=si, method=VAR.step)
        finite &= jnp.isfinite(logits).reshape(2, b, -1).all(axis=(0, 2))  # one reduction
        one_plus_t, t = cfg_weights[si, 0], cfg_weights[si, 1]
        mixed = sampling.cfg_mix(logits[:b], logits[b:], t, one_plus_t=one_plus_t)  # [B, l, V]
        if return_margin:
            margins.append(sampling.top2_margin(mixed))
        # Each image draws scale si with its own key folded with si: an image's tokens depend on
        # its key only, never on the batch it was generated in.
        subkeys = jax.vmap(lambda k, si=si: jax.random.fold_in(k, si))(keys)
        idx = sampling.sample_tokens_per_row(
            subkeys,
            mixed,
            top_k=top_k,
            top_p=top_p,
            greedy=greedy,
            method=opts.sampling_filter,
            interpret=opts.pallas_interpret,
        )
        tokens.append(idx)
        f_hat, x_next = var_vqvae.next_scale_input(vae_params, vae_cfg, f_hat, idx, si)
        if si < k_scales - 1:
            x = model.apply(variables, x_next, si=si + 1, method=VAR.scale_input)
            x = jnp.concatenate([x, x], axis=0)  # the uncond half gets the same input
    img = var_vqvae.fhat_to_img(vae_params, vae_cfg, f_hat, dtype=opts.decode_compute_dtype)
    # vqvae.fhat_to_img clamps to [-1, 1]; var.py then does .add_(1).mul_(0.5).
    out = {
        "tokens": jnp.concatenate(tokens, axis=1),
        "images": (jnp.clip(img, -1.0, 1.0) + 1) * 0.5,
        "finite": finite,
    }
    if return_margin:
        out["top2_margin"] = jnp.concatenate(margins, axis=1)
    return out


_generate_jit = jax.jit(_generate_impl, static_argnames=STATIC_ARGNAMES)

STACKED_KEY = "blocks"
_BLOCK_KEY = re.compile(r"blocks_(\d+)")


def stack_blocks(params: dict) -> dict:
    """Inference layout: ``blocks_0 … blocks_{D-1}`` stacked along a new leading axis under
    ``params["blocks"]`` (float, ``QArray``, ``PackedKernel`` and ``ActQuant`` leaves alike).

    `generate` then runs the blocks of each scale as one ``lax.scan`` instead of D unrolled copies:
    the compiled program is about D times smaller (compile time of VAR-d30 drops accordingly) and
    computes the same function. ``unstack_blocks`` inverts it.
    """
    names = sorted((k for k in params if _BLOCK_KEY.fullmatch(k)), key=lambda k: int(k[7:]))
    if not names:
        raise ValueError("stack_blocks: no blocks_<i> entries (already stacked?)")
    if [int(k[7:]) for k in names] != list(range(len(names))):
        raise ValueError(f"stack_blocks: block indices are not 0..D-1: {names}")
    stacked = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *[params[k] for k in names])
    out = {k: v for k, v in params.items() if k not in names}
    out[STACKED_KEY] = stacked
    return out


def inference_layout(params: dict) -> dict:
    """The sampler's fast layout of a float or quantized VAR tree (same values, idempotent).

    * Quantized kernels (``QArray``) become ``quant._packed.PackedKernel``: int8 ``[out, in]``,
      the K-major layout of the int8 GEMMs (no transpose per call), routed on Hopper GPUs to the
      fused Pallas kernel (``quant._pallas_gpu``).
    * Blocks are stacked (`stack_blocks`): one ``lax.scan`` per scale, a program about depth
      times smaller to compile.
    """
    from quant import _packed  # only quantized trees need it; float trees pass through

    out = _packed.pack(params)
    return out if STACKED_KEY in out else stack_blocks(out)


def unstack_blocks(params: dict) -> dict:
    """Inverse of `stack_blocks`."""
    stacked = params[STACKED_KEY]
    depth = jax.tree_util.tree_leaves(stacked)[0].shape[0]
    out = {k: v for k, v in params.items() if k != STACKED_KEY}
    for i in range(depth):
        out[f"blocks_{i}"] = jax.tree_util.tree_map(lambda x, i=i: x[i], stacked)
    return out


def _scan_blocks(cfg: VARConfig, opts: ExecOptions, blocks, mods_all, x, kc, vc, si: int):
    """The blocks of scale si as a lax.scan; kc/vc are stacked caches [D, 2B, L, H, K].

    Each block reads its cache (opts.sampler_kv "prefix": the prefix [0, end), the keys written
    so far, as `VAR.step` attends to; "full": the whole [0, L) with the tail masked), writes its
    new keys/values at [begin, end) in place, and sees exactly the inputs of the unrolled
    `VAR.step`. Either read is a `dynamic_slice` of the stacked cache, which XLA materialises
    (a copy) for the attention kernel; "full" copies more here and exists for the unrolled
    sampler, where the per-block cache is passed whole (no copy).
    """
    begin, end = cfg.begin_ends[si]
    positions = np.arange(begin, end, dtype=np.int32)
    b2 = x.shape[0]
    full = opts.sampler_kv == "full"
    block = VARBlock(cfg, opts)
    if opts.sampler_kv == "stacked":
        # The block writes its keys into the stacked carry and attends to its pages in place
        # (`SelfAttention` with a "layer" cache): no per-block slice, no write-back.
        def body_stacked(carry, xs):
            x, kc, vc = carry
            p, mods, i = xs
            x, cache = block.apply(
                {"params": p},
                x,
                None,
                positions=positions,
                cache={"k": kc, "v": vc, "layer": i},
                cache_offset=begin,
                kv_len=end,
                mods=mods,
            )
            return (x, cache["k"], cache["v"]), None

        idx = jnp.arange(cfg.depth, dtype=jnp.int32)
        (x, kc, vc), _ = lax.scan(
            body_stacked, (x, kc, vc), (blocks, mods_all, idx), unroll=opts.scan_unroll
        )
        return x, kc, vc
    size = (1, b2, cfg.seq_len if full else end, cfg.num_heads, cfg.head_dim)

    def body(carry, xs):
        x, kc, vc = carry
        p, mods, i = xs
        zero = jnp.zeros((), jnp.int32)
        start = (i, zero, zero, zero, zero)
        cache = {
            "k": lax.dynamic_slice(kc, start, size)[0],
            "v": lax.dynamic_slice(vc, start, size)[0],
        }
        x, cache = block.apply(
            {"params": p},
            x,
            None,
            positions=positions,
            cache=cache,
            cache_offset=begin,
            kv_len=end if full else None,
            mods=mods,
        )
        at = (i, zero, jnp.asarray(begin, jnp.int32), zero, zero)
        kc = lax.dynamic_update_slice(kc, cache["k"][None, :, begin:end].astype(kc.dtype), at)
        vc = lax.dynamic_update_slice(vc, cache["v"][None, :, begin:end].astype(vc.dtype), at)
        return (x, kc, vc), None

    idx = jnp.arange(cfg.depth, dtype=jnp.int32)
    (x, kc, vc), _ = lax.scan(body, (x, kc, vc), (blocks, mods_all, idx), unroll=opts.scan_unroll)
    return x, kc, vc


def generate(
    var_params: dict,
    vae_params: dict,
    var_cfg: VARConfig,
    vae_cfg: Any,
    labels: Array | np.ndarray,
    keys: Array,
    *,
    cfg: float = 1.5,
    top_k: int = 900,
    top_p: float = 0.96,
    greedy: bool = False,
    options: ExecOptions | None = None,
    return_logits_margin: bool = False,
) -> dict[str, Array]:
    """Generates images for class labels (official `autoregressive_infer_cfg`).

    One compiled function per (configs, options, batch size, top_k, top_p, greedy); `cfg`, the
    labels, the keys and the params are traced, so a new cfg value does not recompile.

    Args:
        var_params: VAR params (float or quantized), per block (``blocks_<i>``) or stacked by
            `stack_blocks` (one ``lax.scan`` over blocks per scale: same values, a program about
            depth times smaller to compile).
        vae_params: VQVAE params (`arvg_jax.tokenizers.var_vqvae`).
        var_cfg: the VAR config (its patch_nums must equal the VQVAE's).
        vae_cfg: the VQVAE config.
        labels: int [B] class ids in [0, num_classes).
        keys: one PRNG key per image ([B] keys, e.g. `arvg_jax.families.image_keys`), or one
            key, standing for images 0..B-1 of it (`fold_in(key, i)`). Image i draws scale si
            with `fold_in(keys[i], si)`: its tokens never depend on the batch it is in.
        cfg: guidance scale; scale si uses t = cfg·si/(K−1) and (1+t)·cond − t·uncond.
        top_k, top_p: filtering before each draw (0 disables; FID setting 900 / 0.96).
        greedy: take the argmax of the filtered logits instead of drawing.
        options: execution options (`arvg_jax.options.ExecOptions`; compute dtype, kernels,
            KV layout, target platform); "auto" fields are resolved here, outside tracing, for
            `options.platform` (default: the runtime backend), and so are the int8 kernels'
            implementations (`quant._packed.resolve_impls`).
        return_logits_margin: also return the top-1 minus top-2 gap of the CFG-mixed logits.

    Returns:
        {"tokens": int32 [B, L] (scales concatenated), "images": float32 [B, H, W, 3] in [0, 1],
        "finite": bool [B] (every logit of the image's cond and uncond rows was finite), and
        "top2_margin": float32 [B, L] when asked}.
    """
    if tuple(var_cfg.patch_nums) != tuple(vae_cfg.patch_nums):
        raise ValueError(f"patch_nums differ: VAR {var_cfg.patch_nums}, VQVAE {vae_cfg.patch_nums}")
    if var_cfg.cvae != vae_cfg.z_channels or var_cfg.vocab_size != vae_cfg.vocab_size:
        raise ValueError(
            f"VAR (Cvae {var_cfg.cvae}, V {var_cfg.vocab_size}) does not fit the VQVAE "
            f"(z_channels {vae_cfg.z_channels}, vocab_size {vae_cfg.vocab_size})"
        )
    labels = jnp.asarray(labels, jnp.int32)
    opts = (options or ExecOptions()).resolve()
    from quant import _packed

    var_params = _packed.resolve_impls(var_params, opts.target)
    with jax.threefry_partitionable(True):  # pinned: key derivation independent of the default
        return _generate_jit(
            var_params,
            vae_params,
            labels,
            sampling.per_image_keys(keys, labels.shape[0]),
            cfg_schedule(cfg, var_cfg.num_scales),
            var_cfg=var_cfg,
            opts=opts,
            vae_cfg=vae_cfg,
            top_k=int(top_k),
            top_p=float(top_p),
            greedy=bool(greedy),
            return_margin=bool(return_logits_margin),
        )


def cfg_schedule(cfg: float, num_scales: int) -> np.ndarray:
    """float32 [K, 2]: (1 + t, t) per scale, t = cfg · si / (K − 1).

    models/var.py computes `ratio = si / num_stages_minus_1; t = cfg * ratio` in Python double and
    torch casts the scalars (1 + t) and t to float32 when multiplying the logits; so do we.
    """
    out = []
    for si in range(num_scales):
        t = cfg * (si / (num_scales - 1)) if num_scales > 1 else 0.0
        out.append((1 + t, t))
    return np.asarray(out, np.float32)
