"""arvg_jax.kernels.adaln_pallas: residual add + AdaLN + next-layer input quantization as one kernel,
against its XLA reference (the ops of `var.VARBlock` and `quant.ActQuant.quantize`), and through
the stacked sampler against the XLA norms (float and packed int8 blocks). Interpret mode on
CPU; the compiled kernel on a GPU."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arvg_jax.families.var import sampler as var_sampler
from arvg_jax.kernels import adaln_pallas as ap
from arvg_jax.models import random_model
from arvg_jax.options import ExecOptions

B, L, C = 3, 11, 37  # prime-sized: C pads to 64 columns


def _inputs(mod_dtype, seed=0, b=B, length=L, c=C):
    rng = np.random.default_rng(seed)
    x = jnp.asarray((rng.normal(size=(b, length, c)) * 3 + 0.5).astype(np.float32))

    def mod(s):
        return jnp.asarray(rng.normal(size=(b, c)) * s).astype(mod_dtype)

    delta = jnp.asarray(rng.normal(size=(b, length, c))).astype(mod_dtype)
    qs = jnp.asarray(rng.uniform(0.01, 0.04, length).astype(np.float32))
    qz = jnp.asarray(rng.integers(-6, 6, length).astype(np.float32))
    return x, mod(0.3), mod(0.3), delta, mod(1.0), qs, qz


MODES = {
    "float": {},
    "residual_float": {"residual": True},
    "int8": {"quant": 8},
    "residual_int8": {"residual": True, "quant": 8},
    "residual_int6": {"residual": True, "quant": 6},
}


def _kwargs(mode, delta, gamma, qs, qz):
    kw = {}
    if MODES[mode].get("residual"):
        kw.update(delta=delta, gamma=gamma)
    if "quant" in MODES[mode]:
        kw.update(quant_scale=qs, quant_zero=qz, quant_bits=MODES[mode]["quant"])
    return kw


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="interpret-mode check runs on CPU")
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("mod_dtype", [jnp.bfloat16, jnp.float32])
@pytest.mark.parametrize("rows", [1, 4])  # 4: 11 tokens in tiles of 4, the last one partial
def test_interpreted_kernel_equals_the_xla_ops(mode, mod_dtype, rows):
    x, scale, shift, delta, gamma, qs, qz = _inputs(mod_dtype, seed=len(mode))
    kw = _kwargs(mode, delta, gamma, qs, qz)
    got = ap.adaln(x, scale, shift, eps=1e-6, out_dtype=mod_dtype, rows=rows, interpret=True, **kw)
    ref = ap.reference(x, scale, shift, eps=1e-6, out_dtype=mod_dtype, **kw)
    exact = mod_dtype == jnp.bfloat16
    _assert_close_to_reference(got, ref, mode, code_flips=0.01, exact_residual=exact)
    if "quant" in MODES[mode]:
        codes = np.asarray(got[1][0], np.int64)
        bits = MODES[mode]["quant"]
        assert codes.min() >= -(2 ** (bits - 1)) and codes.max() < 2 ** (bits - 1)
        assert len(np.unique(codes)) > 10  # the scales exercise the quantizer's range


def _assert_close_to_reference(got, ref, mode, code_flips, exact_residual=True):
    """The residual add is elementwise: exact where the product rounds to bf16 (float32 may be
    contracted into an FMA or not: an ulp). The LayerNorm sums add in another order, so h may
    differ by one rounding of its dtype, and a code at a rounding boundary by one."""
    assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(ref)
    for g, r in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(ref)):
        assert g.shape == r.shape and g.dtype == r.dtype
    if MODES[mode].get("residual"):
        if exact_residual:
            np.testing.assert_array_equal(got[0], ref[0])
        else:
            np.testing.assert_allclose(got[0], ref[0], rtol=2.4e-7, atol=1e-7)
    h, rh = got[1], ref[1]
    if "quant" in MODES[mode]:
        diff = np.abs(np.asarray(h[0], np.int32) - np.asarray(rh[0], np.int32))
        assert diff.max() <= 1 and diff.mean() <= code_flips
        np.testing.assert_array_equal(h[1], np.asarray(h[0], np.int64).sum(-1, keepdims=True))
    else:
        g, r = np.asarray(h, np.float32), np.asarray(rh, np.float32)
        # LN output is O(1): a few float32 ulps (reduction order, FMA contraction of the
        # residual add), or one rounding of a bf16 result.
        ulps = 8 if h.dtype == jnp.float32 else 2
        eps = float(jnp.finfo(h.dtype).eps)
        assert (np.abs(g - r) <= ulps * eps * np.maximum(np.abs(r), 1.0)).all()
        if h.dtype != jnp.float32:  # float32: a shifted mean moves most entries by an ulp
            assert (g != r).mean() < 0.05


def test_errors_name_the_shapes():
    x, scale, shift, delta, _, qs, qz = _inputs(jnp.bfloat16)
    with pytest.raises(ValueError, match=r"scale \(2, 37\) must be \[B, C\]"):
        ap.adaln(x, scale[1:], shift, eps=1e-6)
    with pytest.raises(ValueError, match="delta and gamma come together"):
        ap.adaln(x, scale, shift, eps=1e-6, delta=delta)
    with pytest.raises(ValueError, match=r"must be per token \[11\]"):
        ap.adaln(x, scale, shift, eps=1e-6, quant_scale=qs[1:], quant_zero=qz, quant_bits=8)
    with pytest.raises(ValueError, match="residual x must be float32"):
        ap.adaln(x.astype(jnp.bfloat16), scale, shift, eps=1e-6)


@functools.cache
def _quantized_tiny():
    from arvg_jax.families.var.bench import build

    model = random_model("var-test", seed=3)
    qtree = build.quantize_fast(model, [(8, 8)], calib=2, seed=0)[(8, 8)]
    return model, var_sampler.inference_layout(qtree)


def _generate(model, params, opts, dtype):
    return var_sampler.generate(
        params,
        model.vae_params,
        model.cfg,
        model.vae_cfg,
        np.array([1, 5, 9], np.int32),  # top-2 margins ≥ 0.01 in all three precisions
        jax.random.PRNGKey(2),
        options=opts.replace(dtype=dtype),
        greedy=True,
        return_logits_margin=True,
    )


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["float32", "bfloat16", "w8a8"])
def test_sampler_generates_the_xla_norms_tokens(precision):
    if precision == "w8a8":
        model, params = _quantized_tiny()
        dtype = jnp.bfloat16
    else:
        model = random_model("var-test", seed=3)
        params = var_sampler.stack_blocks(model.params)
        dtype = jnp.dtype(precision)
    outs = {}
    for impl in ("xla", "pallas"):
        cfg = ExecOptions(adaln_kernel=impl, interpret=True)  # the kernel interpreted off GPU
        outs[impl] = _generate(model, params, cfg, dtype)
    # The kernel really ran: its pallas_call is in the sampler's program.
    cfg = ExecOptions(adaln_kernel="pallas", interpret=True)
    jaxpr = jax.make_jaxpr(lambda p: _generate(model, p, cfg, dtype))(params)
    assert "pallas_call" in str(jaxpr)
    assert np.asarray(outs["xla"]["top2_margin"]).min() > 1e-3  # no near-tie to flip
    np.testing.assert_array_equal(outs["pallas"]["tokens"], outs["xla"]["tokens"])
    atol = 1e-5 if dtype == jnp.float32 else 2e-2
    np.testing.assert_allclose(outs["pallas"]["images"], outs["xla"]["images"], atol=atol)


@pytest.mark.skipif(not ap.available(), reason="the compiled kernel needs a CUDA GPU (Triton)")
@pytest.mark.parametrize("mode", ["residual_float", "int8", "residual_int8"])
def test_compiled_kernel_at_var_d30_width_on_gpu(mode):
    """VAR-d30's width (C = 1920) at its 13×13 scale, batch 6, bf16 modulations."""
    x, scale, shift, delta, gamma, qs, qz = _inputs(jnp.bfloat16, b=6, length=169, c=1920)
    kw = _kwargs(mode, delta, gamma, qs, qz)
    got = jax.jit(functools.partial(ap.adaln, eps=1e-6, interpret=False, **kw))(x, scale, shift)
    ref = jax.jit(functools.partial(ap.reference, eps=1e-6, **kw))(x, scale, shift)
    _assert_close_to_reference(got, ref, mode, code_flips=1e-3)
