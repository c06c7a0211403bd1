"""Improved precision / recall: float16 distance blocks, the float32 fallback, block-size
invariance, and the evaluator fixture (radii, distances, P/R and the overflow case)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arvg_jax.metrics.precision_recall import (
    ManifoldEstimator,
    _f16,
    compute_prec_recall,
    pairwise_distances,
)
from arvg_jax.metrics.reference import manifold_estimator


@pytest.fixture(scope="module")
def fixture():
    from conftest import require_reference

    folder = require_reference("eval", "io.npz").parent
    with np.load(folder / "io.npz") as io:
        arrays = {k: io[k] for k in io.files}
    config = json.loads((folder / "config.json").read_text())
    tol = json.loads((folder / "tolerances.json").read_text())
    return arrays, config, {k: v["tol"] for k, v in tol.items() if not k.startswith("_")}


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _numpy_fp16_distances(u, v):
    """The float16 graph in numpy: fp16 squares and elementwise ops, fp32 accumulation."""
    with np.errstate(over="ignore", invalid="ignore"):  # overflow to inf is the point
        u16, v16 = u.astype(np.float16), v.astype(np.float16)
        nu = np.sum(u16 * u16, axis=1, dtype=np.float32).astype(np.float16)[:, None]
        nv = np.sum(v16 * v16, axis=1, dtype=np.float32).astype(np.float16)[None, :]
        uv = (u16.astype(np.float32) @ v16.astype(np.float32).T).astype(np.float16)
        return np.maximum(nu - np.float16(2) * uv + nv, np.float16(0))


def test_float16_rounding_is_exact():
    """`_f16` (float32 in, float32 out) equals a float16 cast: normals, subnormals, ties,
    overflow."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=20000) * 10.0 ** rng.uniform(-9, 6, 20000)
    edges = [2.0**-25, 3 * 2.0**-25, 5 * 2.0**-25, -(2.0**-25), 2.0**-14, 65519.99, 65520.0]
    x = np.concatenate([x, edges]).astype(np.float32)
    with np.errstate(over="ignore"):
        want = x.astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(jax.jit(_f16)(jnp.asarray(x))), want)


def test_fp16_block_matches_numpy_float16():
    rng = np.random.default_rng(0)
    u = np.abs(rng.normal(size=(13, 29))).astype(np.float32) * 3
    v = np.abs(rng.normal(size=(11, 29))).astype(np.float32) * 3
    got = np.asarray(pairwise_distances(u, v))
    want = _numpy_fp16_distances(u, v).astype(np.float32)
    assert np.all(np.isfinite(got))
    np.testing.assert_array_equal(got.astype(np.float16).astype(np.float32), got)  # fp16 grid
    # Equal but for float32 summation order in the dot product (at most one float16 step).
    assert np.mean(got == want) > 0.95
    np.testing.assert_allclose(got, want, rtol=2e-3, atol=0.25)


def test_overflowing_block_falls_back_to_float32():
    rng = np.random.default_rng(1)
    u = np.abs(rng.normal(size=(7, 11))).astype(np.float32) * 200  # ‖u‖² > 65504
    v = np.abs(rng.normal(size=(5, 11))).astype(np.float32) * 200
    assert not np.all(np.isfinite(_numpy_fp16_distances(u, v)))
    got = np.asarray(pairwise_distances(u, v))
    exact = ((u[:, None, :].astype(np.float64) - v[None]) ** 2).sum(-1)
    np.testing.assert_allclose(got, exact, rtol=1e-4)
    assert np.max(got) > 65504  # float32 values: no float16 overflow


def test_block_sizes_do_not_change_results(fixture):
    z, _, _ = fixture
    ref, sample = z["ref_pool"][:53], z["sample_pool"][:41]
    big = ManifoldEstimator()
    small = ManifoldEstimator(row_batch_size=17, col_batch_size=13)
    np.testing.assert_array_equal(small.manifold_radii(ref), big.manifold_radii(ref))
    np.testing.assert_array_equal(small.distances(ref, sample), big.distances(ref, sample))
    assert compute_prec_recall(ref, sample, estimator=small) == compute_prec_recall(
        ref, sample, estimator=big
    )


def test_multiple_neighbourhoods():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(23, 5)).astype(np.float32)
    radii = ManifoldEstimator(nhood_sizes=(1, 3, 5), row_batch_size=7, col_batch_size=9)
    got = radii.manifold_radii(x)
    d = np.sort(((x[:, None].astype(np.float64) - x[None]) ** 2).sum(-1), axis=1)
    np.testing.assert_allclose(got, d[:, [1, 3, 5]], rtol=3e-3, atol=2e-2)


def test_fixture_precision_recall(fixture):
    z, config, tol = fixture
    est = manifold_estimator(config)
    ref, sample = z["ref_pool"], z["sample_pool"]
    assert est.nhood_sizes == (3,)
    radii_ref, radii_sample = est.manifold_radii(ref), est.manifold_radii(sample)
    for name, got in (("radii_ref", radii_ref), ("radii_sample", radii_sample)):
        assert got.shape == z[name].shape and got.dtype == z[name].dtype
        assert _rel(got, z[name]) <= tol[name], name
    dist = est.distances(ref, sample)
    assert dist.shape == z["dist_ref_sample"].shape
    assert _rel(dist, z["dist_ref_sample"]) <= tol["dist_ref_sample"]
    precision, recall = est.evaluate_pr(ref, radii_ref, sample, radii_sample)
    assert abs(precision[0] - z["precision"]) / z["precision"] <= tol["precision"]
    assert abs(recall[0] - z["recall"]) / z["recall"] <= tol["recall"]

    scale = np.float32(config["pr_overflow_scale"])
    p, r = compute_prec_recall(ref * scale, sample * scale, estimator=est)
    assert (
        abs(p - z["pr_overflow_precision"]) / z["pr_overflow_precision"]
        <= tol["pr_overflow_precision"]
    )
    assert abs(r - z["pr_overflow_recall"]) / z["pr_overflow_recall"] <= tol["pr_overflow_recall"]
