"""SmoothQuant, zero-centering shift, GPS and DGC math: fixture parity and naive re-implementations."""

import functools

import numpy as np
import pytest

import quant
from quant.algorithms import dgc_core, gps_core, shift_core, smoothquant_core

F32 = np.float32
BITS = (4, 6, 8)


@functools.lru_cache(maxsize=1)
def _load_cases(path: str) -> dict:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture
def cases(reference):
    return _load_cases(str(reference("quant", "cases.npz")))


def _ulps(a, b):
    a, b = np.asarray(a, F32), np.asarray(b, F32)
    return np.abs(a.view(np.int32).astype(np.int64) - b.view(np.int32).astype(np.int64))


def _gps_inputs(cases, bits):
    x, w = cases[f"gps_b{bits}_x"], cases[f"gps_b{bits}_w"]  # w: torch [O, C]
    a_delta, a_zp = (quant.ema_update(None, v) for v in quant.fit_uniform_per_channel(x, bits))
    w_delta, w_zp = (quant.ema_update(None, v) for v in quant.fit_uniform_per_row(w, bits))
    w_hat = quant.fake_quant_uniform(w, w_delta, w_zp, bits)
    return x, w, a_delta, a_zp, w_hat


# ---------------------------------------------------------------------------------------------
# SmoothQuant.


@pytest.mark.parametrize("bits", BITS)
def test_smoothquant_scales_match_official(cases, bits):
    x, w = cases[f"gps_b{bits}_x"], cases[f"gps_b{bits}_w"]
    s = smoothquant_core.smoothquant_scales(
        smoothquant_core.act_absmax_per_channel(x),
        smoothquant_core.weight_absmax_per_in_channel(w.T),
    )
    ref = cases[f"gps_b{bits}_sq_scales"]
    assert s.dtype == F32 and s.shape == ref.shape
    # sqrt/sqrt in float32; the reference differs in at most 2 of 96 by one ulp (torch's pow).
    assert _ulps(s, ref).max() <= 1 and np.sum(s != ref) <= 2
    np.testing.assert_allclose(s, ref, rtol=2e-7)


def test_smoothquant_formula_and_clamp():
    rng = np.random.default_rng(1)
    a = np.abs(rng.standard_normal(17)).astype(F32) * 5
    w = np.abs(rng.standard_normal(17)).astype(F32)
    a[3], w[5] = 0, 0
    for alpha in (0.5, 0.3, 0.8):
        s = smoothquant_core.smoothquant_scales(a, w, alpha)
        aa, ww = np.maximum(a, 1e-6).astype(np.float64), np.maximum(w, 1e-6).astype(np.float64)
        np.testing.assert_allclose(s, aa**alpha / ww ** (1 - alpha), rtol=1e-6)
    with pytest.raises(ValueError, match="differ"):
        smoothquant_core.smoothquant_scales(a, w[:5])


# ---------------------------------------------------------------------------------------------
# Zero-centering shift.


@pytest.mark.parametrize("bits", BITS)
def test_sym_shift_matches_official(cases, bits):
    a_delta, a_zp = cases[f"gps_b{bits}_act_delta"], cases[f"gps_b{bits}_act_zp"]
    ratio, shift, t_delta, t_zp = shift_core.calculate_sym_shift(a_delta, a_zp, bits)
    for name, got in (
        ("shift_ratio", ratio),
        ("shift", shift),
        ("shift_target_delta", t_delta),
        ("shift_target_zp", t_zp),
    ):
        ref = cases[f"gps_b{bits}_{name}"]
        assert got.shape == ref.shape and got.dtype == ref.dtype, name
        np.testing.assert_array_equal(got, ref, err_msg=name)


def test_sym_shift_centres_the_range_and_folds_into_bias():
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((3, 11, 13)) * rng.uniform(0.5, 2, 13) + rng.normal(0, 3, 13)).astype(
        F32
    )
    delta, zp = quant.fit_uniform_per_channel(x, 6)
    _, shift, t_delta, t_zp = shift_core.calculate_sym_shift(delta, zp, 6)
    np.testing.assert_allclose(shift, delta.ravel() * (31 - zp.ravel()), rtol=1e-5, atol=1e-6)
    # the shifted channel's range [-zΔ, (63 - z)Δ] - b == [-31Δ, 32Δ]
    lo = -zp.ravel() * delta.ravel() - shift
    np.testing.assert_allclose(lo, -31 * t_delta, rtol=1e-5)
    assert t_zp == 31
    kernel = rng.standard_normal((13, 7)).astype(F32)
    bias = rng.standard_normal(7).astype(F32)
    new_bias = shift_core.fold_shift_into_bias(kernel, bias, shift)
    np.testing.assert_allclose(
        (x - shift) @ kernel + new_bias, x @ kernel + bias, rtol=1e-4, atol=1e-4
    )


# ---------------------------------------------------------------------------------------------
# GPS.


@pytest.mark.parametrize("bits", BITS)
def test_gps_scales_match_official(cases, bits):
    x, w, a_delta, a_zp, w_hat = _gps_inputs(cases, bits)
    np.testing.assert_array_equal(a_delta.ravel(), cases[f"gps_b{bits}_act_delta"])
    np.testing.assert_array_equal(a_zp.ravel(), cases[f"gps_b{bits}_act_zp"])
    s = gps_core.calculate_scales_hessian(x, w.T, a_delta, a_zp, w_hat.T, bits)
    ref = cases[f"gps_b{bits}_scales"]
    # float32 sums in torch vs float64 sums here: at most 2 ulps apart.
    assert _ulps(s, ref).max() <= 2
    np.testing.assert_allclose(s, ref, rtol=3e-7)


def _naive_gps(x, w_out_in, a_delta, a_zp, w_hat_out_in, bits):
    """The official loop, in float64."""
    l = np.asarray(x, np.float64).reshape(-1, x.shape[-1]).T  # [C, M]
    w, wq = np.asarray(w_out_in, np.float64), np.asarray(w_hat_out_in, np.float64)
    rx = l.max(1) - l.min(1)
    rw = w.max(0) - w.min(0)
    k = int(np.argmax(rx))
    s_std = np.sqrt(rx[k]) / np.sqrt(rw[k])
    dk, zk = float(a_delta.ravel()[k]), float(a_zp.ravel()[k])
    ql = (np.clip(np.round(l / dk) + zk, 0, 2**bits - 1) - zk) * dk
    out = np.ones(l.shape[0])
    for i in range(l.shape[0]):
        if i == k:
            out[i] = s_std
            continue
        num = np.sum(l[i] ** 2) * np.sum((w[:, i] - wq[:, i]) ** 2)
        den = np.sum((l[i] - ql[i]) ** 2) * np.sum(wq[:, i] ** 2)
        out[i] = 1.0 if den == 0 else (s_std**4 * num / den) ** 0.25
    return out


@pytest.mark.parametrize("bits", (5, 8))
def test_gps_fresh_seed_vs_naive_loop(bits):
    rng = np.random.default_rng(3)
    x = rng.standard_t(4, size=(2, 23, 29)).astype(F32)
    x[..., 7] *= 30  # an outlier channel sets k and the shared grid
    w = (rng.standard_normal((31, 29)) * 0.1).astype(F32)  # torch [O, C]
    a_delta, a_zp = quant.fit_uniform_per_channel(x, bits)
    w_delta, w_zp = quant.fit_uniform_per_row(w, bits)
    w_hat = quant.fake_quant_uniform(w, w_delta, w_zp, bits)
    s = gps_core.calculate_scales_hessian(x, w.T, a_delta, a_zp, w_hat.T, bits)
    want = _naive_gps(x, w, a_delta, a_zp, w_hat, bits)
    np.testing.assert_allclose(s, want, rtol=1e-5)
    assert s[7] == F32(np.sqrt(np.ptp(x[..., 7])) / np.sqrt(np.ptp(w[:, 7])))


def test_gps_zero_denominator_gives_one():
    x = np.zeros((1, 5, 3), F32)
    x[0, :, 0] = np.arange(5)  # channel 0 is the widest; channels 1, 2 are 0 -> Δx = 0
    w = np.arange(12, dtype=F32).reshape(4, 3) / 7
    s = gps_core.calculate_scales_hessian(x, w.T, np.full(3, 0.1, F32), np.zeros(3, F32), w.T, 8)
    np.testing.assert_array_equal(s[1:], [1.0, 1.0])


# ---------------------------------------------------------------------------------------------
# DGC.


def test_dgc_distance_matches_official_full_rank(cases):
    d = dgc_core.mahalanobis_distances(cases["dgc_n128_d64_features"])
    # the reference ran pinv in float32 on a covariance with condition number ~3e3: its own
    # rounding is ~1e-6 relative (we compute in float64).
    np.testing.assert_allclose(d, cases["dgc_n128_d64_dist"], rtol=1e-5)
    assert np.ptp(d) > 1  # informative when n > d


def test_dgc_distance_degenerate_when_n_le_d(cases):
    d = dgc_core.mahalanobis_distances(cases["dgc_n128_d256_features"])
    np.testing.assert_allclose(d, 127 / np.sqrt(128), rtol=1e-9)
    np.testing.assert_allclose(d, cases["dgc_n128_d256_dist"], rtol=1e-6)


def _naive_ledoit_wolf(f):
    n, d = f.shape
    x = f - f.mean(0)
    s = x.T @ x / n
    mu = np.trace(s) / d
    delta2 = np.linalg.norm(s - mu * np.eye(d), "fro") ** 2
    b2 = sum(np.linalg.norm(np.outer(xi, xi) - s, "fro") ** 2 for xi in x) / n**2
    rho = min(b2, delta2) / delta2
    return (1 - rho) * s + rho * mu * np.eye(d), rho


def test_ledoit_wolf_vs_naive_and_informative_when_n_le_d():
    rng = np.random.default_rng(4)
    f = rng.standard_normal((29, 41)) @ np.diag(np.linspace(0.1, 3, 41))
    f[:3] *= 4  # three atypical samples
    cov, rho = dgc_core.ledoit_wolf_covariance(f)
    want_cov, want_rho = _naive_ledoit_wolf(f)
    assert 0 < rho < 1
    np.testing.assert_allclose(rho, want_rho, rtol=1e-10)
    np.testing.assert_allclose(cov, want_cov, rtol=1e-10, atol=1e-12)
    d = dgc_core.mahalanobis_distances_ledoit_wolf(f)
    x = f - f.mean(0)
    np.testing.assert_allclose(
        d, np.sqrt(np.einsum("nd,de,ne->n", x, np.linalg.inv(want_cov), x)), rtol=1e-9
    )
    np.testing.assert_allclose(dgc_core.mahalanobis_distances(f), 28 / np.sqrt(29), rtol=1e-8)
    assert set(np.argsort(-d)[:3]) == {0, 1, 2}


def test_dgc_ratio_rule_and_counts():
    same = np.full(128, 127 / np.sqrt(128))
    assert dgc_core.dgc_cond_ratio(same, same + 5e-4) == 0.5
    rng = np.random.default_rng(5)
    cond = rng.uniform(5, 11, 128)
    uncond = np.zeros(128)
    assert dgc_core.dgc_cond_ratio(cond, uncond) == 1.0
    mixed = np.concatenate([np.full(96, 10.0), np.full(32, 1.0)])
    assert dgc_core.dgc_cond_ratio(mixed, np.full(128, 5.0)) == 96 / 128
    assert dgc_core.dgc_keep_counts(0.5, 32) == (16, 16)
    assert dgc_core.dgc_keep_counts(1.0, 128) == (128, 0)
    assert dgc_core.dgc_keep_counts(0.5, 5) == (2, 3)  # Python round: 2.5 -> 2
