"""arvg_jax.nn.stacked_kv: attention over one block of a layer-stacked KV cache, read through a
page table, against plain attention over that block's sliced prefix."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arvg_jax.nn import stacked_kv

# Prime-ish sizes: 3 blocks, batch 5, 2 heads of 8, page 8, cache 24 (3 pages), keys 19.
D, B, H, K, PAGE, LP = 3, 5, 2, 8, 8, 24


def _caches(seed=0, dtype=jnp.float32):
    ks = jax.random.split(jax.random.PRNGKey(seed), 3)
    kc = jax.random.normal(ks[0], (D, B, LP, H, K), dtype)
    vc = jax.random.normal(ks[1], (D, B, LP, H, K), dtype)
    q = jax.random.normal(ks[2], (B, 7, H, K), dtype)
    return q, kc, vc


def _sliced(q, kc, vc, layer, kv_len, scale):
    k, v = kc[layer, :, :kv_len], vc[layer, :, :kv_len]
    s = jnp.einsum("bqhk,bshk->bhqs", q, k, precision="highest") * scale
    return jnp.einsum("bhqs,bshk->bqhk", jax.nn.softmax(s, -1), v, precision="highest")


def test_page_table_names_the_blocks_pages():
    t = np.asarray(stacked_kv.page_table(2, B, D, 3))
    assert t.shape == (B, 1, D * 3, 1)
    for b in range(B):
        row = t[b, 0, :, 0]
        np.testing.assert_array_equal(row[:3], (2 * B + b) * 3 + np.arange(3))
        assert set(row[3:]) <= set(row[:3])  # padding entries repeat the block's own pages


def test_padded_len():
    assert stacked_kv.padded_len(680) == 704
    assert stacked_kv.padded_len(64) == 64
    assert stacked_kv.padded_len(65, page=8) == 72


@pytest.mark.parametrize("layer,kv_len", [(0, 19), (1, 8), (2, 24), (2, 1)])
def test_xla_path_equals_sliced_attention(layer, kv_len):
    q, kc, vc = _caches()
    out = stacked_kv.stacked_attention(
        q, kc, vc, jnp.int32(layer), kv_len, scale=0.3, page=PAGE, implementation="xla"
    )
    ref = _sliced(q, kc, vc, layer, kv_len, 0.3)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_xla_path_ignores_other_blocks_and_the_unwritten_tail():
    q, kc, vc = _caches()
    layer, kv_len = 1, 13
    keep = (jnp.arange(D) == layer)[:, None, None, None, None] & (jnp.arange(LP) < kv_len)[
        None, None, :, None, None
    ]
    noisy_k, noisy_v = jnp.where(keep, kc, 1e3), jnp.where(keep, vc, -1e3)
    kw = {"scale": 0.5, "page": PAGE, "implementation": "xla"}
    a = stacked_kv.stacked_attention(q, kc, vc, jnp.int32(layer), kv_len, **kw)
    b = stacked_kv.stacked_attention(q, noisy_k, noisy_v, jnp.int32(layer), kv_len, **kw)
    np.testing.assert_array_equal(a, b)


def test_write_is_in_place_semantics():
    _, kc, _ = _caches()
    new = jnp.ones((B, 4, H, K))
    out = stacked_kv.write(kc, new, jnp.int32(2), 5)
    np.testing.assert_array_equal(out[2, :, 5:9], new)
    np.testing.assert_array_equal(out[:2], kc[:2])
    np.testing.assert_array_equal(out[2, :, :5], kc[2, :, :5])
    np.testing.assert_array_equal(out[2, :, 9:], kc[2, :, 9:])


def test_errors_name_the_shapes():
    q, kc, vc = _caches()
    with pytest.raises(ValueError, match="multiple of the page"):
        stacked_kv.stacked_attention(q, kc, vc, 0, 5, scale=1.0, page=7, implementation="xla")
    with pytest.raises(ValueError, match="kv_len 25"):
        stacked_kv.stacked_attention(q, kc, vc, 0, 25, scale=1.0, page=PAGE)
    with pytest.raises(ValueError, match=r"queries \(5, 7, 3, 8\)"):
        stacked_kv.stacked_attention(q[:, :, :1].repeat(3, 2), kc, vc, 0, 5, scale=1.0)


@pytest.mark.skipif(not stacked_kv.available(), reason=str(stacked_kv.unavailable_reason()))
@pytest.mark.parametrize("page", [64, 128])
@pytest.mark.parametrize("layer,kv_len", [(0, 64), (5, 424), (29, 680), (3, 1)])
def test_cudnn_paged_equals_xla_on_gpu(layer, kv_len, page):
    """VAR-d30-like pages (64 or 128) and head dim (64) in bf16: the cuDNN paged kernel reads the
    same pages as the gather path (tolerance: bf16 attention outputs)."""
    d, b, lp, h, k = 30, 4, stacked_kv.padded_len(680, page), 3, 64
    keys = jax.random.split(jax.random.PRNGKey(3), 3)
    kc = jax.random.normal(keys[0], (d, b, lp, h, k), jnp.bfloat16)
    vc = jax.random.normal(keys[1], (d, b, lp, h, k), jnp.bfloat16)
    q = jax.random.normal(keys[2], (b, 169, h, k), jnp.bfloat16)
    f = jax.jit(
        stacked_kv.stacked_attention, static_argnames=("kv_len", "scale", "page", "implementation")
    )
    kw = {"kv_len": kv_len, "scale": 0.125, "page": page}
    got = f(q, kc, vc, jnp.int32(layer), **kw, implementation="cudnn")
    ref = f(q, kc, vc, jnp.int32(layer), **kw, implementation="xla")
    np.testing.assert_allclose(
        np.asarray(got, np.float32), np.asarray(ref, np.float32), atol=2e-2, rtol=2e-2
    )
