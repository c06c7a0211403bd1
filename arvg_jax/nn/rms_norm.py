"""RMSNorm (Llama / LlamaGen), with an optional bias for folded quantization shifts.

Dims: C features.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

Array = jax.Array


class RMSNorm(nn.Module):
    """LlamaGen `autoregressive/models/gpt.py` RMSNorm: `norm(x.float()).type_as(x) * weight`.

    Params: `scale` [C] (torch `weight`), and `bias` [C] only if present in the given params:
    PTQ4ARVG's GPS fold gives PAR's norms a bias (`PAR/autoregressive/models/gpt.py:158,165` in
    BienLuky/PTQ4ARVG); the official model has none and init never creates one.

    Attributes:
        eps: added to mean(x²) (gpt.py default 1e-5).
        dtype: compute/output dtype; the normalisation itself runs in float32 and is rounded to
            `dtype` before the scale multiplies it, as the official `.type_as(x) * weight` does
            with a model cast to `dtype`.
    """

    eps: float = 1e-5
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """x: [..., C] -> [..., C] in `dtype`."""
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), jnp.float32)
        xf = x.astype(jnp.float32)
        y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        y = y.astype(self.dtype) * scale.astype(self.dtype)
        if self.has_variable("params", "bias"):
            y = y + self.get_variable("params", "bias").astype(self.dtype)
        return y
