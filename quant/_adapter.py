"""The family-independent half of a `quant._calibrate.ModelAdapter`: what follows from the
coverage rules, and running blocks-then-head stages.

A family adapter subclasses `CoverageAdapter`, sets ``coverage`` (its `Coverage`) and
``sink_tokens``, and implements ``stages()`` (blocks ``blocks_<i>``, then a stage named
"head"), ``start(params, batch)`` and ``_make_stage_fn(head, collect)``: a jitted
``(sub_params, carry) -> (carry, {sown path: value})`` where ``sub_params`` is the block's
subtree, or the top-level params without the blocks for the head.

Dims: N sequences, C width.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from quant._calibrate import Stage, sown_by_layer
from quant.coverage import Coverage, CoverageQueries

__all__ = ["CoverageAdapter"]


class CoverageAdapter(CoverageQueries):
    """Coverage queries (`quant.coverage.CoverageQueries`) and stage running shared by the family
    adapters."""

    family: str
    coverage: Coverage
    sink_tokens: int = 0
    head_stage = "head"

    # ---- running ------------------------------------------------------------------------------
    def stages(self) -> tuple[Stage, ...]:
        raise NotImplementedError

    def start(self, params, batch):
        raise NotImplementedError

    def _make_stage_fn(self, head: bool, collect: str | None) -> Callable:
        raise NotImplementedError

    def run_stage(self, params, stage: Stage, carry, collect: str | None = "intermediates"):
        """Runs one stage (jitted; one compilation serves every block of the same tree layout).

        Args:
          params: the whole param tree (float, probe or quantized).
          stage: a block or the head.
          carry: the family's carry.
          collect: the sown collection to return per layer: "intermediates" (layer inputs),
            "calibration" (quantizers fitted by `quant.FitInput` placeholders) or None.

        Returns:
          (carry out, {layer path: sown value}).
        """
        head = stage.name == self.head_stage
        # The head runs through the top-level module (whose setup reads the top-level params).
        sub = (
            {k: v for k, v in params.items() if not k.startswith("blocks_")}
            if head
            else params[stage.name]
        )
        out, state = self._stage_fn(head, collect)(sub, carry)
        return out, sown_by_layer(state, "" if head else stage.name + "/")

    def _stage_fn(self, head: bool, collect: str | None) -> Callable:
        """The jitted runner of a block (or the head), one per (head, collect), kept per adapter."""
        fns: dict[Any, Callable] = self.__dict__.setdefault("_stage_fns", {})
        if (head, collect) not in fns:
            fns[(head, collect)] = self._make_stage_fn(head, collect)
        return fns[(head, collect)]

    def token0_features(self, params, batch, *, chunk: int = 32) -> np.ndarray:
        """DGC features: the last block's output at token 0, float32 [N, C] (the carry's first
        element after the blocks). Runs `chunk` sequences at a time."""
        blocks = [s for s in self.stages() if s.name != self.head_stage]
        n = int(np.shape(batch["labels"])[0])
        out = []
        for lo in range(0, n, chunk):
            part = {k: np.asarray(v)[lo : lo + chunk] for k, v in batch.items()}
            carry = self.start(params, part)
            for stage in blocks:
                carry, _ = self.run_stage(params, stage, carry, collect=None)
            out.append(np.asarray(carry[0][:, 0, :], np.float32))
        return np.concatenate(out, axis=0)
