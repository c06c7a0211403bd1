"""DGC (Distribution-Guided Calibration) distance math and the official cond/uncond ratio rule.

Dims: ``n`` candidate sequences of one group (cond or uncond), ``d`` feature size.
Reference: BienLuky/PTQ4ARVG f249fe9 ``VAR/sample_cali_dgc.py:11-28`` (``mahalanobis_to_distribution``)
and ``:136-146`` (the ratio rule); docs/ptq4arvg.md §4. The official distance uses the pseudo-inverse
of the unbiased covariance with no regularisation, so with n <= d every distance equals
``(n - 1)/sqrt(n)`` and the ranking carries no information; the Ledoit-Wolf variant shrinks the
covariance toward ``mu·I`` so that it is invertible and the ranking is informative.
Computed in float64 (the official code: float32).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "dgc_cond_ratio",
    "dgc_keep_counts",
    "ledoit_wolf_covariance",
    "mahalanobis_distances",
    "mahalanobis_distances_ledoit_wolf",
]


def _features(features) -> np.ndarray:
    f = np.asarray(features, np.float64)
    if f.ndim == 3:  # [n, T, d]: the official code keeps token 0
        f = f[:, 0, :]
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(
            f"features must be [n, d] or [n, T, d] with n >= 2, got {np.shape(features)}"
        )
    return f


def mahalanobis_distances(features, rtol: float | None = None) -> np.ndarray:
    """Official DGC distance of each sample to its own group: ``sqrt(dᵀ pinv(Σ) d)``.

    Args:
      features: [n, d] or [n, T, d] (token 0 is used, as the official ``samples[:, 0, :]``).
      rtol: pinv cutoff relative to the largest singular value. Default ``d·eps(float32)``:
        the cutoff torch's float32 ``linalg.pinv`` applies by default.

    Returns:
      float64 [n]. ``Σ = (F - μ)ᵀ(F - μ)/(n - 1)``.
    """
    f = _features(features)
    n, d = f.shape
    centered = f - f.mean(axis=0)
    cov = centered.T @ centered / (n - 1)
    rtol = d * float(np.finfo(np.float32).eps) if rtol is None else rtol
    cov_inv = np.linalg.pinv(cov, rcond=rtol, hermitian=True)
    q = np.einsum("nd,de,ne->n", centered, cov_inv, centered)
    return np.sqrt(np.maximum(q, 0.0))


def ledoit_wolf_covariance(features) -> tuple[np.ndarray, float]:
    """Ledoit-Wolf (2004) shrinkage covariance ``(1 - ρ)·S + ρ·μ·I`` and its ρ.

    ``S = XᵀX/n`` of the centered samples, ``μ = tr(S)/d``, ``δ² = ‖S - μI‖²_F``,
    ``β² = min(δ², Σ_i ‖x_i x_iᵀ - S‖²_F / n²)``, ``ρ = β²/δ²`` (0 when δ² = 0).
    """
    f = _features(features)
    n, d = f.shape
    x = f - f.mean(axis=0)
    s = x.T @ x / n
    mu = np.trace(s) / d
    delta2 = np.sum((s - mu * np.eye(d)) ** 2)
    # Σ_i ‖x_i x_iᵀ - S‖²_F = Σ_i ‖x_i‖⁴ - n‖S‖²_F  (cross term: 2 Σ_i x_iᵀ S x_i = 2n‖S‖²_F)
    sq = np.sum(x * x, axis=1)
    beta2 = min(delta2, (np.sum(sq**2) - n * np.sum(s * s)) / n**2)
    rho = 0.0 if delta2 == 0 else float(max(beta2, 0.0) / delta2)
    return (1.0 - rho) * s + rho * mu * np.eye(d), rho


def mahalanobis_distances_ledoit_wolf(features) -> np.ndarray:
    """Mahalanobis distance of each sample to its group under the Ledoit-Wolf covariance."""
    f = _features(features)
    cov, _ = ledoit_wolf_covariance(f)
    centered = f - f.mean(axis=0)
    sol = np.linalg.solve(cov, centered.T)  # [d, n]
    return np.sqrt(np.maximum(np.einsum("nd,dn->n", centered, sol), 0.0))


def dgc_cond_ratio(dist_cond, dist_uncond, num: int | None = None, atol: float = 1e-3) -> float:
    """Official ratio of conditional sequences in the calibration set.

    ``0.5`` if ``allclose(dist_cond, dist_uncond, rtol=1e-5, atol)``, else the fraction of cond
    samples among the ``num`` (default ``len(dist_cond)``) largest of the concatenated distances.
    Ties at the cut go to the lower index (cond first); torch.topk leaves their order unspecified.
    """
    dc = np.asarray(dist_cond, np.float64).reshape(-1)
    du = np.asarray(dist_uncond, np.float64).reshape(-1)
    num = dc.size if num is None else int(num)
    if dc.shape == du.shape and np.allclose(dc, du, rtol=1e-5, atol=atol):
        return 0.5
    dist = np.concatenate([dc, du])
    top = np.argsort(-dist, kind="stable")[:num]
    return float(np.sum(top < dc.size)) / num


def dgc_keep_counts(ratio: float, batch: int) -> tuple[int, int]:
    """Per generation batch: keep the first ``round(ratio·batch)`` cond rows (Python round,
    half to even) and the first ``batch - that`` uncond rows."""
    num_cond = round(ratio * batch)
    return num_cond, batch - num_cond
