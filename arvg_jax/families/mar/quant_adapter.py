"""MAR quantization plumbing: coverage rules, calibration stages, token groups, valid rows.

Matches PTQ4ARVG's MAR copy (BienLuky/PTQ4ARVG f249fe9): `MAR/quant/quant_model.py:24-42` wraps
only the Linears of the encoder and decoder blocks (attn.qkv, attn.proj, mlp.fc1, mlp.fc2; timm
attention, so the attention matmuls stay float); `diffloss.*`, `z_proj`, `decoder_embed` and every
other Linear stay float. qkv/fc1 inputs get SmoothQuant + shift + GPS folded into the LayerNorms
`norm1`/`norm2` (weight and bias, `MAR/main_mar_quant.py:143-176, 202-229`); the 64 buffer tokens
are the sinks. STWQ (`MAR/quant/quantizer.py:145-264`, docs/ptq4arvg.md §3.4): one (Δ, z) per
buffer token plus one shared by every image token. `MARAdapter(cfg, quantize_head=True)` also
quantizes every diffusion-head Linear (weights per output row, inputs per tensor; not official).

Calibration state (docs/ptq4arvg.md §4.1): the official scripts record the last of the AR steps
(all but a few tokens known). Our encoder runs every position under fixed shapes, so its masked
rows are computed but never read; `valid_rows` marks them and the core keeps them out of every
statistic and fitted quantizer (`quant._calibrate.valid_rows`). The decoder runs all positions in
the official code too (mask tokens at unknown rows), so all its rows are real.

Dims: N calibration sequences, L image tokens, P = 64 + L positions, C width, D token channels.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from arvg_jax.families.mar.config import MARConfig
from arvg_jax.families.mar.model import MAR, Block, abstract_params
from quant import _tree
from quant._calibrate import CALIBRATION_COMPILER_OPTIONS, Stage
from quant.coverage import Coverage, CoverageQueries, FoldRule, QuantRule

BLOCK_LAYERS = ("attn/qkv", "attn/proj", "mlp/fc1", "mlp/fc2")  # forward order
_BLOCK = r"(?P<block>transformer/(?:encoder|decoder)_blocks_\d+)"
HEAD_SEED = 0  # timesteps and noise of the head's calibration inputs (quantize_head only)

# Official MAR coverage as data (module doc). Fold kind "norm_bias": LayerNorm scale /= s, bias
# = bias / s - p. Token groups "buffer": positions 0..63 one group each, image tokens one group.
BLOCK_RULES = (
    QuantRule(
        path=_BLOCK + "/attn/qkv",
        kind="qkv",
        groups="buffer",
        smooth=True,
        fold=FoldRule(norm=r"\g<block>/norm1", kind="norm_bias"),
        sink_excluded=True,
    ),
    QuantRule(path=_BLOCK + "/attn/proj", kind="proj", groups="buffer"),
    QuantRule(
        path=_BLOCK + "/mlp/fc1",
        kind="fc1",
        groups="buffer",
        smooth=True,
        fold=FoldRule(norm=r"\g<block>/norm2", kind="norm_bias"),
        sink_excluded=True,
    ),
    QuantRule(path=_BLOCK + "/mlp/fc2", kind="fc2", groups="buffer"),
    QuantRule(path=r"transformer/z_proj", kind="z_proj", keep_float=True),
    QuantRule(path=r"transformer/decoder_embed", kind="decoder_embed", keep_float=True),
)
RULES = (*BLOCK_RULES, QuantRule(path=r"diffloss/.+", kind="diffloss", keep_float=True))
# The option: the diffusion MLP quantized too, every input per tensor (no transform to fold).
RULES_WITH_HEAD = (*BLOCK_RULES, QuantRule(path=r"diffloss/.+", kind="diffloss"))


@functools.cache
def dense_layers(cfg: MARConfig) -> tuple[str, ...]:
    """Every Dense layer path of MAR's param tree ("transformer/...", "diffloss/...")."""
    flat = _tree.flatten(abstract_params(cfg))
    return tuple(k[: -len("/kernel")] for k in flat if k.endswith("/kernel"))


def _block_stages(kind: str, depth: int) -> tuple[Stage, ...]:
    return tuple(
        Stage(
            f"{kind}_blocks_{i}", tuple(f"transformer/{kind}_blocks_{i}/{n}" for n in BLOCK_LAYERS)
        )
        for i in range(depth)
    )


class MARAdapter(CoverageQueries):
    """Implements `quant._calibrate.ModelAdapter` for MAR (module doc).

    Args:
      cfg: the architecture.
      quantize_head: also quantize the diffusion head's Linears (per-tensor inputs).
    """

    family = "mar"

    def __init__(self, cfg: MARConfig, *, quantize_head: bool = False):
        self.cfg = cfg
        self.quantize_head = quantize_head
        self.sink_tokens = cfg.buffer_size  # the 64 buffer (class) tokens
        self._mar = MAR(cfg)
        self._blocks = {
            "encoder": Block(
                cfg.encoder_embed_dim, cfg.encoder_num_heads, cfg.encoder_mlp_dim, cfg.norm_eps
            ),
            "decoder": Block(
                cfg.decoder_embed_dim, cfg.decoder_num_heads, cfg.decoder_mlp_dim, cfg.norm_eps
            ),
        }
        self._positions = np.arange(cfg.buffer_size + cfg.seq_len, dtype=np.int32)
        self._stage_fns: dict = {}
        rules = RULES_WITH_HEAD if quantize_head else RULES
        self.coverage = Coverage(rules, dense_layers(cfg), cfg.encoder_embed_dim)
        self._head_layers = tuple(n for n in dense_layers(cfg) if n.startswith("diffloss/"))

    # ---- coverage ------------------------------------------------------------------------------
    def stages(self) -> tuple[Stage, ...]:
        cfg = self.cfg
        out = (
            *_block_stages("encoder", cfg.encoder_depth),
            Stage("decoder_embed", ("transformer/decoder_embed",)),
            *_block_stages("decoder", cfg.decoder_depth),
        )
        return (*out, Stage("diffloss", self._head_layers)) if self.quantize_head else out

    def group_table(self, granularity: str) -> np.ndarray:
        """int32 [P] group of each position: "buffer" (position i < 64: group i; image tokens:
        group 64) or "tensor" (one group; T = 1)."""
        if granularity == "tensor":
            return np.zeros((1,), np.int32)
        if granularity == "buffer":
            return np.minimum(self._positions, self.cfg.buffer_size).astype(np.int32)
        raise ValueError(f"unknown token-group granularity {granularity!r}")

    def valid_rows(self, name: str, batch: Mapping[str, Any]) -> np.ndarray | None:
        """bool [N, P] for encoder layers: the buffer and the known tokens (the rows the official
        encoder gathers); None elsewhere (every row is real)."""
        if not name.startswith("transformer/encoder_blocks_"):
            return None
        known = ~np.asarray(batch["mask"]).astype(bool)
        n = known.shape[0]
        return np.concatenate([np.ones((n, self.cfg.buffer_size), bool), known], axis=1)

    # ---- running ------------------------------------------------------------------------------
    def start(self, params: Mapping[str, Any], batch: Mapping[str, Any]) -> dict[str, Any]:
        """batch: labels int [N] (`class_num` = the CFG null class), tokens float [N, L, D]
        (generated), mask [N, L] (1 = unknown entering the recorded AR step).

        Returns the carry {"x": first encoder-block input [N, P, C], "mask", "tokens"}.
        """
        fn = self._stage_fns.get("start")
        if fn is None:
            fn = self._stage_fns["start"] = jax.jit(
                self._start, compiler_options=CALIBRATION_COMPILER_OPTIONS
            )
        labels = jnp.asarray(batch["labels"], jnp.int32)
        mask = jnp.asarray(batch["mask"], jnp.float32)
        tokens = jnp.asarray(batch["tokens"], jnp.float32)
        x = fn(_outer(params["transformer"]), tokens, mask, labels)
        return {"x": x, "mask": mask, "tokens": tokens}

    def _start(self, outer, tokens, mask, labels):
        drop = labels >= self.cfg.class_num
        mar = self._mar
        cls = mar.apply({"params": outer}, labels, drop, method=MAR.class_vectors)
        x, _ = mar.apply({"params": outer}, tokens, mask, cls, method=MAR.encoder_input)
        return x

    def run_stage(self, params, stage: Stage, carry, collect: str | None = "intermediates"):
        """Runs one stage (jitted, one compilation per stage kind and tree layout).

        Args:
          params: the whole param tree {"transformer", "diffloss"} (float, probe or quantized).
          stage: an encoder block, "decoder_embed", a decoder block or "diffloss".
          carry: {"x": [N, P, C], "mask": [N, L], "tokens": [N, L, D]}.
          collect: "intermediates" (layer inputs), "calibration" (fitted quantizers) or None.

        Returns:
          (carry out, {layer path: sown value}).
        """
        kind = stage.name.rsplit("_blocks_", 1)[0] if "_blocks_" in stage.name else stage.name
        if kind in ("encoder", "decoder"):
            sub, prefix = params["transformer"][stage.name], f"transformer/{stage.name}/"
        elif kind == "decoder_embed":
            sub, prefix = _outer(params["transformer"]), "transformer/"
        else:
            sub, prefix = {"t": _outer(params["transformer"]), "h": params["diffloss"]}, "diffloss/"
        x, state = self._stage_fn(kind, collect)(sub, carry)
        captured = {}
        for k, v in _tree.flatten(state).items():
            layer, _, _ = k.rpartition("/")
            captured[prefix + layer] = v[0] if isinstance(v, tuple) else v
        return {**carry, "x": x}, captured

    def _stage_fn(self, kind: str, collect: str | None):
        key = (kind, collect)
        if key not in self._stage_fns:
            self._stage_fns[key] = jax.jit(
                functools.partial(self._run, kind, collect),
                compiler_options=CALIBRATION_COMPILER_OPTIONS,
            )
        return self._stage_fns[key]

    def _run(self, kind: str, collect: str | None, sub, carry):
        mutable = [collect] if collect else False
        x, mask = carry["x"], carry["mask"]
        if kind in ("encoder", "decoder"):
            keep = None
            if kind == "encoder":  # MAR._keep: the buffer slots and the known tokens
                buf = jnp.ones((mask.shape[0], self.cfg.buffer_size), bool)
                keep = jnp.concatenate([buf, mask == 0], axis=1)
            res = self._blocks[kind].apply(
                {"params": sub}, x, keep, self._positions, mutable=mutable
            )
        elif kind == "decoder_embed":
            res = self._mar.apply(
                {"params": sub}, x, mask, method=MAR.decoder_input, mutable=mutable
            )
        else:
            res = self._head_forward(sub, x, carry["tokens"], mutable)
        y, state = res if mutable else (res, {})
        return y, (dict(state.get(collect, {})) if collect else {})

    def _head_forward(self, sub, x, tokens, mutable):
        """The diffusion head on every image token: condition z from the decoder output, x_t
        noised from the generated token x0 at a respaced timestep (fixed seed `HEAD_SEED`).
        Returns the decoder output unchanged (the head ends the model)."""
        from arvg_jax.families.mar import diffloss

        cfg = self.cfg
        z = self._mar.apply({"params": sub["t"]}, x, method=MAR.decoder_output)  # [N, L, C]
        c = z.reshape(-1, z.shape[-1]).astype(jnp.float32)
        x0 = tokens.reshape(-1, tokens.shape[-1])  # [R, D]
        sched = diffloss.make_schedule(cfg.num_sampling_steps)
        kt, kn = jax.random.split(jax.random.key(HEAD_SEED))
        j = jax.random.randint(kt, (x0.shape[0],), 0, sched.num_steps)
        t = jnp.asarray(sched.timestep_map, jnp.int32)[j]
        abar = jnp.asarray(np.cumprod(1.0 - diffloss.cosine_betas()), jnp.float32)[t][:, None]
        x_t = jnp.sqrt(abar) * x0 + jnp.sqrt(1 - abar) * jax.random.normal(kn, x0.shape)
        net = diffloss.SimpleMLPAdaLN(
            width=cfg.diffloss_w, depth=cfg.diffloss_d, out_channels=2 * cfg.token_embed_dim
        )
        res = net.apply({"params": sub["h"]}, x_t, t, c, mutable=mutable)
        return (x, res[1]) if mutable else x

    def token0_features(self, params, batch, *, chunk: int = 32) -> np.ndarray:
        """DGC features: buffer token 0 of the last encoder block's output, float32 [N, C]
        (docs/ptq4arvg.md §4.2)."""
        blocks = [s for s in self.stages() if s.name.startswith("encoder_blocks_")]
        n = int(np.shape(batch["labels"])[0])
        out = []
        for lo in range(0, n, chunk):
            part = {k: np.asarray(v)[lo : lo + chunk] for k, v in batch.items()}
            carry = self.start(params, part)
            for stage in blocks:
                carry, _ = self.run_stage(params, stage, carry, collect=None)
            out.append(np.asarray(carry["x"][:, 0, :], np.float32))
        return np.concatenate(out, axis=0)


def _outer(transformer: Mapping[str, Any]) -> dict[str, Any]:
    """The transformer params without its blocks (embeddings, norms, projections)."""
    return {k: v for k, v in transformer.items() if "_blocks_" not in k}
