"""VAR self-attention (FoundationVision/VAR `models/basic_var.py` SelfAttention) with its KV
caches: per-block caches, or the layer-stacked paged cache of the stacked sampler.

Dims: B batch, l tokens of one scale, L all tokens, C width, H heads, K head dim, S key length,
D depth.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from arvg_jax.families.var.config import _MAX_SCALE_MUL, VARConfig
from arvg_jax.nn import stacked_kv
from arvg_jax.nn.attention import head_shards, split_qkv
from arvg_jax.nn.layers import Dense, l2_normalize
from arvg_jax.options import ExecOptions

Array = jax.Array


def attention_impl(cfg: VARConfig, opts: ExecOptions, *, stacked: bool = False) -> str:
    """The attention implementation of cached sampling (`ExecOptions.attention`): "xla",
    "cudnn" or, on the stacked sampler's layer-stacked cache (`stacked`), "pallas".

    "auto" on a GPU in 16-bit: cuDNN where the head dim fits, else xla; off GPU: xla. On the
    stacked cache cuDNN reads a copy of the block's prefix; the "pallas" kernel reads it in place
    but stays opt-in until it has been measured on a GPU (it is checked in Pallas interpret mode
    on the CPU only; BENCHMARKS.md, "stacked-cache attention").

    Raises:
      ValueError: "pallas" requested where it cannot run (a per-block cache, a head dim the
        kernel does not take).
    """
    if opts.attention == "pallas":  # off GPU only with opts.interpret (`ExecOptions.resolve`)
        from arvg_jax.kernels import stacked_attention_pallas as sap

        if not stacked:
            raise ValueError(
                "attention 'pallas' reads the layer-stacked KV cache of the stacked (scan) "
                f"sampler; this attention has a per-block cache (sampler_kv {opts.sampler_kv!r}, "
                "or unrolled blocks): use sampler_kv 'stacked' with stacked blocks, or 'cudnn'"
            )
        if (why := sap.unsupported_reason(cfg.head_dim)) is not None:
            raise ValueError(f"attention 'pallas': {why}")
        return "pallas"
    if opts.attention != "auto":
        return opts.attention
    half = jnp.dtype(opts.compute_dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    if not (half and opts.gpu_here):
        return "xla"
    # cuDNN flash attention needs a head dim that is a multiple of 8, at most 256 (Hopper);
    # other widths (the tiny test models) run the XLA attention instead of failing to compile.
    fits = cfg.head_dim % 8 == 0 and cfg.head_dim <= 256
    return "cudnn" if fits else "xla"


def attn_prologue_impl(cfg: VARConfig, opts: ExecOptions) -> str:
    """What the stacked sampler runs between qkv and attention: "xla" or "pallas"
    (`ExecOptions.attn_prologue`).

    Raises:
      ValueError: "pallas" requested for a head dim the kernel does not take, or for a
        head-sharded qkv layout (`ExecOptions.qkv_shards`: the kernel reads q | k | v).
    """
    if opts.sampler_kv != "stacked" or opts.attn_prologue == "xla":
        return "xla"
    if head_shards(opts.qkv_shards, cfg.num_heads, cfg.num_heads) > 1:
        if opts.attn_prologue == "pallas":
            raise ValueError(
                f"attn_prologue 'pallas' reads the official q | k | v columns, not the "
                f"head-sharded layout of qkv_shards={opts.qkv_shards}: use 'xla' or 'auto'"
            )
        return "xla"  # "auto": the XLA prologue reads either layout
    from arvg_jax.kernels import attn_prologue_pallas

    if opts.attn_prologue == "pallas":  # off GPU only with opts.interpret (`ExecOptions.resolve`)
        if (why := attn_prologue_pallas.unsupported_reason(cfg.head_dim)) is not None:
            raise ValueError(f"attn_prologue 'pallas': {why}")
        return "pallas"
    ok = opts.gpu_here and attn_prologue_pallas.available()
    return (
        "pallas" if ok and attn_prologue_pallas.unsupported_reason(cfg.head_dim) is None else "xla"
    )


def init_kv_caches(
    cfg: VARConfig, batch: int, opts: ExecOptions | None = None
) -> tuple[dict[str, Array], ...]:
    """Zero KV caches, one {"k", "v"} dict of [batch, L, H, K] (compute dtype) per block."""
    opts = ExecOptions() if opts is None else opts
    shape = (batch, cfg.seq_len, cfg.num_heads, cfg.head_dim)
    return tuple(
        {"k": jnp.zeros(shape, opts.compute_dtype), "v": jnp.zeros(shape, opts.compute_dtype)}
        for _ in range(cfg.depth)
    )


class SelfAttention(nn.Module):
    """models/basic_var.py SelfAttention (fused qkv, l2-normalised q/k, softmax scale 1)."""

    cfg: VARConfig
    opts: ExecOptions = ExecOptions()

    @nn.compact
    def __call__(self, x, *, positions, mask=None, cache=None, cache_offset=0, kv_len=None):
        """Self-attention.

        Args:
            x: [B, l, C] (any float dtype; cast by the Dense layers).
            positions: int [l] absolute positions of the tokens of `x`.
            mask: bool [l, S] (True = may attend) or None.
            cache: None, or {"k", "v"}: [B, L, H, K]. The keys/values of `x` are written at
                `cache_offset` and attention runs over the whole cache (`mask` must hide the
                unwritten tail). Or {"k", "v", "layer"}: the stacked sampler's layer-stacked
                caches [D, B, Lp, H, K] and this block's index (`arvg_jax.nn.stacked_kv`); the
                updated caches are returned in the same form.
            cache_offset: static int, position of x[:, 0] in the cache.
            kv_len: static int or None. With a cache: attend to cache positions [0, kv_len) only
                (the written prefix): opts.sampler_kv "prefix" slices the cache to it (no work
                on the tail, but the slice is a copy), "full" masks the tail instead (no copy;
                cuDNN skips the masked keys through key_value_seq_lengths).

        Returns:
            [B, l, C] in opts.compute_dtype, and the updated cache when one was given.
        """
        cfg, opts = self.cfg, self.opts
        b, l, c = x.shape
        h, k_dim = cfg.num_heads, cfg.head_dim
        stacked = cache is not None and "layer" in cache
        if stacked and attn_prologue_impl(cfg, opts) == "pallas":
            return self._stacked_fused(x, positions, cache, cache_offset, kv_len)
        # One [3C] bias = concat(q_bias, zero_k_bias, v_bias), as the official F.linear call builds.
        qkv = Dense(3 * c, dtype=opts.compute_dtype, matmul_out=opts.matmul_out, name="qkv")(
            x, positions
        )
        q, k, v = split_qkv(qkv, h, h, k_dim, opts.qkv_shards)  # [B, l, H, K] each
        if cfg.attn_l2_norm:
            scale_mul = self._head_scale()
            q = (l2_normalize(q) * scale_mul[:, None]).astype(opts.compute_dtype)
            k = l2_normalize(k).astype(opts.compute_dtype)
        softmax_scale = self._softmax_scale()

        if stacked:
            # Layer-stacked cache (sampler_kv "stacked"): write this scale's keys into block
            # `layer` in place, then attend to that block's pages without slicing it out.
            layer = cache["layer"]
            kc = stacked_kv.write(cache["k"], k, layer, cache_offset)
            vc = stacked_kv.write(cache["v"], v, layer, cache_offset)
            return self._stacked_attend(
                q.astype(opts.compute_dtype), kc, vc, layer, kv_len, positions
            )

        if cache is not None:
            k = jax.lax.dynamic_update_slice(
                cache["k"], k.astype(cache["k"].dtype), (0, cache_offset, 0, 0)
            )
            v = jax.lax.dynamic_update_slice(
                cache["v"], v.astype(cache["v"].dtype), (0, cache_offset, 0, 0)
            )
            cache = {"k": k, "v": v}
            # "stacked" needs the stacked sampler's cache; per-block caches slice like "prefix".
            if kv_len is not None and opts.sampler_kv in ("prefix", "stacked"):
                k, v = k[:, :kv_len], v[:, :kv_len]
                if mask is not None:
                    mask = mask[..., :kv_len]
        s_len = k.shape[1]
        valid_len = None  # attend to keys [0, valid_len) of k / v by masking
        if cache is not None and kv_len is not None and kv_len < s_len:
            valid_len = kv_len

        if cache is not None and mask is None and attention_impl(cfg, opts) == "cudnn":
            lengths = None if valid_len is None else jnp.full((b,), valid_len, jnp.int32)
            out = jax.nn.dot_product_attention(
                q.astype(opts.compute_dtype),
                k.astype(opts.compute_dtype),
                v.astype(opts.compute_dtype),
                scale=softmax_scale,
                key_value_seq_lengths=lengths,
                implementation="cudnn",
            )  # [B, l, H, K]
            out = out.astype(opts.compute_dtype).reshape(b, l, c)
            out = Dense(c, dtype=opts.compute_dtype, matmul_out=opts.matmul_out, name="proj")(
                out, positions
            )
            return out, cache

        scores = jnp.einsum("BqHK,BkHK->BHqk", q, k, preferred_element_type=jnp.float32)
        if softmax_scale != 1.0:
            scores = scores * softmax_scale
        if valid_len is not None:
            written = np.arange(s_len) < valid_len  # static [S]
            mask = written if mask is None else mask & written
        if mask is not None:
            scores = jnp.where(mask, scores, -jnp.inf)
        probs = jax.nn.softmax(scores, axis=-1)  # [B, H, l, S]
        out = jnp.einsum(
            "BHqk,BkHK->BqHK", probs.astype(v.dtype), v, preferred_element_type=jnp.float32
        )
        out = out.astype(opts.compute_dtype).reshape(b, l, c)  # [B, l, C]
        out = Dense(c, dtype=opts.compute_dtype, matmul_out=opts.matmul_out, name="proj")(
            out, positions
        )
        return out if cache is None else (out, cache)

    def _head_scale(self):
        """q's per-head temperature: scale_mul_1H11.clamp_max(log 100).exp()."""
        h = self.cfg.num_heads
        scale_mul = self.param(
            "scale_mul", nn.initializers.constant(math.log(4.0)), (h,), jnp.float32
        )
        return jnp.exp(jnp.minimum(scale_mul, _MAX_SCALE_MUL))

    def _softmax_scale(self) -> float:
        # q = normalize(q) * scale_mul; k = normalize(k); softmax scale 1 (else 0.25 / sqrt(K)).
        return 1.0 if self.cfg.attn_l2_norm else 0.25 / math.sqrt(self.cfg.head_dim)

    def _stacked_fused(self, x, positions, cache, cache_offset, kv_len):
        """The "layer"-cache branch with `attn_prologue_pallas` doing bias, rounding, q/k
        normalisation and the k/v cache writes in one kernel (ExecOptions.attn_prologue)."""
        from arvg_jax.kernels import attn_prologue_pallas

        cfg, opts = self.cfg, self.opts
        qkv, bias = Dense(
            3 * cfg.embed_dim,
            dtype=opts.compute_dtype,
            matmul_out=opts.matmul_out,
            defer_bias=True,
            name="qkv",
        )(x, positions)
        norm = cfg.attn_l2_norm
        head_scale = self._head_scale() if norm else jnp.ones((cfg.num_heads,), jnp.float32)
        layer = cache["layer"]
        q, kc, vc = attn_prologue_pallas.prologue(
            qkv,
            bias,
            head_scale,
            cache["k"].astype(opts.compute_dtype),
            cache["v"].astype(opts.compute_dtype),
            layer,
            offset=cache_offset,
            round_dtype=opts.compute_dtype,
            normalize=norm,
            interpret=opts.pallas_interpret,
        )
        return self._stacked_attend(q, kc, vc, layer, kv_len, positions)

    def _stacked_attend(self, q, kc, vc, layer, kv_len, positions):
        """Attention of q [B, l, H, K] over block `layer`'s pages of the stacked caches, then
        proj; returns (out [B, l, C], the "layer" cache)."""
        cfg, opts = self.cfg, self.opts
        b, l = q.shape[:2]
        out = stacked_kv.stacked_attention(
            q,
            kc,
            vc,
            layer,
            kv_len,
            scale=self._softmax_scale(),
            page=opts.kv_page,
            implementation=attention_impl(cfg, opts, stacked=True),
            interpret=opts.pallas_interpret,
        )
        out = out.astype(opts.compute_dtype).reshape(b, l, cfg.embed_dim)
        out = Dense(
            cfg.embed_dim, dtype=opts.compute_dtype, matmul_out=opts.matmul_out, name="proj"
        )(out, positions)
        return out, {"k": kc, "v": vc, "layer": layer}
