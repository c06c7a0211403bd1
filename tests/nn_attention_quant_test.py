"""`arvg_jax.nn.attention.dot_product_attention` with quantized matmul operands (PTQ4ARVG's
`QuantMatMul`s): placeholders fitted in the forward, the int8 q·kᵀ and P·v (PAR: log-√2 P, VAR /
RAR: uniform P, an int8 matmul too) against a float64 oracle of the fake-quantized operands.

Tiny prime-ish dims: B = 2, L = 5 queries, S = 7 keys, H = 6 heads over G = 3 kv heads, K = 4.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import quant
from arvg_jax import lowering
from arvg_jax.nn.attention import dot_product_attention
from quant._fit import FitInput

B, L, S, H, G, K = 2, 5, 7, 6, 3, 4


def _inputs():
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.standard_normal((B, L, H, K)) * 2, jnp.float32)
    k = jnp.asarray(rng.standard_normal((B, S, G, K)) + 0.5, jnp.float32)
    v = jnp.asarray(rng.standard_normal((B, S, G, K)), jnp.float32)
    mask = jnp.asarray(np.tril(np.ones((L, S), bool), k=S - L))[None, None]
    return q, k, v, mask


def _oracle(q, k, v, mask, qz):
    """float64 softmax(Q(q) Q(k)ᵀ / √K) with Q(P) through log-√2, then Q(P) Q(v)."""
    rep = H // G

    def fq(name, x):  # fake-quant in float32 (as the quantizers define it), then float64
        return np.asarray(qz[name].fake_quant(jnp.asarray(x, jnp.float32)), np.float64)

    kr = np.repeat(np.asarray(k), rep, axis=2)  # torch repeat_interleave: head h reads h // R
    vr = np.repeat(np.asarray(v), rep, axis=2)
    scores = np.einsum("blhk,bshk->bhls", fq("q", q), fq("k", kr)) / np.sqrt(K)
    scores = np.where(np.asarray(mask), scores, -np.inf)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    pq = fq("p", p.astype(np.float32))
    return np.einsum("bhls,bshk->blhk", pq, fq("v", vr))


# PAR: post-softmax log-√2 (6 bits here, another width than the rest); RAR: uniform with the
# range clamp that keeps 0 (`RAR/quant/quantizer.py:100-110`), so P·v is an int8 matmul too.
P_FITS = {"log2": FitInput("log2", 6), "uniform": FitInput("tensor", 8, include_zero=True)}


@pytest.mark.parametrize("p_kind", sorted(P_FITS))
def test_fitted_quantizers_match_the_oracle(p_kind):
    q, k, v, mask = _inputs()
    fits = {"q": FitInput("tensor", 8), "k": FitInput("tensor", 8)}
    fits |= {"p": P_FITS[p_kind], "v": FitInput("tensor", 8, include_zero=p_kind == "uniform")}

    def run(q, k, v):
        got = {}
        out = dot_product_attention(
            q, k, v, mask=mask, quant=fits, on_fit=lambda name, qz: got.update({name: qz})
        )
        return out, got

    fitted_out, got = jax.jit(run)(q, k, v)
    assert set(got) == set("qkpv")
    uniform = "qkv" if p_kind == "log2" else "qkpv"
    assert isinstance(got["p"], quant.LogSqrt2Quant) == (p_kind == "log2")
    assert all(isinstance(got[n], quant.ActQuant) and got[n].per_tensor for n in uniform)
    if p_kind == "uniform":  # probabilities lie in [0, 1]: 0 is the lowest (signed) code
        assert float(np.asarray(got["p"].zero_point).reshape(())) == -(2**7)
    qz = jax.tree_util.tree_map(np.asarray, got)
    out = dot_product_attention(q, k, v, mask=mask, quant=qz)  # int8 q·kᵀ; P·v int8 or not
    int8 = lowering.int8_dots(
        jax.jit(lambda q, k, v: dot_product_attention(q, k, v, mask=mask, quant=qz))
        .lower(q, k, v)
        .as_text()
    )
    assert int8 == (1 if p_kind == "log2" else 2)
    np.testing.assert_allclose(np.asarray(out), np.asarray(fitted_out), rtol=1e-6, atol=1e-6)
    want = _oracle(q, k, v, mask, qz)
    assert np.linalg.norm(np.asarray(out) - want) <= 1e-5 * np.linalg.norm(want)
    # Quantization really happened: the float attention differs.
    flt = np.asarray(dot_product_attention(q, k, v, mask=mask))
    assert np.linalg.norm(flt - want) > 1e-3 * np.linalg.norm(want)


def test_no_quantizer_is_the_float_attention():
    q, k, v, mask = _inputs()
    flt = dot_product_attention(q, k, v, mask=mask)
    empty = dot_product_attention(q, k, v, mask=mask, quant={})
    np.testing.assert_allclose(np.asarray(empty), np.asarray(flt), rtol=1e-5, atol=1e-6)
