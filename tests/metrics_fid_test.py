"""FID / sFID statistics, the Fréchet distance and the Inception Score against the evaluator
fixture (reference/eval/io.npz, tolerances.json), plus the two trace routes against each other."""

import json

import numpy as np
import pytest

from arvg_jax.metrics import fid as F
from arvg_jax.metrics.isc import inception_score, softmax, softmax_from_pool
from converters.torch_reader import load_state_dict


@pytest.fixture(scope="module")
def fixture():
    from conftest import require_reference

    folder = require_reference("eval", "io.npz").parent
    with np.load(folder / "io.npz") as io:
        arrays = {k: io[k] for k in io.files}
    config = json.loads((folder / "config.json").read_text())
    tol = {
        k: v["tol"]
        for k, v in json.loads((folder / "tolerances.json").read_text()).items()
        if not k.startswith("_")
    }
    return folder, arrays, config, tol


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize(
    ("kind", "suffix", "metric"), [("pool", "", "fid"), ("spatial", "_s", "sfid")]
)
def test_statistics_and_frechet_distance(fixture, kind, suffix, metric):
    _, z, config, tol = fixture
    stride = config["sigma_rows_stride"]
    stats = {}
    for who in ("ref", "sample"):
        s = stats[who] = F.compute_statistics(z[f"{who}_{kind}"])
        assert s.mu.dtype == z[f"{who}_mu{suffix}"].dtype and s.sigma.dtype == np.float64
        assert _rel(s.mu, z[f"{who}_mu{suffix}"]) <= tol[f"{who}_mu{suffix}"]
        diag, rows = z[f"{who}_sigma{suffix}_diag"], z[f"{who}_sigma{suffix}_rows"]
        assert _rel(np.diagonal(s.sigma), diag) <= tol[f"{who}_sigma{suffix}_diag"]
        assert _rel(s.sigma[::stride], rows) <= tol[f"{who}_sigma{suffix}_rows"]
    # main(): sample_stats.frechet_distance(ref_stats)
    got = stats["sample"].frechet_distance(stats["ref"], eps=config["evaluator"]["frechet_eps"])
    assert abs(got - z[metric]) / abs(z[metric]) <= tol[metric], (got, z[metric])


@pytest.mark.parametrize(("n1", "n2", "d"), [(11, 7, 23), (29, 31, 13), (5, 40, 17)])
def test_trace_routes_agree(n1, n2, d):
    """Low-rank SVD route (both N <= D), eigh route and scipy's sqrtm give one distance."""
    rng = np.random.default_rng(n1 * n2 * d)
    x1 = rng.normal(size=(n1, d)).astype(np.float32)
    x2 = (rng.normal(size=(n2, d)) * 1.3 + 0.2).astype(np.float32)
    s1, s2 = F.compute_statistics(x1), F.compute_statistics(x2)
    assert (s1.factor is not None) == (n1 <= d)
    np.testing.assert_allclose(s1.sigma, np.cov(x1, rowvar=False), rtol=1e-12, atol=1e-14)
    by_eigh = F.frechet_distance(F.FIDStatistics(s1.mu, s1.sigma), F.FIDStatistics(s2.mu, s2.sigma))
    # On singular covariances the eigh route also takes √ of round-off eigenvalues (each
    # ~√(1e-16·‖σ‖)), which the SVD of the [N1, N2] cross product never sees.
    np.testing.assert_allclose(F.frechet_distance(s1, s2), by_eigh, rtol=1e-7)
    linalg = pytest.importorskip("scipy.linalg")
    covmean = linalg.sqrtm(s1.sigma @ s2.sigma).real
    diff = s1.mu - s2.mu
    want = diff @ diff + np.trace(s1.sigma) + np.trace(s2.sigma) - 2 * np.trace(covmean)
    np.testing.assert_allclose(by_eigh, want, rtol=1e-6)


def test_chunked_covariance_matches_np_cov():
    rng = np.random.default_rng(3)
    x = (rng.normal(size=(101, 13)) + 5).astype(np.float32)
    s = F.compute_statistics(x, chunk_size=17)
    assert s.factor is None
    np.testing.assert_allclose(s.sigma, np.cov(x, rowvar=False), rtol=1e-12)
    np.testing.assert_array_equal(s.mu, np.mean(x, axis=0))


def test_frechet_distance_shape_mismatch():
    a = F.FIDStatistics(np.zeros(3, np.float32), np.eye(3))
    b = F.FIDStatistics(np.zeros(4, np.float32), np.eye(4))
    with pytest.raises(ValueError, match="differ in shape"):
        a.frechet_distance(b)


def test_inception_scores(fixture):
    folder, z, config, tol = fixture
    fc_weight = load_state_dict(folder / config["inception"]["weights"])["fc.weight"]
    probs = {
        "pool": softmax_from_pool(z["sample_pool"], fc_weight.T),  # no fc.bias
        "logits": softmax(z["sample_logits"]),  # the softmax graph with W = I
    }
    for kind, p in probs.items():
        for name, split in (
            ("", config["is_split_size"]),
            ("_split5000", config["evaluator"]["is_split_size_default"]),
        ):
            got, want = inception_score(p, split), z[f"is_{kind}{name}"]
            assert abs(got - want) / want <= tol[f"is_{kind}{name}"], (kind, name, got, want)


def test_inception_score_splits():
    rng = np.random.default_rng(4)
    p = softmax(rng.normal(size=(10, 7)) * 3)
    one = inception_score(p, 10)
    assert inception_score(p, 100) == one
    parts = [inception_score(p[:4], 4), inception_score(p[4:8], 4), inception_score(p[8:], 4)]
    np.testing.assert_allclose(inception_score(p, 4), np.mean(parts), rtol=1e-6)
    assert inception_score(np.full((3, 5), 0.2, np.float32)) == pytest.approx(1.0)
