"""arvg_jax.nn: RMSNorm (+ optional bias), SwiGLU, 2-D RoPE, attention with GQA and a KV cache."""

import jax
import jax.numpy as jnp
import numpy as np

from arvg_jax.nn.attention import cache_write, dot_product_attention, init_cache
from arvg_jax.nn.rms_norm import RMSNorm
from arvg_jax.nn.rope import apply_rope, rope_2d_grid
from arvg_jax.nn.swiglu import SwiGLU

RNG = np.random.default_rng(0)


def _randn(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def test_rms_norm_and_folded_bias():
    x, w, b = _randn(3, 5, 13), _randn(13), _randn(13)
    want = x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-5) * w
    y = RMSNorm().apply({"params": {"scale": w}}, x)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)
    assert RMSNorm().init(jax.random.key(0), x)["params"].keys() == {"scale"}  # no bias made
    yb = RMSNorm().apply({"params": {"scale": w, "bias": b}}, x)
    np.testing.assert_allclose(yb, want + b, rtol=1e-5, atol=1e-6)
    assert RMSNorm(dtype=jnp.bfloat16).apply({"params": {"scale": w}}, x).dtype == jnp.bfloat16


def test_swiglu():
    x = _randn(2, 3, 7)
    p = {"w1": {"kernel": _randn(7, 11)}, "w3": {"kernel": _randn(7, 11)}}
    p["w2"] = {"kernel": _randn(11, 7)}
    a, b = x @ p["w1"]["kernel"], x @ p["w3"]["kernel"]
    want = (a / (1 + np.exp(-a)) * b) @ p["w2"]["kernel"]
    got = SwiGLU(11).apply({"params": p}, x)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_rope_2d_grid_and_rotation():
    table = rope_2d_grid(5, 12, 10000.0)  # [5, 5, 6, 2]
    assert table.shape == (5, 5, 6, 2) and table.dtype == np.float32
    freqs = 1.0 / 10000.0 ** (np.arange(0, 6, 2) / 6)  # 3 row pairs, then 3 column pairs
    np.testing.assert_allclose(table[3, 1, :3, 0], np.cos(3 * freqs), rtol=1e-6)
    np.testing.assert_allclose(table[3, 1, 3:, 1], np.sin(1 * freqs), rtol=1e-6, atol=1e-7)
    x = _randn(2, 4, 3, 12)
    rows = table.reshape(25, 6, 2)[:4]
    y = np.asarray(apply_rope(jnp.asarray(x), jnp.asarray(rows)))
    # Interleaved pairs as complex numbers times e^{i angle}.
    xc = x[..., 0::2] + 1j * x[..., 1::2]
    yc = xc * (rows[None, :, None, :, 0] + 1j * rows[None, :, None, :, 1])
    np.testing.assert_allclose(y[..., 0::2], yc.real, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(y[..., 1::2], yc.imag, rtol=1e-5, atol=1e-6)
    # A zero row zeroes the vector (LlamaGen's cls / bridge positions), it does not pass it.
    assert not np.asarray(apply_rope(jnp.asarray(x[:, :1]), jnp.zeros((1, 6, 2)))).any()


def _naive_attention(q, k, v, mask):
    h, g = q.shape[2], k.shape[2]
    k = np.repeat(k, h // g, axis=2)  # torch repeat_interleave
    v = np.repeat(v, h // g, axis=2)
    s = np.einsum("blhk,bshk->bhls", q, k) / np.sqrt(q.shape[-1])
    s = np.where(mask, s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("bhls,bshk->blhk", p, v)


def test_attention_gqa_masks_and_cache_offset():
    q, k, v = _randn(2, 3, 6, 5), _randn(2, 7, 2, 5), _randn(2, 7, 2, 5)
    mask = RNG.random((3, 7)) < 0.6
    mask[:, 0] = True
    want = _naive_attention(q, k, v, mask)
    got = dot_product_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), mask=mask)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    bias = np.where(mask, 0.0, -1e30).astype(np.float32)
    got_bias = dot_product_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), mask=bias)
    np.testing.assert_allclose(got_bias, want, rtol=1e-5, atol=1e-6)

    @jax.jit
    def write(cache, start):  # start is traced
        return cache_write(cache, jnp.ones((2, 3, 2, 5)), 2 * jnp.ones((2, 3, 2, 5)), start)

    cache = write(init_cache(2, 9, 2, 5, jnp.float32), jnp.int32(4))
    assert np.asarray(cache["k"][:, 4:7]).min() == 1 and not np.asarray(cache["k"][:, :4]).any()
    assert not np.asarray(cache["v"][:, 7:]).any() and np.asarray(cache["v"][:, 5]).max() == 2
