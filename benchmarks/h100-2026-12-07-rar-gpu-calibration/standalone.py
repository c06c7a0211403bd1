"""Scratch: XLA:GPU batched s8 dot inside quantized_matmul, quantizers fitted in the same jit."""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from quant import _dot_general
from quant._dot_general import quantized_matmul
from quant._fit import FitInput

barrier = "barrier" in sys.argv
if barrier:
    orig = _dot_general.pad_contracted
    _dot_general.pad_contracted = lambda a, x, b, y: jax.lax.optimization_barrier(orig(a, x, b, y))
print(jax.devices()[0].device_kind, "barrier" if barrier else "", os.environ.get("XLA_FLAGS", ""))
rng = np.random.default_rng(0)
B, G, L, S, K = int(os.environ.get("B", "16")), 4, 65, 65, 32
cases = {
    "qk": (rng.standard_normal((B, G, L, K)), rng.standard_normal((B, G, K, S))),
    "pv": (rng.dirichlet(np.ones(S) * 0.1, size=(B, G, L)), rng.standard_normal((B, G, S, K))),
    "pv_k64": (
        rng.dirichlet(np.ones(64) * 0.1, size=(B, G, 64)),
        rng.standard_normal((B, G, 64, K)),
    ),
}


def fitted(a, b):
    qa = FitInput("tensor", 8, include_zero=True).fit_input(a)
    qb = FitInput("tensor", 8, include_zero=True).fit_input(b)
    return qa, qb


for name, (a, b) in cases.items():
    a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)

    def inside(a, b):
        qa, qb = fitted(a, b)
        return quantized_matmul(a, b, qa, qb), qa.fake_quant(a), qb.fake_quant(b)

    got, fa, fb = jax.jit(inside)(a, b)
    exact = np.einsum("...ij,...jk->...ik", np.asarray(fa, np.float64), np.asarray(fb, np.float64))

    def rel(x, exact=exact):
        return float(np.linalg.norm(np.asarray(x, np.float64) - exact) / np.linalg.norm(exact))

    qa, qb = fitted(a, b)
    got2 = jax.jit(quantized_matmul)(a, b, qa, qb)
    print(
        f"B={B} {name}: fit inside jit {rel(got):.3g}; quantizers as args {rel(got2):.3g}",
        flush=True,
    )
    if name in ("pv", "qk") and not barrier and "OUT" in os.environ:
        txt = jax.jit(inside).lower(a, b).compile().as_text()
        with open(os.path.join(os.environ["OUT"], f"{name}_B{B}.hlo.txt"), "w") as f:
            f.write(txt)
