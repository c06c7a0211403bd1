"""A small CNN classifier of the shapes dataset, and its penultimate feature for an FID-like score.

Dims: B batch, H/W spatial, C channels, F feature width, K classes.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True, kw_only=True)
class ClassifierConfig:
    """CNN hyper-parameters (hashable: a static jit argument)."""

    num_classes: int = 12  # K
    widths: tuple[int, ...] = (32, 64, 128)  # channels of each stage (2 convs, then 2x avg pool)
    feature_dim: int = 128  # F, the penultimate Dense (FID feature)
    groups: int = 8  # GroupNorm groups (no batch statistics: train and eval behave alike)

    def __post_init__(self):
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Classifier(nn.Module):
    """conv-GN-ReLU x 2 per stage with 2x average pooling between stages, global average pool,
    Dense(F)-ReLU (the feature) and Dense(K) logits."""

    cfg: ClassifierConfig

    @nn.compact
    def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Classifies images.

        Args:
            images: float [B, H, W, 3] in [-1, 1].

        Returns:
            (logits float32 [B, K], features float32 [B, F]).
        """
        cfg = self.cfg
        h = images.astype(jnp.float32)
        for s, w in enumerate(cfg.widths):
            if s:
                h = nn.avg_pool(h, (2, 2), (2, 2))
            for j in range(2):
                h = nn.Conv(w, (3, 3), name=f"stage{s}_conv{j}")(h)
                h = nn.relu(nn.GroupNorm(num_groups=cfg.groups, name=f"stage{s}_norm{j}")(h))
        h = jnp.mean(h, axis=(1, 2))  # [B, C]
        feat = nn.relu(nn.Dense(cfg.feature_dim, name="feature")(h))  # [B, F]
        return nn.Dense(cfg.num_classes, name="logits")(feat), feat


def init_classifier(cfg: ClassifierConfig, rng: jax.Array, image_size: int = 32) -> dict:
    """Random classifier params (plain dict)."""
    x = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
    return Classifier(cfg).init(rng, x)["params"]


@functools.partial(jax.jit, static_argnames=("cfg",))
def _apply(params: dict, images: jax.Array, cfg: ClassifierConfig):
    return Classifier(cfg).apply({"params": params}, images)


def classify(
    params: dict, cfg: ClassifierConfig, images: np.ndarray | jax.Array, batch: int = 500
) -> tuple[np.ndarray, np.ndarray]:
    """Logits and features of many images, in batches (the last one padded, so one compile).

    Args:
        params: classifier params.
        cfg: its config.
        images: [N, H, W, 3] in [-1, 1].
        batch: images per call.

    Returns:
        (logits float32 [N, K], features float32 [N, F]) as numpy arrays.
    """
    images = np.asarray(images, np.float32)
    n = images.shape[0]
    logits, feats = [], []
    for start in range(0, n, batch):
        x = images[start : start + batch]
        pad = batch - x.shape[0] if n > batch else 0
        if pad:
            x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
        lg, ft = _apply(params, jnp.asarray(x), cfg)
        keep = x.shape[0] - pad
        logits.append(np.asarray(lg)[:keep])
        feats.append(np.asarray(ft)[:keep])
    return np.concatenate(logits), np.concatenate(feats)


def accuracy(params: dict, cfg: ClassifierConfig, images, labels, batch: int = 500) -> float:
    """Top-1 accuracy of the classifier on labelled images."""
    logits, _ = classify(params, cfg, images, batch)
    return float(np.mean(np.argmax(logits, axis=-1) == np.asarray(labels)))
