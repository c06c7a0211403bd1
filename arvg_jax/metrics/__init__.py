"""The ADM evaluator (openai/guided-diffusion evaluations/evaluator.py) in JAX: Inception-v3
features of the 2015-12-05 TF graph, FID / sFID, Inception Score and improved precision / recall.

Weights: `converters.inception.load_inception` (torch-fidelity or pytorch-fid .pth, no torch).
Fixture check: `arvg_jax.metrics.reference.run_reference`.
"""

from arvg_jax.metrics.activations import compute_activations
from arvg_jax.metrics.evaluator import EvalSettings, evaluate, read_activations, read_statistics
from arvg_jax.metrics.fid import FIDStatistics, compute_statistics, frechet_distance
from arvg_jax.metrics.inception import InceptionConfig, InceptionV3, abstract_params, init_params
from arvg_jax.metrics.isc import inception_score, softmax_from_pool
from arvg_jax.metrics.precision_recall import ManifoldEstimator, compute_prec_recall

__all__ = [
    "EvalSettings",
    "FIDStatistics",
    "InceptionConfig",
    "InceptionV3",
    "ManifoldEstimator",
    "abstract_params",
    "compute_activations",
    "compute_prec_recall",
    "compute_statistics",
    "evaluate",
    "frechet_distance",
    "inception_score",
    "init_params",
    "read_activations",
    "read_statistics",
    "softmax_from_pool",
]
