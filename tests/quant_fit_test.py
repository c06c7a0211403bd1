"""quant._fit: the traced percentile-MSE search against the host search, and one-forward
calibration (`fit_stages`) against the per-layer re-run (`run_calibration`, sequential)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _var_calibration import reference_model

import quant
import quant._quantizers as Q
from arvg_jax.families.var.quant_adapter import VARAdapter
from quant import _tree
from quant._calibrate import fit_stages, run_calibration
from quant._fit import ChannelQuant, FitInput, quantize_weight_jit, search_rows
from quant._oracle import OracleKernel

_search_jit = jax.jit(search_rows, static_argnames=("bits", "include_zero"))


def _heavy(rng, shape):
    """Heavy-tailed values with outliers, like activations."""
    x = rng.standard_t(3, size=shape).astype(np.float32)
    x[..., :1] *= 20
    return x


@pytest.mark.parametrize("bits", [8, 6, 4])
@pytest.mark.parametrize("include_zero", [False, True])
def test_search_rows_equals_host_search(bits, include_zero):
    rng = np.random.default_rng(bits + 10 * include_zero)
    for r, n in [(1, 1), (3, 2), (7, 61), (13, 1009), (2, 30011)]:
        x = _heavy(rng, (r, n)) + (0.5 if include_zero else 0)
        want = Q._search_2d(x, 1, bits, include_zero, Q.PERCENTILES)
        got = _search_jit(jnp.asarray(x), bits=bits, include_zero=include_zero)
        np.testing.assert_array_equal(np.asarray(got[0]), want[0], err_msg=f"Δ r={r} n={n}")
        np.testing.assert_array_equal(np.asarray(got[1]), want[1], err_msg=f"z r={r} n={n}")


def test_search_rows_numpy_quantile_method(monkeypatch):
    # Above 2**24 values the official code falls back to np.percentile; exercise that plan on
    # small rows by lowering the switch point for both searches.
    monkeypatch.setattr(Q, "TORCH_QUANTILE_MAX_ELEMENTS", 100)
    rng = np.random.default_rng(3)
    x = _heavy(rng, (5, 4099))
    want = Q._search_2d(x, 1, 8, False, Q.PERCENTILES)
    got = jax.jit(search_rows, static_argnames="bits")(jnp.asarray(x), bits=8)
    np.testing.assert_array_equal(np.asarray(got[0]), want[0])
    np.testing.assert_array_equal(np.asarray(got[1]), want[1])


def test_search_rows_constant_and_zero_rows():
    x = np.stack([np.zeros(17), np.full(17, 2.5), np.full(17, -3.0)]).astype(np.float32)
    want = Q._search_2d(x, 1, 8, False, Q.PERCENTILES)
    got = _search_jit(jnp.asarray(x), bits=8)
    np.testing.assert_array_equal(np.asarray(got[0]), want[0])
    np.testing.assert_array_equal(np.asarray(got[1]), want[1])


def test_order_statistics_handle_signed_zeros_and_infinities():
    from quant._fit import order_stats_rows

    x = np.array([[3.0, -0.0, 0.0, -np.inf, np.inf, -2.0, 1e-30, -1e-30]], np.float32)
    got = np.asarray(order_stats_rows(jnp.asarray(x), range(8)))
    np.testing.assert_array_equal(got[0], np.sort(x[0]))


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("bits", [8, 4])
def test_quantize_weight_jit_equals_host(symmetric, bits):
    rng = np.random.default_rng(7)
    kernel = (rng.standard_normal((67, 29)) * rng.uniform(0.1, 3, 29)).astype(np.float32)
    kernel[0, 3] = 0.0
    kernel[:, 5] = 0.0  # an all-zero output channel
    want = Q.quantize_weight(kernel, bits, symmetric=symmetric)
    got = quantize_weight_jit(jnp.asarray(kernel), bits, symmetric=symmetric)
    assert got.bits == want.bits
    for a in ("qvalue", "scale", "zero_point"):
        np.testing.assert_array_equal(np.asarray(getattr(got, a)), np.asarray(getattr(want, a)))


def test_fit_input_matches_host_quantizers():
    rng = np.random.default_rng(11)
    x = _heavy(rng, (3, 11, 7))
    table = np.array([0, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3], np.int32)
    fit = jax.jit(lambda spec, v: spec.fit_input(v), static_argnums=0)

    got = fit(FitInput.groups(8, table), jnp.asarray(x))
    want = Q.fit_act_quant(x, 8, group_of_position=table)
    for a in ("scale", "zero_point", "group_of_position"):
        np.testing.assert_array_equal(np.asarray(getattr(got, a)), np.asarray(getattr(want, a)))

    got = fit(FitInput.groups(6, np.zeros(1, np.int32)), jnp.asarray(x))
    want = Q.fit_act_quant(x, 6)
    assert got.per_tensor and got.bits == 6
    np.testing.assert_array_equal(np.asarray(got.scale), np.asarray(want.scale))
    np.testing.assert_array_equal(np.asarray(got.zero_point), np.asarray(want.zero_point))

    got = fit(FitInput("channel", 8, sink_tokens=1), jnp.asarray(x))
    want = ChannelQuant.fit(x, 8, sink_tokens=1)
    assert got.sink_tokens == 1
    np.testing.assert_array_equal(np.asarray(got.delta), np.asarray(want.delta))
    np.testing.assert_array_equal(np.asarray(got.zero_point), np.asarray(want.zero_point))


def test_fit_input_rejects_partial_sequences():
    spec = FitInput.groups(8, np.array([0, 0, 1], np.int32))
    with pytest.raises(ValueError, match=r"\[N, <= 3, C\]"):
        spec.fit_input(jnp.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match=r"groups \[1\] have no position"):
        spec.fit_input(jnp.zeros((2, 2, 4)))


def test_fit_input_groups_on_a_prefix_keep_the_whole_table():
    """PAR calibrates the first N positions of a table that also covers the bridge positions
    after them: a prefix holding every group fits those groups and keeps the full table."""
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 3, 4)), jnp.float32)
    table = np.array([0, 1, 1, 1, 1], np.int32)
    got = FitInput.groups(8, table).fit_input(x)
    want = FitInput.groups(8, table[:3]).fit_input(x)
    np.testing.assert_array_equal(np.asarray(got.group_of_position), table)
    np.testing.assert_array_equal(np.asarray(got.scale), np.asarray(want.scale))
    np.testing.assert_array_equal(np.asarray(got.zero_point), np.asarray(want.zero_point))


@pytest.mark.slow  # ~25 s
def test_fit_stages_equals_sequential_rerun(reference):
    """One forward per block with in-forward fits = re-running the block after every layer.

    The probe is stage B's: per-output-row fake-quantized weights, per-channel quantizers on the
    GPS layers (sink bypassed), token-group quantizers elsewhere; each layer must see the
    quantized layers before it.
    """
    m = reference_model(str(reference("var")))
    ad = VARAdapter(m.cfg)
    rng = np.random.default_rng(5)
    n = 3
    batch = {
        "labels": rng.integers(0, m.cfg.num_classes, n),
        "x": rng.standard_normal((n, m.cfg.seq_len - m.cfg.first_l, m.cfg.cvae)).astype(np.float32),
    }
    gps = set(ad.gps_layers())
    specs = {}
    for name in ad.quantized_layers():
        if name in gps:
            specs[name] = FitInput("channel", 6, sink_tokens=1 if ad.sink_excluded(name) else 0)
        else:
            specs[name] = FitInput.groups(6, ad.group_table(ad.stwq_granularity(name)))
    flat = _tree.flatten(m.params)
    kernels = {n_: quantize_weight_jit(jnp.asarray(flat[f"{n_}/kernel"]), 6) for n_ in specs}
    for name, spec in specs.items():
        flat[f"{name}/kernel"] = OracleKernel(kernels[name])
        flat[f"{name}/input_quant"] = spec
    got = fit_stages(ad, _tree.unflatten(flat), batch, progress=False)

    def visit(name, x, layer):
        x = np.asarray(x)
        spec = specs[name]
        if spec.kind == "channel":
            q = ChannelQuant.fit(x, 6, spec.sink_tokens)
        else:
            table = None if spec.table is None else np.asarray(spec.table)
            q = Q.fit_act_quant(x, 6, group_of_position=table)
        return {**layer, "kernel": OracleKernel(kernels[name]), "input_quant": q}

    want = run_calibration(
        ad, m.params, batch, visit, layers=specs.__contains__, sequential=True, progress=False
    )
    assert sorted(got) == sorted(specs)
    for name in specs:
        w = _tree.tree_get(want, name)["input_quant"]
        g = got[name]
        assert type(g) is type(w), name
        for a in ("delta", "scale", "zero_point"):
            if hasattr(w, a):
                np.testing.assert_array_equal(
                    np.asarray(getattr(g, a)), np.asarray(getattr(w, a)), err_msg=f"{name} {a}"
                )


@pytest.mark.parametrize("bits", [4, 8])
def test_minmax_weight_quantizer_covers_each_column_and_zero(bits):
    rng = np.random.default_rng(3)
    w = rng.standard_normal((13, 7)).astype(np.float32)
    w[:, 2] = np.abs(w[:, 2]) + 0.5  # all-positive column: the range still includes 0
    w[:, 5] = 0.0  # all-zero column: scale 1
    q = quant.quantize_weight(w, bits, method="minmax")
    lo, hi = np.minimum(w.min(0), 0), np.maximum(w.max(0), 0)
    delta = np.where(hi > lo, (hi - lo) / (2**bits - 1), 1.0)
    np.testing.assert_allclose(np.asarray(q.scale)[0], delta, rtol=1e-6)
    err = np.abs(np.asarray(q.dequantize()) - w)
    assert np.all(err <= delta / 2 + 1e-6)  # no clipping: every weight within half a step
    jitted = jax.jit(lambda k: quant.quantize_weight(k, bits, method="minmax"))(w)
    np.testing.assert_array_equal(np.asarray(jitted.qvalue), np.asarray(q.qvalue))
    with pytest.raises(ValueError, match="method"):
        quant.quantize_weight(w, bits, method="max")
