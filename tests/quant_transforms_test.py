"""quant._transforms: every fold kind leaves the model's function unchanged.

Tiny prime dims: C = 7 features, F = 11 outputs, N = 5 rows.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from arvg_jax.nn.layers import Dense
from arvg_jax.nn.rms_norm import RMSNorm
from quant._transforms import fold_input_transform

C, F, N = 7, 11, 5


class _NormMLP(nn.Module):
    """norm -> (w1, w3) sharing the normed input, like PAR's SwiGLU (LayerNorm: MAR's norm2)."""

    norm: str

    @nn.compact
    def __call__(self, x):
        if self.norm == "rms":
            h = RMSNorm(name="norm")(x)
        else:
            h = nn.LayerNorm(epsilon=1e-6, use_fast_variance=False, name="norm")(x)
        a = Dense(F, use_bias=False, name="w1")(h)
        b = Dense(F, use_bias=False, name="w3")(h)
        return nn.silu(a) * b


def _randomized(params, rng):
    flat = jax.tree_util.tree_map(
        lambda v: jnp.asarray(rng.standard_normal(v.shape), jnp.float32), params
    )
    return jax.tree_util.tree_map(np.asarray, flat)


@pytest.mark.parametrize("norm", ["rms", "layer"])
def test_norm_bias_fold_with_a_sibling_preserves_the_output(norm):
    rng = np.random.default_rng(0)
    model = _NormMLP(norm)
    x = jnp.asarray(rng.standard_normal((N, C)) * 3 + 1, jnp.float32)
    params = _randomized(model.init(jax.random.PRNGKey(0), x)["params"], rng)
    assert "bias" not in params["w1"] and ("bias" in params["norm"]) == (norm == "layer")
    s = np.exp(rng.uniform(-1.5, 1.5, C)).astype(np.float32).astype(np.float64)
    p = rng.standard_normal(C)
    folded = fold_input_transform(
        params, "w1", "norm", slice(0), slice(0), s, p, kind="norm_bias", siblings=("w3",)
    )
    # The norm gained (or updated) its bias; both consumers gained the p W' bias.
    assert folded["norm"]["bias"].shape == (C,)
    assert folded["w1"]["bias"].shape == folded["w3"]["bias"].shape == (F,)
    want = model.apply({"params": params}, x)
    got = model.apply({"params": folded}, x)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5 * float(jnp.max(jnp.abs(want))))
    # The layers really see x / s - p: the normed input, as the folded norm computes it.
    h = model.apply({"params": params}, x, capture_intermediates=True)[1]
    h_new = model.apply({"params": folded}, x, capture_intermediates=True)[1]
    h0 = np.asarray(h["intermediates"]["norm"]["__call__"][0])
    h1 = np.asarray(h_new["intermediates"]["norm"]["__call__"][0])
    np.testing.assert_allclose(h1, h0 / s - p, rtol=1e-5, atol=1e-5)


def test_unknown_kind_and_quantized_norm_are_refused():
    with pytest.raises(ValueError, match="fold kind"):
        fold_input_transform({}, "w", "n", slice(0), slice(0), np.ones(C), kind="rms")
    with pytest.raises(KeyError, match="n/scale"):
        params = {"w": {"kernel": np.ones((C, F), np.float32)}, "n": {}}
        fold_input_transform(params, "w", "n", slice(0), slice(0), np.ones(C), kind="norm_bias")
