"""Improved precision / recall (Kynkäänniemi et al. 2019) as the ADM evaluator computes them.

openai/guided-diffusion evaluations/evaluator.py `ManifoldEstimator` / `DistanceBlock`:
- squared distances D = max(‖u‖² - 2 u·v + ‖v‖², 0) of row blocks against column blocks
  (10000 x 10000 by default), computed in float16 (features cast to float16); when any entry
  of a block is not finite, that whole block is recomputed in float32;
- radii: per feature, the (k+1)-th smallest D against its own set (self included), i.e. the
  squared distance to the k-th neighbour, k = 3;
- precision = fraction of samples within some reference radius (D <= radius), recall = fraction
  of references within some sample radius.

float16 arithmetic (what TF's fp16 ops do on GPU): the matmul and the norm sums accumulate in
float32 and round to float16; squares and the elementwise combination are float16 ops. Here the
features are cast to float16 in numpy (exact rounding, subnormals, overflow to inf), and every
float16 op is computed in float32 and rounded with `lax.reduce_precision` (float32 carries more
than 2·11+2 bits, so rounding after the float32 op equals one float16 rounding; XLA keeps
reduce_precision where it may drop an f32 -> f16 -> f32 convert pair), float16 subnormals
included.

Memory: one block of D at a time; the k nearest distances and the in-manifold flags are kept on
the device, so 50,000 x 50,000 needs O(block²) memory.

Dims: N rows (first set), M columns (second set), F feature width, K neighbourhood sizes.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

HIGHEST = lax.Precision.HIGHEST


def _f16(x: jax.Array) -> jax.Array:
    """Rounds float32 values to the float16 grid (overflow -> inf), staying float32.

    reduce_precision flushes float16 subnormals to 0; below 2^-14 the grid is the multiples of
    2^-24, so those values are rounded there instead (x · 2^24 is exact; round half to even).
    """
    normal = lax.reduce_precision(x, exponent_bits=5, mantissa_bits=10)
    subnormal = jnp.round(x * 2.0**24) * 2.0**-24
    return jnp.where(jnp.abs(x) < 2.0**-14, subnormal, normal)


@jax.jit
def _distances_fp16(u16: jax.Array, v16: jax.Array) -> tuple[jax.Array, jax.Array]:
    """evaluator.py `_batch_pairwise_distances` on float16 inputs -> (D float32, all finite)."""
    u, v = u16.astype(jnp.float32), v16.astype(jnp.float32)  # [N, F], [M, F]: exact
    norm_u = _f16(jnp.sum(_f16(u * u), axis=1))[:, None]  # [N, 1]
    norm_v = _f16(jnp.sum(_f16(v * v), axis=1))[None, :]  # [1, M]
    uv = _f16(jnp.dot(u, v.T, precision=HIGHEST))  # [N, M], float32 accumulation
    d = jnp.maximum(_f16(_f16(norm_u - _f16(2.0 * uv)) + norm_v), 0.0)
    return d, jnp.all(jnp.isfinite(d))


@jax.jit
def _distances_fp32(u: jax.Array, v: jax.Array) -> jax.Array:
    """The float32 fallback graph of `DistanceBlock`."""
    norm_u = jnp.sum(u * u, axis=1)[:, None]
    norm_v = jnp.sum(v * v, axis=1)[None, :]
    return jnp.maximum(norm_u - 2.0 * jnp.dot(u, v.T, precision=HIGHEST) + norm_v, 0.0)


def pairwise_distances(u: np.ndarray, v: np.ndarray) -> jax.Array:
    """`DistanceBlock.pairwise_distances`: squared distances [N, M] of one block, float32.

    float16 arithmetic unless some entry is not finite, then float32 for the whole block.
    """
    u32, v32 = np.asarray(u, np.float32), np.asarray(v, np.float32)
    # The float16 cast happens in numpy: exact rounding, float16 subnormals and overflow to inf.
    u16, v16 = jnp.asarray(u32.astype(np.float16)), jnp.asarray(v32.astype(np.float16))
    d, finite = _distances_fp16(u16, v16)
    if bool(finite):
        return d
    return _distances_fp32(jnp.asarray(u32), jnp.asarray(v32))


@functools.partial(jax.jit, static_argnames=("k",))
def _merge_smallest(best: jax.Array, block: jax.Array, k: int) -> jax.Array:
    """The k smallest of each row of [best | block], ascending."""
    neg, _ = lax.top_k(-jnp.concatenate([best, block], axis=1), k)
    return -neg


@jax.jit
def _less_thans(
    d: jax.Array, radii_1: jax.Array, radii_2: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """`DistanceBlock.less_thans`: rows inside some column's radius [N, K2], columns inside
    some row's radius [M, K1]."""
    dist = d[..., None]  # [N, M, 1]
    batch_1_in = jnp.any(dist <= radii_2[None], axis=1)  # [N, K2]
    batch_2_in = jnp.any(dist <= radii_1[:, None], axis=0)  # [M, K1]
    return batch_1_in, batch_2_in


@dataclasses.dataclass(frozen=True, kw_only=True)
class ManifoldEstimator:
    """k-NN manifolds of feature sets (evaluator.py `ManifoldEstimator`, same defaults).

    Attributes:
        row_batch_size: rows per distance block (the float16/float32 choice is per block).
        col_batch_size: columns per distance block.
        nhood_sizes: neighbourhood sizes k.
        clamp_to_percentile: radii above this percentile are set to 0 (None: off).
    """

    row_batch_size: int = 10000
    col_batch_size: int = 10000
    nhood_sizes: tuple[int, ...] = (3,)
    clamp_to_percentile: float | None = None

    def manifold_radii(self, features: np.ndarray) -> np.ndarray:
        """Squared k-NN radii [N, K] float32 of `features` [N, F] against themselves."""
        features = np.asarray(features, np.float32)
        n = len(features)
        kmax = max(self.nhood_sizes) + 1  # self is its own nearest (distance ~0)
        if n < kmax:
            raise ValueError(f"{n} features cannot give a radius of neighbourhood {kmax - 1}")
        radii = []
        for r0 in range(0, n, self.row_batch_size):
            rows = features[r0 : r0 + self.row_batch_size]
            best = jnp.full((len(rows), 0), jnp.inf, jnp.float32)
            for c0 in range(0, n, self.col_batch_size):
                d = pairwise_distances(rows, features[c0 : c0 + self.col_batch_size])
                best = _merge_smallest(best, d, min(kmax, best.shape[1] + d.shape[1]))
            radii.append(np.asarray(best)[:, list(self.nhood_sizes)])
        out = np.concatenate(radii).astype(np.float32)
        if self.clamp_to_percentile is not None:
            max_distances = np.percentile(out, self.clamp_to_percentile, axis=0)
            out[out > max_distances] = 0
        return out

    def distances(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """The whole squared-distance matrix [N, M] float32, block by block (each block takes
        the float16 or the float32 path on its own, as in `manifold_radii`)."""
        u, v = np.asarray(u, np.float32), np.asarray(v, np.float32)
        out = np.zeros((len(u), len(v)), np.float32)
        for r0 in range(0, len(u), self.row_batch_size):
            r1 = r0 + self.row_batch_size
            for c0 in range(0, len(v), self.col_batch_size):
                c1 = c0 + self.col_batch_size
                out[r0:r1, c0:c1] = np.asarray(pairwise_distances(u[r0:r1], v[c0:c1]))
        return out

    def evaluate_pr(
        self,
        features_1: np.ndarray,
        radii_1: np.ndarray,
        features_2: np.ndarray,
        radii_2: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(precision [K1], recall [K2]) of set 2 (samples) against set 1 (references).

        Precision: fraction of set 2 inside some set-1 ball (radii_1); recall: fraction of set 1
        inside some set-2 ball (radii_2).
        """
        features_1 = np.asarray(features_1, np.float32)
        features_2 = np.asarray(features_2, np.float32)
        radii_1 = jnp.asarray(radii_1, jnp.float32)
        radii_2 = jnp.asarray(radii_2, jnp.float32)
        status_1 = np.zeros((len(features_1), radii_2.shape[1]), bool)
        status_2 = np.zeros((len(features_2), radii_1.shape[1]), bool)
        for b1 in range(0, len(features_1), self.row_batch_size):
            e1 = b1 + self.row_batch_size
            for b2 in range(0, len(features_2), self.col_batch_size):
                e2 = b2 + self.col_batch_size
                d = pairwise_distances(features_1[b1:e1], features_2[b2:e2])
                in_1, in_2 = _less_thans(d, radii_1[b1:e1], radii_2[b2:e2])
                status_1[b1:e1] |= np.asarray(in_1)
                status_2[b2:e2] |= np.asarray(in_2)
        return status_2.mean(axis=0, dtype=np.float64), status_1.mean(axis=0, dtype=np.float64)


def compute_prec_recall(
    ref: np.ndarray, sample: np.ndarray, *, estimator: ManifoldEstimator | None = None
) -> tuple[float, float]:
    """evaluator.py `compute_prec_recall`: (precision, recall) of sample pool_3 features
    against reference pool_3 features, for the first neighbourhood size."""
    est = estimator or ManifoldEstimator()
    radii_ref = est.manifold_radii(ref)
    radii_sample = est.manifold_radii(sample)
    precision, recall = est.evaluate_pr(ref, radii_ref, sample, radii_sample)
    return float(precision[0]), float(recall[0])
