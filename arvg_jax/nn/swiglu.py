"""SwiGLU feed-forward (Llama / LlamaGen): w2(silu(w1 x) * w3 x), bias-free.

Dims: C model width, F hidden width.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from arvg_jax.nn.layers import Dense

Array = jax.Array


class SwiGLU(nn.Module):
    """LlamaGen `autoregressive/models/gpt.py` FeedForward (dropout inactive at inference).

    Params: `w1`, `w3` (Dense C -> F) and `w2` (Dense F -> C), no biases; all three are
    `arvg_jax.nn.layers.Dense`, so they take quantized kernels and token-group input quantizers.

    Attributes:
        hidden: F.
        dtype: compute dtype of the matmuls and of the output.
    """

    hidden: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, positions: Array | None = None) -> Array:
        """x: [B, L, C], positions: int [L] (for token-group quantizers) -> [B, L, C]."""
        c = x.shape[-1]
        a = Dense(self.hidden, use_bias=False, dtype=self.dtype, name="w1")(x, positions)
        b = Dense(self.hidden, use_bias=False, dtype=self.dtype, name="w3")(x, positions)
        # torch's F.silu on a low-precision tensor computes in float32 and rounds once.
        h = jax.nn.silu(a.astype(jnp.float32)).astype(self.dtype) * b
        return Dense(c, use_bias=False, dtype=self.dtype, name="w2")(h, positions)
