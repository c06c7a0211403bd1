"""arvg_jax.nn.stacked_kv and arvg_jax.kernels.stacked_attention_pallas: attention over one block
of a layer-stacked KV cache (the XLA prefix path, and the Pallas kernel that reads the block in
place: interpret mode on the CPU, compiled on a GPU) against plain attention over that block's
sliced prefix."""

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


def test_padded_len():
    assert stacked_kv.padded_len(680) == 704
    assert stacked_kv.padded_len(64) == 64
    assert stacked_kv.padded_len(65, page=8) == 72


def test_prefix_is_the_blocks_written_keys():
    _, kc, _ = _caches()
    np.testing.assert_array_equal(stacked_kv.prefix(kc, jnp.int32(2), 13), kc[2, :, :13])


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
        stacked_kv.stacked_attention(q[:, :, :1].repeat(3, 2), kc, vc, 0, 5, scale=1.0, page=PAGE)
    with pytest.raises(ValueError, match="'pallas', 'cudnn' or 'xla'"):
        stacked_kv.stacked_attention(q, kc, vc, 0, 5, scale=1.0, page=PAGE, implementation="x")


# The kernel's tiles: 64 keys (Triton block shapes want powers of two >= 16), so its caches are
# padded to 64 positions; 7 queries run as one tile of 16, 37 as tiles of 16 or 64 (the last one
# partial); kv_len covers one partial tile, whole tiles only, and whole tiles + a partial one.
KD, LP64 = 16, 128


def _kernel_caches(seed, dtype, queries):
    ks = jax.random.split(jax.random.PRNGKey(seed), 3)
    kc = jax.random.normal(ks[0], (D, B, LP64, H, KD), dtype)
    vc = jax.random.normal(ks[1], (D, B, LP64, H, KD), dtype)
    q = jax.random.normal(ks[2], (B, queries, H, KD), dtype)
    return q, kc, vc


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="interpret-mode check runs on CPU")
@pytest.mark.parametrize(
    "layer,kv_len,queries,block_q",
    [(1, 1, 7, 64), (2, 64, 37, 16), (0, 101, 37, 64), (2, 128, 1, 64)],
)
def test_pallas_kernel_equals_sliced_attention_in_float32(layer, kv_len, queries, block_q):
    from arvg_jax.kernels import stacked_attention_pallas as sap

    q, kc, vc = _kernel_caches(1, jnp.float32, queries)
    out = sap.attention(
        q, kc, vc, jnp.int32(layer), kv_len=kv_len, scale=0.3, block_q=block_q, interpret=True
    )
    ref = _sliced(q, kc, vc, layer, kv_len, 0.3)
    # float32 throughout: only the online softmax's order of operations differs.
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="interpret-mode check runs on CPU")
def test_pallas_kernel_reads_only_the_blocks_written_keys():
    from arvg_jax.kernels import stacked_attention_pallas as sap

    q, kc, vc = _kernel_caches(2, jnp.float32, 9)
    layer, kv_len = 1, 77
    keep = (jnp.arange(D) == layer)[:, None, None, None, None] & (jnp.arange(LP64) < kv_len)[
        None, None, :, None, None
    ]
    kw = {"kv_len": kv_len, "scale": 1.0, "interpret": True}
    a = sap.attention(q, kc, vc, jnp.int32(layer), **kw)
    b = sap.attention(
        q, jnp.where(keep, kc, 1e3), jnp.where(keep, vc, -1e3), jnp.int32(layer), **kw
    )
    np.testing.assert_array_equal(a, b)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="interpret-mode check runs on CPU")
def test_pallas_path_in_bfloat16_is_within_bf16_rounding_of_the_xla_path():
    q, kc, vc = _kernel_caches(3, jnp.bfloat16, 37)
    kw = {"scale": 1.0, "page": 64}
    got = stacked_kv.stacked_attention(
        q, kc, vc, jnp.int32(2), 101, **kw, implementation="pallas", interpret=True
    )
    ref = stacked_kv.stacked_attention(q, kc, vc, jnp.int32(2), 101, **kw, implementation="xla")
    assert got.dtype == jnp.bfloat16
    # Both cast the probabilities to bf16 for the second matmul, the kernel relative to its
    # running maximum: outputs (|x| < 3) differ by a few bf16 roundings (eps 2^-8 at 1).
    np.testing.assert_allclose(
        np.asarray(got, np.float32), np.asarray(ref, np.float32), atol=2e-2, rtol=0
    )


def test_pallas_kernel_refuses_what_it_cannot_tile():
    from arvg_jax.kernels import stacked_attention_pallas as sap

    q, kc, vc = _caches()  # head dim 8: below Triton's 16
    with pytest.raises(ValueError, match="head_dim 8"):
        sap.attention(q, kc, vc, 0, kv_len=5, scale=1.0, interpret=True)
    q, kc, vc = _kernel_caches(0, jnp.float32, 5)
    with pytest.raises(ValueError, match="not a multiple of block_k 128"):
        sap.attention(q, kc[:, :, :64], vc[:, :, :64], 0, kv_len=5, scale=1.0, block_k=128)
    with pytest.raises(ValueError, match="bfloat16"):
        sap.attention(q.astype(jnp.bfloat16), kc, vc, 0, kv_len=5, scale=1.0)


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="the compiled kernel runs on GPUs")
@pytest.mark.parametrize("impl", ["pallas", "cudnn"])
@pytest.mark.parametrize(
    "layer,kv_len,queries", [(0, 64, 64), (5, 424, 169), (29, 680, 256), (3, 1, 1)]
)
def test_gpu_paths_equal_xla(layer, kv_len, queries, impl):
    """VAR-d30-like cache (704 positions) and head dim (64) in bf16: the compiled kernel and
    cuDNN against the XLA path (tolerance: bf16 attention outputs)."""
    d, b, lp, h, k = 30, 4, stacked_kv.padded_len(680), 3, 64
    keys = jax.random.split(jax.random.PRNGKey(3), 3)
    kc = jax.random.normal(keys[0], (d, b, lp, h, k), jnp.bfloat16)
    vc = jax.random.normal(keys[1], (d, b, lp, h, k), jnp.bfloat16)
    q = jax.random.normal(keys[2], (b, queries, h, k), jnp.bfloat16)
    f = jax.jit(stacked_kv.stacked_attention, static_argnames=("kv_len", "scale", "implementation"))
    kw = {"kv_len": kv_len, "scale": 0.125}
    got = f(q, kc, vc, jnp.int32(layer), **kw, implementation=impl)
    ref = f(q, kc, vc, jnp.int32(layer), **kw, implementation="xla")
    np.testing.assert_allclose(
        np.asarray(got, np.float32), np.asarray(ref, np.float32), atol=2e-2, rtol=2e-2
    )


def test_attention_impl_choices_and_refusals():
    from arvg_jax.families.var.model import VARConfig, attention_impl
    from arvg_jax.options import ExecOptions

    cfg = VARConfig.tiny(embed_dim=32, num_heads=2)  # heads of 16
    pallas = ExecOptions(attention="pallas", interpret=True)
    assert attention_impl(cfg, pallas, stacked=True) == "pallas"
    with pytest.raises(ValueError, match="per-block cache \\(sampler_kv 'prefix'"):
        attention_impl(cfg, pallas.replace(sampler_kv="prefix"))
    with pytest.raises(ValueError, match="attention 'pallas': head_dim 13"):
        attention_impl(VARConfig.tiny(), pallas, stacked=True)
    with pytest.raises(ValueError, match="attention 'pallas' cannot run on platform 'cpu'"):
        ExecOptions(attention="pallas").resolve("cpu")
    auto = ExecOptions(dtype="bfloat16").resolve()
    # "auto" never picks the kernel (opt-in until measured on a GPU): cuDNN on GPUs, else xla.
    expect = "cudnn" if auto.gpu_here else "xla"
    assert attention_impl(cfg, auto, stacked=True) == attention_impl(cfg, auto) == expect


@pytest.mark.slow
def test_stacked_sampler_with_the_kernel_generates_the_xla_tokens():
    import dataclasses

    from arvg_jax.families.var import sampler as var_sampler
    from arvg_jax.families.var.model import VAR
    from arvg_jax.models import random_model
    from arvg_jax.options import ExecOptions

    m = random_model("var-test", seed=1)
    cfg = dataclasses.replace(m.cfg, embed_dim=32, num_heads=2)  # heads of 16: Triton tiles
    x = np.zeros((1, cfg.seq_len - cfg.first_l, cfg.cvae), np.float32)
    params = VAR(cfg).init(jax.random.PRNGKey(2), np.zeros((1,), np.int32), x)["params"]
    params = var_sampler.stack_blocks(params)
    outs = {}
    for impl in ("xla", "pallas"):
        outs[impl] = var_sampler.generate(
            params,
            m.vae_params,
            cfg,
            m.vae_cfg,
            np.array([1, 3, 5, 10], np.int32),
            jax.random.PRNGKey(7),
            options=ExecOptions(attention=impl, interpret=True),  # interpreted off GPU
            greedy=True,
            return_logits_margin=True,
        )
    assert np.asarray(outs["xla"]["top2_margin"]).min() > 1e-3  # no near-tie to flip
    np.testing.assert_array_equal(outs["pallas"]["tokens"], outs["xla"]["tokens"])
    np.testing.assert_allclose(outs["pallas"]["images"], outs["xla"]["images"], atol=1e-5)
