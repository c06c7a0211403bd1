"""Oracle switch: run a quantized param tree through the dequantize-then-float path.

``quant.oracle(params)`` wraps every ``QArray`` leaf in an ``OracleKernel``; ``quant.dense`` routes
such a kernel to ``fake_quant_dense`` (fake-quantized input, dequantized kernel, float32 HIGHEST
matmul), so the same tree, with the same codes, runs the official fake-quant forward. Used to check
the int8 model against its oracle (``tests/quant_baselines_test.py``).
"""

from __future__ import annotations

from typing import Any

from flax import struct

from quant import _tree
from quant._qarray import QArray

__all__ = ["OracleKernel", "oracle"]


@struct.dataclass
class OracleKernel:
    """A ``QArray`` kernel that ``quant.dense`` evaluates with the float oracle."""

    q: QArray

    @property
    def shape(self) -> tuple[int, ...]:
        return self.q.shape

    @property
    def ndim(self) -> int:
        return self.q.ndim


def oracle(params: dict[str, Any]) -> dict[str, Any]:
    """Returns params with every ``QArray`` wrapped in ``OracleKernel`` (a new tree)."""
    return _tree.map_named(lambda name, v: OracleKernel(v) if isinstance(v, QArray) else v, params)
