"""Evaluation helpers: a shapes classifier (accuracy, features) and the Fréchet distance."""

from arvg_jax.eval._classifier import (
    Classifier,
    ClassifierConfig,
    accuracy,
    classify,
    init_classifier,
)
from arvg_jax.eval._fid import feature_fid, frechet_distance, gaussian_stats

__all__ = [
    "Classifier",
    "ClassifierConfig",
    "accuracy",
    "classify",
    "feature_fid",
    "frechet_distance",
    "gaussian_stats",
    "init_classifier",
]
