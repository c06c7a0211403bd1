"""VAR quantization plumbing: calibration stages, layer coverage, token groups, AdaLN folding.

Matches PTQ4ARVG's VAR copy (`VAR/quant/quant_model.py:25-52`, `VAR/quant/gps.py`): every Linear
except `word_embed` is quantized; qkv/fc1 inputs are the GPS ("smooth") layers, folded into the
block's `ada_lin` rows, and `head`'s input is folded into `head_nm.ada_lin`; token 0 is the sink.
Calibration runs the full 680-token sequence with no attention mask, as the official `forward_fn`
does (`docs/ptq4arvg.md` §7.5).

Dims: N calibration sequences, L tokens (all scales), C width, E VQVAE latent channels.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from arvg_jax.families.var.model import VAR, VARBlock, VARConfig
from quant._calibrate import CALIBRATION_COMPILER_OPTIONS, Stage, sown_by_layer
from quant.coverage import Coverage, CoverageQueries, FoldRule, QuantRule

BLOCK_LAYERS = ("ada_lin", "attn/qkv", "attn/proj", "ffn/fc1", "ffn/fc2")  # forward order
HEAD_LAYERS = ("head_nm/ada_lin", "head")

# PTQ4ARVG's VAR coverage as data (`VAR/quant/quant_model.py:25-52`, `VAR/quant/gps.py`): every
# Linear except word_embed is quantized; qkv/fc1/head inputs get SmoothQuant, the shift and GPS,
# folded into the AdaLN before them. Block ada_lin output chunks (width C): (γ1, γ2, scale1,
# scale2, shift1, shift2); head_nm.ada_lin chunks: (scale, shift) (models/basic_var.py).
# Token groups: qkv/fc1 one per scale, proj/fc2 sink vs rest, the rest per tensor.
RULES = (
    QuantRule(path=r"word_embed", kind="word_embed", keep_float=True),
    QuantRule(path=r"blocks_\d+/ada_lin", kind="ada_lin"),
    QuantRule(
        path=r"(?P<block>blocks_\d+)/attn/qkv",
        kind="qkv",
        groups="scale",
        smooth=True,
        fold=FoldRule(norm=r"\g<block>/ada_lin", scale=2, shift=4),
        sink_excluded=True,
    ),
    QuantRule(path=r"blocks_\d+/attn/proj", kind="proj", groups="sink"),
    QuantRule(
        path=r"(?P<block>blocks_\d+)/ffn/fc1",
        kind="fc1",
        groups="scale",
        smooth=True,
        fold=FoldRule(norm=r"\g<block>/ada_lin", scale=3, shift=5),
        sink_excluded=True,
    ),
    QuantRule(path=r"blocks_\d+/ffn/fc2", kind="fc2", groups="sink"),
    QuantRule(path=r"head_nm/ada_lin", kind="ada_lin"),
    QuantRule(
        path=r"head",
        kind="head",
        smooth=True,
        fold=FoldRule(norm="head_nm/ada_lin", scale=0, shift=1),
    ),
)


def dense_layers(cfg: VARConfig) -> tuple[str, ...]:
    """Every Dense layer path of a (non-shared-AdaLN) VAR, in forward order."""
    blocks = tuple(f"blocks_{i}/{n}" for i in range(cfg.depth) for n in BLOCK_LAYERS)
    return ("word_embed", *blocks, *HEAD_LAYERS)


class VARAdapter(CoverageQueries):
    """Implements `quant._calibrate.ModelAdapter` for VAR."""

    family = "var"
    sink_tokens = 1  # token 0 (the class/SOS token) is the sink

    def __init__(self, cfg: VARConfig):
        if cfg.shared_aln:
            raise NotImplementedError(
                "quantizing shared-AdaLN VAR (d36) is not supported: PTQ4ARVG evaluates d16-d30"
            )
        self.cfg = cfg
        self._var = VAR(cfg)
        self._block = VARBlock(cfg)
        self._positions = np.arange(cfg.seq_len, dtype=np.int32)
        self._stage_fns: dict = {}
        self.coverage = Coverage(RULES, dense_layers(cfg), cfg.embed_dim)

    # ---- coverage ------------------------------------------------------------------------------
    def stages(self) -> tuple[Stage, ...]:
        blocks = tuple(
            Stage(f"blocks_{i}", tuple(f"blocks_{i}/{n}" for n in BLOCK_LAYERS))
            for i in range(self.cfg.depth)
        )
        return blocks + (Stage("head", HEAD_LAYERS),)

    # ---- token groups (STWQ) ------------------------------------------------------------------
    def group_table(self, granularity: str) -> np.ndarray:
        """int32 [L] group of each position: "scale" (token 0 is scale 0, the sink), "sink"
        (token 0 vs the rest) or "tensor" (one group; T = 1)."""
        if granularity == "tensor":
            return np.zeros((1,), np.int32)
        if granularity == "scale":
            return np.asarray(self.cfg.levels, np.int32).reshape(-1)
        if granularity == "sink":
            return (np.arange(self.cfg.seq_len) >= self.sink_tokens).astype(np.int32)
        raise ValueError(f"unknown token-group granularity {granularity!r}")

    # ---- running ------------------------------------------------------------------------------
    def start(self, params: Mapping[str, Any], batch: Mapping[str, Any]):
        """batch: labels int [N], x int/float [N, L - 1, E] (`idx_to_var_input` of the tokens)."""
        x, cond = self._var.apply({"params": params}, batch["labels"], batch["x"], method=VAR.embed)
        return x, cond

    def run_stage(self, params, stage: Stage, carry, collect: str | None = "intermediates"):
        """Runs one stage (jitted; one compilation serves every block of the same tree layout).

        Args:
          params: the whole param tree (float, probe or quantized).
          stage: a block or the head.
          carry: (x [N, L, C], cond [N, C]).
          collect: the sown collection to return per layer: "intermediates" (layer inputs),
            "calibration" (quantizers fitted by `quant.FitInput` placeholders) or None.

        Returns:
          (carry out, {layer path: sown value}).
        """
        head = stage.name == "head"
        # The head runs through `VAR` (whose setup reads the top-level params), not the blocks.
        sub = (
            {k: v for k, v in params.items() if not k.startswith("blocks_")}
            if head
            else (params[stage.name])
        )
        out, state = self._stage_fn(head, collect)(sub, carry)
        return out, sown_by_layer(state, "" if head else stage.name + "/")

    def _stage_fn(self, head: bool, collect: str | None):
        """The jitted runner of a block (or the head), one per (head, collect), kept per adapter."""
        key = (head, collect)
        if key not in self._stage_fns:
            self._stage_fns[key] = self._make_stage_fn(head, collect)
        return self._stage_fns[key]

    def _make_stage_fn(self, head: bool, collect: str | None):
        mutable = [collect] if collect else False

        def run(sub, carry):
            x, cond = carry
            if head:
                res = self._var.apply(
                    {"params": sub},
                    x,
                    cond,
                    self._positions,
                    method=VAR.head_logits,
                    mutable=mutable,
                )
            else:
                res = self._block.apply(
                    {"params": sub},
                    x,
                    cond,
                    positions=self._positions,
                    mask=None,
                    mutable=mutable,
                )
            y, state = res if mutable else (res, {})
            return (y, cond), dict(state.get(collect, {})) if collect else {}

        return jax.jit(run, compiler_options=CALIBRATION_COMPILER_OPTIONS)

    def token0_features(self, params, batch, *, chunk: int = 32) -> np.ndarray:
        """DGC features: the last block's output at token 0, float32 [N, C].

        As the official `sample_cali_dgc.py` (`AttentionMap(var.blocks[-1]).out[:, 0]` after
        `forward_fn`): the full sequence with no attention mask, so token 0 sees every scale.
        Runs `chunk` sequences at a time.
        """
        blocks = [s for s in self.stages() if s.name != "head"]
        n = int(np.shape(batch["labels"])[0])
        out = []
        for lo in range(0, n, chunk):
            part = {k: np.asarray(v)[lo : lo + chunk] for k, v in batch.items()}
            carry = self.start(params, part)
            for stage in blocks:
                carry, _ = self.run_stage(params, stage, carry, collect=None)
            out.append(np.asarray(carry[0][:, 0, :], np.float32))
        return np.concatenate(out, axis=0)


from arvg_jax.families.var.calibration import tokens_to_batch  # noqa: F401
