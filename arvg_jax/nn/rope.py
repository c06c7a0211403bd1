"""Rotary position embeddings on interleaved pairs, with LlamaGen's 2-D grid table.

Dims: B batch, L tokens, H heads, K head dim, P = K/2 rotary pairs, g grid side.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def rope_2d_grid(grid_size: int, head_dim: int, base: float = 10000.0) -> np.ndarray:
    """LlamaGen `precompute_freqs_cis_2d` before any token reordering: (cos, sin) per grid cell.

    Pair m < P/2 rotates with the cell's row index, pair P/2 + m with its column index, both at
    frequency base^(-2m / (K/2)) (= base^(-4m/K)). Evaluated in float32 as the official code does.

    Args:
        grid_size: g.
        head_dim: K (a multiple of 4).
        base: rope_base.

    Returns:
        float32 [g, g, P, 2]: [..., 0] = cos, [..., 1] = sin.
    """
    if head_dim % 4:
        raise ValueError(f"head_dim {head_dim} must be a multiple of 4 for a 2-D RoPE")
    half = head_dim // 2
    # 1.0 / (base ** (torch.arange(0, half, 2)[: half // 2].float() / half)), float32 throughout.
    exps = np.arange(0, half, 2)[: half // 2].astype(np.float32) / np.float32(half)
    freqs = np.float32(1.0) / (np.float32(base) ** exps)  # [P/2]
    t = np.arange(grid_size, dtype=np.float32)
    angles = np.outer(t, freqs).astype(np.float32)  # [g, P/2]
    grid = np.concatenate(
        [
            np.broadcast_to(angles[:, None, :], (grid_size, grid_size, half // 2)),  # row
            np.broadcast_to(angles[None, :, :], (grid_size, grid_size, half // 2)),  # column
        ],
        axis=-1,
    )  # [g, g, P]
    # cos / sin correctly rounded from float64: torch's vectorised float32 cos/sin are within an
    # ulp of these (94.8% of the PAR fixture table bit-equal, the rest 1 ulp).
    grid = grid.astype(np.float64)
    return np.stack([np.cos(grid), np.sin(grid)], axis=-1).astype(np.float32)


def apply_rope(x: Array, table: Array) -> Array:
    """LlamaGen `apply_rotary_emb`: rotates interleaved pairs (x[2m], x[2m+1]) in float32.

    A zero (cos, sin) row multiplies x by 0 (LlamaGen's class / bridge positions): that is the
    official behaviour and is kept.

    Args:
        x: [B, L, H, K].
        table: [L, P, 2] (cos, sin) float32.

    Returns:
        [B, L, H, K] in x's dtype.
    """
    b, l, h, k = x.shape
    xs = x.astype(jnp.float32).reshape(b, l, h, k // 2, 2)  # [B, L, H, P, 2]
    cos = table[None, :, None, :, 0].astype(jnp.float32)  # [1, L, 1, P]
    sin = table[None, :, None, :, 1].astype(jnp.float32)
    x0, x1 = xs[..., 0], xs[..., 1]
    out = jnp.stack([x0 * cos - x1 * sin, x1 * cos + x0 * sin], axis=-1)  # [B, L, H, P, 2]
    return out.reshape(b, l, h, k).astype(x.dtype)
