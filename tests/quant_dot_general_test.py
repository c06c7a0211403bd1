"""int8 Dense / attention matmuls: exact integer algebra, agreement with the dequantize-first
oracle, the lowered HLO (s8 x s8 -> s32) and the fallbacks."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import quant
from quant import _dot_general

F32 = np.float32
B, L, C_IN, C_OUT = 3, 7, 11 * 13, 19
POS = np.arange(L)
GROUPS = (1, 2, 4)  # token groups over the 7 positions


def _problem(seed, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    x = rng.standard_t(4, size=(B, L, C_IN)).astype(F32) * np.linspace(0.5, 3, L)[None, :, None]
    x = (x + rng.normal(0, 0.5, size=C_IN)).astype(F32)
    kernel = (rng.standard_normal((C_IN, C_OUT)) / np.sqrt(C_IN)).astype(F32)
    bias = rng.normal(0, 0.1, size=C_OUT).astype(F32)
    return jnp.asarray(x).astype(dtype), kernel, jnp.asarray(bias)


def _quantizers(x, kernel, w_bits, a_bits, grouped):
    qk = quant.quantize_weight(kernel, w_bits)
    xs = np.asarray(x.astype(jnp.float32))
    aq = quant.fit_act_quant(xs, a_bits, GROUPS if grouped else None)
    return qk, aq


def _int64_accumulator(x, qk, aq):
    """Σ_i (q_x - z_x)(q_w - z_w) evaluated in int64 from the same codes."""
    qx = np.asarray(aq.quantize(x, POS)).astype(np.int64)
    z_x = np.asarray(aq.for_positions(POS)[1]).astype(np.int64)
    qw = np.asarray(qk.qvalue).astype(np.int64)
    return np.einsum("bli,io->blo", qx - z_x, qw - np.asarray(qk.zero_point).astype(np.int64))


@pytest.mark.parametrize("grouped", (False, True), ids=("per_tensor", "groups"))
@pytest.mark.parametrize("a_bits", (8, 6))
@pytest.mark.parametrize("w_bits", (8, 6, 4))
def test_int_dense_matches_oracle_float32(w_bits, a_bits, grouped):
    x, kernel, bias = _problem(w_bits * 10 + a_bits)
    qk, aq = _quantizers(x, kernel, w_bits, a_bits, grouped)
    fast = jax.jit(quant.dense)(x, qk, bias, aq, POS)
    assert fast.dtype == jnp.float32 and fast.shape == (B, L, C_OUT)
    # exact integer algebra: the int32 accumulator equals an int64 evaluation
    q_x = aq.quantize(x, POS)
    z_x = aq.for_positions(POS)[1]
    acc = jax.jit(_dot_general._dense_int32)(q_x, z_x, qk)
    assert acc.dtype == jnp.int32
    np.testing.assert_array_equal(acc, _int64_accumulator(x, qk, aq))
    slow = quant.fake_quant_dense(x, qk, bias, aq, POS)
    err = np.linalg.norm(fast - slow) / np.linalg.norm(slow)
    assert err <= 1e-6, err
    np.testing.assert_allclose(fast, slow, rtol=1e-5, atol=1e-5 * float(np.abs(slow).max()))


@pytest.mark.parametrize("grouped", (False, True), ids=("per_tensor", "groups"))
@pytest.mark.parametrize("w_bits,a_bits", [(8, 8), (4, 8), (6, 6)])
def test_int_dense_matches_oracle_bfloat16(w_bits, a_bits, grouped):
    x, kernel, bias = _problem(100 + w_bits, jnp.bfloat16)
    qk, aq = _quantizers(x, kernel, w_bits, a_bits, grouped)
    fast = np.asarray(jax.jit(quant.dense)(x, qk, bias, aq, POS).astype(jnp.float32))
    slow = np.asarray(quant.fake_quant_dense(x, qk, bias, aq, POS).astype(jnp.float32))
    assert quant.dense(x, qk, bias, aq, POS).dtype == jnp.bfloat16
    # Both quantize the same bf16 input to the same codes; their float32 results differ by
    # ~1e-7 relative, so after rounding to bf16 they differ by at most one bf16 ulp (2**-8
    # relative), and only where the float32 value sits at a rounding boundary.
    diff = np.abs(fast - slow)
    ulp = np.maximum(np.abs(slow), np.abs(fast)) * 2.0**-8
    assert np.all(diff <= ulp + 1e-30)
    assert np.mean(diff > 0) <= 0.01, np.mean(diff > 0)


def test_positions_select_groups_like_a_kv_cache_step():
    x, kernel, bias = _problem(7)
    qk, aq = _quantizers(x, kernel, 8, 8, True)
    full = quant.dense(x, qk, bias, aq, POS)
    step = quant.dense(x[:, 3:], qk, bias, aq, POS[3:])  # last group only (positions 3..6)
    np.testing.assert_array_equal(step, full[:, 3:])
    one = quant.dense(x[:, :1], qk, bias, aq, np.array([0]))
    np.testing.assert_array_equal(one, full[:, :1])


def test_hlo_has_int8_dot_with_int32_result():
    x, kernel, bias = _problem(8)
    qk, aq = _quantizers(x, kernel, 6, 8, True)
    text = jax.jit(lambda x, k, b, a: quant.dense(x, k, b, a, POS)).lower(x, qk, bias, aq).as_text()
    dots = [ln for ln in text.splitlines() if "dot_general" in ln]
    pat = re.compile(r"\(tensor<3x7x143xi8>, tensor<143x19xi8>\) -> tensor<3x7x19xi32>")
    assert any(pat.search(ln) for ln in dots), dots
    assert not any("f32" in ln for ln in dots), dots  # no float matmul on the int path


def test_weight_only_and_float_paths():
    x, kernel, bias = _problem(9)
    qk = quant.quantize_weight(kernel, 4)
    y = quant.dense(x, qk, bias)
    want = np.asarray(x) @ np.asarray(qk.dequantize()) + np.asarray(bias)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(quant.fake_quant_dense(x, qk, bias), want, rtol=1e-5, atol=1e-5)
    text = jax.jit(lambda x, k: quant.dense(x, k)).lower(x, qk).as_text()
    assert "xi32>" not in text  # weight-only: a float matmul
    yb = quant.dense(x.astype(jnp.bfloat16), qk, bias)
    assert yb.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(yb.astype(jnp.float32)), want, rtol=0.05, atol=0.05)
    yf = quant.dense(x, jnp.asarray(kernel), bias)
    np.testing.assert_allclose(yf, np.asarray(x) @ kernel + np.asarray(bias), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="needs a QArray kernel"):
        quant.dense(x, jnp.asarray(kernel), bias, quant.fit_act_quant(np.asarray(x), 8))


def test_int32_overflow_guard():
    with pytest.raises(ValueError, match="can overflow"):
        _dot_general._check_int32_bound(40000, 8, 0.0, 8, 0.0, "dense")
    _dot_general._check_int32_bound(32767, 8, 128.0, 8, 128.0, "dense")
    with pytest.raises(ValueError, match="zero points"):
        _dot_general._check_int32_bound(8192, 8, 3000.0, 8, 0.0, "dense")
    # 6-bit operands allow a 16x longer contraction
    _dot_general._check_int32_bound(40000, 6, 0.0, 6, 0.0, "dense")


def _attention_operands(seed):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((2, 3, 7, 13)).astype(F32)
    k = (rng.standard_normal((2, 3, 11, 13)) + 0.3).astype(F32)
    v = rng.standard_normal((2, 3, 11, 13)).astype(F32) * 2
    kt = np.swapaxes(k, -1, -2)  # [B, H, D, S]
    logits = q @ kt / np.sqrt(13)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    return q, kt, (p / p.sum(-1, keepdims=True)).astype(F32), v


@pytest.mark.parametrize("bits", (8, 6))
def test_quantized_matmul_int_path_matches_oracle(bits):
    q, kt, p, v = _attention_operands(bits)
    for a, b in ((q, kt), (p, v)):
        aq, bq = quant.fit_act_quant(a, bits), quant.fit_act_quant(b, bits)
        fast = jax.jit(quant.quantized_matmul)(jnp.asarray(a), jnp.asarray(b), aq, bq)
        slow = quant.fake_quant_matmul(jnp.asarray(a), jnp.asarray(b), aq, bq)
        assert fast.shape == a.shape[:-1] + b.shape[-1:]
        assert np.linalg.norm(fast - slow) / np.linalg.norm(slow) <= 1e-6
        np.testing.assert_allclose(fast, slow, rtol=1e-5, atol=1e-5 * float(np.abs(slow).max()))
        text = (
            jax.jit(quant.quantized_matmul).lower(jnp.asarray(a), jnp.asarray(b), aq, bq).as_text()
        )
        assert re.search(r"xi8>, tensor<[0-9x]+xi8>\) -> tensor<[0-9x]+xi32>", text)


def test_quantized_matmul_log_sqrt2_and_errors():
    _, _, p, v = _attention_operands(3)
    lq, vq = quant.fit_log_sqrt2_quant(p, 6), quant.fit_act_quant(v, 6)
    got = quant.quantized_matmul(jnp.asarray(p), jnp.asarray(v), lq, vq)
    want = np.einsum(
        "bhms,bhsn->bhmn",
        np.asarray(lq.fake_quant(jnp.asarray(p)), np.float64),
        np.asarray(vq.fake_quant(jnp.asarray(v)), np.float64),
    )
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    grouped = quant.fit_act_quant(v.reshape(6, 11, 13), 6, (5, 6))
    with pytest.raises(ValueError, match="per-tensor"):
        quant.quantized_matmul(jnp.asarray(p), jnp.asarray(v), vq, grouped)
    with pytest.raises(ValueError, match=r"\[\.\.\., M, K\]"):
        quant.quantized_matmul(jnp.asarray(p), jnp.asarray(p), vq, vq)


def test_gpu_contracted_size_padding_keeps_the_exact_accumulator(monkeypatch):
    """On GPU backends the int8 dots pad the contracted size (C_IN = 143 here) to a multiple of
    32 with zero codes (`_dot_general.pad_contracted`: XLA's Triton autotuner compiles no
    candidate for sizes like 26). Forced here on the CPU: same int32 accumulator, and the padded
    operands reach the dot."""
    x, kernel, _ = _problem(5)
    qk, aq = _quantizers(x, kernel, 8, 8, True)
    q_x, z_x = aq.quantize(x, POS), aq.for_positions(POS)[1]
    want = _int64_accumulator(x, qk, aq)
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    a, w = _dot_general.pad_contracted(q_x, -1, qk.qvalue, 0)
    assert a.shape == (B, L, 160) and w.shape == (160, C_OUT)
    assert not np.asarray(a[..., C_IN:]).any() and not np.asarray(w[C_IN:]).any()
    # A fresh function: jit's trace cache would hold an unpadded trace of _dense_int32.
    hlo = jax.jit(lambda *a: _dot_general._dense_int32(*a)).lower(q_x, z_x, qk).as_text()
    assert re.search(r"tensor<3x7x160xi8>", hlo), "padded operand not in the dot"
    np.testing.assert_array_equal(_dot_general._dense_int32(q_x, z_x, qk), want)
    # The packed inference layout's portable path pads the same way.
    from quant import _packed

    pk = _packed.pack_kernel(qk)
    got = jax.jit(lambda x: _packed.packed_dense(x, pk, None, aq, POS, impl="xla"))(x)
    monkeypatch.undo()
    ref = jax.jit(lambda x: _packed.packed_dense(x, pk, None, aq, POS, impl="xla"))(x)
    np.testing.assert_array_equal(got, ref)


def _lowered_for(platform: str, fn, *args) -> str:
    return jax.export.export(jax.jit(fn), platforms=(platform,))(*args).mlir_module()


def _has_s8_dot(text: str) -> bool:
    return any("xi8>" in d.split("->")[0] for d in re.findall(r"stablehlo.dot_general.*", text))


def test_cuda_attention_matmuls_accumulate_the_int8_codes_exactly_in_float32():
    """In programs lowered for CUDA `quantized_matmul` sums the same int8 codes in float32 chunks
    of at most `GPU_F32_CHUNK` (XLA:GPU miscompiled the batched s8 dots in RAR's calibration; see
    `_dot_general._int_matmul`); CPU and TPU programs keep the s8 dot. The CUDA branch, run here
    on the CPU, equals the s8 path exactly."""
    _, _, p, v = _attention_operands(8)
    pq, vq = quant.fit_act_quant(p, 8), quant.fit_act_quant(v, 8)
    args = (jnp.asarray(p), jnp.asarray(v))

    def fn(a, b):
        return quant.quantized_matmul(a, b, pq, vq)

    assert _has_s8_dot(_lowered_for("cpu", fn, *args))
    assert _has_s8_dot(_lowered_for("tpu", fn, *args))
    cuda = _lowered_for("cuda", fn, *args)
    assert "dot_general" in cuda and not _has_s8_dot(cuda)
    dims = _dot_general._matmul_dims(*args)
    qa, qb = pq.quantize(args[0]), vq.quantize(args[1])
    s8 = jax.lax.dot_general(qa, qb, dims, preferred_element_type=jnp.int32)
    np.testing.assert_array_equal(_f32_branch(qa, qb, dims), s8)


def _f32_branch(qa, qb, dims):
    """`_int_matmul`'s CUDA branch, on this (CPU) backend."""
    orig = jax.lax.platform_dependent
    try:
        jax.lax.platform_dependent = lambda *a, cuda, default: cuda(*a)
        fn = jax.jit(lambda a, b: _dot_general._int_matmul(a, b, dims))
        assert not _has_s8_dot(fn.lower(qa, qb).as_text())  # the branch really runs
        return np.asarray(fn(qa, qb))
    finally:
        jax.lax.platform_dependent = orig


def test_cuda_float32_accumulation_is_exact_past_one_chunk():
    """Extreme codes over K = 2,501: entry [0, 0, 0] sums 2,501 * 127**2 = 40,338,629, an odd
    integer above 2**24 that no float32 holds, so one float32 sum could not return it; the chunked
    sum is the exact integer (numpy int64)."""
    rng = np.random.default_rng(3)
    k = 2501
    qa = rng.choice(np.array([-128, 127], np.int8), size=(2, 3, k))
    qb = rng.choice(np.array([-128, 127], np.int8), size=(2, k, 4))
    qa[0, 0] = 127
    qb[0, :, 0] = 127
    want = np.einsum("bmk,bkn->bmn", qa.astype(np.int64), qb.astype(np.int64))
    assert want[0, 0, 0] == k * 127**2 and int(np.float32(want[0, 0, 0])) != want[0, 0, 0]
    dims = (((2,), (1,)), ((0,), (0,)))
    got = _f32_branch(jnp.asarray(qa), jnp.asarray(qb), dims)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, want)
    cuda = _lowered_for("cuda", lambda a, b: _dot_general._int_matmul(a, b, dims), qa, qb)
    assert cuda.count("stablehlo.dot_general") == -(-k // _dot_general.GPU_F32_CHUNK)
