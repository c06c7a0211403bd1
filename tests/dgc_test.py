"""DGC and calibration-candidate generation on the reference VAR: official degeneracy, shrinkage
selection, determinism, the `prepare_calibration` entry point."""

import functools

import jax.numpy as jnp
import numpy as np
import pytest
from _var_calibration import NUM_IMAGES, candidate_batch, candidates, reference_model

from arvg_jax.families.var.calibration import calibration_batch
from arvg_jax.families.var.model import VAR
from arvg_jax.families.var.quant_adapter import VARAdapter
from arvg_jax.models import prepare_calibration
from quant.algorithms import dgc
from quant.algorithms.dgc_core import mahalanobis_distances_ledoit_wolf
from quant.recipes import Recipe


@pytest.fixture
def var_dir(reference):
    return str(reference("var"))


@functools.cache
def _features(var_dir: str) -> np.ndarray:
    m = reference_model(var_dir)
    return VARAdapter(m.cfg).token0_features(m.params, candidate_batch(var_dir))


@pytest.mark.slow  # generation-heavy; prepare_calibration test stays in the default run
def test_candidates_are_both_cfg_halves_of_each_image(var_dir):
    m = reference_model(var_dir)
    c = candidates(var_dir)
    n = NUM_IMAGES
    assert c.labels.shape == (2 * n,) and c.tokens.shape == (2 * n, m.cfg.seq_len)
    np.testing.assert_array_equal(c.tokens[:n], c.tokens[n:])
    assert np.all(c.labels[n:] == m.cfg.num_classes)  # the null class
    assert np.all((c.labels[:n] >= 0) & (c.labels[:n] < m.cfg.num_classes))
    np.testing.assert_array_equal(c.is_cond, np.arange(2 * n) < n)
    np.testing.assert_array_equal(c.image, np.tile(np.arange(n), 2))
    assert c.tokens.min() >= 0 and c.tokens.max() < m.cfg.vocab_size
    assert len({tuple(t) for t in c.tokens[:n]}) == n  # distinct images


def test_features_are_last_block_token0_without_mask(var_dir):
    m = reference_model(var_dir)
    batch = candidate_batch(var_dir)
    model, variables = VAR(m.cfg), {"params": m.params}
    x, cond = model.apply(variables, jnp.asarray(batch["labels"]), batch["x"], method=VAR.embed)
    for i in range(m.cfg.depth):
        x = model.apply(variables, x, cond, i=i, attn_mask="none", method=VAR.apply_block)
    np.testing.assert_allclose(_features(var_dir), np.asarray(x[:, 0]), rtol=1e-5, atol=1e-5)
    # Without a mask token 0 sees the image, so the uncond features differ across images.
    unc = _features(var_dir)[NUM_IMAGES:]
    assert np.min(np.linalg.norm(unc[1:] - unc[0], axis=-1)) > 1e-3


def test_official_rule_is_degenerate_when_n_le_d(var_dir):
    """n = 8 samples per half, d = 128 features: every pseudo-inverse distance is (n-1)/sqrt(n),
    so the official ratio is 0.5 and the first half of each generation batch is kept."""
    c = candidates(var_dir)
    f = _features(var_dir)
    n, d = NUM_IMAGES, f.shape[1]
    assert n <= d
    sel = dgc.select(f, c, "official")
    np.testing.assert_allclose(sel.distances, (n - 1) / np.sqrt(n), rtol=1e-4)
    assert sel.info == {"ratio": 0.5, "constant_distances": True}
    half = n // 2  # gen_batch = n: keep the first round(0.5 n) cond and uncond rows
    np.testing.assert_array_equal(sel.indices, np.r_[0:half, n : n + half])
    assert sel.cond_fraction == 0.5


def test_shrinkage_distances_vary_and_selection_is_deterministic(var_dir):
    c = candidates(var_dir)
    f = _features(var_dir)
    to_mean, pair, rho = dgc.pooled_mahalanobis(f)
    assert 0 < rho < 1
    official = dgc.select_official(f, c).distances
    assert np.ptp(official) / np.mean(official) < 1e-4  # constant: carries no information
    # Ledoit-Wolf distances spread by percents (in-group ones less: 8 points in 128 dimensions are
    # nearly equidistant from their mean), all distinct, so the ranking is informative.
    for dist in [to_mean] + [
        mahalanobis_distances_ledoit_wolf(f[h]) for h in (c.is_cond, ~c.is_cond)
    ]:
        assert np.ptp(dist) / np.mean(dist) > 1e-2
        assert len(np.unique(np.round(dist, 9))) == len(dist)
    np.testing.assert_allclose(pair, pair.T, atol=1e-9)
    sel = dgc.select(f, c)  # default mode
    again = dgc.select(f.copy(), c, "shrinkage")
    assert sel.mode == "shrinkage"
    np.testing.assert_array_equal(sel.indices, again.indices)
    assert sel.info == again.info
    assert len(sel.indices) == NUM_IMAGES and len(np.unique(sel.indices)) == NUM_IMAGES
    assert np.all(np.diff(sel.indices) > 0)
    # The first pick is the medoid: the candidate with the smallest total distance to the rest.
    assert sel.info["pick_order"][0] == int(np.argmin(pair.sum(axis=0)))
    # `candidate_features` recomputes them identically: the selection is a pure function of the
    # model and the candidates.
    m = reference_model(var_dir)
    f2 = dgc.candidate_features(
        VARAdapter(m.cfg), m.params, calibration_batch(m.vae_params, m.vae_cfg, c)
    )
    np.testing.assert_array_equal(f2, f)


def test_facility_location_covers_clusters_before_duplicating():
    rng = np.random.default_rng(0)
    centers = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    # Cluster 0 has 12 near-identical points, clusters 1 and 2 have 3 each.
    pts = np.concatenate(
        [
            centers[0] + 1e-3 * rng.standard_normal((12, 2)),
            centers[1] + 0.5 * rng.standard_normal((3, 2)),
            centers[2] + 0.5 * rng.standard_normal((3, 2)),
        ]
    )
    pair = np.linalg.norm(pts[:, None] - pts[None], axis=-1)
    picks = dgc.facility_location(pair, 3)
    cluster = np.r_[np.zeros(12), np.ones(3), 2 * np.ones(3)].astype(int)
    assert sorted(cluster[picks]) == [0, 1, 2]  # one per cluster, not 3 of the dense duplicates
    assert cluster[picks[0]] == 0  # density first: the big cluster's medoid
    np.testing.assert_array_equal(dgc.facility_location(pair, 3), picks)
    with pytest.raises(ValueError, match="cannot choose"):
        dgc.facility_location(pair, 19)


@pytest.mark.slow  # regenerates the candidates (~85 s); the CLI quantize test runs this path end to end
def test_prepare_calibration_generates_and_selects(var_dir):
    m = reference_model(var_dir)
    c = candidates(var_dir)
    recipe = Recipe.parse("ptq4arvg", "w6a6", calib=NUM_IMAGES)  # seed 42, dgc "shrinkage"
    batch, info = prepare_calibration(
        m, VARAdapter(m.cfg), recipe, progress=False, gen_batch=NUM_IMAGES
    )
    want = dgc.select(_features(var_dir), c)  # regenerated candidates are the same
    assert info["indices"] == [int(i) for i in want.indices]
    assert info["num_candidates"] == 2 * NUM_IMAGES and info["dgc"] == "shrinkage"
    assert info["dgc_info"]["pick_order"] == want.info["pick_order"]
    ref = calibration_batch(m.vae_params, m.vae_cfg, c, want.indices)
    np.testing.assert_array_equal(batch["labels"], ref["labels"])
    np.testing.assert_array_equal(batch["x"], ref["x"])
    assert batch["x"].shape == (NUM_IMAGES, m.cfg.seq_len - 1, m.cfg.cvae)
