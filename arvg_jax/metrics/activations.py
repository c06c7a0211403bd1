"""Runs the ADM Inception network over image batches (evaluator.py `compute_activations`).

One jitted program per (batch size, image size): batches are re-chunked to a fixed size and the
last one zero-padded, so a 50,000-image set compiles once.

Dims: N images, H/W image height/width, D = 2048 pool width, K classes, S spatial width.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from arvg_jax.metrics.inception import HIGHEST, InceptionConfig, InceptionV3


@functools.partial(jax.jit, static_argnames=("config", "precision"))
def forward(
    params: Mapping, images: jax.Array, *, config: InceptionConfig, precision=HIGHEST
) -> dict[str, jax.Array]:
    """Jitted `InceptionV3(config).apply` on one batch (see `InceptionV3.__call__`)."""
    return InceptionV3(config, precision).apply({"params": params}, images)


def _padded_batches(
    batches: Iterable[np.ndarray], batch_size: int
) -> Iterator[tuple[np.ndarray, int]]:
    """Re-chunks `batches` into [batch_size, ...] arrays (the last zero-padded) and their
    valid row counts, so one compiled program serves every chunk of one image size."""
    pending: list[np.ndarray] = []
    count = 0
    for batch in batches:
        batch = np.asarray(batch)
        if batch.ndim != 4 or batch.shape[-1] != 3:
            raise ValueError(f"images must be [B, H, W, 3], got shape {batch.shape}")
        if pending and batch.shape[1:] != pending[0].shape[1:]:
            raise ValueError(f"image size changed from {pending[0].shape[1:]} to {batch.shape[1:]}")
        pending.append(batch)
        count += len(batch)
        while count >= batch_size:
            whole = np.concatenate(pending)
            yield whole[:batch_size], batch_size
            rest = whole[batch_size:]
            pending, count = ([rest] if len(rest) else []), len(rest)
    if count:
        whole = np.concatenate(pending)
        pad = np.zeros((batch_size - count, *whole.shape[1:]), whole.dtype)
        yield np.concatenate([whole, pad]), count


def compute_activations(
    params: Mapping,
    batches: Iterable[np.ndarray],
    *,
    config: InceptionConfig | None = None,
    batch_size: int = 64,
    precision: lax.PrecisionLike = HIGHEST,
) -> dict[str, np.ndarray]:
    """Runs the network over image batches (evaluator.py `compute_activations`).

    Args:
        params: converted weights (`converters.inception.convert_inception`).
        batches: iterable of [b, H, W, 3] arrays, uint8 or integral floats 0..255 (e.g.
            `arvg_jax.metrics.adm_npz.iter_batches`), or one array [N, H, W, 3].
        config: the architecture (default `InceptionConfig.adm()`).
        batch_size: images per device call; a set smaller than this runs as one call of its
            own size.
        precision: conv/matmul precision.

    Returns:
        numpy float32 arrays pool [N, 2048], spatial [N, S], logits_unbiased and logits [N, K].
    """
    config = config or InceptionConfig.adm()
    if isinstance(batches, np.ndarray | jax.Array):
        arr = np.asarray(batches)
        batch_size = max(1, min(batch_size, len(arr)))
        batches = [arr]
    out: dict[str, list[np.ndarray]] = {}
    for chunk, valid in _padded_batches(batches, batch_size):
        feats = forward(params, jnp.asarray(chunk), config=config, precision=precision)
        for k, v in feats.items():
            out.setdefault(k, []).append(np.asarray(v)[:valid])
    if not out:
        raise ValueError("no images")
    return {k: np.concatenate(v) for k, v in out.items()}
