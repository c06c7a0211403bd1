"""quant._pallas_gpu: the fused Mosaic GPU int8 Dense against the exact XLA reference.

The kernel needs a Hopper GPU (wgmma) and jax >= 0.11: every GPU test is skipped elsewhere with
the reason ``unavailable_reason()`` gives. ``test_interpret_mode_*`` runs the same kernels on CPU
in Mosaic GPU interpret mode (logic, indexing, padding; not the hardware lowering) when the
installed jax has it (jax >= 0.11.2).
"""

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
interpret_only = pytest.mark.skipif(
    not _HAS_INTERPRET, reason=f"Mosaic GPU interpret mode needs jax >= 0.11.2 ({jax.__version__})"
)

ERR_LIMIT = 2.0**-8 * 1.02 + 1e-4  # bf16 rounding + float32 reassociation

CONFIGS = {
    "ws_m": {"variant": "ws", "split": "m"},
    "ws_n": {"variant": "ws", "split": "n"},
    "ws_k64": {"variant": "ws", "split": "m", "block_k": 64, "stages": 4},
    "pipe": {"variant": "pipeline"},
    "pipe_lane": {"variant": "pipeline", "semantics": "lane"},
}
# Prime-ish sizes: every dimension needs padding (M to 128/256, N to 128/256, K to 64/128).
SHAPES = [(257, 300, 131), (127, 1000, 389), (1, 128, 64), (520, 256, 256)]


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
    # packed_dense scales by (s_x s_w) in one product; the kernel by s_x then s_w: <= 1 bf16 ulp.
    diff = np.abs(got - want)
    assert np.all(diff <= np.maximum(np.abs(want), np.abs(got)) * 2.0**-7 + 1e-6)
    assert np.mean(diff > 0) <= 0.02


@interpret_only
@pytest.mark.parametrize("config", ["ws_m", "ws_n", "pipe"])
def test_interpret_mode_matches_reference(config):
    args = _problem(257, 300, 131, seed=11)
    kw = dict(CONFIGS[config], interpret=pg.plgpu.InterpretGPUParams())
    if kw["variant"] == "ws":
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


@interpret_only
def test_packed_dense_routes_to_fused_kernel(monkeypatch):
    """``packed_dense(impl="pallas")`` (the Hopper default): per-token-group quantizer, [B, L, I]
    bf16 input, same values as the XLA int8 path up to one bf16 rounding."""
    import functools

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
    assert np.all(np.abs(g - w_) <= np.abs(w_) * 2.0**-7 + 1e-6)
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
