"""PackedKernel (inference layout [O, I] + column sums): the same values as the QArray int8 path
and the fake-quant oracle, for every backend implementation; layout and HLO; a whole model."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import quant
from quant import _packed
from quant import _pallas_gpu as pg
from quant._dot_general import GPU_CONTRACT_MULTIPLE

F32 = np.float32
B, L, C_IN, C_OUT = 2, 7, 11 * 13, 19
POS = np.arange(L)
GROUPS = (1, 2, 4)


def _problem(seed, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    x = rng.standard_t(4, size=(B, L, C_IN)).astype(F32) * np.linspace(0.5, 3, L)[None, :, None]
    x = (x + rng.normal(0, 0.5, size=C_IN)).astype(F32)
    kernel = (rng.standard_normal((C_IN, C_OUT)) / np.sqrt(C_IN)).astype(F32)
    bias = rng.normal(0, 0.1, size=C_OUT).astype(F32)
    return jnp.asarray(x).astype(dtype), kernel, jnp.asarray(bias)


def _quantizers(x, kernel, w_bits, a_bits, grouped):
    qk = quant.quantize_weight(kernel, w_bits)
    aq = quant.fit_act_quant(np.asarray(x.astype(jnp.float32)), a_bits, GROUPS if grouped else None)
    return qk, aq


@pytest.mark.parametrize("impl", _packed.IMPLS)
@pytest.mark.parametrize("grouped", (False, True), ids=("per_tensor", "groups"))
@pytest.mark.parametrize("w_bits,a_bits", [(8, 8), (6, 6), (4, 8)])
@pytest.mark.parametrize("dtype", (jnp.float32, jnp.bfloat16), ids=("f32", "bf16"))
def test_packed_dense_equals_qarray_path_and_oracle(impl, grouped, w_bits, a_bits, dtype):
    x, kernel, bias = _problem(w_bits * 10 + a_bits + grouped, dtype)
    qk, aq = _quantizers(x, kernel, w_bits, a_bits, grouped)
    pk = _packed.pack_kernel(qk, impl)
    fast = jax.jit(quant.dense)(x, pk, bias, aq, POS)  # dispatches to packed_dense
    ref = jax.jit(quant.dense)(x, qk, bias, aq, POS)  # the QArray int8 path
    assert fast.dtype == dtype and fast.shape == (B, L, C_OUT)
    # Same integer algebra, same float epilogue: identical values.
    np.testing.assert_array_equal(
        np.asarray(fast.astype(jnp.float32)), np.asarray(ref.astype(jnp.float32))
    )
    oracle = np.asarray(quant.fake_quant_dense(x, qk, bias, aq, POS).astype(jnp.float32))
    got = np.asarray(fast.astype(jnp.float32))
    if dtype == jnp.float32:
        assert np.linalg.norm(got - oracle) / np.linalg.norm(oracle) <= 1e-6
    else:  # at most one bf16 ulp apart, rarely
        diff = np.abs(got - oracle)
        assert np.all(diff <= np.maximum(np.abs(oracle), np.abs(got)) * 2.0**-8 + 1e-30)
        assert np.mean(diff > 0) <= 0.01


def test_positions_select_groups_like_a_kv_cache_step():
    x, kernel, bias = _problem(3)
    qk, aq = _quantizers(x, kernel, 8, 8, True)
    pk = _packed.pack_kernel(qk, "barrier")
    full = quant.dense(x, pk, bias, aq, POS)
    np.testing.assert_array_equal(quant.dense(x[:, 3:], pk, bias, aq, POS[3:]), full[:, 3:])


def test_layout_column_sums_and_round_trip():
    _, kernel, _ = _problem(4)
    qk = quant.quantize_weight(kernel, 6)
    pk = _packed.pack_kernel(qk)
    assert pk.qvalue_t.shape == (C_OUT, C_IN) and pk.qvalue_t.dtype == jnp.int8
    assert pk.shape == (C_IN, C_OUT) and pk.bits == 6 and pk.impl == "auto"
    np.testing.assert_array_equal(pk.qvalue_t, np.asarray(qk.qvalue).T)
    np.testing.assert_array_equal(
        pk.col_sum, np.asarray(qk.qvalue).astype(np.int64).sum(0, keepdims=True)
    )
    assert pk.col_sum.dtype == jnp.int32
    np.testing.assert_array_equal(pk.dequantize(), qk.dequantize())
    tree = {"a": {"kernel": qk, "bias": jnp.ones(3)}, "b": jnp.zeros(2)}
    packed = _packed.pack(tree, impl="xla")
    assert isinstance(packed["a"]["kernel"], _packed.PackedKernel)
    assert packed["a"]["kernel"].impl == "xla"
    back = _packed.unpack(packed)
    np.testing.assert_array_equal(back["a"]["kernel"].qvalue, qk.qvalue)
    np.testing.assert_array_equal(back["a"]["kernel"].zero_point, qk.zero_point)
    with pytest.raises(ValueError, match="impl"):
        _packed.pack_kernel(qk, "cutlass")


def test_hlo_int8_dot_contracts_both_last_axes_and_barrier_only_when_asked():
    x, kernel, bias = _problem(5)
    qk, aq = _quantizers(x, kernel, 8, 8, False)
    texts = {}
    for impl in _packed.IMPLS:
        pk = _packed.pack_kernel(qk, impl)
        texts[impl] = (
            jax.jit(lambda x, k, b, a: quant.dense(x, k, b, a)).lower(x, pk, bias, aq).as_text()
        )
    for text in texts.values():
        dots = [ln for ln in text.splitlines() if "dot_general" in ln]
        # K is C_IN, zero-padded on GPU to the int8 GEMM's multiple
        # (`quant._dot_general.pad_contracted`: 143 -> 160 there, unchanged elsewhere).
        k = C_IN + (-C_IN % GPU_CONTRACT_MULTIPLE if jax.default_backend() == "gpu" else 0)
        pat = re.compile(
            rf"\(tensor<{B}x{L}x{k}xi8>, tensor<{C_OUT}x{k}xi8>\) -> tensor<{B}x{L}x{C_OUT}xi32>"
        )
        assert any(pat.search(ln) for ln in dots), dots
        assert any("contracting_dims = [2] x [1]" in ln for ln in dots), dots
        assert not any("f32" in ln for ln in dots), dots
    assert "optimization_barrier" in texts["barrier"]
    assert "optimization_barrier" not in texts["xla"]


def test_backend_choice_is_automatic():
    from quant import _pallas_gpu

    gpu = jax.default_backend() in ("gpu", "cuda", "rocm")
    on_gpu = "pallas" if _pallas_gpu.available() else _packed.GPU_IMPL
    assert _packed.default_impl() == (on_gpu if gpu else "xla")
    assert _packed.GPU_IMPL in _packed.IMPLS and "pallas" in _packed.IMPLS


def test_weight_only_packed_kernel():
    x, kernel, bias = _problem(6)
    qk = quant.quantize_weight(kernel, 4)
    pk = _packed.pack_kernel(qk)
    np.testing.assert_allclose(
        quant.dense(x, pk, bias), quant.dense(x, qk, bias), rtol=1e-5, atol=1e-5
    )
    with pytest.raises(ValueError, match="does not match"):
        quant.dense(x[..., :-1], pk, bias)


@pytest.mark.slow
def test_quantized_model_generates_the_same_tokens_packed_and_stacked():
    from arvg_jax.families.var import sampler as var_sampler
    from arvg_jax.families.var.bench import build
    from arvg_jax.models import random_model

    model = random_model("var-test", seed=3)
    trees = build.quantize_fast(model, [(8, 8)], calib=2, seed=0)
    qtree = trees[(8, 8)]
    labels = np.array([0, 4], np.int32)
    key = jax.random.PRNGKey(2)
    outs = {}
    for name, params in {
        "qarray": qtree,
        "packed": _packed.pack(qtree, impl="xla"),
        "barrier_stacked": var_sampler.stack_blocks(_packed.pack(qtree, impl="barrier")),
        "inference_layout": var_sampler.inference_layout(qtree),  # what `arvg generate` runs
    }.items():
        outs[name] = var_sampler.generate(
            params,
            model.vae_params,
            model.cfg,
            model.vae_cfg,
            labels,
            key,
            greedy=True,
            top_k=0,
            top_p=0.0,
        )
    for name in ("packed", "barrier_stacked", "inference_layout"):
        np.testing.assert_array_equal(outs[name]["tokens"], outs["qarray"]["tokens"])
        np.testing.assert_allclose(outs[name]["images"], outs["qarray"]["images"], atol=1e-5)


def test_inference_layout_is_idempotent_and_packs_only_quantized_kernels():
    from arvg_jax.families.var import sampler as var_sampler

    _, kernel, bias = _problem(9)
    qk = quant.quantize_weight(kernel, 8)
    tree = {
        "blocks_0": {"fc": {"kernel": qk, "bias": bias}},
        "blocks_1": {"fc": {"kernel": qk, "bias": bias}},
        "head": {"kernel": kernel},
    }
    once = var_sampler.inference_layout(tree)
    assert isinstance(once["blocks"]["fc"]["kernel"], _packed.PackedKernel)
    assert once["blocks"]["fc"]["kernel"].qvalue_t.shape == (2,) + qk.qvalue.T.shape
    assert isinstance(once["head"]["kernel"], type(kernel))
    twice = var_sampler.inference_layout(once)
    assert jax.tree_util.tree_structure(twice) == jax.tree_util.tree_structure(once)


@pytest.mark.parametrize("impl", _packed.IMPLS)
@pytest.mark.parametrize("grouped", (False, True), ids=("per_tensor", "groups"))
@pytest.mark.parametrize("dtype", (jnp.float32, jnp.bfloat16), ids=("f32", "bf16"))
def test_packed_dense_codes_is_packed_dense_from_codes(impl, grouped, dtype):
    """packed_dense == quantize + packed_dense_codes (the fc2 entry point), for every route."""
    x, kernel, bias = _problem(11 + grouped, dtype)
    qk, aq = _quantizers(x, kernel, 8, 8, grouped)
    pk = _packed.pack_kernel(qk, impl)
    q_x = aq.quantize(x, POS)
    sum_x = jnp.sum(q_x, axis=-1, keepdims=True, dtype=jnp.int32)
    for keep in (None, jnp.bfloat16):
        want = _packed.packed_dense(x, pk, bias, aq, POS, out_dtype=keep)
        got = _packed.packed_dense_codes(q_x, sum_x, pk, bias, aq, POS, x.dtype, keep_dtype=keep)
        assert got.dtype == want.dtype == dtype
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def _ffn_problem(seed):
    """fc1 (C_IN -> 3 * 128) with token-group quantizers of its input and of the GELU output."""
    rng = np.random.default_rng(seed)
    x, _, _ = _problem(seed, jnp.bfloat16)
    kernel = (rng.standard_normal((C_IN, 3 * 128)) / np.sqrt(C_IN)).astype(F32)
    bias = jnp.asarray(rng.normal(0, 0.3, size=3 * 128).astype(F32))
    qk, aq = _quantizers(x, kernel, 8, 8, True)
    h = jax.nn.gelu(quant.dense(x, qk, bias, aq, POS).astype(jnp.float32), approximate=True)
    next_quant = quant.fit_act_quant(np.asarray(h), 8, GROUPS)
    return x, qk, bias, aq, next_quant


@pytest.mark.parametrize("impl", ("xla", "barrier", "pallas"))
def test_packed_dense_act_quant_is_the_unfused_sequence(impl):
    """The XLA route of the fused fc1 -> GELU -> quantize: bit-identical to quantizing the bf16
    GELU (computed in float32) of packed_dense's bf16 output, with the codes' row sums. ("pallas"
    on CPU: the kernel is unavailable, the same XLA route.) Both bf16 roundings are explicit
    (`round_to_bf16`): on GPU, XLA's excess precision may drop a plain convert pair."""
    x, qk, bias, aq, nq = _ffn_problem(21)
    pk = _packed.pack_kernel(qk, impl)
    q, s = jax.jit(lambda x: _packed.packed_dense_act_quant(x, pk, bias, aq, POS, nq))(x)

    def unfused(x):
        y = _packed.packed_dense(x, pk, bias, aq, POS)  # bf16
        g = jax.nn.gelu(pg.round_to_bf16(y.astype(jnp.float32)), approximate=True)
        return nq.quantize(pg.round_to_bf16(g), POS)

    want = jax.jit(unfused)(x)
    assert q.dtype == jnp.int8 and q.shape == (B, L, 3 * 128)
    assert s.dtype == jnp.int32 and s.shape == (B, L, 1)
    np.testing.assert_array_equal(np.asarray(q), np.asarray(want))
    np.testing.assert_array_equal(np.asarray(s), np.asarray(want, np.int64).sum(-1, keepdims=True))
    assert np.ptp(np.asarray(q, np.int32)) > 100  # the codes use the range

    # Without an activation: the codes of the bf16 output itself.
    q_lin, _ = _packed.packed_dense_act_quant(x, pk, bias, aq, POS, nq, activation=None)
    y = _packed.packed_dense(x, pk, bias, aq, POS)
    np.testing.assert_array_equal(np.asarray(q_lin), np.asarray(nq.quantize(y, POS)))
    with pytest.raises(ValueError, match="activation"):
        _packed.packed_dense_act_quant(x, pk, bias, aq, POS, nq, activation="relu")


def test_round_to_bf16_is_round_to_nearest_even():
    """The integer-arithmetic bf16 rounding the XLA paths use equals a real float32 -> bf16
    conversion (numpy's ml_dtypes, outside XLA): random values, exact ties (both directions of
    the even rule), signed zeros, subnormals, overflow to infinity and the largest finite."""
    import ml_dtypes

    rng = np.random.default_rng(0)
    x = (rng.standard_normal(200_000) * np.exp(rng.uniform(-30, 30, 200_000))).astype(F32)
    one = np.float32(1.0)
    ties = np.array(
        [1 + 2.0**-8, 1 + 3 * 2.0**-8, -(1 + 2.0**-8), 2.0**-130, 0.0, -0.0, 3.3895e38, 3.4e38],
        F32,
    )
    x = np.concatenate([x, ties, np.nextafter(ties, one), np.nextafter(ties, -one)])
    want = x.astype(ml_dtypes.bfloat16).astype(F32)
    got = np.asarray(jax.jit(pg.round_to_bf16)(jnp.asarray(x)))
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(np.signbit(got), np.signbit(want))
    # Ties go to the even neighbour: 1 + 2^-8 down to 1, 1 + 3 * 2^-8 up to 1 + 2^-6.
    assert got[-3 * len(ties)] == np.float32(1.0)
    assert got[-3 * len(ties) + 1] == np.float32(1 + 2.0**-6)


def test_pre_quantized_input_equals_quantizing_inside():
    """`PreQuantized` (codes + row sums written elsewhere, e.g. by arvg_jax.kernels.adaln_pallas) gives
    the values of quantizing the float input inside `packed_dense`."""
    x, kernel, bias = _problem(5, jnp.bfloat16)
    qk, aq = _quantizers(x, kernel, 8, 8, True)
    pk = _packed.pack_kernel(qk, "xla")
    codes = aq.quantize(x, POS)
    pre = _packed.PreQuantized(
        codes=codes, sums=jnp.sum(codes, -1, keepdims=True, dtype=jnp.int32), dtype=jnp.bfloat16
    )
    assert pre.shape == x.shape
    np.testing.assert_array_equal(
        quant.dense(pre, pk, bias, aq, POS, out_dtype=jnp.bfloat16),
        quant.dense(x, pk, bias, aq, POS, out_dtype=jnp.bfloat16),
    )
    with pytest.raises(ValueError, match="PreQuantized input needs the layer's input_quant"):
        quant.dense(pre, pk, bias)


def test_nibbles_round_trip_every_code():
    rng = np.random.default_rng(0)
    codes = rng.integers(-8, 8, (5, 22)).astype(np.int8)
    codes[0, :16] = np.arange(-8, 8)  # every code
    packed = _packed.pack_nibbles(jnp.asarray(codes))
    assert packed.shape == (5, 11) and packed.dtype == jnp.uint8
    np.testing.assert_array_equal(_packed.unpack_nibbles(packed), codes)
    # Code 2j in the low nibble, 2j + 1 in the high one, each offset by 8.
    wide = codes.astype(np.int64) + 8
    np.testing.assert_array_equal(np.asarray(packed), wide[:, 0::2] | (wide[:, 1::2] << 4))


@pytest.mark.parametrize("impl", _packed.IMPLS)
def test_w4_kernels_are_stored_two_codes_per_byte(impl):
    """W4A8: half the weight bytes, the same values as the int8 storage (and the QArray path)."""
    rng = np.random.default_rng(11)
    c_in = 2 * 67  # even: nibble storage applies
    x = jnp.asarray(rng.standard_normal((B, L, c_in)).astype(F32))
    kernel = (rng.standard_normal((c_in, C_OUT)) / np.sqrt(c_in)).astype(F32)
    bias = jnp.asarray(rng.normal(0, 0.1, C_OUT).astype(F32))
    qk, aq = _quantizers(x, kernel, 4, 8, True)
    pk = _packed.pack_kernel(qk, impl)
    wide = _packed.pack_kernel(qk, impl, nibbles=False)
    assert pk.nibbles and not wide.nibbles
    assert pk.qvalue_t.shape == (C_OUT, c_in // 2) and pk.qvalue_t.dtype == jnp.uint8
    assert pk.shape == wide.shape == (c_in, C_OUT)
    np.testing.assert_array_equal(pk.codes(), wide.qvalue_t)
    from arvg_jax.families.var.bench import build

    assert build.param_bytes(pk.qvalue_t) * 2 == build.param_bytes(wide.qvalue_t)
    got = jax.jit(quant.dense)(x, pk, bias, aq, POS)
    np.testing.assert_array_equal(got, jax.jit(quant.dense)(x, wide, bias, aq, POS))
    np.testing.assert_array_equal(got, jax.jit(quant.dense)(x, qk, bias, aq, POS))
    np.testing.assert_array_equal(pk.dequantize(), qk.dequantize())
    assert not _packed.pack_kernel(quant.quantize_weight(kernel[1:], 4)).nibbles  # odd I
    with pytest.raises(ValueError, match="nibble storage needs at most 4 bits"):
        _packed.pack_kernel(quant.quantize_weight(kernel, 6), nibbles=True)
