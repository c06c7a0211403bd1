"""The ADM evaluator's pipeline: batch files -> activations -> IS, FID, sFID, precision, recall.

openai/guided-diffusion evaluations/evaluator.py `main()`: activations of both batches (pool_3
and the 7 spatial channels), statistics read from the reference file when it caches them (else
computed), then Inception Score on the sample pool features, FID = sample.fd(ref), sFID likewise
on the spatial features, and precision / recall of the sample pool features against the
reference pool features.

Dims: N images, D = 2048 pool width, S spatial width.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

import numpy as np
from jax import lax

from arvg_jax.metrics import adm_npz
from arvg_jax.metrics.activations import compute_activations
from arvg_jax.metrics.fid import FIDStatistics, compute_statistics
from arvg_jax.metrics.inception import HIGHEST, InceptionConfig
from arvg_jax.metrics.isc import inception_score, softmax_from_pool
from arvg_jax.metrics.precision_recall import ManifoldEstimator, compute_prec_recall


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvalSettings:
    """The evaluator's execution settings (its constructor and function defaults).

    Attributes:
        batch_size: images per Inception call (`Evaluator(batch_size=64)`).
        softmax_batch_size: rows per softmax matmul.
        is_split_size: rows per Inception Score split (`compute_inception_score`).
        manifold: the precision / recall estimator (k = 3, 10000 x 10000 blocks).
        matmul_precision: conv / matmul precision of the Inception network.
    """

    batch_size: int = 64
    softmax_batch_size: int = 512
    is_split_size: int = 5000
    manifold: ManifoldEstimator = dataclasses.field(default_factory=ManifoldEstimator)
    matmul_precision: lax.PrecisionLike = HIGHEST


def read_activations(
    params: Mapping,
    path: str | os.PathLike,
    *,
    settings: EvalSettings | None = None,
    config: InceptionConfig | None = None,
) -> dict[str, np.ndarray]:
    """`Evaluator.read_activations`: pool [N, D] and spatial [N, S] of a batch file's `arr_0`
    (plus the logits the network also gives)."""
    settings = settings or EvalSettings()
    (n, *_), _ = adm_npz.array_shape(path)
    # A file smaller than a batch runs as one call of its own size (no padding to batch_size).
    batch_size = max(1, min(settings.batch_size, n))
    # uint8 goes to the device as is: the network casts to float32 first, as the evaluator's
    # `batch.astype(np.float32)` does.
    return compute_activations(
        params,
        adm_npz.iter_batches(path, batch_size),
        config=config,
        batch_size=batch_size,
        precision=settings.matmul_precision,
    )


def read_statistics(
    path: str | os.PathLike, activations: Mapping[str, np.ndarray]
) -> tuple[FIDStatistics, FIDStatistics]:
    """`Evaluator.read_statistics`: the file's cached (pool, spatial) statistics, else computed
    from `activations`."""
    cached = adm_npz.read_statistics(path)
    if cached is not None:
        return cached
    return compute_statistics(activations["pool"]), compute_statistics(activations["spatial"])


def evaluate(
    params: Mapping,
    ref_batch: str | os.PathLike,
    sample_batch: str | os.PathLike,
    *,
    settings: EvalSettings | None = None,
    config: InceptionConfig | None = None,
) -> dict[str, float]:
    """The evaluator's `main()` on two batch files.

    Args:
        params: converted Inception weights (`converters.inception.load_inception`).
        ref_batch: reference batch .npz (`arr_0` images; cached statistics used if present).
        sample_batch: sample batch .npz (`arr_0` uint8 [N, H, W, 3]).
        settings: execution settings (defaults: the evaluator's).
        config: the Inception architecture (default `InceptionConfig.adm()`).

    Returns:
        {"inception_score", "fid", "sfid", "precision", "recall"} as floats.
    """
    return evaluate_many(params, ref_batch, [sample_batch], settings=settings, config=config)[0]


def evaluate_many(
    params: Mapping,
    ref_batch: str | os.PathLike,
    sample_batches,
    *,
    settings: EvalSettings | None = None,
    config: InceptionConfig | None = None,
) -> list[dict[str, float]]:
    """`evaluate` of several sample batch files against one reference batch, whose features and
    statistics are computed once (the float and quantized models of a fidelity report)."""
    settings = settings or EvalSettings()
    ref_acts = read_activations(params, ref_batch, settings=settings, config=config)
    ref_stats, ref_stats_spatial = read_statistics(ref_batch, ref_acts)
    out = []
    for sample_batch in sample_batches:
        sample_acts = read_activations(params, sample_batch, settings=settings, config=config)
        sample_stats, sample_stats_spatial = read_statistics(sample_batch, sample_acts)
        probs = softmax_from_pool(
            sample_acts["pool"], params["fc"]["kernel"], batch_size=settings.softmax_batch_size
        )
        precision, recall = compute_prec_recall(
            ref_acts["pool"], sample_acts["pool"], estimator=settings.manifold
        )
        out.append(
            {
                "inception_score": inception_score(probs, settings.is_split_size),
                "fid": float(sample_stats.frechet_distance(ref_stats)),
                "sfid": float(sample_stats_spatial.frechet_distance(ref_stats_spatial)),
                "precision": precision,
                "recall": recall,
            }
        )
    return out
