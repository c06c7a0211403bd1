"""VAR quantization plumbing: calibration stages, layer coverage, token groups, AdaLN folding.

Matches PTQ4ARVG's VAR copy (`VAR/quant/quant_model.py:25-52`, `VAR/quant/gps.py`): every Linear
except `word_embed` is quantized; qkv/fc1 inputs are the GPS ("smooth") layers, folded into the
block's `ada_lin` rows, and `head`'s input is folded into `head_nm.ada_lin`; token 0 is the sink.
Calibration runs the full 680-token sequence with no attention mask, as the official `forward_fn`
does (`docs/ptq4arvg.md` §7.5).

Dims: N calibration sequences, L tokens (all scales), C width, E VQVAE latent channels.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from arvg_jax.var import VAR, VARBlock, VARConfig
from quant import _tree
from quant._calibrate import CALIBRATION_COMPILER_OPTIONS, Stage

BLOCK_LAYERS = ("ada_lin", "attn/qkv", "attn/proj", "ffn/fc1", "ffn/fc2")  # forward order
HEAD_LAYERS = ("head_nm/ada_lin", "head")


@dataclasses.dataclass(frozen=True)
class FoldTarget:
    """Where a layer's input transform x' = x / s - p is folded (an AdaLN modulation).

    The modulated input is LN(x) * (1 + scale) + shift, with scale and shift the `scale_cols` and
    `shift_cols` output columns of the Dense `norm_layer` (the official `ada_lin`).
    """

    norm_layer: str
    scale_cols: slice
    shift_cols: slice


class VARAdapter:
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

    # ---- coverage ------------------------------------------------------------------------------
    def stages(self) -> tuple[Stage, ...]:
        blocks = tuple(
            Stage(f"blocks_{i}", tuple(f"blocks_{i}/{n}" for n in BLOCK_LAYERS))
            for i in range(self.cfg.depth)
        )
        return blocks + (Stage("head", HEAD_LAYERS),)

    def quantized_layers(self) -> tuple[str, ...]:
        return tuple(n for s in self.stages() for n in s.layers)

    def layer_kind(self, name: str) -> str:
        """ "qkv", "proj", "fc1", "fc2", "ada_lin" or "head"."""
        last = name.split("/")[-1]
        return "ada_lin" if last == "ada_lin" else last

    def gps_layers(self) -> tuple[str, ...]:
        """The layers whose input gets SmoothQuant, the shift and GPS (official SmoothModules)."""
        return tuple(
            n for n in self.quantized_layers() if self.layer_kind(n) in ("qkv", "fc1", "head")
        )

    def fold_target(self, name: str) -> FoldTarget:
        c = self.cfg.embed_dim
        kind = self.layer_kind(name)
        if kind == "head":  # head_nm.ada_lin chunks (scale, shift): models/basic_var.py
            return FoldTarget("head_nm/ada_lin", slice(0, c), slice(c, 2 * c))
        block = name.split("/")[0]
        # Block ada_lin chunks (γ1, γ2, scale1, scale2, shift1, shift2).
        if kind == "qkv":
            return FoldTarget(f"{block}/ada_lin", slice(2 * c, 3 * c), slice(4 * c, 5 * c))
        if kind == "fc1":
            return FoldTarget(f"{block}/ada_lin", slice(3 * c, 4 * c), slice(5 * c, 6 * c))
        raise ValueError(f"{name}: no AdaLN precedes this layer's input")

    def sink_excluded(self, name: str) -> bool:
        """Whether statistics of this layer's input skip the sink token (qkv/fc1: x[:, 1:])."""
        return self.layer_kind(name) in ("qkv", "fc1")

    def stwq_granularity(self, name: str) -> str:
        """The deployed input quantizer of a layer, as a `group_table` granularity.

        `VAR/quant/quant_model.py:25-52` and `gps.py:absorb_gps_scaling_factor`: qkv/fc1 one group
        per scale ("scale", 10 groups), proj/fc2 sink vs rest ("sink"), ada_lin linears and head
        per tensor.
        """
        kind = self.layer_kind(name)
        if kind in ("qkv", "fc1"):
            return "scale"
        if kind in ("proj", "fc2"):
            return "sink"
        return "tensor"

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
        prefix = "" if head else stage.name + "/"
        captured = {}
        for k, v in _tree.flatten(state).items():
            layer, _, _ = k.rpartition("/")
            captured[prefix + layer] = v[0] if isinstance(v, tuple) else v
        return out, captured

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


def tokens_to_batch(vae_params, vae_cfg, labels, tokens) -> dict[str, jax.Array]:
    """Calibration batch from generated token maps [N, L] (scales concatenated) and labels."""
    from arvg_jax.tokenizers import var_vqvae

    splits = np.cumsum([p * p for p in vae_cfg.patch_nums])[:-1]
    idx_list = np.split(np.asarray(tokens), splits, axis=1)
    # One compiled program instead of hundreds of eager ops (18 s for 128 images at VAR-d30).
    x = jax.jit(var_vqvae.idx_to_var_input, static_argnums=1)(vae_params, vae_cfg, idx_list)
    return {"labels": np.asarray(labels), "x": x}
