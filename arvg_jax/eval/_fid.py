"""Fréchet distance between Gaussian fits of feature sets (the FID formula), in float64 numpy.

Dims: N samples, D feature width.
"""

from __future__ import annotations

import numpy as np


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased, N - 1) covariance of features [N, D], in float64.

    Returns:
        (mu [D], sigma [D, D]).

    Raises:
        ValueError: for fewer than 2 samples or a non-2-D input.
    """
    x = np.asarray(features, np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"features must be [N >= 2, D], got shape {x.shape}")
    return x.mean(axis=0), np.cov(x, rowvar=False, ddof=1).reshape(x.shape[1], x.shape[1])


def _sym_sqrt(a: np.ndarray) -> np.ndarray:
    """Square root of a symmetric PSD matrix via eigh (negative round-off eigenvalues -> 0)."""
    w, v = np.linalg.eigh((a + a.T) * 0.5)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """‖μ1 − μ2‖² + tr Σ1 + tr Σ2 − 2 tr (Σ1 Σ2)^½.

    tr (Σ1 Σ2)^½ is computed as Σ √λ of the symmetric PSD product S Σ2 S with S = Σ1^½ (same
    eigenvalues as Σ1 Σ2), so only symmetric eigendecompositions are needed: no complex parts,
    no `sqrtm` iterations, and singular (rank-deficient) covariances are fine.

    Args:
        mu1, mu2: [D] means.
        sigma1, sigma2: [D, D] covariances.

    Returns:
        The distance (float, >= 0 up to round-off).
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != mu1.shape * 2:
        raise ValueError(
            f"shape mismatch: mu1 {mu1.shape}, mu2 {mu2.shape}, sigma1 {s1.shape}, "
            f"sigma2 {s2.shape}"
        )
    r1 = _sym_sqrt(s1)
    m = r1 @ s2 @ r1
    eig = np.linalg.eigvalsh((m + m.T) * 0.5)
    tr_covmean = float(np.sum(np.sqrt(np.clip(eig, 0.0, None))))
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


def feature_fid(features1: np.ndarray, features2: np.ndarray) -> float:
    """`frechet_distance` of the Gaussian fits of two feature sets [N1, D] and [N2, D]."""
    return frechet_distance(*gaussian_stats(features1), *gaussian_stats(features2))
