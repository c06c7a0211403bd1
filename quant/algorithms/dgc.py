"""DGC (Distribution-Guided Calibration): choose the calibration sequences among the CFG candidates.

Features (both modes): the float model's last-block output at token 0 of every candidate sequence
(`VARAdapter.token0_features`: full sequence, no attention mask, as the official
``VAR/sample_cali_dgc.py``), cond and uncond halves alike (``calib_data.Candidates`` layout).

Modes:

``official`` - exactly the official rule (``VAR/sample_cali_dgc.py:136-166``, docs/ptq4arvg.md
§4.3): per half, the Mahalanobis distance of each sample to its own half under the pseudo-inverse of
the unbiased covariance (``dgc_core.mahalanobis_distances``); ``r = 0.5`` if the two distance vectors
are ``allclose`` (atol 1e-3), else the fraction of cond rows among the n largest of the 2n
distances; then per generation batch of b images the first ``round(r·b)`` cond rows and the first
``b - round(r·b)`` uncond rows are kept. With n <= d (128 samples, C >= 1024 channels) every
in-sample pseudo-inverse distance equals ``(n - 1)/sqrt(n)`` (§4.4), so the rule always returns
``r = 0.5``: half cond, half uncond, the first images of each batch. DGC then carries no
information about the data; this mode exists for parity.

``shrinkage`` (default) - choose the n candidates that best cover the candidate distribution:

1. Metric. The Ledoit-Wolf covariance ``(1 - ρ)S + ρ·tr(S)/d·I`` of all 2n candidates
   (``dgc_core.ledoit_wolf_covariance``) is well conditioned at n < d, so Mahalanobis distances are
   informative (the official pseudo-inverse collapses them to a constant). Whitening matters: raw
   Euclidean distances of transformer features are dominated by a few massive channels.
   The pool is both halves together because at deployment every CFG step runs the cond and the
   uncond half through the same static quantizers (§3.5): the pooled distribution is what the
   quantizers must cover.
2. Selection: greedy facility location (k-medoids coverage) under that metric: repeatedly add the
   candidate that most increases ``Σ_i max_{j ∈ S} (D_max - D_ij)``, i.e. most reduces the
   distance of every candidate to its nearest selected one. This objective is monotone submodular,
   so the greedy choice is within (1 - 1/e) of the optimum. Why this rather than the alternatives:
   * farthest-point (k-center) coverage picks the most extreme samples first and over-represents
     the tails; the percentile-MSE quantizers are fitted on the calibration statistics, so a
     tail-heavy set widens every clipping range;
   * stratifying by Mahalanobis quantiles matches the distribution of the *distance* only, and
     keeps near-duplicates (e.g. the near-identical uncond sequences, challenge.png (d)) in
     proportion to their number;
   * facility location spends picks in proportion to the density of the data (representative),
     but a second copy of an already-covered near-duplicate gains nothing, so redundant samples
     are dropped: the "most information per sample" intent of the paper's DGC.
   The cond/uncond mix is not fixed in advance; it follows from the coverage.
3. Deterministic: no randomness; ties go to the lower candidate index (``np.argmax``).

Dims: M = 2n candidates, d feature size (the model width C).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import numpy as np

from quant.algorithms.calib_data import Candidates
from quant.algorithms.dgc_core import (
    dgc_cond_ratio,
    dgc_keep_counts,
    ledoit_wolf_covariance,
    mahalanobis_distances,
)

__all__ = [
    "Selection",
    "candidate_features",
    "facility_location",
    "pooled_mahalanobis",
    "select",
    "select_official",
    "select_shrinkage",
]

Mode = Literal["official", "shrinkage"]


@dataclasses.dataclass(frozen=True)
class Selection:
    """Chosen candidate rows and how they were chosen."""

    indices: np.ndarray  # int [k] rows of the Candidates, ascending
    mode: str
    cond_fraction: float  # fraction of cond rows among the chosen
    distances: np.ndarray  # float64 [M] the distance each mode ranks by (see the mode)
    info: dict[str, Any]  # JSON-able details (ratio, shrinkage, coverage)


def candidate_features(adapter, params, batch, *, chunk: int = 32) -> np.ndarray:
    """Float32 [M, C]: last-block output at token 0 of every candidate (float model).

    ``batch`` holds every candidate row (the family's ``calibration_batch`` of them)."""
    return adapter.token0_features(params, batch, chunk=chunk)


def _check(features, candidates: Candidates) -> np.ndarray:
    f = np.asarray(features, np.float64)
    m = candidates.labels.shape[0]
    if f.ndim != 2 or f.shape[0] != m:
        raise ValueError(f"features must be [{m}, d] (one row per candidate), got {f.shape}")
    return f


def select_official(features, candidates: Candidates) -> Selection:
    """The official DGC ratio rule and per-generation-batch keep-first selection (module doc)."""
    f = _check(features, candidates)
    n = candidates.num_images
    cond = np.nonzero(candidates.is_cond)[0]
    uncond = np.nonzero(~candidates.is_cond)[0]
    d_cond = mahalanobis_distances(f[cond])
    d_uncond = mahalanobis_distances(f[uncond])
    ratio = dgc_cond_ratio(d_cond, d_uncond, num=n)
    keep = []
    b = candidates.gen_batch
    for lo in range(0, n, b):
        size = min(b, n - lo)
        k_cond, k_uncond = dgc_keep_counts(ratio, size)
        keep += [int(cond[lo + i]) for i in range(k_cond)]
        keep += [int(uncond[lo + i]) for i in range(k_uncond)]
    indices = np.sort(np.asarray(keep, np.int64))
    distances = np.empty((f.shape[0],), np.float64)
    distances[cond], distances[uncond] = d_cond, d_uncond
    return Selection(
        indices=indices,
        mode="official",
        cond_fraction=float(np.mean(candidates.is_cond[indices])) if indices.size else 0.0,
        distances=distances,
        info={
            "ratio": float(ratio),
            "constant_distances": bool(
                np.allclose(d_cond, d_cond[0], atol=1e-3)
                and np.allclose(d_uncond, d_uncond[0], atol=1e-3)
            ),
        },
    )


def pooled_mahalanobis(features) -> tuple[np.ndarray, np.ndarray, float]:
    """Distances under the Ledoit-Wolf covariance of all rows.

    Returns:
      ``(to_mean [M], pairwise [M, M], ρ)``: each row's distance to the mean, all pairwise
      distances, and the shrinkage intensity.
    """
    f = np.asarray(features, np.float64)
    x = f - f.mean(axis=0)
    cov, rho = ledoit_wolf_covariance(f)
    if not np.any(cov):  # all rows identical
        m = f.shape[0]
        return np.zeros((m,)), np.zeros((m, m)), rho
    gram = x @ np.linalg.solve(cov, x.T)  # [M, M]: x_i^T Σ^-1 x_j
    gram = 0.5 * (gram + gram.T)
    diag = np.diag(gram)
    pair = np.sqrt(np.maximum(diag[:, None] + diag[None, :] - 2 * gram, 0.0))
    np.fill_diagonal(pair, 0.0)
    return np.sqrt(np.maximum(diag, 0.0)), pair, rho


def facility_location(pairwise, k: int) -> np.ndarray:
    """Greedy maximisation of ``Σ_i max_{j∈S} (D_max - D_ij)`` over |S| = k (module doc).

    Args:
      pairwise: float [M, M] symmetric distances.
      k: how many to choose (<= M).

    Returns:
      int [k] chosen indices in the order they were picked.
    """
    d = np.asarray(pairwise, np.float64)
    m = d.shape[0]
    if not 0 <= k <= m:
        raise ValueError(f"cannot choose {k} of {m} candidates")
    sim = d.max() - d  # [M, M] >= 0
    cover = np.zeros((m,))  # best similarity of each candidate to the chosen set
    chosen: list[int] = []
    free = np.ones((m,), bool)
    for _ in range(k):
        gain = np.maximum(sim - cover[:, None], 0.0).sum(axis=0)  # [M] gain of adding column j
        gain = np.where(free, gain, -np.inf)
        j = int(np.argmax(gain))
        chosen.append(j)
        free[j] = False
        cover = np.maximum(cover, sim[:, j])
    return np.asarray(chosen, np.int64)


def select_shrinkage(features, candidates: Candidates, num: int | None = None) -> Selection:
    """Ledoit-Wolf Mahalanobis coverage selection of ``num`` (default n) candidates (module doc)."""
    f = _check(features, candidates)
    num = candidates.num_images if num is None else int(num)
    to_mean, pair, rho = pooled_mahalanobis(f)
    order = facility_location(pair, num)
    indices = np.sort(order)
    nearest = pair[:, indices].min(axis=1) if num else np.full((f.shape[0],), np.inf)
    return Selection(
        indices=indices,
        mode="shrinkage",
        cond_fraction=float(np.mean(candidates.is_cond[indices])) if num else 0.0,
        distances=to_mean,
        info={
            "shrinkage": float(rho),
            "pick_order": [int(i) for i in order],
            "mean_distance_to_selected": float(np.mean(nearest)),
        },
    )


def select(
    features, candidates: Candidates, mode: Mode = "shrinkage", num: int | None = None
) -> Selection:
    """Dispatches to `select_official` (num is then fixed by the rule) or `select_shrinkage`."""
    if mode == "official":
        return select_official(features, candidates)
    if mode == "shrinkage":
        return select_shrinkage(features, candidates, num)
    raise ValueError(f"unknown DGC mode {mode!r}; choose 'official' or 'shrinkage'")
