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
      `step(x, ada, cond, caches, si=...)`; see `arvg_jax.families.var.sampler`.

The residual stream, norms, embeddings and head run in float32; with `ExecOptions(dtype="bfloat16")` the
block matmuls (and the KV cache) use bfloat16, as the official autocast inference does.
"""

from __future__ import annotations

import math
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from arvg_jax.families.var.attention import (  # noqa: F401  (re-exported)
    SelfAttention,
    attention_impl,
    attn_prologue_impl,
    init_kv_caches,
)
from arvg_jax.families.var.config import (  # noqa: F401  (re-exported)
    IGNORED_OFFICIAL_KEYS,
    OFFICIAL_KEYS,
    PATCH_NUMS_256,
    PATCH_NUMS_512,
    VARConfig,
)
from arvg_jax.nn.layers import Dense, _is_plain_array, gelu_tanh, layer_norm
from arvg_jax.options import ExecOptions

Array = jax.Array
AttnMask = Literal["block_causal", "none"]
SAMPLER_KV = ("prefix", "full", "stacked")


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


class FFN(nn.Module):
    """models/basic_var.py FFN: fc1 -> GELU(tanh) -> fc2."""

    cfg: VARConfig
    opts: ExecOptions = ExecOptions()

    @nn.compact
    def __call__(self, x, *, positions):
        cfg, opts = self.cfg, self.opts
        fused = self._fused_int8_params() if opts.fuse_ffn_quant else None
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
                opts.compute_dtype,
            )
            return y.astype(opts.compute_dtype)
        x = Dense(cfg.mlp_dim, dtype=opts.compute_dtype, matmul_out=opts.matmul_out, name="fc1")(
            x, positions
        )
        x = gelu_tanh(x)
        return Dense(
            cfg.embed_dim, dtype=opts.compute_dtype, matmul_out=opts.matmul_out, name="fc2"
        )(x, positions)

    def _fused_int8_params(self):
        """(fc1, fc2) params when both are packed int8 layers with static input quantizers on
        the fused Hopper kernel (bfloat16 compute), else None: calibration placeholders, float,
        QArray or weight-only kernels, and the portable int8 paths keep the unfused layers."""
        if jnp.dtype(self.opts.compute_dtype) != jnp.bfloat16 or not self.has_variable(
            "params", "fc1"
        ):
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
    opts: ExecOptions = ExecOptions()

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
        cfg, opts = self.cfg, self.opts
        b, c = x.shape[0], cfg.embed_dim
        if mods is not None:
            pass
        elif cfg.shared_aln:
            ada_gss = self.param("ada_gss", nn.initializers.normal(c**-0.5), (6, c), jnp.float32)
            mods = ada_gss + ada  # [B, 6, C]
        else:
            mods = Dense(6 * c, dtype=opts.compute_dtype, name="ada_lin")(jax.nn.silu(ada))
            mods = mods.reshape(b, 6, c)  # [B, 6, C]
        fused = self._adaln_mode(cache)
        if fused is not None:
            return self._fused_norms(x, mods, fused, positions, cache, cache_offset, kv_len)
        gamma1, gamma2, scale1, scale2, shift1, shift2 = (mods[:, None, j] for j in range(6))

        h = layer_norm(x, cfg.norm_eps) * (scale1 + 1) + shift1
        attn = SelfAttention(cfg, opts, name="attn")(
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
        x = x + FFN(cfg, opts, name="ffn")(h, positions=positions) * gamma2
        x = x.astype(jnp.float32)
        return x if cache is None else (x, cache)

    def _adaln_mode(self, cache):
        """ "int8", "float" or None: whether (and how) the norms run on `arvg_jax.kernels.adaln_pallas`.

        Only in the stacked sampler (a "layer" cache) with opts.adaln_kernel "pallas" (or "auto"
        on an NVIDIA GPU), and only when qkv and fc1 are alike: both packed int8 layers with
        static input quantizers (the kernel writes their codes), or both float (it writes h in
        opts.compute_dtype). Anything else (calibration placeholders, QArray or oracle kernels, mixed
        precision) keeps the XLA ops.
        """
        opts = self.opts
        if cache is None or "layer" not in cache or opts.adaln_kernel == "xla":
            return None
        from arvg_jax.kernels import adaln_pallas

        if opts.adaln_kernel == "auto" and not (opts.gpu_here and adaln_pallas.available()):
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
        from arvg_jax.kernels import adaln_pallas

        cfg, opts = self.cfg, self.opts
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
                out_dtype=opts.compute_dtype,
                interpret=opts.pallas_interpret,
                **kw,
            )
            if mode == "int8":
                from quant import _packed

                h = _packed.PreQuantized(codes=h[0], sums=h[1], dtype=opts.compute_dtype)
            return x_new, h

        _, h = norm(x, scale1, shift1, params["attn"]["qkv"])
        attn, cache = SelfAttention(cfg, opts, name="attn")(
            h,
            positions=positions,
            cache=cache,
            cache_offset=cache_offset,
            kv_len=kv_len,
        )
        x, h = norm(x, scale2, shift2, params["ffn"]["fc1"], delta=attn, gamma=gamma1)
        x = x + FFN(cfg, opts, name="ffn")(h, positions=positions) * gamma2[:, None]
        return x.astype(jnp.float32), cache


def block_modulation(cfg: VARConfig, opts: ExecOptions, block_params: dict, ada) -> Array:
    """VARBlock's (γ1, γ2, s1, s2, b1, b2) modulations [B, 6, C] from its params and `ada`.

    The same computation as the start of `VARBlock.__call__`, for callers that hoist it out of a
    loop over scales (it depends on the class condition only).
    """
    c = cfg.embed_dim
    if cfg.shared_aln:
        return block_params["ada_gss"] + ada
    mods = Dense(6 * c, dtype=opts.compute_dtype).apply(
        {"params": block_params["ada_lin"]}, jax.nn.silu(ada)
    )
    return mods.reshape(ada.shape[0], 6, c)


class AdaLNBeforeHead(nn.Module):
    """models/basic_var.py AdaLNBeforeHead: LN(x)(1+scale) + shift, (scale, shift) = ada_lin."""

    cfg: VARConfig
    opts: ExecOptions = ExecOptions()

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
    opts: ExecOptions = ExecOptions()

    def setup(self):
        cfg, opts = self.cfg, self.opts
        c = cfg.embed_dim
        init_std = math.sqrt(1 / c / 3)  # models/var.py: init_std = sqrt(1 / C / 3)
        emb_init = nn.initializers.truncated_normal(init_std)
        self.class_emb = nn.Embed(cfg.num_classes + 1, c, embedding_init=emb_init)
        self.pos_start = self.param("pos_start", emb_init, (cfg.first_l, c), jnp.float32)
        self.pos_1LC = self.param("pos_1LC", emb_init, (cfg.seq_len, c), jnp.float32)
        self.lvl_embed = nn.Embed(cfg.num_scales, c, embedding_init=emb_init)
        self.word_embed = Dense(c)
        if cfg.shared_aln:
            self.shared_ada_lin = Dense(6 * c, dtype=opts.compute_dtype)
        # A list attribute: linen names the blocks blocks_0 … blocks_{depth-1}.
        self.blocks = [VARBlock(cfg, opts) for _ in range(cfg.depth)]
        self.head_nm = AdaLNBeforeHead(cfg, opts)
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


def teacher_forced_logits(params, vae_params, cfg, vae_cfg, labels, tokens, options=None, batch=16):
    """float32 logits [N, L, V] of VAR on token maps [N, L] (scales concatenated), `batch` rows
    per call (the block-causal teacher-forced forward of models/var.py)."""
    from arvg_jax.tokenizers import var_vqvae

    opts = options or ExecOptions()
    fn = jax.jit(lambda p, lab, x: VAR(cfg, opts).apply({"params": p}, lab, x))
    outs = []
    for i in range(0, len(labels), batch):
        idx = var_vqvae.split_idx(vae_cfg, tokens[i : i + batch])
        x = var_vqvae.idx_to_var_input(vae_params, vae_cfg, idx)
        outs.append(np.asarray(fn(params, jnp.asarray(labels[i : i + batch]), x)))
    return np.concatenate(outs)
