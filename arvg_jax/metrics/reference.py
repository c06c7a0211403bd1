"""Recomputes every output array of the evaluator fixture (reference/eval/io.npz) with the port.

The fixture (reference/README.md "Evaluator") ran openai/guided-diffusion
evaluations/evaluator.py with torch-fidelity's Inception replica and random weights: Inception
features of the image sets, then FID / sFID statistics, Inception Scores and precision / recall
on synthetic feature inputs. Sizes, split sizes and estimator settings come from config.json.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np

from arvg_jax.metrics.activations import compute_activations
from arvg_jax.metrics.fid import compute_statistics
from arvg_jax.metrics.inception import InceptionConfig
from arvg_jax.metrics.isc import inception_score, softmax, softmax_from_pool
from arvg_jax.metrics.precision_recall import ManifoldEstimator
from converters.inception import load_inception


def inception_config(config: dict) -> InceptionConfig:
    """The `InceptionConfig` a fixture's config.json describes."""
    inc = config["inception"]
    return InceptionConfig(
        num_classes=inc["num_classes"],
        input_size=inc["input_size"],
        bn_eps=inc["bn_eps"],
        spatial_channels=inc["spatial_shape_nhwc"][-1],
    )


def manifold_estimator(config: dict) -> ManifoldEstimator:
    """The `ManifoldEstimator` settings of config.json `evaluator.manifold`."""
    m = config["evaluator"]["manifold"]
    return ManifoldEstimator(
        row_batch_size=m["row_batch_size"],
        col_batch_size=m["col_batch_size"],
        nhood_sizes=tuple(m["nhood_sizes"]),
        clamp_to_percentile=m["clamp_to_percentile"],
    )


def _stats_arrays(prefix: str, suffix: str, features: np.ndarray, stride: int) -> dict:
    stats = compute_statistics(features)
    return {
        f"{prefix}_mu{suffix}": stats.mu,
        f"{prefix}_sigma{suffix}_diag": np.diagonal(stats.sigma).copy(),
        f"{prefix}_sigma{suffix}_rows": stats.sigma[::stride].copy(),
    }


def run_reference(fixture_dir: pathlib.Path) -> dict[str, np.ndarray]:
    """Every output array of `fixture_dir`/io.npz, computed on the CPU in float32 (statistics
    in float64), with the names, shapes and dtypes of the fixture.

    Args:
        fixture_dir: the `eval` fixture folder (config.json, inception.pth, io.npz).

    Returns:
        name -> array.
    """
    fixture_dir = pathlib.Path(fixture_dir)
    config = json.loads((fixture_dir / "config.json").read_text())
    ev = config["evaluator"]
    inc_cfg = inception_config(config)
    params = load_inception(fixture_dir / config["inception"]["weights"], inc_cfg)
    fc_kernel = np.asarray(params["fc"]["kernel"])
    out: dict[str, np.ndarray] = {}
    with np.load(fixture_dir / "io.npz") as io:
        inputs = {k: io[k] for k in json.loads((fixture_dir / "inputs.json").read_text())}

    for image_set in config["image_sets"]:
        name = image_set["name"]
        acts = compute_activations(
            params, inputs[image_set["images"]], config=inc_cfg, batch_size=ev["batch_size"]
        )
        for key in ("pool", "spatial", "logits_unbiased", "logits"):
            out[f"{name}_{key}"] = acts[key]
        out[f"{name}_softmax"] = softmax_from_pool(
            acts["pool"], fc_kernel, batch_size=ev["softmax_batch_size"]
        )

    # FID / sFID as main(): sample_stats.frechet_distance(ref_stats).
    stride = config["sigma_rows_stride"]
    for kind, suffix in (("pool", ""), ("spatial", "_s")):
        ref_stats = compute_statistics(inputs[f"ref_{kind}"])
        sample_stats = compute_statistics(inputs[f"sample_{kind}"])
        metric = "fid" if kind == "pool" else "sfid"
        out[metric] = np.float64(sample_stats.frechet_distance(ref_stats, eps=ev["frechet_eps"]))
        for who in ("ref", "sample"):
            out.update(_stats_arrays(who, suffix, inputs[f"{who}_{kind}"], stride))

    probs = {
        "pool": softmax_from_pool(
            inputs["sample_pool"], fc_kernel, batch_size=ev["softmax_batch_size"]
        ),
        "logits": softmax(inputs["sample_logits"]),  # the softmax graph with W = I
    }
    for kind, p in probs.items():
        out[f"is_{kind}"] = np.float64(inception_score(p, config["is_split_size"]))
        out[f"is_{kind}_split5000"] = np.float64(inception_score(p, ev["is_split_size_default"]))

    est = manifold_estimator(config)
    ref, sample = inputs["ref_pool"], inputs["sample_pool"]
    out["radii_ref"] = est.manifold_radii(ref)
    out["radii_sample"] = est.manifold_radii(sample)
    precision, recall = est.evaluate_pr(ref, out["radii_ref"], sample, out["radii_sample"])
    out["precision"], out["recall"] = np.float64(precision[0]), np.float64(recall[0])
    out["dist_ref_sample"] = est.distances(ref, sample)
    scale = np.float32(config["pr_overflow_scale"])
    big_ref, big_sample = ref * scale, sample * scale
    radii_big_ref = est.manifold_radii(big_ref)
    radii_big_sample = est.manifold_radii(big_sample)
    p_big, r_big = est.evaluate_pr(big_ref, radii_big_ref, big_sample, radii_big_sample)
    out["pr_overflow_precision"], out["pr_overflow_recall"] = (
        np.float64(p_big[0]),
        np.float64(r_big[0]),
    )
    return out
