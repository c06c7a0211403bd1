"""PAR quantization plumbing: coverage rules, calibration stages, token groups, RMSNorm folding.

Matches PTQ4ARVG's PAR copy (BienLuky/PTQ4ARVG f249fe9,
`PAR/autoregressive/sample/quant/quant_model.py:28-59`, `.../quant/gps.py`): every Linear is
quantized (wqkv, wo, w1, w3, w2, output); wqkv and w1 inputs get SmoothQuant, the zero-centering
shift and GPS, folded into `attention_norm` / `ffn_norm` (the RMSNorm weight divided by s, plus a
new bias: `PAR/autoregressive/models/gpt.py:158,165`), w3 reuses w1's transform (both read the
normed input, `gps.py:57-100,180-216`; `quant_model.py:38-40`) and `output`'s input is folded
into the final `norm`.
Sinks: positions 0..7 are left out of the wqkv / w1 statistics (`quant_modules.py:56,68-69`,
`x[:, 8:, :]`). Calibration runs the first N = block_size positions of the teacher-forced sequence
under the group-causal mask, as the official calibration records them
(`sample_c2i_ddp_cali.py:109-123`: every generation step's first-layer input, the mask rows
`causal_mask[:, input_pos]` cut to N columns) and replays them (`gpt.py:465-470` `forward_fn`).

STWQ token groups (`quant/quantizer.py:209-329`, positions from `generate.py:94-155`): six
groups [0], [1], [2], [3], [4:8], [8:] for wqkv, wo, w1, w3, w2 at 4x; `output` per tensor. The
official layout and sink count are hard-coded for 4x (docs/ptq4arvg.md §3.3, §9.7). Here they are
derived from the sequence layout, which gives exactly the official ones at 4x: one group per
one-token pass (positions 0 .. A-1), one for the first parallel pass (positions A .. 2A-1: the
last sequential token and the E bridge tokens), one for every later position; the sinks are the
positions before the first regular parallel pass, 0 .. 2A-1 (8 at 4x; at 16x: 32 sinks and
A + 2 = 18 groups).

The attention matmuls are quantized as the official `QuantMatMul`s (docs/ptq4arvg.md §1.4, §1.5):
q·kᵀ with both operands uniform per tensor, softmax·v with the probabilities through the log-√2
quantizer and v uniform per tensor (`matmul_quantizers`; params
`layers_i/attention/attn_quant/{q,k,p,v}/input_quant`; `quant_model.py:9-10,52-58`,
`quant_modules.py:84-116`). q·kᵀ runs as an int8 matmul; P·v has no integer kernel for log-√2
codes and multiplies the dequantized operands. As in the official sampler, the quantizers see the
whole KV cache (unwritten slots are zeros, their probabilities 0).

Deviations: w3's calibration-time quantizer (stages B-E) is its deployed token-group one instead
of the official per-channel one (it only shapes the upstream of w2); the token-group (Δ, z) stay
float32 where the official quantizer rounds them to bf16 (`quantizer.py:256`); statistics come
from the whole calibration set at once, not an EMA over batches of 64 (`quant.algorithms.ptq4arvg`).

Dims: N calibration sequences, L = block_size calibration positions, C width, A tokens per
parallel pass.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from arvg_jax.families.par import layout
from arvg_jax.families.par.config import PARConfig
from arvg_jax.families.par.model import PAR, TransformerBlock
from quant._calibrate import CALIBRATION_COMPILER_OPTIONS, Stage, sown_by_layer
from quant._fit import FitInput
from quant.coverage import Coverage, CoverageQueries, FoldRule, QuantRule

BLOCK_LAYERS = (
    "attention/wqkv",
    "attention/wo",
    "feed_forward/w1",
    "feed_forward/w3",
    "feed_forward/w2",
)  # forward order
HEAD_LAYERS = ("output",)

# PTQ4ARVG's PAR coverage as data (`PAR/autoregressive/sample/quant/quant_model.py:28-59`).
RULES = (
    QuantRule(
        path=r"(?P<layer>layers_\d+)/attention/wqkv",
        kind="wqkv",
        groups="par",
        smooth=True,
        fold=FoldRule(norm=r"\g<layer>/attention_norm", kind="norm_bias"),
        sink_excluded=True,
    ),
    QuantRule(path=r"layers_\d+/attention/wo", kind="wo", groups="par"),
    QuantRule(
        path=r"(?P<layer>layers_\d+)/feed_forward/w1",
        kind="w1",
        groups="par",
        smooth=True,
        fold=FoldRule(norm=r"\g<layer>/ffn_norm", kind="norm_bias"),
        sink_excluded=True,
    ),
    QuantRule(
        path=r"(?P<layer>layers_\d+)/feed_forward/w3",
        kind="w3",
        groups="par",
        sink_excluded=True,
        share_input_with=r"\g<layer>/feed_forward/w1",
    ),
    QuantRule(path=r"layers_\d+/feed_forward/w2", kind="w2", groups="par"),
    # `output` is a SmoothModule without sink_aware (quant_model.py:31-32): all positions count.
    QuantRule(
        path=r"output", kind="output", smooth=True, fold=FoldRule(norm="norm", kind="norm_bias")
    ),
)


def dense_layers(cfg: PARConfig) -> tuple[str, ...]:
    """Every Dense layer path of PAR, in forward order."""
    blocks = tuple(f"layers_{i}/{n}" for i in range(cfg.n_layer) for n in BLOCK_LAYERS)
    return (*blocks, *HEAD_LAYERS)


def par_group_table(cfg: PARConfig) -> np.ndarray:
    """int32 [seq_len]: the STWQ group of each sequence position (module doc); it covers the
    teacher-forced sequence (N + E positions), calibration fits it on the first N.

    4x: [0, 1, 2, 3, 4, 4, 4, 4, 5, 5, ...] = the official [0], [1], [2], [3], [4:8], [8:].
    """
    a = cfg.ar_token_num
    pos = np.arange(cfg.seq_len)
    return np.where(pos < a, pos, np.where(pos < 2 * a, a, a + 1)).astype(np.int32)


class PARAdapter(CoverageQueries):
    """Implements `quant._calibrate.ModelAdapter` for PAR."""

    family = "par"

    def __init__(self, cfg: PARConfig):
        self.cfg = cfg
        # Positions before the first regular parallel pass (official: 8 at 4x).
        self.sink_tokens = 2 * cfg.ar_token_num
        self._par = PAR(cfg)
        self._block = TransformerBlock(cfg)
        length = cfg.block_size
        self._positions = np.arange(length, dtype=np.int32)
        self._rope = layout.rope_table(cfg)[:length]
        self._mask = layout.group_mask(cfg, length)
        self._stage_fns: dict = {}
        self._token0_fn = None
        self.coverage = Coverage(RULES, dense_layers(cfg), cfg.dim)

    # ---- coverage ------------------------------------------------------------------------------
    def stages(self) -> tuple[Stage, ...]:
        blocks = tuple(
            Stage(f"layers_{i}", tuple(f"layers_{i}/{n}" for n in BLOCK_LAYERS))
            for i in range(self.cfg.n_layer)
        )
        return blocks + (Stage("head", HEAD_LAYERS),)

    def matmul_quantizers(self, bits: int) -> dict[str, FitInput]:
        """The attention matmuls' static quantizers (`quant._fit.matmul_fits`): q·kᵀ both
        operands uniform per tensor, softmax·v with the probabilities through the log-√2
        quantizer and v uniform (`quant_model.py:52-58`, `quant_modules.py:84-116`)."""
        kinds = {"q": "tensor", "k": "tensor", "p": "log2", "v": "tensor"}
        return {
            f"layers_{i}/attention/attn_quant/{op}": FitInput(kind, bits)
            for i in range(self.cfg.n_layer)
            for op, kind in kinds.items()
        }

    # ---- token groups (STWQ) ------------------------------------------------------------------
    def group_table(self, granularity: str) -> np.ndarray:
        """int32 [L] group of each position ("par", `par_group_table`) or [1] ("tensor")."""
        if granularity == "tensor":
            return np.zeros((1,), np.int32)
        if granularity == "par":
            return par_group_table(self.cfg)
        raise ValueError(f"unknown token-group granularity {granularity!r}")

    # ---- running ------------------------------------------------------------------------------
    def start(self, params: Mapping[str, Any], batch: Mapping[str, Any]):
        """batch: labels int [N], tokens int [N, block_size] in raster order
        (`calibration.calibration_batch`).

        Returns the first-layer input of the first block_size positions, [N, L, C].
        """
        tokens = np.asarray(batch["tokens"])[:, layout.par_index_to_raster(self.cfg)]
        x = self._par.apply(
            {"params": params},
            jnp.asarray(batch["labels"], jnp.int32),
            jnp.asarray(tokens, jnp.int32),
            method=PAR.embed,
        )
        return x[:, : self.cfg.block_size]

    def run_stage(self, params, stage: Stage, carry, collect: str | None = "intermediates"):
        """Runs one stage (jitted; one compilation serves every layer of the same tree layout).

        Args:
          params: the whole param tree (float, probe or quantized).
          stage: a transformer layer or the head.
          carry: x [N, L, C].
          collect: the sown collection to return per layer ("intermediates", "calibration") or
            None.

        Returns:
          (carry out, {layer path: sown value}).
        """
        head = stage.name == "head"
        sub = (
            {k: v for k, v in params.items() if k in ("norm", "output")}
            if head
            else (params[stage.name])
        )
        out, state = self._stage_fn(head, collect)(sub, carry)
        return out, sown_by_layer(state, "" if head else stage.name + "/")

    def _stage_fn(self, head: bool, collect: str | None):
        key = (head, collect)
        if key not in self._stage_fns:
            self._stage_fns[key] = self._make_stage_fn(head, collect)
        return self._stage_fns[key]

    def _make_stage_fn(self, head: bool, collect: str | None):
        mutable = [collect] if collect else False
        rope, mask, positions = jnp.asarray(self._rope), jnp.asarray(self._mask), self._positions

        def run(sub, x):
            if head:
                res = self._par.apply(
                    {"params": sub}, x, positions, method=PAR.head, mutable=mutable
                )
            else:
                res = self._block.apply({"params": sub}, x, rope, mask, positions, mutable=mutable)
            y, state = res if mutable else (res, {})
            return y, dict(state.get(collect, {})) if collect else {}

        return jax.jit(run, compiler_options=CALIBRATION_COMPILER_OPTIONS)

    def token0_features(self, params, batch, *, chunk: int = 64) -> np.ndarray:
        """DGC features: the last layer's output at token 0 (the class token), float32 [N, C].

        As the official `sample_c2i_ddp_cali_dgc.py` (`AttentionMap(layers[-1]).out[:, 0]`
        after `forward_fn`). Under the group mask token 0 attends to itself only, so the
        class embedding alone through the layers gives the same vector as the full sequence.
        """
        if self._token0_fn is None:
            par = self._par

            def token0(p, labels):
                x = par.apply({"params": p}, labels, method=PAR.class_input)  # [N, 1, C]
                for i in range(self.cfg.n_layer):
                    x = par.apply({"params": p}, x, i=i, method=PAR.apply_layer)
                return x[:, 0, :].astype(jnp.float32)

            self._token0_fn = jax.jit(token0)
        labels = np.asarray(batch["labels"], np.int32)
        out = [
            np.asarray(self._token0_fn(params, jnp.asarray(labels[lo : lo + chunk])))
            for lo in range(0, labels.shape[0], chunk)
        ]
        return np.concatenate(out, axis=0).astype(np.float32)
