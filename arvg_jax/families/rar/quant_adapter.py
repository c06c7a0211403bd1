"""RAR quantization plumbing: coverage rules, calibration stages, token groups, AdaLN folding.

Matches PTQ4ARVG's RAR copy (BienLuky/PTQ4ARVG f249fe9, `docs/ptq4arvg.md` §1.4, §2.1, §3.2):
  * every Linear is quantized (`RAR/quant/quant_model.py:25-52`): the block qkv / proj / fc1 /
    fc2, every block `adaLN_modulation`, the final `adaln_before_head.adaLN_modulation` and
    `lm_head`;
  * qkv and fc1 inputs get SmoothQuant, the zero-centering shift and GPS, folded into the block's
    adaLN rows (chunks shift_msa 0, scale_msa 1, gate_msa 2, shift_mlp 3, scale_mlp 4, gate_mlp 5;
    `RAR/quant/gps.py:25-62`); tokens 0 and 1 (cls, condition) are the sinks, left out of their
    statistics (`RAR/quant/quant_modules.py:48-49`);
  * lm_head's input gets SmoothQuant and the shift but no GPS (`RAR/quant/set_quantize_params.py:31`
    skips names containing "head"), folded into `adaln_before_head`'s (scale 0, shift 1) chunks,
    and in stage F a second zero-centering shift from its recalibrated per-channel quantizer
    (`RAR/quant/gps.py:148-178`);
  * deployed input quantizers (STWQ, `RAR/quant/quantizer.py:129-224`): qkv / fc1 / proj / fc2
    three groups (token 0, token 1, the rest); the adaLN linears one group per position (their
    input SiLU(class embedding + timestep embedding[p]) changes with p): T = n + 1 positions in the
    blocks, n in the final layer, which drops the cls token before the head; lm_head per tensor.
  * the attention matmuls (`RAR/quant/quant_model.py:48-52` wraps `matmul1` / `matmul2` of
    `RAR/modeling/rar.py:122-128` in `QuantMatMul`): q·kᵀ (q and k after their LayerNorms) and
    softmax·v, all four operands uniform per tensor with the RAR range clamp (0 inside the
    range), executed as int8 x int8 -> int32 matmuls; params
    `blocks_i/attn/attn_quant/{q,k,p,v}/input_quant`. As the official calibration forward, the
    quantizers are fitted on the full causal sequence (masked probabilities, 0, included); in
    cached sampling they see the whole preallocated cache (unwritten keys masked, their
    probabilities and values exactly 0, which the asymmetric quantizers keep at 0).

Calibration runs the causal sequence [cls, cond, img_0 .. img_{n-2}] (T = n + 1 = 257 at release:
the official calibration records the last sampling step's input, `RAR/modeling/rar.py:475-481`)
in raster order with the causal mask, as the official `forward_fn` does, in one full-batch pass.

Deviations:
  * The final layer's per-position groups are looked up by absolute position, so the first
    sampling step's cond token (position 1) uses the parameters calibrated at position 1; the
    official quantizer indexes Δ[0:2] there, i.e. those of positions 1 and 2 (an off-by-one at that
    step only, `docs/ptq4arvg.md` §3.2). Position 0's head output is never used.
  * The Dense input quantizers do not apply the RAR `UniformQuantizer`'s clamp hi >= -1e-8,
    lo <= 1e-8 (0 kept inside the range; the token-aware quantizers have no such clamp); the
    attention-matmul quantizers, plain `UniformQuantizer`s, do.

Dims: N calibration sequences, n image tokens, T = n + 1 calibration positions, C width.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from arvg_jax.families.rar.config import NUM_PREFIX, RARConfig
from arvg_jax.families.rar.model import RAR, Block
from quant._adapter import CoverageAdapter
from quant._calibrate import CALIBRATION_COMPILER_OPTIONS, Stage
from quant._fit import FitInput
from quant.coverage import Coverage, FoldRule, QuantRule

BLOCK_LAYERS = ("adaLN_modulation", "attn/qkv", "attn/proj", "mlp/fc1", "mlp/fc2")  # forward order
HEAD_LAYERS = ("adaln_before_head/adaLN_modulation", "lm_head")
_BLOCK_ADALN = r"\g<block>/adaLN_modulation"

# PTQ4ARVG's RAR coverage as data (module doc). Block adaLN chunks (width C): shift_msa,
# scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp; final layer: scale, shift.
RULES = (
    QuantRule(path=r"blocks_\d+/adaLN_modulation", kind="adaln", groups="position"),
    QuantRule(
        path=r"(?P<block>blocks_\d+)/attn/qkv",
        kind="qkv",
        groups="prefix",
        smooth=True,
        fold=FoldRule(norm=_BLOCK_ADALN, scale=1, shift=0),
        sink_excluded=True,
    ),
    QuantRule(path=r"blocks_\d+/attn/proj", kind="proj", groups="prefix"),
    QuantRule(
        path=r"(?P<block>blocks_\d+)/mlp/fc1",
        kind="fc1",
        groups="prefix",
        smooth=True,
        fold=FoldRule(norm=_BLOCK_ADALN, scale=4, shift=3),
        sink_excluded=True,
    ),
    QuantRule(path=r"blocks_\d+/mlp/fc2", kind="fc2", groups="prefix"),
    QuantRule(path=r"adaln_before_head/adaLN_modulation", kind="final_adaln", groups="head"),
    QuantRule(
        path=r"lm_head",
        kind="lm_head",
        smooth=True,
        gps=False,
        final_shift=True,
        fold=FoldRule(norm="adaln_before_head/adaLN_modulation", scale=0, shift=1),
    ),
)


def dense_layers(cfg: RARConfig) -> tuple[str, ...]:
    """Every Dense layer path of RAR, in forward order."""
    blocks = tuple(f"blocks_{i}/{n}" for i in range(cfg.num_hidden_layers) for n in BLOCK_LAYERS)
    return (*blocks, *HEAD_LAYERS)


def calibration_length(cfg: RARConfig) -> int:
    """T = n + 1: [cls, cond, img_0 .. img_{n-2}] (the last image token predicts nothing)."""
    return cfg.image_seq_len + 1


class RARAdapter(CoverageAdapter):
    """Implements `quant._calibrate.ModelAdapter` for RAR (coverage queries, `run_stage` and
    `token0_features` from `quant._adapter.CoverageAdapter`).

    DGC features (`token0_features`): the last block's output at token 0 (cls), as the official
    `RAR/sample_cali_dgc.py`; under the causal mask token 0 sees only itself, so every uncond row
    has the same feature (`docs/ptq4arvg.md` §4.4)."""

    family = "rar"
    sink_tokens = NUM_PREFIX  # tokens 0 (cls) and 1 (condition), `x[:, 2:]` in the official code

    def __init__(self, cfg: RARConfig):
        self.cfg = cfg
        self._rar = RAR(cfg)
        self._block = Block(cfg)
        self._positions = np.arange(calibration_length(cfg), dtype=np.int32)
        self.coverage = Coverage(RULES, dense_layers(cfg), cfg.hidden_size)

    def stages(self) -> tuple[Stage, ...]:
        blocks = tuple(
            Stage(f"blocks_{i}", tuple(f"blocks_{i}/{n}" for n in BLOCK_LAYERS))
            for i in range(self.cfg.num_hidden_layers)
        )
        return blocks + (Stage("head", HEAD_LAYERS),)

    def matmul_quantizers(self, bits: int) -> dict[str, FitInput]:
        """The attention matmuls' static quantizers (`quant._fit.matmul_fits`): both operands of
        q·kᵀ and of softmax·v uniform per tensor, 0 kept in range (module doc)."""
        return {
            f"blocks_{i}/attn/attn_quant/{op}": FitInput("tensor", bits, include_zero=True)
            for i in range(self.cfg.num_hidden_layers)
            for op in "qkpv"
        }

    # ---- token groups (STWQ) ------------------------------------------------------------------
    def group_table(self, granularity: str) -> np.ndarray:
        """int32 [T] group of each absolute position 0..T-1 (T = n + 1; positions past T, run only
        by the teacher-forced forward's unused last token, clamp to T - 1):
        "prefix": token 0, token 1, the rest; "position": one group per position; "head": one
        per final-layer position 1..n (position 0, whose head output is never used, shares
        position 1's); "tensor": one group (T = 1)."""
        t = calibration_length(self.cfg)
        p = np.arange(t, dtype=np.int32)
        if granularity == "tensor":
            return np.zeros((1,), np.int32)
        if granularity == "prefix":
            return np.minimum(p, NUM_PREFIX).astype(np.int32)
        if granularity == "position":
            return p
        if granularity == "head":
            return np.maximum(p - 1, 0).astype(np.int32)
        raise ValueError(f"unknown token-group granularity {granularity!r}")

    # ---- running ------------------------------------------------------------------------------
    def start(self, params: Mapping[str, Any], batch: Mapping[str, Any]):
        """batch: labels int [N] (class ids; `condition_num_classes` = the null class), tokens int
        [N, >= n - 1] raster image tokens. Returns the carry (x, c), float32 [N, T, C] each."""
        cfg = self.cfg
        labels = jnp.asarray(batch["labels"], jnp.int32)
        tokens = jnp.asarray(batch["tokens"], jnp.int32)[:, : cfg.image_seq_len - 1]
        cond = cfg.condition_id(labels)  # the null label maps to the null condition id
        seq_ids = jnp.concatenate([jnp.zeros_like(cond)[:, None], cond[:, None], tokens], axis=1)
        variables = {"params": params}
        x = self._rar.apply(variables, seq_ids, self._positions, method=RAR.embed)
        c = self._rar.apply(variables, cond, self._positions, method=RAR.condition_tokens)
        return x, c

    def _make_stage_fn(self, head: bool, collect: str | None):
        """Jitted (sub params, (x, c)) -> (carry, sown): a block, or the final layer and lm_head
        (carry: logits [N, n, V]) on positions 1..T-1."""
        mutable = [collect] if collect else False
        positions = self._positions

        def run(sub, carry):
            x, c = carry
            if head:  # the cls output is dropped before the final layer (rar.py forward_fn)
                res = self._rar.apply(
                    {"params": sub},
                    x[:, 1:],
                    c[:, 1:],
                    positions[1:],
                    method=RAR.head_logits,
                    mutable=mutable,
                )
            else:
                res = self._block.apply({"params": sub}, x, c, positions=positions, mutable=mutable)
            y, state = res if mutable else (res, {})
            out = y if head else (y, c)
            return out, dict(state.get(collect, {})) if collect else {}

        return jax.jit(run, compiler_options=CALIBRATION_COMPILER_OPTIONS)
