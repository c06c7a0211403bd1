"""ADM batch files and the evaluator pipeline (`evaluate`) on the fixture's image sets."""

import json

import numpy as np
import pytest

from arvg_jax.metrics import adm_npz
from arvg_jax.metrics.evaluator import EvalSettings, evaluate, read_statistics
from arvg_jax.metrics.fid import compute_statistics
from arvg_jax.metrics.isc import inception_score, softmax_from_pool
from arvg_jax.metrics.precision_recall import ManifoldEstimator, compute_prec_recall
from arvg_jax.metrics.reference import inception_config
from converters.inception import load_inception


def _images(n=10, h=5, w=7, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed], ids=["stored", "deflated"])
def test_iter_batches_streams_arr_0(tmp_path, save):
    images = _images()
    path = tmp_path / "batch.npz"
    save(path, arr_0=images)
    batches = list(adm_npz.iter_batches(path, 4))
    assert [len(b) for b in batches] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate(batches), images)
    assert adm_npz.array_shape(path) == (images.shape, np.dtype(np.uint8))


def test_iter_batches_fortran_order_and_errors(tmp_path):
    images = np.asfortranarray(_images())
    path = tmp_path / "f.npz"
    np.savez(path, arr_0=images)
    np.testing.assert_array_equal(np.concatenate(list(adm_npz.iter_batches(path, 3))), images)
    with pytest.raises(ValueError, match="no array 'arr_1'"):
        list(adm_npz.iter_batches(path, 3, key="arr_1"))
    with pytest.raises(ValueError, match="uint8"):
        adm_npz.write_batch(tmp_path / "bad.npz", images.astype(np.float32))


def test_read_statistics(tmp_path):
    images = _images()
    plain = tmp_path / "plain.npz"
    adm_npz.write_batch(plain, images)
    assert adm_npz.read_statistics(plain) is None
    acts = {"pool": np.random.default_rng(1).normal(size=(9, 5)).astype(np.float32)}
    acts["spatial"] = acts["pool"][:, :3]
    computed = read_statistics(plain, acts)
    np.testing.assert_array_equal(computed[1].sigma, compute_statistics(acts["spatial"]).sigma)
    cached = tmp_path / "cached.npz"
    mu, sigma = np.arange(5.0), np.eye(5)
    adm_npz.write_batch(cached, images, mu=mu, sigma=sigma, mu_s=mu[:3], sigma_s=sigma[:3, :3])
    pool, spatial = read_statistics(cached, acts)
    np.testing.assert_array_equal(pool.mu, mu)
    np.testing.assert_array_equal(spatial.sigma, np.eye(3))
    partial = tmp_path / "partial.npz"
    adm_npz.write_batch(partial, images, mu=mu)
    with pytest.raises(ValueError, match="not"):
        adm_npz.read_statistics(partial)


def test_evaluate_on_fixture_images(reference, tmp_path):
    """evaluate() on batch files of the fixture images equals the metrics of the fixture's own
    activations of those images (the official replica's). (Cached reference statistics are
    covered by test_read_statistics: with them FID takes two 2048² eigendecompositions.)"""
    folder = reference("eval", "io.npz").parent
    config = json.loads((folder / "config.json").read_text())
    with np.load(folder / "io.npz") as io:
        z = {k: io[k] for k in io.files}
    ref_set, sample_set = (s["name"] for s in config["image_sets"][:2])
    ref_path, sample_path = tmp_path / "ref.npz", tmp_path / "sample.npz"
    adm_npz.write_batch(ref_path, z[f"{ref_set}_images"])
    adm_npz.write_batch(sample_path, z[f"{sample_set}_images"])
    inc_cfg = inception_config(config)
    params = load_inception(folder / config["inception"]["weights"], inc_cfg)
    n_sample = len(z[f"{sample_set}_images"])
    settings = EvalSettings(
        is_split_size=max(1, n_sample // 2), manifold=ManifoldEstimator(nhood_sizes=(1,))
    )
    got = evaluate(params, ref_path, sample_path, settings=settings, config=inc_cfg)

    ref_pool, sample_pool = z[f"{ref_set}_pool"], z[f"{sample_set}_pool"]
    probs = softmax_from_pool(sample_pool, params["fc"]["kernel"])
    want = {"inception_score": inception_score(probs, settings.is_split_size)}
    for metric, kind in (("fid", "pool"), ("sfid", "spatial")):
        sample_stats = compute_statistics(z[f"{sample_set}_{kind}"])
        want[metric] = sample_stats.frechet_distance(compute_statistics(z[f"{ref_set}_{kind}"]))
    for k, v in want.items():
        assert got[k] == pytest.approx(v, rel=1e-4), k
    p, r = compute_prec_recall(ref_pool, sample_pool, estimator=settings.manifold)
    assert abs(got["precision"] - p) <= 1 / len(sample_pool)
    assert abs(got["recall"] - r) <= 1 / len(ref_pool)
