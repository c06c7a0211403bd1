"""Stacked-blocks sampling (one lax.scan over blocks per scale) computes what the unrolled
sampler computes; the attention options of VARConfig."""

import jax
import numpy as np
import pytest

from arvg_jax.families.var import sampler as var_sampler
from arvg_jax.families.var.model import VARConfig, attention_impl
from arvg_jax.models import random_model
from arvg_jax.options import ExecOptions


def _model():
    return random_model("var-test", seed=1)


@pytest.mark.slow  # the default greedy-reference test runs the scan layout
def test_scan_sampler_equals_unrolled_sampler():
    m = _model()
    labels = np.array([1, 3, 5], np.int32)
    key = jax.random.PRNGKey(7)
    kw = {"greedy": True, "return_logits_margin": True}
    a = var_sampler.generate(m.params, m.vae_params, m.cfg, m.vae_cfg, labels, key, **kw)
    stacked = var_sampler.stack_blocks(m.params)
    assert "blocks" in stacked and not any(k.startswith("blocks_") for k in stacked)
    b = var_sampler.generate(stacked, m.vae_params, m.cfg, m.vae_cfg, labels, key, **kw)
    np.testing.assert_array_equal(a["tokens"], b["tokens"])
    np.testing.assert_allclose(a["images"], b["images"], atol=1e-5)
    np.testing.assert_allclose(a["top2_margin"], b["top2_margin"], rtol=1e-4, atol=1e-4)
    # sampled (not greedy) draws use the same keys: same tokens too
    c = var_sampler.generate(m.params, m.vae_params, m.cfg, m.vae_cfg, labels, key)
    d = var_sampler.generate(stacked, m.vae_params, m.cfg, m.vae_cfg, labels, key)
    np.testing.assert_array_equal(c["tokens"], d["tokens"])


@pytest.mark.slow  # compiles the scan sampler twice over (~60 s)
def test_scan_sampler_no_retrace_for_a_second_batch_of_the_same_shape():
    m = _model()
    stacked = var_sampler.stack_blocks(m.params)
    var_sampler.generate(
        stacked, m.vae_params, m.cfg, m.vae_cfg, np.array([1, 2]), jax.random.PRNGKey(0)
    )
    n = var_sampler._generate_jit._cache_size()
    var_sampler.generate(
        stacked, m.vae_params, m.cfg, m.vae_cfg, np.array([7, 9]), jax.random.PRNGKey(1), cfg=3.0
    )
    assert var_sampler._generate_jit._cache_size() == n


def test_stack_unstack_round_trip_and_errors():
    m = _model()
    stacked = var_sampler.stack_blocks(m.params)
    leaf = stacked["blocks"]["attn"]["qkv"]["kernel"]
    assert leaf.shape[0] == m.cfg.depth
    back = var_sampler.unstack_blocks(stacked)
    assert sorted(back) == sorted(m.params)
    same = jax.tree_util.tree_map(lambda x, y: bool(np.array_equal(x, y)), back, m.params)
    assert all(jax.tree_util.tree_leaves(same))
    with pytest.raises(ValueError, match="no blocks_"):
        var_sampler.stack_blocks(stacked)


def test_attention_option():
    cfg = VARConfig.tiny()
    assert attention_impl(cfg, ExecOptions()) in ("xla", "cudnn")
    if jax.default_backend() == "cpu":
        assert attention_impl(cfg, ExecOptions(dtype="bfloat16")) == "xla"
    assert attention_impl(cfg, ExecOptions(attention="cudnn")) == "cudnn"
    with pytest.raises(ValueError, match="attention must be"):
        ExecOptions(attention="flash")
