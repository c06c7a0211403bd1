"""Sampler implementation options (ExecOptions.sampling_filter / sampler_kv / scan_unroll, and the
unrolled vs stacked block layouts) generate the tokens of the baseline sampler: greedy, and with
the same PRNG key. Every variant that scripts/sampler_variants.py times is checked here; none
may change what is generated, only how fast."""

import dataclasses
import functools
import pathlib
import runpy

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arvg_jax.families.var import sampler as var_sampler
from arvg_jax.families.var.model import VAR, VARBlock
from arvg_jax.models import random_model
from arvg_jax.options import ExecOptions

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "scripts" / "sampler_variants.py"
_SCRIPT = runpy.run_path(str(SCRIPT))  # plain data at import: VARIANTS, BASELINE_OPTIONS
BASELINE = _SCRIPT["BASELINE_OPTIONS"]
# name: (stacked blocks?, VARConfig overrides), for every variant the script can time, except the
# Pallas attention kernel's: its Triton tiles need heads of a power of two >= 16, not var-test's 13
# (tests/stacked_kv_test.py runs the sampler with it on a var-test of 16-wide heads).
VARIANTS = {
    name: (blocks == "scan", options)
    for name, (blocks, options, _) in _SCRIPT["VARIANTS"].items()
    if name != "baseline" and options.get("attention") != "pallas"
}


@functools.cache
def _model(depth: int):
    """Random tiny VAR of the given depth (3: an odd depth, so unroll 2 leaves a remainder)."""
    m = random_model("var-test", seed=1)
    if depth == m.cfg.depth:
        return m
    cfg = dataclasses.replace(m.cfg, depth=depth)
    x = np.zeros((1, cfg.seq_len - cfg.first_l, cfg.cvae), np.float32)
    params = VAR(cfg).init(jax.random.PRNGKey(2), np.zeros((1,), np.int32), x)["params"]
    return dataclasses.replace(m, cfg=cfg, params=params)


def _generate(m, stacked, overrides, dtype, **kw):
    params = var_sampler.stack_blocks(m.params) if stacked else m.params
    # interpret: the testing switch, so "pallas" variants run interpreted off GPUs.
    opts = ExecOptions(**{**BASELINE, **overrides}, dtype=dtype, interpret=True)
    labels = np.array([1, 3, 5, 10], np.int32)
    return var_sampler.generate(
        params, m.vae_params, m.cfg, m.vae_cfg, labels, jax.random.PRNGKey(7), options=opts, **kw
    )


def _assert_same_tokens(m, variants, dtype, runs):
    for run, kw in runs.items():
        ref = _generate(m, True, {}, dtype, **kw)
        if "return_logits_margin" in kw:  # no near-tie that rounding differences could flip
            assert np.asarray(ref["top2_margin"]).min() > (1e-4 if dtype == jnp.float32 else 1e-3)
        for name in variants:
            stacked, overrides = VARIANTS[name]
            out = _generate(m, stacked, overrides, dtype, **kw)
            np.testing.assert_array_equal(out["tokens"], ref["tokens"], err_msg=f"{name} {run}")
            atol = 1e-5 if dtype == jnp.float32 else 2e-2
            np.testing.assert_allclose(out["images"], ref["images"], atol=atol, err_msg=name)


GREEDY = {"greedy": {"greedy": True, "return_logits_margin": True}}
# top-k 10 of V 37 and top-p 0.8: both filters cut (the defaults 900 / 0.96 would not).
SAMPLED = {"sampled": {"top_k": 10, "top_p": 0.8}}


@pytest.mark.slow
def test_variants_generate_the_baseline_tokens():
    _assert_same_tokens(_model(2), list(VARIANTS), jnp.float32, GREEDY)
    # Keyed draws: where the filter differs, and the layout furthest from the baseline.
    _assert_same_tokens(
        _model(2), ["bisect_filter", "unrolled_kv_full", "kv_stacked"], jnp.float32, SAMPLED
    )


@pytest.mark.slow
def test_scan_unroll_with_a_remainder():
    _assert_same_tokens(_model(3), ["scan_unroll2"], jnp.float32, GREEDY)


@pytest.mark.slow
def test_kv_variants_in_bfloat16():
    _assert_same_tokens(
        _model(2),
        ["kv_full", "unrolled_kv_full", "kv_stacked", "kv_stacked_page128"],
        jnp.bfloat16,
        GREEDY,
    )


@pytest.mark.slow  # an A/B KV layout (~30 s)
def test_kv_full_attends_only_to_the_written_prefix():
    """With sampler_kv="full" the unwritten cache tail is masked: garbage there changes nothing."""
    m = _model(2)
    cfg, full = m.cfg, ExecOptions(sampler_kv="full")
    b, si = 2, 1
    begin, end = cfg.begin_ends[si]
    x = jax.random.normal(jax.random.PRNGKey(0), (b, end - begin, cfg.embed_dim))
    ada = jax.random.normal(jax.random.PRNGKey(1), (b, cfg.embed_dim))
    block = m.params["blocks_0"]
    shape = (b, cfg.seq_len, cfg.num_heads, cfg.head_dim)
    clean = {"k": jnp.zeros(shape), "v": jnp.zeros(shape)}
    noisy = {k: v.at[:, end:].set(1e3) for k, v in clean.items()}
    kw = {"positions": np.arange(begin, end), "cache_offset": begin, "kv_len": end}
    outs = [
        VARBlock(cfg, o).apply({"params": block}, x, ada, cache=cache, **kw)[0]
        for o, cache in (
            (full, clean),
            (full, noisy),
            (ExecOptions(sampler_kv="prefix"), clean),
        )
    ]
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_allclose(outs[0], outs[2], rtol=1e-6, atol=1e-6)  # = "prefix"


@pytest.mark.slow
def test_w4a8_nibble_unpack_once_per_call_generates_the_per_layer_tokens():
    """ExecOptions.nibble_unpack: W4A8 weights stored two codes per byte, expanded once per
    `generate` call ("call") or at every layer call ("layer"): the same codes reach the GEMMs,
    so the tokens and images are identical."""
    from arvg_jax.families.var.bench import build
    from quant import _packed

    m = _model(3)
    tree = build.quantize_fast(m, [(4, 8)], calib=2, seed=0)[(4, 8)]
    params = var_sampler.inference_layout(tree)
    stacked = var_sampler.STACKED_KEY
    assert params[stacked]["ffn"]["fc1"]["kernel"].nibbles  # stored as nibbles
    outs = {}
    for mode in ("call", "layer"):
        opts = ExecOptions(**{**BASELINE, "nibble_unpack": mode})
        outs[mode] = var_sampler.generate(
            params,
            m.vae_params,
            m.cfg,
            m.vae_cfg,
            np.array([1, 3], np.int32),
            jax.random.PRNGKey(7),
            options=opts,
        )
    np.testing.assert_array_equal(outs["call"]["tokens"], outs["layer"]["tokens"])
    np.testing.assert_array_equal(outs["call"]["images"], outs["layer"]["images"])
    # The expansion itself: every nibble kernel (stacked over blocks too) becomes int8 codes.
    wide = _packed.unpack_nibble_storage(params)
    got = wide[stacked]["ffn"]["fc1"]["kernel"]
    want = params[stacked]["ffn"]["fc1"]["kernel"]
    assert not got.nibbles and got.qvalue_t.dtype == jnp.int8
    assert got.qvalue_t.shape[-1] == 2 * want.qvalue_t.shape[-1]
    np.testing.assert_array_equal(got.qvalue_t, _packed.unpack_nibbles(want.qvalue_t))
    np.testing.assert_array_equal(got.col_sum, want.col_sum)


def test_options_are_validated():
    with pytest.raises(ValueError, match="nibble_unpack"):
        ExecOptions(nibble_unpack="never")
    with pytest.raises(ValueError, match="sampler_kv"):
        ExecOptions(sampler_kv="ring")
    with pytest.raises(ValueError, match="scan_unroll"):
        ExecOptions(scan_unroll=0)
    with pytest.raises(ValueError, match="kv_page"):
        ExecOptions(kv_page=96)
    with pytest.raises(ValueError, match="filter method"):
        ExecOptions(sampling_filter="heap")
