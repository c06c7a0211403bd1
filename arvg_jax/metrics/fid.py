"""FID / sFID statistics and the Fréchet distance, as the ADM evaluator computes them.

openai/guided-diffusion evaluations/evaluator.py: `Evaluator.compute_statistics` (mu = np.mean
in the activations' dtype, float32; sigma = np.cov(rowvar=False), float64, ddof 1) and
`FIDStatistics.frechet_distance` (‖mu1 - mu2‖² in the means' dtype + tr σ1 + tr σ2 -
2 tr sqrtm(σ1 σ2), retried with eps·I on both σ when the square root is not finite).

The covariance is accumulated over row chunks (memory O(chunk·D + D²) for any N) after a float64
mean, which is np.cov's centring. tr sqrtm(σ1 σ2) is Σ √λ of the symmetric PSD matrix
σ1^½ σ2 σ1^½ (same eigenvalues as σ1 σ2) with λ clipped at 0: no complex parts, and singular
(N < D) covariances are fine; on the fixture it matches scipy's `sqrtm(disp=False)` to 2e-7.
When both fits come from at most D samples, the statistics keep their centred rows A
(σ = AᵀA) and the trace is the nuclear norm of A1 A2ᵀ (σ1 σ2 = A1ᵀ(A1 A2ᵀ)A2 has the
nonzero eigenvalues of (A1 A2ᵀ)(A1 A2ᵀ)ᵀ): an [N1, N2] SVD instead of two [D, D]
eigendecompositions.

Dims: N samples, D feature width.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class FIDStatistics:
    """A Gaussian fit of features (evaluator.py `FIDStatistics`).

    Attributes:
        mu: [D] mean (float32 when computed from float32 activations, as np.mean gives).
        sigma: [D, D] covariance, float64.
        factor: [N, D] float64 rows with sigma = factorᵀ factor (the centred activations over
            √(N - 1)), kept by `compute_statistics` when N <= D; None otherwise.
    """

    mu: np.ndarray
    sigma: np.ndarray
    factor: np.ndarray | None = None

    def frechet_distance(self, other: FIDStatistics, eps: float = 1e-6) -> float:
        """`frechet_distance(self, other, eps)` (the evaluator calls sample.fd(ref))."""
        return frechet_distance(self, other, eps=eps)


def compute_statistics(activations: np.ndarray, *, chunk_size: int = 4096) -> FIDStatistics:
    """Mean and covariance of activations [N, D] (evaluator.py `compute_statistics`).

    Args:
        activations: [N, D] features (N >= 2).
        chunk_size: rows per float64 block of the covariance sum.

    Returns:
        FIDStatistics(mu = np.mean(activations, 0) in the input's dtype, sigma float64 with
        ddof 1, as np.cov(rowvar=False); factor when N <= D).
    """
    x = np.asarray(activations)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"activations must be [N >= 2, D], got shape {x.shape}")
    n, d = x.shape
    mu = np.mean(x, axis=0)
    # np.cov centres on the float64 mean of the float64 copy; do that without the copy.
    mean64 = np.zeros(d, np.float64)
    for i in range(0, n, chunk_size):
        mean64 += np.sum(x[i : i + chunk_size], axis=0, dtype=np.float64)
    mean64 /= n
    if n <= d:  # low rank: keep the factor (at most D x D values, as sigma itself)
        factor = (x.astype(np.float64) - mean64) / np.sqrt(n - 1)  # [N, D]
        return FIDStatistics(mu, factor.T @ factor, factor)
    sigma = np.zeros((d, d), np.float64)
    for i in range(0, n, chunk_size):
        xc = x[i : i + chunk_size].astype(np.float64) - mean64  # [n_chunk, D]
        sigma += xc.T @ xc
    sigma /= n - 1
    return FIDStatistics(mu, sigma)


def _sym_sqrt(a: np.ndarray) -> np.ndarray:
    """Square root of a symmetric PSD matrix (eigenvalues below 0 from round-off -> 0)."""
    w, v = np.linalg.eigh((a + a.T) * 0.5)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr sqrtm(σ1 σ2) for symmetric PSD σ1, σ2, in float64."""
    r1 = _sym_sqrt(np.asarray(sigma1, np.float64))
    m = r1 @ np.asarray(sigma2, np.float64) @ r1
    eig = np.linalg.eigvalsh((m + m.T) * 0.5)
    return float(np.sum(np.sqrt(np.clip(eig, 0.0, None))))


def frechet_distance(stats1: FIDStatistics, stats2: FIDStatistics, eps: float = 1e-6) -> float:
    """Fréchet distance of two Gaussian fits (evaluator.py `FIDStatistics.frechet_distance`).

    Args:
        stats1: the first fit (the evaluator passes the sample batch's).
        stats2: the second (the reference batch's).
        eps: added to both diagonals when the square root is not finite.

    Returns:
        The distance as a Python float.

    Raises:
        ValueError: mismatched shapes.
    """
    mu1, mu2 = np.atleast_1d(stats1.mu), np.atleast_1d(stats2.mu)
    s1, s2 = np.atleast_2d(stats1.sigma), np.atleast_2d(stats2.sigma)
    if mu1.shape != mu2.shape or s1.shape != s2.shape:
        raise ValueError(
            f"statistics differ in shape: mu {mu1.shape} vs {mu2.shape}, "
            f"sigma {s1.shape} vs {s2.shape}"
        )
    diff = mu1 - mu2  # in the means' dtype (float32 for computed statistics), as the evaluator
    if stats1.factor is not None and stats2.factor is not None:
        cross = stats1.factor @ stats2.factor.T  # [N1, N2]
        tr_covmean = float(np.sum(np.linalg.svd(cross, compute_uv=False)))
    else:
        tr_covmean = trace_sqrt_product(s1, s2)
    if not np.isfinite(tr_covmean):
        offset = np.eye(s1.shape[0]) * eps
        tr_covmean = trace_sqrt_product(s1 + offset, s2 + offset)
    return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def fid_from_features(sample: np.ndarray, ref: np.ndarray) -> float:
    """FID of two activation sets [N1, D], [N2, D] in the evaluator's order."""
    return compute_statistics(sample).frechet_distance(compute_statistics(ref))
