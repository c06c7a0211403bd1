"""QArray / ActQuant / LogSqrt2Quant: storage convention, validation, pytree and jit behaviour."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import quant

F32 = np.float32


def _weights(seed=0, shape=(13, 7)):
    return np.random.default_rng(seed).standard_normal(shape).astype(F32) * F32(0.2)


@pytest.mark.parametrize("bits", range(2, 9))
def test_quantize_stores_shifted_codes_and_dequantizes_like_official(bits):
    w = _weights(bits)
    delta, zp = quant.fit_uniform_per_row(w.T, bits)  # official z per output channel
    qa = quant.QArray.quantize(w, delta.T, zp.T, bits)
    qa.validate()
    off = 2 ** (bits - 1)
    q = np.asarray(qa.qvalue)
    assert qa.qvalue.dtype == jnp.int8 and q.min() >= -off and q.max() <= off - 1
    np.testing.assert_array_equal(np.asarray(qa.zero_point), zp.T - off)
    # (stored - stored_zp)·Δ == official (q - z)·Δ, exactly
    np.testing.assert_array_equal(qa.dequantize(), quant.fake_quant_uniform(w, delta.T, zp.T, bits))
    assert qa.dequantize(jnp.bfloat16).dtype == jnp.bfloat16
    assert qa.shape == (13, 7) and qa.ndim == 2


def test_validate_names_shapes_and_rejects_broken_invariants():
    qa = quant.quantize_weight(_weights(), 8)
    with pytest.raises(ValueError, match=r"int8.*qvalue int32\[13, 7\]"):
        qa.replace(qvalue=qa.qvalue.astype(jnp.int32)).validate()
    with pytest.raises(ValueError, match=r"broadcast.*scale float32\[1, 5\]"):
        qa.replace(scale=jnp.ones((1, 5), jnp.float32)).validate()
    with pytest.raises(ValueError, match="integer-valued"):
        qa.replace(zero_point=qa.zero_point + 0.5).validate()
    with pytest.raises(ValueError, match="> 0"):
        qa.replace(scale=qa.scale.at[0, 0].set(0.0)).validate()
    q4 = quant.quantize_weight(_weights(), 4)
    with pytest.raises(ValueError, match=r"outside \[-8, 7\]"):
        q4.replace(qvalue=q4.qvalue.at[0, 0].set(9)).validate()
    with pytest.raises(ValueError, match="bits"):
        quant.QArray(qa.qvalue, qa.scale, qa.zero_point, bits=9).validate()


def test_qarray_is_a_pytree_with_static_bits():
    qa = quant.quantize_weight(_weights(), 6)
    leaves, treedef = jax.tree_util.tree_flatten(qa)
    assert len(leaves) == 3 and leaves[0].dtype == jnp.int8
    back = jax.tree_util.tree_unflatten(treedef, leaves)
    assert back.bits == 6
    np.testing.assert_array_equal(back.dequantize(), qa.dequantize())
    q8 = quant.quantize_weight(_weights(), 8)
    assert jax.tree_util.tree_structure(q8) != treedef  # bits is part of the structure

    traces = []

    @jax.jit
    def f(q):
        traces.append(q.bits)
        return q.dequantize()

    np.testing.assert_array_equal(f(qa), qa.dequantize())
    f(jax.tree_util.tree_map(lambda a: a, qa))
    assert traces == [6]


def test_param_tree_with_quantized_leaves_flattens_and_jits():
    w = _weights(1, (11, 5))
    x = np.random.default_rng(2).standard_normal((2, 3, 11)).astype(F32)
    params = {
        "blocks_0": {
            "fc1": {
                "kernel": quant.quantize_weight(w, 8),
                "bias": jnp.zeros((5,), jnp.float32),
                "input_quant": quant.fit_act_quant(x, 8, (1, 2)),
            }
        },
        "head": {"kernel": jnp.asarray(w), "bias": jnp.ones((5,), jnp.float32)},
    }
    flat = jax.tree_util.tree_leaves_with_path(params)
    names = ["/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in p) for p, _ in flat]
    assert "blocks_0/fc1/kernel/qvalue" in names and "blocks_0/fc1/input_quant/scale" in names
    leaves, treedef = jax.tree_util.tree_flatten(params)
    params2 = jax.tree_util.tree_unflatten(treedef, leaves)
    assert isinstance(params2["blocks_0"]["fc1"]["kernel"], quant.QArray)

    @jax.jit
    def apply(p, x):
        f = p["blocks_0"]["fc1"]
        h = quant.dense(x, f["kernel"], f["bias"], f["input_quant"], np.arange(3))
        return quant.dense(h @ jnp.ones((5, 11)), p["head"]["kernel"], p["head"]["bias"])

    y = apply(params2, jnp.asarray(x))
    assert y.shape == (2, 3, 5) and np.all(np.isfinite(y))


def test_linen_module_reads_quantized_params_with_get_variable():
    """A linen layer that reads its params with get_variable accepts QArray/ActQuant leaves."""

    class QDense(nn.Module):
        @nn.compact
        def __call__(self, x, positions=None):
            k = self.get_variable("params", "kernel")
            iq = self.get_variable("params", "input_quant")
            return quant.dense(x, k, None, iq, positions)

    w = _weights(3, (11, 5))
    x = jnp.asarray(np.random.default_rng(4).standard_normal((2, 3, 11)).astype(F32))
    params = {"kernel": quant.quantize_weight(w, 8), "input_quant": quant.fit_act_quant(x, 8)}
    y = jax.jit(QDense().apply)({"params": params}, x)
    np.testing.assert_allclose(
        y,
        quant.fake_quant_dense(x, params["kernel"], None, params["input_quant"]),
        rtol=1e-5,
        atol=1e-5,
    )


def test_actquant_for_positions():
    per_tensor = quant.ActQuant.from_official(F32(0.5), F32(10), 8)
    per_tensor.validate()
    s, z = per_tensor.for_positions(None)
    assert s.shape == (1, 1) and float(s[0, 0]) == 0.5 and float(z[0, 0]) == 10 - 128
    s2, _ = per_tensor.for_positions(np.arange(99))  # ignored
    assert s2.shape == (1, 1)

    table = np.array([0, 1, 1, 2, 2, 2, 2], np.int32)
    aq = quant.ActQuant.from_official([1.0, 2.0, 3.0], [3, 4, 5], 6, group_of_position=table)
    aq.validate()
    s, z = aq.for_positions(np.array([6, 0, 2]))
    np.testing.assert_array_equal(s[:, 0], [3.0, 1.0, 2.0])
    np.testing.assert_array_equal(z[:, 0], np.array([5, 3, 4]) - 32)
    s, _ = aq.for_positions(np.array([[1, 3], [0, 5]]))
    assert s.shape == (2, 2, 1)
    with pytest.raises(ValueError, match=r"outside the group table \[0, 7\)"):
        aq.for_positions(np.array([7]))
    with pytest.raises(ValueError, match="needs `positions`"):
        aq.for_positions(None)
    s, _ = jax.jit(aq.for_positions)(jnp.array([3, 1]))  # traced positions
    np.testing.assert_array_equal(s[:, 0], [3.0, 2.0])


def test_actquant_codes_and_fake_quant_agree_with_official():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 7, 5)).astype(F32) * 3
    table = np.array([0, 1, 1, 2, 2, 2, 2], np.int32)
    delta, zp = np.array([0.05, 0.1, 0.02], F32), np.array([100, 3, 250], F32)
    aq = quant.ActQuant.from_official(delta, zp, 8, group_of_position=table)
    codes = np.asarray(aq.quantize(jnp.asarray(x), np.arange(7)))
    assert codes.dtype == np.int8
    want = quant.fake_quant_uniform(x, delta[table][None, :, None], zp[table][None, :, None], 8)
    np.testing.assert_array_equal(aq.fake_quant(jnp.asarray(x), np.arange(7)), want)
    z = zp[table][None, :, None] - 128
    np.testing.assert_array_equal((codes - z) * delta[table][None, :, None], want)


def test_actquant_validate():
    aq = quant.ActQuant.from_official([1.0, 2.0], [3, 4], 8, group_of_position=[0, 1, 1])
    with pytest.raises(ValueError, match=r"outside \[0, 2\)"):
        aq.replace(group_of_position=jnp.array([0, 2, 1], jnp.int32)).validate()
    with pytest.raises(ValueError, match=r"int32 \[T\]"):
        aq.replace(group_of_position=jnp.array([0, 1, 1], jnp.int8)).validate()
    with pytest.raises(ValueError, match=r"\[G\]"):
        aq.replace(zero_point=jnp.zeros((3,), jnp.float32)).validate()
    with pytest.raises(ValueError, match="integer-valued"):
        aq.replace(zero_point=aq.zero_point + 0.25).validate()
    with pytest.raises(ValueError, match="group_of_position table"):
        quant.ActQuant.from_official([1.0, 2.0], [3, 4], 8)


def test_logsqrt2quant_pytree():
    lq = quant.LogSqrt2Quant(delta=jnp.asarray(0.9, jnp.float32), bits=4)
    leaves, treedef = jax.tree_util.tree_flatten(lq)
    assert len(leaves) == 1
    p = jnp.asarray([0.0, 0.9, 0.45, 0.9 / np.sqrt(2), 1e-9], jnp.float32)
    got = jax.jit(lambda q, p: q.fake_quant(p))(jax.tree_util.tree_unflatten(treedef, leaves), p)
    np.testing.assert_allclose(got, [0.0, 0.9, 0.45, 0.9 / np.sqrt(2), 0.0], rtol=1e-6)
