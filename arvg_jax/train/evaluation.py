"""Generation evaluation of a tiny trained model, for any registered family.

`evaluate_generation` generates a class-balanced set of images through `Family.generate` (image i
draws with `fold_in(key, i)`, so an image never depends on the batch it is generated in), scores
them with the shared shapes classifier (accuracy, per-class accuracy, Fréchet distance of its
features against held-out real images) and writes the class-by-row `samples.png` grid.

Dims: N generated images, K classes, F classifier features.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from arvg_jax import imageio
from arvg_jax.eval import classify, feature_fid
from arvg_jax.train._common import log


def device_desc() -> str:
    """`platform:kind xN` of the default backend (recorded next to timings and metrics)."""
    d = jax.devices()[0]
    return f"{d.platform}:{getattr(d, 'device_kind', '?')} x{jax.device_count()}"


def generate_images(
    fam,
    model: tuple,
    labels: np.ndarray,
    key: jax.Array,
    *,
    sampling: Mapping[str, Any],
    batch: int,
) -> np.ndarray:
    """Images of `labels` [N] through `fam.generate`, in [-1, 1], float32 [N, H, W, 3].

    Args:
        fam: the `arvg_jax.families.Family`.
        model: (cfg, params, tok_cfg, tok_params), params in the stored layout.
        labels: int [N] class ids.
        key: image i draws with `fold_in(key, i)`.
        sampling: the family's sampling settings (unset ones take `fam.sampling_defaults`).
        batch: images per `generate` call; the last call is padded so one batch shape compiles.
    """
    from arvg_jax.options import ExecOptions

    cfg, params, tok_cfg, tok_params = model
    params = fam.inference_layout(params)
    settings = {**fam.sampling_defaults(cfg), **sampling}
    n = int(labels.shape[0])
    out = []
    for s in range(0, n, batch):
        lab = np.asarray(labels[s : s + batch], np.int32)
        m = lab.size
        if n > batch and m < batch:  # keep one compiled batch size
            lab = np.concatenate([lab, np.zeros(batch - m, np.int32)])
        idx = jnp.arange(s, s + lab.size, dtype=jnp.uint32)
        keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(idx)
        res = fam.generate(
            params, tok_params, cfg, tok_cfg, lab, keys, options=ExecOptions(), **settings
        )
        out.append(np.asarray(res["images"], np.float32)[:m] * 2 - 1)
    return np.concatenate(out)


def write_sample_grid(path, images: np.ndarray, labels: np.ndarray, num_classes: int, cols: int):
    """A PNG with one row per class (its first `cols` samples); images in [-1, 1]."""
    per = min(cols, min(int(np.sum(labels == c)) for c in range(num_classes)))
    rows = [images[np.flatnonzero(labels == c)[:per]] for c in range(num_classes)]
    grid = imageio.make_grid(imageio.to_uint8((np.concatenate(rows) + 1) / 2), ncols=per)
    imageio.write_png(path, grid)
    os.chmod(path, 0o644)  # write_png's temp file is 0600; this may be package data


def evaluate_generation(
    fam,
    model: tuple,
    classifier: tuple,
    real_feats: np.ndarray,
    *,
    settings: tuple[tuple[str, Mapping[str, Any]], ...],
    num_gen: int,
    gen_batch: int,
    key: jax.Array,
    grid_path=None,
    grid_cols: int = 10,
) -> dict[str, Any]:
    """Class-balanced generation, scored by the shapes classifier.

    Args:
        fam: the `arvg_jax.families.Family`.
        model: (cfg, params, tok_cfg, tok_params).
        classifier: (params, ClassifierConfig).
        real_feats: [M, F] classifier features of real held-out images (the FID reference).
        settings: (name, sampling settings) pairs to evaluate; the first makes the grid.
        num_gen: images per setting, labels 0, 1, ..., K-1, 0, 1, ...
        gen_batch: images per `generate` call.
        key: PRNG key (the same draws for every setting).
        grid_path: where to write a class-by-row PNG grid of the first setting's samples.
        grid_cols: samples per class in the grid.

    Returns:
        {name: {**sampling, classifier_accuracy, per_class_accuracy, fid_vs_real, device}}.
    """
    cls_params, ccfg = classifier
    k = fam.num_classes(model[0])
    labels = np.arange(num_gen) % k
    results = {}
    for si, (name, sampling) in enumerate(settings):
        t = time.perf_counter()
        imgs = generate_images(fam, model, labels, key, sampling=sampling, batch=gen_batch)
        logits, feats = classify(cls_params, ccfg, imgs)
        pred = logits.argmax(-1)
        acc = float(np.mean(pred == labels))
        per_class = [round(float(np.mean(pred[labels == c] == c)), 3) for c in range(k)]
        fid = feature_fid(feats, real_feats)
        results[name] = {
            **dict(sampling),
            "classifier_accuracy": round(acc, 4),
            "per_class_accuracy": per_class,
            "fid_vs_real": round(fid, 4),
            "device": device_desc(),
        }
        log(
            f"[eval] {name} {dict(sampling)}: classifier acc {acc:.4f}, FID {fid:.3f} "
            f"({time.perf_counter() - t:.0f}s)"
        )
        if si == 0 and grid_path is not None:
            write_sample_grid(grid_path, imgs, labels, k, grid_cols)
    return results


def fid_reference(feature_dim: int, n_real: int) -> str:
    """The recipe.json sentence saying what `fid_vs_real` measures."""
    return (
        f"Fréchet distance of classifier features (dim {feature_dim}) against the second "
        f"half of the held-out set ({n_real} images)"
    )
