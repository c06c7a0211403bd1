"""quant._pallas_gpu: the fused Mosaic GPU int8 Dense against the exact XLA reference.

The kernel needs a Hopper GPU (wgmma) and jax >= 0.11: every GPU test is skipped elsewhere with
the reason ``unavailable_reason()`` gives. ``test_interpret_mode_*`` runs the same kernels on CPU
in Mosaic GPU interpret mode (logic, indexing, padding, the overlapping last tile, the quantizing
epilogue; not the hardware lowering) when the installed jax has it (jax >= 0.11.2). Tests that
only trace the wrapper or check its arguments need the jax >= 0.11 API, no GPU.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from quant import _pallas_gpu as pg

_REASON = pg.unavailable_reason() or ""
gpu = pytest.mark.skipif(not pg.available(), reason=f"fused int8 kernel unavailable: {_REASON}")
_HAS_INTERPRET = (
    pg.plgpu is not None
    and hasattr(pg.plgpu, "InterpretGPUParams")
    and pg._jax_version() >= (0, 11, 2)
)
_interpret_skip = pytest.mark.skipif(
    not _HAS_INTERPRET, reason=f"Mosaic GPU interpret mode needs jax >= 0.11.2 ({jax.__version__})"
)


_ON_CPU = jax.default_backend() == "cpu"


def interpret_only(test):
    """Skip without interpret mode, and on GPU machines: the exact comparisons are a property of
    the CPU's float32 arithmetic (interpret mode on a GPU backend evaluates the epilogue with the
    GPU's tanh and its own convert elisions), and there the GPU tests run the kernel itself."""
    reason = "interpret-mode exactness is checked on CPU; this machine runs the GPU tests"
    return _interpret_skip(pytest.mark.skipif(not _ON_CPU, reason=reason)(test))


api_only = pytest.mark.skipif(
    pg.api_unavailable_reason() is not None,
    reason=f"Mosaic GPU Pallas API unavailable: {pg.api_unavailable_reason()}",
)

ERR_LIMIT = 2.0**-8 * 1.02 + 1e-4  # bf16 rounding + float32 reassociation

CONFIGS = {
    "ws_m": {"variant": "ws", "split": "m"},
    "ws_n": {"variant": "ws", "split": "n"},
    "ws_k64": {"variant": "ws", "split": "m", "block_k": 64, "stages": 4},
    "pipe": {"variant": "pipeline"},
    "pipe_lane": {"variant": "pipeline", "semantics": "lane"},
    "pp": {"variant": "pp"},  # ping-pong consumers, 4 ring slots
    "pp_s2": {"variant": "pp", "stages": 2},
}
# Prime-ish sizes: K needs padding to 64/128, M to a multiple of 8 and N of 64 (TMA tiles) and
# then the last tile overlaps its neighbour (257, 389, 520), or M / N are smaller than one tile.
SHAPES = [(257, 300, 131), (127, 1000, 389), (1, 128, 64), (520, 256, 256)]
# Ragged extents that need no padding at all: M (N) at least one CTA tile but not a multiple of
# it, and multiples of 8 rows (64 columns). The last row (column) tile starts at M - tile
# (N - tile) and overlaps the one before it; with a cluster, both CTAs of the last cluster may
# clamp to the same tile ("ws_clm": 520 rows, cluster tile 512: the second cluster's two CTAs
# both start at row 264).
OVERLAP = {
    "ws_m": ((384, 128, 192), {"variant": "ws", "split": "m"}),  # CTA 256x128
    "ws_n": ((136, 128, 384), {"variant": "ws", "split": "n"}),  # CTA 128x256
    "ws_clm": ((520, 128, 128), {"variant": "ws", "split": "m", "cluster": "m"}),
    "ws_cln": ((136, 128, 320), {"variant": "ws", "split": "n", "cluster": "n"}),
    "pipe": ((200, 128, 192), {"variant": "pipeline"}),  # CTA 128x128
    "pp": ((264, 256, 320), {"variant": "pp"}),  # 128x128 tiles, both dimensions ragged
}
# Variants whose persistent CTAs take a num_ctas (the tests use 2: several tiles per CTA, and
# with "pp" both consumers' tiles).
PERSISTENT = ("ws", "pp")


def _problem(m, k, n, seed=0, scalar_rows=False):
    rng = np.random.default_rng(seed)
    q_x = rng.integers(-128, 128, (m, k)).astype(np.int8)
    q_w = rng.integers(-127, 128, (n, k)).astype(np.int8)
    if scalar_rows:  # per-tensor activation quantizer: scalars broadcast by the wrapper
        s_x = np.float32(0.013)
        z_x = np.float32(-7.0)
    else:
        s_x = rng.uniform(0.5, 1.5, m).astype(np.float32) * 1e-2
        z_x = rng.integers(-20, 21, m).astype(np.int32)
    s_w = rng.uniform(0.5, 1.5, n).astype(np.float32) * 1e-2
    z_w = rng.integers(1, 9, n).astype(np.int32) * rng.choice([-1, 1], n).astype(np.int32)
    sum_x = q_x.astype(np.int32).sum(1)
    colsum = q_w.astype(np.int32).sum(1)
    bias = rng.normal(size=n).astype(np.float32)
    return tuple(jnp.asarray(a) for a in (q_x, q_w, s_x, z_x, sum_x, s_w, z_w, colsum, bias))


def _exact(q_x, q_w, s_x, z_x, sum_x, s_w, z_w, colsum, bias):
    """float64 ``s_x s_w (q_x - z_x)(q_w - z_w)^T + bias`` (independent of the int32 algebra)."""
    m = q_x.shape[0]
    zx = np.broadcast_to(np.asarray(z_x, np.float64).reshape(-1), (m,))
    sx = np.broadcast_to(np.asarray(s_x, np.float64).reshape(-1), (m,))
    y = (np.asarray(q_x, np.float64) - zx[:, None]) @ (
        np.asarray(q_w, np.float64) - np.asarray(z_w, np.float64)[:, None]
    ).T
    return y * sx[:, None] * np.asarray(s_w, np.float64)[None] + np.asarray(bias, np.float64)


def _check(out, args):
    m, n = args[0].shape[0], args[1].shape[0]
    assert out.shape == (m, n) and out.dtype == jnp.bfloat16
    got = np.asarray(out.astype(jnp.float32), np.float64)
    ref32 = np.asarray(pg.int8_dense_reference(*args, out_dtype=jnp.float32), np.float64)
    exact = _exact(*args)
    # The XLA reference itself is float32-exact up to rounding of the final scale/bias ops.
    np.testing.assert_allclose(ref32, exact, rtol=1e-5, atol=1e-5 * np.abs(exact).max())
    floor = 1e-3 * np.sqrt(np.mean(ref32**2))
    rel = np.abs(got - ref32) / np.maximum(np.abs(ref32), floor)
    assert rel.max() <= ERR_LIMIT, f"max rel err {rel.max():.3e}"
    want = np.asarray(jnp.asarray(ref32, jnp.float32).astype(jnp.bfloat16).astype(jnp.float32))
    assert np.mean(got != want) <= 0.01  # bf16 of the same float32 value, but for rare ties


@gpu
@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_fused_matches_reference(config, shape):
    args = _problem(*shape, seed=sum(shape))
    out = jax.jit(lambda *a: pg.int8_dense_fused(*a, **CONFIGS[config]))(*args)
    _check(out, args)


@gpu
def test_fused_scalar_rows_no_bias_multi_tile_persistent_loop():
    args = _problem(600, 384, 640, seed=3, scalar_rows=True)
    args = (*args[:-1], None)  # no bias
    out = pg.int8_dense_fused(*args, variant="ws", num_ctas=3)  # several tiles per CTA
    zero_bias = (*args[:-1], jnp.zeros((640,), jnp.float32))
    _check(out, zero_bias)


@gpu
def test_fused_equals_packed_dense_layer():
    """A PackedKernel layer (quant.dense's int8 path) through the fused kernel."""
    import quant
    from quant import _packed

    rng = np.random.default_rng(5)
    b, length, c_in, c_out = 2, 67, 11 * 13, 389
    x = jnp.asarray(rng.standard_t(4, size=(b, length, c_in)).astype(np.float32)).astype(
        jnp.bfloat16
    )
    kernel = (rng.standard_normal((c_in, c_out)) / np.sqrt(c_in)).astype(np.float32)
    bias = jnp.asarray(rng.normal(0, 0.1, size=c_out).astype(np.float32))
    qk = quant.quantize_weight(kernel, 8)
    aq = quant.fit_act_quant(np.asarray(x.astype(jnp.float32)), 8, None)
    pk = _packed.pack_kernel(qk, "barrier")
    pos = jnp.arange(length)
    want = np.asarray(jax.jit(quant.dense)(x, pk, bias, aq, pos).astype(jnp.float32))

    q_x = aq.quantize(x, pos).reshape(b * length, c_in)
    s_x, z_x = aq.for_positions(pos)  # per tensor here: [1, 1]
    sum_x = jnp.sum(q_x, axis=1, dtype=jnp.int32)
    got = pg.int8_dense_fused(
        q_x, pk.qvalue_t, s_x, z_x, sum_x, pk.scale, pk.zero_point, pk.col_sum, bias
    )
    got = np.asarray(got.astype(jnp.float32)).reshape(b, length, c_out)
    # The same float32 operations, but each compiler contracts multiply-adds its own way: <= 1
    # bf16 ulp, rarely.
    diff = np.abs(got - want)
    assert np.all(diff <= np.maximum(np.abs(want), np.abs(got)) * 2.0**-7 + 1e-6)
    assert np.mean(diff > 0) <= 0.02


@interpret_only
@pytest.mark.parametrize("config", ["ws_m", "ws_n", "pipe", "pp", "pp_s2"])
def test_interpret_mode_matches_reference(config):
    args = _problem(257, 300, 131, seed=11)
    kw = dict(CONFIGS[config], interpret=pg.plgpu.InterpretGPUParams())
    if kw["variant"] in PERSISTENT:
        kw["num_ctas"] = 2  # several output tiles per persistent CTA
    _check(pg.int8_dense_fused(*args, **kw), args)


def test_config_validation_and_smem_budget():
    if pg.plgpu is None:
        pytest.skip(f"fused int8 kernel unavailable: {_REASON}")
    with pytest.raises(ValueError, match="block_m"):
        pg.FusedConfig(block_m=96).validate()
    with pytest.raises(ValueError, match="registers"):
        pg.FusedConfig(block_m=128, block_n=256).validate()
    assert pg.smem_bytes(pg.FusedConfig()) <= pg.SMEM_LIMIT
    assert pg.smem_bytes(pg.FusedConfig(variant="pipeline", stages=2)) * 2 <= 228 * 1024
    with pytest.raises(ValueError, match="shared memory"):
        args = _problem(256, 256, 128)
        pg.int8_dense_fused(*args, stages=6)
    with pytest.raises(ValueError, match="stages >= 2"):
        pg.FusedConfig(variant="pp", stages=1).validate()
    with pytest.raises(ValueError, match="cluster"):
        pg.FusedConfig(variant="pp", cluster="m").validate()
    # "pp": the ring of 4 slots plus one output tile per consumer, bf16 or int8.
    for out_quant in (False, True):
        assert pg.smem_bytes(pg.FusedConfig(variant="pp", stages=4), out_quant) <= pg.SMEM_LIMIT


@interpret_only
def test_packed_dense_routes_to_fused_kernel(monkeypatch):
    """``packed_dense(impl="pallas")`` (the Hopper default): per-token-group quantizer, [B, L, I]
    bf16 input, the same values as the XLA int8 path (interpret mode: exactly)."""
    from quant import _packed
    from quant._qarray import ActQuant
    from quant._quantizers import quantize_weight

    monkeypatch.setattr(
        pg,
        "int8_dense_fused",
        functools.partial(pg.int8_dense_fused, interpret=pg.plgpu.InterpretGPUParams()),
    )
    monkeypatch.setattr(_packed, "PALLAS_MIN_ROWS", 64)
    rng = np.random.default_rng(3)
    b, length, c_in, c_out = 2, 37, 256, 131
    w = rng.normal(size=(c_in, c_out)).astype(np.float32)
    pk = _packed.pack_kernel(quantize_weight(w, 8))
    table = (np.arange(length) > 0).astype(np.int32)  # sink token vs the rest
    aq = ActQuant.from_official([0.05, 0.02], [130.0, 120.0], 8, group_of_position=table)
    x = jnp.asarray(rng.normal(size=(b, length, c_in)), jnp.bfloat16)
    bias = jnp.asarray(rng.normal(size=c_out), jnp.float32)
    pos = np.arange(length)
    got = _packed.packed_dense(x, pk, bias, aq, pos, impl="pallas")
    want = _packed.packed_dense(x, pk, bias, aq, pos, impl="xla")
    assert got.dtype == jnp.bfloat16 and got.shape == (b, length, c_out)
    g, w_ = (np.asarray(a.astype(jnp.float32)) for a in (got, want))
    # The kernel's epilogue is packed_dense's float32 arithmetic, operation for operation.
    np.testing.assert_array_equal(g, w_)
    # A float32 input whose caller keeps bfloat16 (Dense.dtype) also takes the kernel.
    got32 = _packed.packed_dense(
        x.astype(jnp.float32), pk, bias, aq, pos, impl="pallas", out_dtype=jnp.bfloat16
    )
    assert got32.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(got32), g)
    # Too few rows, a float32 result or K % 128: the cuBLASLt path, bit-identical to "barrier".
    x32 = x.astype(jnp.float32)
    np.testing.assert_array_equal(
        np.asarray(_packed.packed_dense(x32, pk, bias, aq, pos, impl="pallas")),
        np.asarray(_packed.packed_dense(x32, pk, bias, aq, pos, impl="barrier")),
    )


@api_only
@pytest.mark.parametrize("case", list(OVERLAP))
def test_tile_starts_clamp_inside_and_cover(case):
    """The tile starts the kernels compute (``_tile_start``, as "ws" / "pipeline" call it): inside
    the array, on whole TMA tiles, covering every row and column. (Interpret mode, like the TMA
    unit, zero-fills out-of-bounds loads and drops out-of-bounds stores, so the end-to-end tests
    pass without the clamp too; this one pins it.)"""
    (m, _, n), cfg = OVERLAP[case]
    cfg = pg.FusedConfig(**cfg)
    assert m % cfg.cta_tile()[0], "each case has a ragged M"
    for extent, tile, clu, align in zip(
        (m, n), cfg.cta_tile(), cfg.cluster_tile(), (8, pg.EPI_N), strict=True
    ):
        per_cluster = clu // tile
        starts = [
            int(pg._tile_start(jnp.int32(i), tile, extent, extent % clu == 0))
            for i in range(-(-extent // clu) * per_cluster)
        ]
        assert all(0 <= s <= extent - tile and s % align == 0 for s in starts), starts
        covered = np.zeros(extent, bool)
        for s in starts:
            covered[s : s + tile] = True
        assert covered.all(), starts


@interpret_only
@pytest.mark.parametrize("case", list(OVERLAP))
def test_interpret_mode_overlapping_last_tile(case):
    shape, cfg = OVERLAP[case]
    args = _problem(*shape, seed=sum(shape))
    kw = dict(cfg, interpret=pg.plgpu.InterpretGPUParams())
    if kw["variant"] in PERSISTENT:
        kw["num_ctas"] = 2
    _check(pg.int8_dense_fused(*args, **kw), args)


def _specs(m, k, n):
    s = jax.ShapeDtypeStruct
    vec = [(m, jnp.float32), (m, jnp.int32), (m, jnp.int32)]
    vec += [(n, jnp.float32), (n, jnp.int32), (n, jnp.int32), (n, jnp.float32)]
    return (s((m, k), jnp.int8), s((n, k), jnp.int8), *(s((d,), t) for d, t in vec))


@api_only
def test_ragged_m_reads_the_activations_in_place():
    """M = 384 rows in 256-row CTA tiles (ws, split "m"): q_x goes to the kernel as it is (the
    last tile overlaps), no pad copy; M = 100, less than one tile, is still padded."""

    def kernel_reads_q_x_directly(m):
        jaxpr = jax.make_jaxpr(lambda *a: pg.int8_dense_fused(*a, num_ctas=132))(
            *_specs(m, 256, 256)
        ).jaxpr
        q_x, q_w = jaxpr.invars[:2]
        # The kernel call: the equation that consumes the weight codes (never padded here).
        [call] = [e for e in jaxpr.eqns if any(v is q_w for v in e.invars)]
        users = [e for e in jaxpr.eqns if any(v is q_x for v in e.invars)]
        return call.invars[0] is q_x and users == [call]

    assert kernel_reads_q_x_directly(384)
    assert not kernel_reads_q_x_directly(100)


def _out_quant(args, bits, seed, activation="gelu_tanh"):
    """Per-row (s_out, z_out, bits) that put most codes inside the range and clip a few."""
    rng = np.random.default_rng(seed)
    f = pg.int8_dense_reference(*args, out_dtype=jnp.float32)
    y = np.asarray(pg._activation_input(f, activation))
    m = y.shape[0]
    top = 2 ** (bits - 1)
    s_out = np.abs(y).max(axis=1) / (top - 4) * rng.uniform(0.8, 1.2, m)
    z_out = rng.integers(-4, 5, m).astype(np.float32)
    return jnp.asarray(s_out.astype(np.float32)), jnp.asarray(z_out), bits


def _check_codes(got, want, bits, exact):
    (q, sums), (q_ref, sums_ref) = got, want
    assert q.dtype == jnp.int8 and q.shape == q_ref.shape
    assert sums.dtype == jnp.int32 and sums.shape == sums_ref.shape
    q, q_ref = np.asarray(q, np.int32), np.asarray(q_ref, np.int32)
    m, n = q.shape
    # The partial sums are those of the returned codes, per 128-column tile, exactly.
    np.testing.assert_array_equal(np.asarray(sums), q.reshape(m, n // 128, 128).sum(-1).T)
    assert np.ptp(q_ref) >= 2 ** (bits - 2)  # the codes span the range: a meaningful comparison
    if exact:
        np.testing.assert_array_equal(q, q_ref)
    else:  # the GPU's float32 tanh (libdevice here, XLA's own there) may move a code by one
        assert np.abs(q - q_ref).max() <= 1
        assert np.mean(q != q_ref) < 1e-3


# The quantizing epilogue (variants "ws" and "pp"): ragged M and N with overlapping last tiles.
OUT_QUANT = {
    "ws_m": ((264, 128, 384), {"split": "m"}, 8, "gelu_tanh"),
    "ws_n": ((200, 128, 384), {"split": "n"}, 6, "gelu_tanh"),
    "ws_clm_linear": ((520, 128, 256), {"split": "m", "cluster": "m"}, 8, None),
    "pp": ((264, 256, 384), {"variant": "pp"}, 8, "gelu_tanh"),
    "pp_s3_linear": ((200, 128, 384), {"variant": "pp", "stages": 3}, 6, None),
}


@interpret_only
@pytest.mark.parametrize("case", list(OUT_QUANT))
def test_interpret_mode_out_quant_matches_reference(case):
    shape, cfg, bits, act = OUT_QUANT[case]
    args = _problem(*shape, seed=sum(shape))
    oq = _out_quant(args, bits, seed=1, activation=act)
    got = pg.int8_dense_fused(
        *args,
        out_quant=oq,
        activation=act,
        num_ctas=2,
        interpret=pg.plgpu.InterpretGPUParams(),
        **cfg,
    )
    want = pg.int8_dense_reference(*args, out_quant=oq, activation=act)
    _check_codes(got, want, bits, exact=True)


@api_only
def test_out_quant_argument_checks():
    args = _problem(256, 128, 192)
    oq = (jnp.ones((256,), jnp.float32), jnp.zeros((256,), jnp.float32), 8)
    with pytest.raises(ValueError, match="multiple of block_n"):
        pg.int8_dense_fused(*args, out_quant=oq)  # N = 192: a partial column tile
    args = _problem(256, 128, 256)
    with pytest.raises(NotImplementedError, match="variants 'ws' and 'pp'"):
        pg.int8_dense_fused(*args, out_quant=oq, variant="pipeline")
    with pytest.raises(ValueError, match="only with out_quant"):
        pg.int8_dense_fused(*args, activation="gelu_tanh")
    with pytest.raises(ValueError, match="activation must be"):
        pg.int8_dense_fused(*args, out_quant=oq, activation="relu")
    with pytest.raises(ValueError, match="bits"):
        pg.int8_dense_fused(*args, out_quant=oq[:2] + (9,))
    assert pg.smem_bytes(pg.FusedConfig(), out_quant=True) <= pg.SMEM_LIMIT


@gpu
@pytest.mark.parametrize("config", ["ws_m", "ws_n", "ws_m_clN", "ws_m_clM", "pp"])
@pytest.mark.parametrize(
    "shape", [(2056, 384, 1024), (300, 1920, 7680)], ids=lambda s: "x".join(map(str, s))
)
def test_fused_out_quant_matches_reference(config, shape):
    cfg = {
        "ws_m": {"split": "m"},
        "ws_n": {"split": "n"},
        "ws_m_clN": {"split": "m", "cluster": "n"},
        "ws_m_clM": {"split": "m", "cluster": "m"},
        "pp": {"variant": "pp"},
    }[config]
    args = _problem(*shape, seed=sum(shape))
    oq = _out_quant(args, 8, seed=2)
    fused = jax.jit(
        lambda *a: pg.int8_dense_fused(*a[:9], out_quant=(*a[9:], 8), activation="gelu_tanh", **cfg)
    )
    want = jax.jit(
        lambda *a: pg.int8_dense_reference(*a[:9], out_quant=(*a[9:], 8), activation="gelu_tanh")
    )
    _check_codes(fused(*args, *oq[:2]), want(*args, *oq[:2]), 8, exact=False)


def _act_quant_layer(rows_per_batch, seed):
    """A [2, L, 256] bf16 input, a 256 -> 384 PackedKernel, per-token-group quantizers of the
    input and of the GELU output (the next layer's input)."""
    from quant import _packed
    from quant._qarray import ActQuant
    from quant._quantizers import quantize_weight

    rng = np.random.default_rng(seed)
    b, length, c_in, c_out = 2, rows_per_batch, 256, 384
    w = rng.normal(size=(c_in, c_out)).astype(np.float32) / 16
    pk = _packed.pack_kernel(quantize_weight(w, 8))
    table = (np.arange(length) > 0).astype(np.int32)  # sink token vs the rest
    aq = ActQuant.from_official([0.05, 0.02], [130.0, 120.0], 8, group_of_position=table)
    nq = ActQuant.from_official([0.04, 0.03], [20.0, 16.0], 8, group_of_position=table)
    x = jnp.asarray(rng.normal(size=(b, length, c_in)), jnp.bfloat16)
    bias = jnp.asarray(rng.normal(size=c_out), jnp.float32)
    return x, pk, bias, aq, nq, np.arange(length)


@interpret_only
@pytest.mark.parametrize("impl", ["pallas", "pallas_ws", "pallas_pp"])
def test_packed_dense_act_quant_routes_to_fused_epilogue(monkeypatch, impl):
    """``packed_dense_act_quant(impl=...)`` with each Pallas impl: the kernel variant it names
    (``PALLAS_VARIANT`` for "pallas") and its quantizing epilogue give the codes (and sums) of
    the XLA path exactly (interpret mode: same float32 tanh)."""
    from quant import _packed

    calls, kernel = [], pg.int8_dense_fused

    def fused(*a, **kw):
        calls.append(kw)
        return kernel(*a, **kw, interpret=pg.plgpu.InterpretGPUParams())

    monkeypatch.setattr(pg, "int8_dense_fused", fused)
    monkeypatch.setattr(_packed, "PALLAS_MIN_ROWS", 64)
    x, pk, bias, aq, nq, pos = _act_quant_layer(37, seed=4)
    q, s = _packed.packed_dense_act_quant(x, pk, bias, aq, pos, nq, impl=impl)
    assert [kw["activation"] for kw in calls] == ["gelu_tanh"]
    want_variant = {"pallas_ws": "ws", "pallas_pp": "pp"}.get(
        impl, _packed.PALLAS_ACT_QUANT_VARIANT
    )
    assert [kw["variant"] for kw in calls] == [want_variant]
    q_ref, s_ref = _packed.packed_dense_act_quant(x, pk, bias, aq, pos, nq, impl="xla")
    assert q.dtype == jnp.int8 and q.shape == (2, 37, 384) and s.shape == (2, 37, 1)
    assert np.ptp(np.asarray(q_ref, np.int32)) > 64
    np.testing.assert_array_equal(np.asarray(q), np.asarray(q_ref))
    np.testing.assert_array_equal(np.asarray(s), np.asarray(s_ref))


def _gelu_codes_ieee(h, nq, pos):
    """numpy reference of fc1 -> fc2-input codes from the bf16 fc1 output ``h`` [..., L, O]:
    GELU(tanh) in float64 rounded to float32 then bf16, an IEEE float32 division by the
    per-token scale, round half to even (the official fake-quant order). Also returns the mask
    of entries whose float32 GELU lies within 4 ulps of a bf16 rounding midpoint, where a
    kernel's float32 tanh (a few ulps from the exact one) may legitimately round the other way."""
    h = np.asarray(h, np.float64)
    g = (0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h**3)))).astype(np.float32)
    bits = g.view(np.uint32)
    y = np.asarray(jnp.asarray(g).astype(jnp.bfloat16).astype(jnp.float32))
    near_mid = np.abs((bits & np.uint32(0xFFFF)).astype(np.int64) - 0x8000) <= 4
    s, z = (np.broadcast_to(np.asarray(a, np.float32), g.shape) for a in nq.for_positions(pos))
    q = np.clip(np.round(y / s) + z, -128, 127).astype(np.int32)
    return q, y / s, near_mid


@gpu
def test_packed_dense_act_quant_fused_codes_are_ieee_exact():
    """The fused codes equal an IEEE float32 reference computed from the kernel's own bf16 fc1
    output; XLA:GPU's unfused path differs from that reference only at exact ties k + 0.5
    (0.115 % of this tie-rich layer's codes on H100, jax 0.11.2: `epilogue_divides`)."""
    from quant import _packed

    x, pk, bias, aq, nq, pos = _act_quant_layer(600, seed=6)  # 1200 rows: the kernel's path
    got = jax.jit(
        lambda x: _packed.packed_dense_act_quant(x, pk, bias, aq, pos, nq, impl="pallas")
    )(x)
    h = jax.jit(lambda x: _packed.packed_dense(x, pk, bias, aq, pos, impl="pallas"))(x)
    want = jax.jit(
        lambda x: _packed.packed_dense_act_quant(x, pk, bias, aq, pos, nq, impl="barrier")
    )(x)
    q, s = (np.asarray(a, np.int32) for a in got)
    np.testing.assert_array_equal(s, q.sum(-1, keepdims=True))
    q_ieee, ratio, near_mid = _gelu_codes_ieee(np.asarray(h.astype(jnp.float32)), nq, pos)
    np.testing.assert_array_equal(q[~near_mid], q_ieee[~near_mid])
    assert np.abs(q - q_ieee).max() <= 1
    q_xla = np.asarray(want[0], np.int32)
    off = q_xla != q_ieee
    frac = ratio[off] - np.floor(ratio[off])
    assert np.all(np.abs(frac - 0.5) < 1e-5), "XLA:GPU differs from IEEE away from ties"


# VAR-d30-like shapes (M = 128 x 169 rows: ragged for 256-row tiles), each config's CUDA lowering.
LOWER_CASES = {
    "ws_m": ((21632, 1920, 7680), {"split": "m"}, None),
    "ws_n": ((21632, 1920, 1920), {"split": "n"}, None),
    "ws_m_clM": ((21632, 1920, 1920), {"split": "m", "cluster": "m"}, None),
    "pipe": ((21632, 1920, 1920), {"variant": "pipeline"}, None),
    "ws_m_quant": ((21632, 1920, 7680), {"split": "m"}, "gelu_tanh"),
    "ws_n_clN_quant": ((21632, 1920, 7680), {"split": "n", "cluster": "n"}, "gelu_tanh"),
    "pp": ((21632, 1920, 1920), {"variant": "pp"}, None),
    "pp_quant": ((21632, 1920, 7680), {"variant": "pp"}, "gelu_tanh"),
}


@api_only
@pytest.mark.parametrize("divide", [True, False])
@pytest.mark.parametrize("case", list(LOWER_CASES))
def test_lowers_for_hopper_without_a_gpu(case, divide, monkeypatch):
    """Cross-platform lowering (``.lower(lowering_platforms=("cuda",))``, any host) runs Mosaic
    GPU's layout inference and its TMA checks (extents and slice starts in whole SMEM tiles,
    16-byte strides), which interpret mode does not; ptxas and the hardware are not involved.
    At these shapes nothing is padded: no ``pad`` in the lowered module. The quantizing
    epilogue lowers both with a true division and with the default reciprocal
    (``epilogue_divides``)."""
    (m, k, n), cfg, activation = LOWER_CASES[case]
    if not divide and activation is None:
        pytest.skip("the bf16 epilogue does not quantize")
    monkeypatch.setattr(pg, "epilogue_divides", lambda: divide)
    specs = _specs(m, k, n)
    if activation is None:
        f = functools.partial(pg.int8_dense_fused, **cfg, num_ctas=132)
    else:
        specs += (jax.ShapeDtypeStruct((m,), jnp.float32),) * 2

        def f(*a):
            return pg.int8_dense_fused(
                *a[:9], out_quant=(*a[9:], 8), activation=activation, **cfg, num_ctas=132
            )

    text = jax.jit(f).trace(*specs).lower(lowering_platforms=("cuda",)).as_text()
    assert "mosaic_gpu" in text
    assert "stablehlo.pad" not in text
