"""Percentile-MSE uniform and log-√2 quantizers: parity with the official fixture, a naive
per-row re-implementation on fresh data, the numpy fallback and the deployable builders."""

import functools

import jax.numpy as jnp
import numpy as np
import pytest

import quant
from quant import _quantizers as qz

F32 = np.float32
BITS = (4, 6, 8)
VAR_SIZES = (1, 4, 9, 16, 25, 36, 64, 100, 169, 256)


@functools.lru_cache(maxsize=1)
def _load_cases(path: str) -> dict:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture
def cases(reference):
    return _load_cases(str(reference("quant", "cases.npz")))


def _ema(v):
    return quant.ema_update(None, v)


# ---------------------------------------------------------------------------------------------
# Parity with the official quantizers (quant/cases.npz): Δ, z and x̂ are bit-identical.


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize(
    "kind,fit,xname,hname",
    [
        ("uq_tensor", quant.fit_uniform_per_tensor, "x", "xhat"),
        ("uq_rows", quant.fit_uniform_per_row, "w", "what"),
        ("uq_chan", quant.fit_uniform_per_channel, "x", "xhat"),
    ],
    ids=["tensor", "rows", "chan"],
)
def test_uniform_matches_official(cases, bits, kind, fit, xname, hname):
    x = cases[f"{kind}_b{bits}_{xname}"]
    delta, zp = fit(x, bits)
    # The fixture ran the official forward once: its EMA (0.1·new + 0.9·new) is applied.
    delta, zp = _ema(delta), _ema(zp)
    ref_delta, ref_zp = cases[f"{kind}_b{bits}_delta"], cases[f"{kind}_b{bits}_zp"]
    assert delta.shape == ref_delta.shape and zp.shape == ref_zp.shape
    np.testing.assert_array_equal(delta, ref_delta)
    np.testing.assert_array_equal(zp, ref_zp)
    xhat = quant.fake_quant_uniform(x, delta, zp, bits)
    np.testing.assert_array_equal(xhat, cases[f"{kind}_b{bits}_{hname}"])  # 0 tie mismatches


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("kind,sizes", [("scale", VAR_SIZES), ("sink", (1, 679))])
def test_token_groups_match_official(cases, bits, kind, sizes):
    x = cases[f"tok_b{bits}_x"]
    delta, zp = quant.fit_uniform_token_groups(x, bits, sizes)
    delta, zp = _ema(delta), _ema(zp)
    np.testing.assert_array_equal(delta, cases[f"tok_{kind}_b{bits}_delta"])
    np.testing.assert_array_equal(zp, cases[f"tok_{kind}_b{bits}_zp"])
    g = quant.group_table(sizes)
    xhat = quant.fake_quant_uniform(x, delta[g][None, :, None], zp[g][None, :, None], bits)
    np.testing.assert_array_equal(xhat, cases[f"tok_{kind}_b{bits}_xhat"])


@pytest.mark.parametrize("bits", BITS)
def test_log2_matches_official(cases, bits):
    p = cases[f"log2_b{bits}_p"]
    delta = _ema(quant.fit_log2(p, bits))
    np.testing.assert_array_equal(delta, cases[f"log2_b{bits}_delta"])
    np.testing.assert_array_equal(
        quant.fake_quant_log2(p, delta, bits), cases[f"log2_b{bits}_phat"]
    )


@pytest.mark.parametrize("bits", (4,))
def test_device_path_matches_host_path(cases, bits):
    """jax inputs: order statistics and MSE on device give the same (Δ, z) on the fixture."""
    for fit, name in (
        (quant.fit_uniform_per_tensor, f"uq_tensor_b{bits}_x"),
        (quant.fit_uniform_per_row, f"uq_rows_b{bits}_w"),
        (quant.fit_uniform_per_channel, f"uq_chan_b{bits}_x"),
    ):
        x = cases[name]
        d_host, z_host = fit(x, bits)
        d_dev, z_dev = fit(jnp.asarray(x), bits)
        np.testing.assert_array_equal(d_dev, d_host, err_msg=name)
        np.testing.assert_array_equal(z_dev, z_host, err_msg=name)
    x = cases[f"tok_b{bits}_x"]
    for a, b in zip(
        quant.fit_uniform_token_groups(jnp.asarray(x), bits, VAR_SIZES),
        quant.fit_uniform_token_groups(x, bits, VAR_SIZES),
    ):
        np.testing.assert_array_equal(a, b)


def test_ema_first_batch_is_not_bit_identity():
    # torch: 0.1f·7 + 0.9f·7 = 6.9999995f — the fixture's zero points carry this.
    assert quant.ema_update(None, F32(7)) == F32(6.9999995)
    np.testing.assert_array_equal(
        quant.ema_update(F32(2), F32(12)), F32(0.1) * F32(12) + F32(0.9) * F32(2)
    )


# ---------------------------------------------------------------------------------------------
# Fresh data (another seed, prime dims) against an independent naive per-row implementation.


def _naive_search(v, bits, include_zero=False):
    """One quantizer, loops, float64 np.quantile at the float32-rounded p (the official ranks)."""
    v = np.asarray(v, F32).ravel()
    best, out = np.inf, None
    for p in (0.999, 0.9999, 0.99999):
        hi = F32(np.quantile(v.astype(np.float64), float(F32(p)), method="linear"))
        lo = F32(np.quantile(v.astype(np.float64), float(F32(1.0 - p)), method="linear"))
        if include_zero:
            hi, lo = max(hi, F32(-1e-8)), min(lo, F32(1e-8))
        delta = F32((hi - lo) / F32(2**bits - 1))
        zp = F32(np.round(-lo / delta))
        q = np.clip(np.round(v / delta) + zp, 0, 2**bits - 1)
        err = v - ((q - zp) * delta).astype(F32)
        mse = np.mean((err * err).astype(np.float64))
        if mse < best:
            best, out = mse, (delta, zp)
    return out


def _data(seed, shape, heavy=True):
    rng = np.random.default_rng(seed)
    x = rng.standard_t(3, size=shape) if heavy else rng.standard_normal(shape)
    offsets = rng.normal(0, 2, size=shape[-1])
    return (x * rng.uniform(0.2, 3, size=shape[-1]) + offsets).astype(F32)


def _assert_close_to_naive(delta, zp, naive, x, xhat_axis_rows, bits):
    nd = np.array([d for d, _ in naive], F32)
    nz = np.array([z for _, z in naive], F32)
    np.testing.assert_allclose(delta, nd, rtol=1e-6)
    np.testing.assert_array_equal(zp, nz)
    # x̂ agree to float rounding, except elements where a 1-ulp Δ moves round(x/Δ) across a
    # tie: those differ by exactly one step Δ. Both kinds are counted.
    a = quant.fake_quant_uniform(x, delta.reshape(xhat_axis_rows), zp.reshape(xhat_axis_rows), bits)
    b = quant.fake_quant_uniform(x, nd.reshape(xhat_axis_rows), nz.reshape(xhat_axis_rows), bits)
    step = np.broadcast_to(nd.reshape(xhat_axis_rows), x.shape)
    diff = np.abs(a - b)
    tie = ~np.isclose(diff, 0, atol=1e-5 * np.abs(step))
    assert tie.sum() <= 2, f"{tie.sum()} tie flips"
    np.testing.assert_allclose(diff[tie], step[tie], rtol=1e-5)


@pytest.mark.parametrize("bits", (2, 3, 5, 8))
def test_per_row_fresh_seed_vs_naive(bits):
    w = _data(11, (37, 211))  # torch [O, I]: 37 rows of 211 values
    delta, zp = quant.fit_uniform_per_row(w, bits)
    naive = [_naive_search(w[i], bits) for i in range(w.shape[0])]
    _assert_close_to_naive(delta.ravel(), zp.ravel(), naive, w, (-1, 1), bits)


@pytest.mark.parametrize("bits", (4, 7))
def test_per_channel_fresh_seed_vs_naive(bits):
    x = _data(12, (3, 29, 53))
    delta, zp = quant.fit_uniform_per_channel(x, bits)
    assert delta.shape == (1, 1, 53)
    naive = [_naive_search(x[..., c], bits) for c in range(53)]
    _assert_close_to_naive(delta.ravel(), zp.ravel(), naive, x, (1, 1, -1), bits)


@pytest.mark.parametrize("include_zero", (False, True))
def test_token_groups_table_vs_naive(include_zero):
    """Interleaved (non-contiguous) groups via a table; all-positive data exercises the RAR clamp."""
    x = np.abs(_data(13, (2, 23, 17))) + F32(0.5) * include_zero
    table = np.array([0, 1] + [2, 3, 4] * 7, np.int32)
    delta, zp = quant.fit_uniform_token_groups(
        x, 6, group_of_position=table, include_zero=include_zero
    )
    naive = [_naive_search(x[:, table == g, :], 6, include_zero) for g in range(5)]
    np.testing.assert_allclose(delta, [d for d, _ in naive], rtol=1e-6)
    np.testing.assert_array_equal(zp, [z for _, z in naive])
    if include_zero:  # 0 lies in every range: z inside the code range
        assert np.all((zp >= 0) & (zp <= 63))


def test_per_tensor_fresh_seed_vs_naive():
    x = _data(14, (5, 31, 41))
    for bits in (3, 6, 8):
        d, z = quant.fit_uniform_per_tensor(x, bits)
        nd, nz = _naive_search(x, bits)
        assert d.shape == () and z == nz
        np.testing.assert_allclose(d, nd, rtol=1e-6)


def test_generic_reduce_axes_transposed():
    x = _data(15, (7, 5, 11))
    d, z = quant.search_uniform_params(x, 5, reduce_axes=(0, 2))  # quantizer per middle index
    assert d.shape == (1, 5, 1)
    for j in range(5):
        nd, nz = _naive_search(x[:, j, :], 5)
        np.testing.assert_allclose(d[0, j, 0], nd, rtol=1e-6)
        assert z[0, j, 0] == nz


def test_constant_rows_stay_representable():
    w = np.stack([np.zeros(13, F32), np.full(13, 2.5, F32), np.full(13, -0.75, F32)])
    d, z = quant.fit_uniform_per_row(w, 8)
    assert np.all(d > 0) and np.all(np.isfinite(d))
    np.testing.assert_allclose(quant.fake_quant_uniform(w, d, z, 8), w, rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# Quantile rules (torch for <= 2**24 values, np.percentile above).


@pytest.mark.parametrize("n", (2, 3, 97, 1009, 20011))
def test_numpy_method_equals_np_percentile(n):
    x = _data(16, (n,))
    for p in (0.999, 0.9999, 0.99999):
        got = quant.official_quantile(x, p, method="numpy")
        assert got == np.percentile(x, p * 100)
        got = quant.official_quantile(x, p, upper=False, method="numpy")
        assert got == np.percentile(x, (1 - p) * 100)


def test_torch_method_rank_rule():
    # n = 96: rank = float64(float32(0.99999))·95 = 94.99904870987, not the float32-rounded
    # 94.999046 (what fixed the fixture's weight rows); lerp between s[94] and s[95].
    s = np.arange(96, dtype=F32) * F32(2) + F32(1)
    x = s[::-1].copy()
    r = float(F32(0.99999)) * 95
    want = F32(np.float64(s[94]) + np.float64(F32(r - 94)) * np.float64(s[95] - s[94]))
    assert quant.official_quantile(x, 0.99999, method="torch") == want
    assert quant.official_quantile(x, 0.99999) == want  # torch rule for n <= 2**24


def test_fallback_above_2pow24_matches_naive_percentile():
    """Above 2**24 values the official code uses np.percentile; our O(n) partition agrees."""
    n = qz.TORCH_QUANTILE_MAX_ELEMENTS + 3
    rng = np.random.default_rng(17)
    x = rng.standard_normal(n, dtype=F32)
    x[rng.integers(0, n, 50)] *= F32(40)
    delta, zp = quant.fit_uniform_per_tensor(x, 8)
    best, want = np.inf, None
    for p in (0.999, 0.9999, 0.99999):
        hi, lo = F32(np.percentile(x, p * 100)), F32(np.percentile(x, (1 - p) * 100))
        d = F32((hi - lo) / F32(255))
        z = F32(np.round(-lo / d))
        e = x - quant.fake_quant_uniform(x, d, z, 8)
        mse = np.sum(e * e, dtype=np.float64)
        if mse < best:
            best, want = mse, (d, z)
    assert (delta, zp) == want


# ---------------------------------------------------------------------------------------------
# Builders of QArray / ActQuant / LogSqrt2Quant.


@pytest.mark.parametrize("bits", (4, 6, 8))
def test_quantize_weight_asymmetric_is_official_per_output_row(bits):
    kernel = _data(18, (43, 19), heavy=False) * F32(0.1)  # Flax [I, O]
    qa = quant.quantize_weight(kernel, bits)
    qa.validate()
    assert qa.qvalue.shape == (43, 19) and qa.scale.shape == (1, 19)
    d, z = quant.fit_uniform_per_row(kernel.T, bits)  # torch [O, I]
    np.testing.assert_array_equal(qa.scale, d.T)
    np.testing.assert_array_equal(np.asarray(qa.zero_point) + 2 ** (bits - 1), z.T)
    np.testing.assert_array_equal(qa.dequantize(), quant.fake_quant_uniform(kernel.T, d, z, bits).T)


def test_quantize_weight_symmetric():
    kernel = _data(19, (29, 13), heavy=False)
    kernel[:, 3] = 0
    qa = quant.quantize_weight(kernel, 6, symmetric=True)
    qa.validate()
    np.testing.assert_array_equal(qa.zero_point, np.zeros((1, 13), F32))
    amax = np.max(np.abs(kernel), axis=0)
    np.testing.assert_allclose(qa.scale[0, :3], amax[:3] / 31, rtol=1e-7)
    assert qa.scale[0, 3] == 1 and np.all(np.asarray(qa.qvalue)[:, 3] == 0)
    assert np.abs(np.asarray(qa.qvalue)).max() == 31
    err = np.abs(np.asarray(qa.dequantize()) - kernel)
    assert np.all(err <= np.asarray(qa.scale) / 2 + 1e-6)


def test_fit_act_quant_per_tensor_and_groups():
    x = _data(20, (3, 10, 7))
    aq = quant.fit_act_quant(x, 6)
    aq.validate()
    assert aq.per_tensor
    d, z = quant.fit_uniform_per_tensor(x, 6)
    np.testing.assert_array_equal(
        aq.fake_quant(jnp.asarray(x)), quant.fake_quant_uniform(x, d, z, 6)
    )
    sizes = (1, 4, 5)
    aq = quant.fit_act_quant(x, 8, sizes)
    aq.validate()
    d, z = quant.fit_uniform_token_groups(x, 8, sizes)
    np.testing.assert_array_equal(aq.scale, d)
    np.testing.assert_array_equal(np.asarray(aq.zero_point) + 128, z)
    g = quant.group_table(sizes)
    want = quant.fake_quant_uniform(x, d[g][None, :, None], z[g][None, :, None], 8)
    np.testing.assert_array_equal(aq.fake_quant(jnp.asarray(x), np.arange(10)), want)


def test_group_table_rejects_bad_input():
    with pytest.raises(ValueError, match="exactly one"):
        quant.group_table((1, 2), np.zeros(3, np.int32))
    with pytest.raises(ValueError, match="positive"):
        quant.group_table((1, 0, 2))
    with pytest.raises(ValueError, match="each used"):
        quant.group_table(group_of_position=np.array([0, 2, 2]))
    with pytest.raises(ValueError, match="T=5"):
        quant.fit_uniform_token_groups(np.zeros((1, 5, 2), F32), 8, (1, 3))


def test_log_sqrt2_jax_matches_numpy():
    rng = np.random.default_rng(21)
    logits = rng.normal(0, 3, size=(2, 3, 17, 17)).astype(F32)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p = (p / p.sum(-1, keepdims=True)).astype(F32)
    p[0, 0, 0, :3] = 0
    for bits in (4, 8):
        lq = quant.fit_log_sqrt2_quant(p, bits)
        got = np.asarray(lq.fake_quant(jnp.asarray(p)))
        want = quant.fake_quant_log2(p, np.asarray(lq.delta), bits)
        # XLA's log2 may differ from numpy's by an ulp, flipping a rounding tie at .5.
        assert np.sum(got != want) <= 3
        assert np.all(got[0, 0, 0, :3] == 0)
        # levels: Δ·2^(-k/2) up to the √2 rounding of odd codes
        nz = want[want > 0] / np.asarray(lq.delta)
        k = -2 * np.log2(nz.astype(np.float64))
        np.testing.assert_allclose(k, np.round(k), atol=1e-5)
