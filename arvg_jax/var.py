"""VAR transformer (FoundationVision/VAR `models/var.py`, `models/basic_var.py`) in Flax linen.

Dims: B batch, L tokens of all scales (680 at 256 px), l tokens of one scale (pn²), C width,
H heads, K head dim (C / H), V vocabulary, E VQVAE latent channels (Cvae), S key length.

Param tree (plain dicts; `/`-joined paths):
    class_emb/embedding [num_classes+1, C]   pos_start [first_l, C]   pos_1LC [L, C]
    lvl_embed/embedding [num_scales, C]      word_embed/{kernel [E, C], bias [C]}
    shared_ada_lin/{kernel [C, 6C], bias}    (shared AdaLN only, d36)
    blocks_{i}/attn/qkv/{kernel [C, 3C], bias [3C] = concat(q_bias, 0, v_bias)}
    blocks_{i}/attn/scale_mul [H]            (attn_l2_norm only)
    blocks_{i}/attn/proj/{kernel, bias}      blocks_{i}/ffn/fc1/…, blocks_{i}/ffn/fc2/…
    blocks_{i}/ada_lin/{kernel [C, 6C], bias} or, shared AdaLN, blocks_{i}/ada_gss [6, C]
    head_nm/ada_lin/{kernel [C, 2C], bias}   head/{kernel [C, V], bias [V]}

Entry points (all `VAR(cfg).apply({"params": params}, ..., method=...)`):
    * `__call__(labels, x_BLCv_wo_first_l, attn_mask=...)`: teacher-forced logits [B, L, V].
    * Piecewise, for calibration: `embed(labels, x_BLCv_wo_first_l) -> (x, cond)`, then
      `condition(cond) -> ada` (the block condition: cond itself, or the shared AdaLN output), then
      for i in range(depth): `apply_block(x, ada, i=i, attn_mask="none")` (or
      `VARBlock(cfg).apply({"params": params[f"blocks_{i}"]}, x, ada, positions=..., mask=...)`),
      then `head_logits(x, cond)`. Applying with `mutable=["intermediates"]` returns every Dense
      input under `intermediates/<path>/input`, so calibration can run one block at a time on
      cached block inputs. PTQ4ARVG calibrates with no mask; the official forward is block-causal.
    * Sampling (KV cache): `first_scale_input(labels)`, `scale_input(x_next, si=...)` and
      `step(x, ada, cond, caches, si=...)`; see `arvg_jax.var_sampler`.

The residual stream, norms, embeddings and head run in float32; with `dtype=bfloat16` the block
matmuls (and the KV cache) use bfloat16, as the official autocast inference does.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from arvg_jax import stacked_kv
from arvg_jax.layers import MATMUL_OUTS, Dense, _is_plain_array, gelu_tanh, l2_normalize, layer_norm
from arvg_jax.sampling import parse_filter_method

Array = jax.Array
AttnMask = Literal["block_causal", "none"]

SAMPLER_KV = ("prefix", "full", "stacked")
KERNEL_CHOICES = ("auto", "xla", "pallas")  # VARConfig.attn_prologue and .adaln_kernel
NIBBLE_UNPACK = ("call", "layer")  # VARConfig.nibble_unpack
PATCH_NUMS_256 = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
PATCH_NUMS_512 = (1, 2, 3, 4, 6, 9, 13, 18, 24, 32)

# models/basic_var.py SelfAttention: max_scale_mul = torch.log(torch.tensor(100)).item(), a float32
# log evaluated once.
_MAX_SCALE_MUL = float(np.log(np.float32(100.0)))


# Official constructor arguments (models/__init__.py build_vae_var and VAR.__init__).
OFFICIAL_KEYS: dict[str, str] = {
    "depth": "depth",
    "embed_dim": "embed_dim",
    "num_heads": "num_heads",
    "mlp_ratio": "mlp_ratio",
    "V": "vocab_size",
    "Cvae": "cvae",
    "num_classes": "num_classes",
    "patch_nums": "patch_nums",
    "shared_aln": "shared_aln",
    "attn_l2_norm": "attn_l2_norm",
    "norm_eps": "norm_eps",
}
# VQVAE-only, device, speed, training and init arguments: no effect on the VAR forward.
# (`cond_drop_rate` only matters in training; our forward never drops labels.)
IGNORED_OFFICIAL_KEYS = frozenset(
    {
        "ch",
        "share_quant_resi",
        "seed",
        "device",
        "flash_if_available",
        "fused_if_available",
        "init_adaln",
        "init_adaln_gamma",
        "init_head",
        "init_std",
        "drop_rate",
        "attn_drop_rate",
        "drop_path_rate",
        "cond_drop_rate",
    }
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class VARConfig:
    """VAR hyper-parameters (hashable, so it can be a static jit argument).

    `embed_dim` and `num_heads` default to the official `build_vae_var` rule (64·depth, depth).
    """

    depth: int = 16  # number of transformer blocks
    embed_dim: int | None = None  # C; None -> 64 * depth
    num_heads: int | None = None  # H; None -> depth
    mlp_ratio: float = 4.0  # FFN hidden = round(C * mlp_ratio)
    vocab_size: int = 4096  # V (VQVAE codebook size)
    cvae: int = 32  # E, VQVAE latent channels
    num_classes: int = 1000  # class num_classes is the null (CFG) class
    patch_nums: tuple[int, ...] = PATCH_NUMS_256  # side of each scale's token map
    shared_aln: bool = False  # shared AdaLN (d36): shared_ada_lin + per-block ada_gss
    attn_l2_norm: bool = True  # l2-normalised q, k with learned per-head temperature
    norm_eps: float = 1e-6
    dtype: Any = jnp.float32  # compute dtype of the block matmuls; params stay float32
    # Attention of cached sampling: "xla" (einsum + float32 softmax), "cudnn" (fused
    # jax.nn.dot_product_attention; bfloat16/float16 only) or "auto" (cudnn on a GPU backend when
    # dtype is 16-bit, else xla). Teacher forcing and calibration always use "xla".
    attention: str = "auto"
    # Further implementation choices of cached sampling (`arvg_jax.var_sampler.generate`); none
    # changes the function computed, only float rounding:
    # * sampling_filter: the top-k / top-p filter (`arvg_jax.sampling.top_k_top_p_filter`):
    #   "sort" (the official two sorts), "bisect[:<bits per pass>[:<chunk>]]" (sort-free, XLA),
    #   "pallas" (the sort-free search as one GPU kernel) or "auto" (pallas on NVIDIA GPUs,
    #   else sort).
    # * sampler_kv: "prefix" attends to the written prefix [0, end) of the KV cache as a slice;
    #   "full" attends to the whole cache with the unwritten tail masked (cuDNN:
    #   key_value_seq_lengths), so the unrolled sampler passes each block's cache to the attention
    #   without copying its prefix; "stacked" (stacked-blocks sampler only) writes the new keys
    #   into the layer-stacked cache and attends to the block's pages of it in place
    #   (`arvg_jax.stacked_kv`: cuDNN paged attention on GPU, the same pages gathered elsewhere);
    #   with per-block caches (the unrolled sampler) it slices like "prefix".
    # * kv_page: positions per page of the "stacked" cache (a multiple of 64; the cache length is
    #   padded to whole pages, `arvg_jax.stacked_kv`).
    # * matmul_out: the float blocks' Dense output precision (`arvg_jax.layers.Dense`):
    #   "float32" (the official single rounding) or "dtype" (bf16 matmul outputs, rounded
    #   before the bias is added: 45 ms faster for bf16 VAR-d30 at batch 64 on H100, but two
    #   roundings, so not the default).
    # * attn_prologue: with sampler_kv "stacked", what runs between the qkv layer and the paged
    #   attention (bias, rounding, q/k l2-normalisation, the k/v cache writes): "xla" (separate
    #   XLA fusions and `stacked_kv.write`), "pallas" (one GPU kernel,
    #   `arvg_jax.attn_prologue_pallas`) or "auto" (pallas on NVIDIA GPUs when head_dim is a
    #   power of two, else xla).
    # * adaln_kernel: in the stacked sampler, each block's LayerNorm + modulation (and the
    #   residual add before the second one) as one GPU kernel (`arvg_jax.adaln_pallas`) that
    #   writes the next layer's int8 input codes and their row sums (packed int8 qkv / fc1 with
    #   static input quantizers) or the bf16 input (float blocks): "xla", "pallas" or "auto"
    #   (pallas on NVIDIA GPUs where the block qualifies, else xla).
    # * scan_unroll: `lax.scan` unroll factor of the stacked-blocks sampler.
    # * fuse_ffn_quant: with packed int8 fc1/fc2 on the fused Hopper kernel
    #   (`quant._packed` impl "pallas"), fc1's epilogue applies GELU and fc2's input quantizer
    #   and writes int8 codes (`quant._packed.packed_dense_act_quant`) instead of bf16
    #   activations that a separate XLA pass quantizes. Other backends never fuse.
    # * nibble_unpack: where the sampler expands 4-bit weights stored two per byte
    #   (`quant._packed.PackedKernel.nibbles`, W4A8) into the int8 codes the GEMMs read:
    #   "call" once per `generate` call, before the scales (a transient int8 copy of those
    #   weights, as large as W8A8's); "layer" at every layer call (no copy, but one unpacking
    #   pass per weight per scale: VAR-d30 W4A8 b64 on H100 spends 34 ms more in elementwise
    #   fusions than W8A8, BENCHMARKS.md).
    sampling_filter: str = "auto"
    sampler_kv: str = "stacked"  # 36 ms faster than "prefix" at VAR-d30 b64 (BENCHMARKS.md)
    kv_page: int = 64
    matmul_out: str = "float32"
    attn_prologue: str = "auto"  # VAR-d30 b64 on H100: bf16 −18 ms, W8A8 −7 ms (BENCHMARKS.md)
    adaln_kernel: str = "xla"  # "pallas": no measurable gain at VAR-d30 b64 (BENCHMARKS.md)
    scan_unroll: int = 1
    fuse_ffn_quant: bool = True
    nibble_unpack: str = "call"

    def __post_init__(self):
        if self.embed_dim is None:
            object.__setattr__(self, "embed_dim", 64 * self.depth)
        if self.num_heads is None:
            object.__setattr__(self, "num_heads", self.depth)
        object.__setattr__(self, "patch_nums", tuple(int(p) for p in self.patch_nums))
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} not divisible by heads {self.num_heads}")
        if self.attention not in ("auto", "xla", "cudnn"):
            raise ValueError(f"attention must be 'auto', 'xla' or 'cudnn', got {self.attention!r}")
        parse_filter_method(self.sampling_filter)  # raises on a bad spec
        if self.matmul_out not in MATMUL_OUTS:
            raise ValueError(f"matmul_out must be one of {MATMUL_OUTS}, got {self.matmul_out!r}")
        if self.attn_prologue not in KERNEL_CHOICES:
            raise ValueError(
                f"attn_prologue must be one of {KERNEL_CHOICES}, got {self.attn_prologue!r}"
            )
        if self.adaln_kernel not in KERNEL_CHOICES:
            raise ValueError(
                f"adaln_kernel must be one of {KERNEL_CHOICES}, got {self.adaln_kernel!r}"
            )
        if self.attn_prologue == "pallas":
            from arvg_jax import attn_prologue_pallas

            if (why := attn_prologue_pallas.unsupported_reason(self.head_dim)) is not None:
                raise ValueError(f"attn_prologue 'pallas': {why}")
        if self.sampler_kv not in SAMPLER_KV:
            raise ValueError(f"sampler_kv must be one of {SAMPLER_KV}, got {self.sampler_kv!r}")
        if not (isinstance(self.kv_page, int) and self.kv_page >= 64 and self.kv_page % 64 == 0):
            raise ValueError(f"kv_page must be a positive multiple of 64, got {self.kv_page!r}")
        if self.nibble_unpack not in NIBBLE_UNPACK:
            raise ValueError(
                f"nibble_unpack must be one of {NIBBLE_UNPACK}, got {self.nibble_unpack!r}"
            )
        if not (isinstance(self.scan_unroll, int) and self.scan_unroll >= 1):
            raise ValueError(f"scan_unroll must be an int >= 1, got {self.scan_unroll!r}")

    # Presets (models/__init__.py build_vae_var: heads = depth, width = 64 * depth).
    @classmethod
    def d16(cls, **kw) -> VARConfig:
        return cls(depth=16, **kw)

    @classmethod
    def d20(cls, **kw) -> VARConfig:
        return cls(depth=20, **kw)

    @classmethod
    def d24(cls, **kw) -> VARConfig:
        return cls(depth=24, **kw)

    @classmethod
    def d30(cls, **kw) -> VARConfig:
        return cls(depth=30, **kw)

    @classmethod
    def d36(cls, **kw) -> VARConfig:
        """The 512-px release: shared AdaLN, patch_nums up to 32 (L = 2240)."""
        return cls(depth=36, patch_nums=PATCH_NUMS_512, shared_aln=True, **kw)

    @classmethod
    def tiny(cls, **kw) -> VARConfig:
        """Test size: distinct small dims (C 26, H 2, K 13, V 37, E 7, 11 classes, L 14)."""
        kw = {
            "depth": 2,
            "embed_dim": 26,
            "num_heads": 2,
            "vocab_size": 37,
            "cvae": 7,
            "num_classes": 11,
            "patch_nums": (1, 2, 3),
            **kw,
        }
        return cls(**kw)

    @classmethod
    def from_official(cls, kwargs: dict[str, Any], **overrides) -> VARConfig:
        """Builds a config from official constructor arguments (e.g. reference `config.json`).

        Args:
            kwargs: `build_vae_var` / `VAR.__init__` keyword arguments.
            **overrides: fields set on top (e.g. `dtype`).

        Raises:
            ValueError: on a key that is neither handled nor known to be irrelevant.
        """
        known = OFFICIAL_KEYS
        unknown = sorted(set(kwargs) - set(known) - IGNORED_OFFICIAL_KEYS)
        if unknown:
            raise ValueError(f"unknown VAR constructor arguments: {unknown}")
        fields = {known[k]: v for k, v in kwargs.items() if k in known}
        if "patch_nums" in fields:
            fields["patch_nums"] = tuple(fields["patch_nums"])
        return cls(**{**fields, **overrides})

    # Derived sizes.
    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def mlp_dim(self) -> int:
        return round(self.embed_dim * self.mlp_ratio)

    @property
    def num_scales(self) -> int:
        return len(self.patch_nums)

    @property
    def seq_len(self) -> int:
        return sum(p * p for p in self.patch_nums)

    @property
    def first_l(self) -> int:
        return self.patch_nums[0] ** 2

    @property
    def begin_ends(self) -> tuple[tuple[int, int], ...]:
        """Static token range [begin, end) of each scale."""
        out, cur = [], 0
        for pn in self.patch_nums:
            out.append((cur, cur + pn * pn))
            cur += pn * pn
        return tuple(out)

    @property
    def levels(self) -> np.ndarray:
        """int32 [L]: scale index of every position (the official `lvl_1L` buffer)."""
        return np.concatenate([np.full(p * p, i, np.int32) for i, p in enumerate(self.patch_nums)])


def attention_mask(cfg: VARConfig, kind: AttnMask) -> np.ndarray | None:
    """Static teacher-forcing mask: bool [L, L] (True = may attend), or None for "none".

    "block_causal" is the official `attn_bias_for_masking`: level(key) <= level(query).
    """
    if kind == "none":
        return None
    if kind != "block_causal":
        raise ValueError(f"attn_mask must be 'block_causal' or 'none', got {kind!r}")
    lv = cfg.levels
    return lv[None, :] <= lv[:, None]


def attention_impl(cfg: VARConfig) -> str:
    """The attention implementation of cached sampling: "xla" or "cudnn" (see VARConfig)."""
    if cfg.attention != "auto":
        return cfg.attention
    half = jnp.dtype(cfg.dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    # cuDNN flash attention needs a head dim that is a multiple of 8, at most 256 (Hopper);
    # other widths (the tiny test models) run the XLA attention instead of failing to compile.
    fits = cfg.head_dim % 8 == 0 and cfg.head_dim <= 256
    return "cudnn" if half and fits and jax.default_backend() in ("gpu", "cuda") else "xla"


def attn_prologue_impl(cfg: VARConfig) -> str:
    """What the stacked sampler runs between qkv and attention: "xla" or "pallas" (VARConfig)."""
    if cfg.sampler_kv != "stacked" or cfg.attn_prologue == "xla":
        return "xla"
    from arvg_jax import attn_prologue_pallas

    if cfg.attn_prologue == "pallas":  # head_dim checked by VARConfig; interpreted off GPU
        return "pallas"
    ok = attn_prologue_pallas.available()
    return (
        "pallas" if ok and attn_prologue_pallas.unsupported_reason(cfg.head_dim) is None else "xla"
    )


def init_kv_caches(cfg: VARConfig, batch: int) -> tuple[dict[str, Array], ...]:
    """Zero KV caches, one {"k", "v"} dict of [batch, L, H, K] (compute dtype) per block."""
    shape = (batch, cfg.seq_len, cfg.num_heads, cfg.head_dim)
    return tuple(
        {"k": jnp.zeros(shape, cfg.dtype), "v": jnp.zeros(shape, cfg.dtype)}
        for _ in range(cfg.depth)
    )


class SelfAttention(nn.Module):
    """models/basic_var.py SelfAttention (fused qkv, l2-normalised q/k, softmax scale 1)."""

    cfg: VARConfig

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
                caches [D, B, Lp, H, K] and this block's index (`arvg_jax.stacked_kv`); the
                updated caches are returned in the same form.
            cache_offset: static int, position of x[:, 0] in the cache.
            kv_len: static int or None. With a cache: attend to cache positions [0, kv_len) only
                (the written prefix): cfg.sampler_kv "prefix" slices the cache to it (no work
                on the tail, but the slice is a copy), "full" masks the tail instead (no copy;
                cuDNN skips the masked keys through key_value_seq_lengths).

        Returns:
            [B, l, C] in cfg.dtype, and the updated cache when one was given.
        """
        cfg = self.cfg
        b, l, c = x.shape
        h, k_dim = cfg.num_heads, cfg.head_dim
        stacked = cache is not None and "layer" in cache
        if stacked and attn_prologue_impl(cfg) == "pallas":
            return self._stacked_fused(x, positions, cache, cache_offset, kv_len)
        # One [3C] bias = concat(q_bias, zero_k_bias, v_bias), as the official F.linear call builds.
        qkv = Dense(3 * c, dtype=cfg.dtype, matmul_out=cfg.matmul_out, name="qkv")(x, positions)
        qkv = qkv.reshape(b, l, 3, h, k_dim)  # [B, l, 3, H, K]
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [B, l, H, K]
        if cfg.attn_l2_norm:
            scale_mul = self._head_scale()
            q = (l2_normalize(q) * scale_mul[:, None]).astype(cfg.dtype)
            k = l2_normalize(k).astype(cfg.dtype)
        softmax_scale = self._softmax_scale()

        if stacked:
            # Layer-stacked cache (sampler_kv "stacked"): write this scale's keys into block
            # `layer` in place, then attend to that block's pages without slicing it out.
            layer = cache["layer"]
            kc = stacked_kv.write(cache["k"], k, layer, cache_offset)
            vc = stacked_kv.write(cache["v"], v, layer, cache_offset)
            return self._stacked_attend(q.astype(cfg.dtype), kc, vc, layer, kv_len, positions)

        if cache is not None:
            k = jax.lax.dynamic_update_slice(
                cache["k"], k.astype(cache["k"].dtype), (0, cache_offset, 0, 0)
            )
            v = jax.lax.dynamic_update_slice(
                cache["v"], v.astype(cache["v"].dtype), (0, cache_offset, 0, 0)
            )
            cache = {"k": k, "v": v}
            # "stacked" needs the stacked sampler's cache; per-block caches slice like "prefix".
            if kv_len is not None and cfg.sampler_kv in ("prefix", "stacked"):
                k, v = k[:, :kv_len], v[:, :kv_len]
                if mask is not None:
                    mask = mask[..., :kv_len]
        s_len = k.shape[1]
        valid_len = None  # attend to keys [0, valid_len) of k / v by masking
        if cache is not None and kv_len is not None and kv_len < s_len:
            valid_len = kv_len

        if cache is not None and mask is None and attention_impl(cfg) == "cudnn":
            lengths = None if valid_len is None else jnp.full((b,), valid_len, jnp.int32)
            out = jax.nn.dot_product_attention(
                q.astype(cfg.dtype),
                k.astype(cfg.dtype),
                v.astype(cfg.dtype),
                scale=softmax_scale,
                key_value_seq_lengths=lengths,
                implementation="cudnn",
            )  # [B, l, H, K]
            out = out.astype(cfg.dtype).reshape(b, l, c)
            out = Dense(c, dtype=cfg.dtype, matmul_out=cfg.matmul_out, name="proj")(out, positions)
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
        out = out.astype(cfg.dtype).reshape(b, l, c)  # [B, l, C]
        out = Dense(c, dtype=cfg.dtype, matmul_out=cfg.matmul_out, name="proj")(out, positions)
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
        normalisation and the k/v cache writes in one kernel (VARConfig.attn_prologue)."""
        from arvg_jax import attn_prologue_pallas

        cfg = self.cfg
        qkv, bias = Dense(
            3 * cfg.embed_dim,
            dtype=cfg.dtype,
            matmul_out=cfg.matmul_out,
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
            cache["k"].astype(cfg.dtype),
            cache["v"].astype(cfg.dtype),
            layer,
            offset=cache_offset,
            round_dtype=cfg.dtype,
            normalize=norm,
        )
        return self._stacked_attend(q, kc, vc, layer, kv_len, positions)

    def _stacked_attend(self, q, kc, vc, layer, kv_len, positions):
        """Attention of q [B, l, H, K] over block `layer`'s pages of the stacked caches, then
        proj; returns (out [B, l, C], the "layer" cache)."""
        cfg = self.cfg
        b, l = q.shape[:2]
        use_cudnn = attention_impl(cfg) == "cudnn" and stacked_kv.available()
        out = stacked_kv.stacked_attention(
            q,
            kc,
            vc,
            layer,
            kv_len,
            scale=self._softmax_scale(),
            page=cfg.kv_page,
            implementation="cudnn" if use_cudnn else "xla",
        )
        out = out.astype(cfg.dtype).reshape(b, l, cfg.embed_dim)
        out = Dense(cfg.embed_dim, dtype=cfg.dtype, matmul_out=cfg.matmul_out, name="proj")(
            out, positions
        )
        return out, {"k": kc, "v": vc, "layer": layer}


class FFN(nn.Module):
    """models/basic_var.py FFN: fc1 -> GELU(tanh) -> fc2."""

    cfg: VARConfig

    @nn.compact
    def __call__(self, x, *, positions):
        cfg = self.cfg
        fused = self._fused_int8_params() if cfg.fuse_ffn_quant else None
        if fused is not None:
            from quant import _packed

            fc1, fc2 = fused
            # fc1's kernel epilogue: + bias, GELU, fc2's input quantizer -> int8 codes and
            # their row sums; fc2 then runs from the codes (no bf16 activation in HBM).
            q, q_sum = _packed.packed_dense_act_quant(
                x,
                fc1["kernel"],
                fc1.get("bias"),
                fc1["input_quant"],
                positions,
                fc2["input_quant"],
                activation="gelu_tanh",
            )
            y = _packed.packed_dense_codes(
                q,
                q_sum,
                fc2["kernel"],
                fc2.get("bias"),
                fc2["input_quant"],
                positions,
                cfg.dtype,
            )
            return y.astype(cfg.dtype)
        x = Dense(cfg.mlp_dim, dtype=cfg.dtype, matmul_out=cfg.matmul_out, name="fc1")(x, positions)
        x = gelu_tanh(x)
        return Dense(cfg.embed_dim, dtype=cfg.dtype, matmul_out=cfg.matmul_out, name="fc2")(
            x, positions
        )

    def _fused_int8_params(self):
        """(fc1, fc2) params when both are packed int8 layers with static input quantizers on
        the fused Hopper kernel (bfloat16 compute), else None: calibration placeholders, float,
        QArray or weight-only kernels, and the portable int8 paths keep the unfused layers."""
        if jnp.dtype(self.cfg.dtype) != jnp.bfloat16 or not self.has_variable("params", "fc1"):
            return None
        from quant import _packed
        from quant._qarray import ActQuant

        params = self.variables["params"]
        fc1, fc2 = params.get("fc1", {}), params.get("fc2", {})
        for layer in (fc1, fc2):
            if not isinstance(layer.get("kernel"), _packed.PackedKernel):
                return None
            if type(layer.get("input_quant")) is not ActQuant:
                return None
        if _packed._resolve_impl(fc1["kernel"], None) not in _packed.PALLAS_IMPLS:
            return None
        return fc1, fc2


class VARBlock(nn.Module):
    """models/basic_var.py AdaLNSelfAttn.

    x += γ1 ⊙ Attn(LN(x)(1+s1) + b1); x += γ2 ⊙ FFN(LN(x)(1+s2) + b2), with
    (γ1, γ2, s1, s2, b1, b2) = ada_lin(SiLU(cond)) split in that order (or ada_gss + shared).
    """

    cfg: VARConfig

    @nn.compact
    def __call__(
        self, x, ada, *, positions, mask=None, cache=None, cache_offset=0, kv_len=None, mods=None
    ):
        """Applies the block.

        Args:
            x: float32 [B, l, C] residual stream.
            ada: [B, D] class condition, or [B, 6, C] the shared AdaLN output (cfg.shared_aln).
            positions: int [l] absolute positions of the tokens of `x`.
            mask, cache, cache_offset, kv_len: see `SelfAttention`.
            mods: optional precomputed modulations [B, 6, C] (`block_modulation` of this
                block's params and `ada`); `ada` is then ignored.

        Returns:
            float32 [B, l, C], and the updated cache when one was given.
        """
        cfg = self.cfg
        b, c = x.shape[0], cfg.embed_dim
        if mods is not None:
            pass
        elif cfg.shared_aln:
            ada_gss = self.param("ada_gss", nn.initializers.normal(c**-0.5), (6, c), jnp.float32)
            mods = ada_gss + ada  # [B, 6, C]
        else:
            mods = Dense(6 * c, dtype=cfg.dtype, name="ada_lin")(jax.nn.silu(ada))
            mods = mods.reshape(b, 6, c)  # [B, 6, C]
        fused = self._adaln_mode(cache)
        if fused is not None:
            return self._fused_norms(x, mods, fused, positions, cache, cache_offset, kv_len)
        gamma1, gamma2, scale1, scale2, shift1, shift2 = (mods[:, None, j] for j in range(6))

        h = layer_norm(x, cfg.norm_eps) * (scale1 + 1) + shift1
        attn = SelfAttention(cfg, name="attn")(
            h,
            positions=positions,
            mask=mask,
            cache=cache,
            cache_offset=cache_offset,
            kv_len=kv_len,
        )
        if cache is not None:
            attn, cache = attn
        x = x + attn * gamma1
        h = layer_norm(x, cfg.norm_eps) * (scale2 + 1) + shift2
        x = x + FFN(cfg, name="ffn")(h, positions=positions) * gamma2
        x = x.astype(jnp.float32)
        return x if cache is None else (x, cache)

    def _adaln_mode(self, cache):
        """ "int8", "float" or None: whether (and how) the norms run on `arvg_jax.adaln_pallas`.

        Only in the stacked sampler (a "layer" cache) with cfg.adaln_kernel "pallas" (or "auto"
        on an NVIDIA GPU), and only when qkv and fc1 are alike: both packed int8 layers with
        static input quantizers (the kernel writes their codes), or both float (it writes h in
        cfg.dtype). Anything else (calibration placeholders, QArray or oracle kernels, mixed
        precision) keeps the XLA ops.
        """
        cfg = self.cfg
        if cache is None or "layer" not in cache or cfg.adaln_kernel == "xla":
            return None
        from arvg_jax import adaln_pallas

        if cfg.adaln_kernel == "auto" and not adaln_pallas.available():
            return None
        params = self.variables.get("params", {})
        layers = [params.get("attn", {}).get("qkv", {}), params.get("ffn", {}).get("fc1", {})]
        if all(_is_plain_array(p.get("kernel")) and "input_quant" not in p for p in layers):
            return "float"
        from quant import _packed
        from quant._qarray import ActQuant

        for p in layers:
            if not isinstance(p.get("kernel"), _packed.PackedKernel):
                return None
            if type(p.get("input_quant")) is not ActQuant:
                return None
        return "int8"

    def _fused_norms(self, x, mods, mode, positions, cache, cache_offset, kv_len):
        """`__call__` with both norms (and the first residual add) on `adaln_pallas`."""
        from arvg_jax import adaln_pallas

        cfg = self.cfg
        gamma1, gamma2, scale1, scale2, shift1, shift2 = (mods[:, j] for j in range(6))
        params = self.variables["params"]
        length = x.shape[1]

        def norm(x, scale, shift, layer, delta=None, gamma=None):
            kw = {}
            if mode == "int8":
                quant = layer["input_quant"]
                s, z = quant.for_positions(positions)
                kw = {
                    "quant_scale": jnp.broadcast_to(s.reshape(-1), (length,)),
                    "quant_zero": jnp.broadcast_to(z.reshape(-1), (length,)),
                    "quant_bits": quant.bits,
                }
            x_new, h = adaln_pallas.adaln(
                x,
                scale,
                shift,
                eps=cfg.norm_eps,
                delta=delta,
                gamma=gamma,
                out_dtype=cfg.dtype,
                **kw,
            )
            if mode == "int8":
                from quant import _packed

                h = _packed.PreQuantized(codes=h[0], sums=h[1], dtype=cfg.dtype)
            return x_new, h

        _, h = norm(x, scale1, shift1, params["attn"]["qkv"])
        attn, cache = SelfAttention(cfg, name="attn")(
            h,
            positions=positions,
            cache=cache,
            cache_offset=cache_offset,
            kv_len=kv_len,
        )
        x, h = norm(x, scale2, shift2, params["ffn"]["fc1"], delta=attn, gamma=gamma1)
        x = x + FFN(cfg, name="ffn")(h, positions=positions) * gamma2[:, None]
        return x.astype(jnp.float32), cache


def block_modulation(cfg: VARConfig, block_params: dict, ada) -> Array:
    """VARBlock's (γ1, γ2, s1, s2, b1, b2) modulations [B, 6, C] from its params and `ada`.

    The same computation as the start of `VARBlock.__call__`, for callers that hoist it out of a
    loop over scales (it depends on the class condition only).
    """
    c = cfg.embed_dim
    if cfg.shared_aln:
        return block_params["ada_gss"] + ada
    mods = Dense(6 * c, dtype=cfg.dtype).apply(
        {"params": block_params["ada_lin"]}, jax.nn.silu(ada)
    )
    return mods.reshape(ada.shape[0], 6, c)


class AdaLNBeforeHead(nn.Module):
    """models/basic_var.py AdaLNBeforeHead: LN(x)(1+scale) + shift, (scale, shift) = ada_lin."""

    cfg: VARConfig

    @nn.compact
    def __call__(self, x, cond):
        c = self.cfg.embed_dim
        mods = Dense(2 * c, dtype=jnp.float32, name="ada_lin")(jax.nn.silu(cond))
        mods = mods.reshape(-1, 2, c)  # [B, 2, C]
        scale, shift = mods[:, None, 0], mods[:, None, 1]
        return layer_norm(x, self.cfg.norm_eps) * (scale + 1) + shift


class VAR(nn.Module):
    """models/var.py VAR (the transformer; the VQVAE lives in arvg_jax.tokenizers)."""

    cfg: VARConfig

    def setup(self):
        cfg = self.cfg
        c = cfg.embed_dim
        init_std = math.sqrt(1 / c / 3)  # models/var.py: init_std = sqrt(1 / C / 3)
        emb_init = nn.initializers.truncated_normal(init_std)
        self.class_emb = nn.Embed(cfg.num_classes + 1, c, embedding_init=emb_init)
        self.pos_start = self.param("pos_start", emb_init, (cfg.first_l, c), jnp.float32)
        self.pos_1LC = self.param("pos_1LC", emb_init, (cfg.seq_len, c), jnp.float32)
        self.lvl_embed = nn.Embed(cfg.num_scales, c, embedding_init=emb_init)
        self.word_embed = Dense(c)
        if cfg.shared_aln:
            self.shared_ada_lin = Dense(6 * c, dtype=cfg.dtype)
        # A list attribute: linen names the blocks blocks_0 … blocks_{depth-1}.
        self.blocks = [VARBlock(cfg) for _ in range(cfg.depth)]
        self.head_nm = AdaLNBeforeHead(cfg)
        self.head = Dense(cfg.vocab_size, dtype=jnp.float32)

    # ---- teacher forcing --------------------------------------------------------------------
    def __call__(self, labels, x_BLCv_wo_first_l, *, attn_mask: AttnMask = "block_causal"):
        """Teacher-forced logits (models/var.py VAR.forward with cond_drop_rate 0).

        Args:
            labels: int [B] class ids (num_classes = null class).
            x_BLCv_wo_first_l: float [B, L - first_l, E], `idxBl_to_var_input` of the VQVAE.
            attn_mask: "block_causal" (the official forward) or "none" (PTQ4ARVG calibration).

        Returns:
            float32 logits [B, L, V].
        """
        x, cond = self.embed(labels, x_BLCv_wo_first_l)
        ada = self.condition(cond)
        positions = np.arange(self.cfg.seq_len, dtype=np.int32)
        mask = attention_mask(self.cfg, attn_mask)
        for blk in self.blocks:
            x = blk(x, ada, positions=positions, mask=mask)
        return self.head_logits(x, cond)

    def embed(self, labels, x_BLCv_wo_first_l):
        """Token embeddings and class condition.

        Returns:
            x: float32 [B, L, C]: [cond + pos_start; word_embed(x)] + lvl_embed + pos_1LC.
            cond: float32 [B, C]: class_emb[labels].
        """
        cfg = self.cfg
        cond = self.class_emb(labels).astype(jnp.float32)  # [B, C]
        b = cond.shape[0]
        sos = jnp.broadcast_to(cond[:, None], (b, cfg.first_l, cfg.embed_dim)) + self.pos_start
        words = self.word_embed(
            x_BLCv_wo_first_l.astype(jnp.float32), np.arange(cfg.first_l, cfg.seq_len)
        )
        x = jnp.concatenate([sos, words], axis=1)  # [B, L, C]
        return x + self._lvl_pos(0, cfg.seq_len), cond

    def _lvl_pos(self, begin: int, end: int):
        """lvl_embed[lvl_1L] + pos_1LC over the static range [begin, end): [end - begin, C]."""
        return self.lvl_embed.embedding[self.cfg.levels[begin:end]] + self.pos_1LC[begin:end]

    def condition(self, cond):
        """The per-block AdaLN input: cond [B, C], or shared_ada_lin(cond) [B, 6, C] (d36)."""
        if not self.cfg.shared_aln:
            return cond
        out = self.shared_ada_lin(jax.nn.silu(cond))
        return out.reshape(cond.shape[0], 6, self.cfg.embed_dim)  # [B, 6, C]

    def apply_block(self, x, ada, *, i: int, attn_mask: AttnMask = "none", positions=None):
        """Runs block `i` alone on [B, l, C] (full sequence unless `positions` says otherwise)."""
        if positions is None:
            positions = np.arange(x.shape[1], dtype=np.int32)
        return self.blocks[i](x, ada, positions=positions, mask=attention_mask(self.cfg, attn_mask))

    def head_logits(self, x, cond, positions=None):
        """float32 logits [B, l, V] of the final hidden states x [B, l, C]."""
        if positions is None:
            positions = np.arange(x.shape[1], dtype=np.int32)
        h = self.head_nm(x.astype(jnp.float32), cond)
        return self.head(h, positions).astype(jnp.float32)

    # ---- cached sampling ---------------------------------------------------------------------
    def first_scale_input(self, labels):
        """Sampling input of scale 0: (x [B, first_l, C], cond [B, C]) for the given labels."""
        cfg = self.cfg
        cond = self.class_emb(labels).astype(jnp.float32)
        b = cond.shape[0]
        sos = jnp.broadcast_to(cond[:, None], (b, cfg.first_l, cfg.embed_dim)) + self.pos_start
        return sos + self._lvl_pos(0, cfg.first_l), cond

    def scale_input(self, x_next, *, si: int):
        """Sampling input of scale si ≥ 1: word_embed(x_next [B, pn², E]) + lvl/pos embedding."""
        begin, end = self.cfg.begin_ends[si]
        words = self.word_embed(x_next.astype(jnp.float32), np.arange(begin, end, dtype=np.int32))
        return words + self._lvl_pos(begin, end)

    def step(self, x, ada, cond, caches, *, si: int):
        """One scale of cached sampling: the tokens of scale si attend to the cache and themselves.

        Args:
            x: float32 [B, pn_si², C] input of scale si.
            ada: `condition(cond)`.
            cond: float32 [B, C].
            caches: per-block {"k", "v"} [B, L, H, K] (`init_kv_caches`).
            si: static scale index.

        Returns:
            float32 logits [B, pn_si², V] and the updated caches.
        """
        cfg = self.cfg
        begin, end = cfg.begin_ends[si]
        positions = np.arange(begin, end, dtype=np.int32)
        # Keys beyond this scale's end are not written yet: attend to the prefix [0, end) only.
        new_caches = []
        for blk, cache in zip(self.blocks, caches, strict=True):
            x, cache = blk(x, ada, positions=positions, cache=cache, cache_offset=begin, kv_len=end)
            new_caches.append(cache)
        return self.head_logits(x, cond, positions), tuple(new_caches)
