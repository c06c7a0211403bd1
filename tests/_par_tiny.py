"""Tiny random PAR models (4x and 16x) shared by the sampler tests."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from arvg_jax.families.par.config import PARConfig
from arvg_jax.families.par.model import PAR, abstract_params

CONFIGS = {
    # grid 4 (2 x 2 regions of 2 x 2), 4 tokens per parallel pass.
    "4x": {"block_size": 16, "spe_token_num": 3, "ar_token_num": 4},
    # grid 8 (4 x 4 regions of 2 x 2), 16 tokens per parallel pass.
    "16x": {"block_size": 64, "spe_token_num": 15, "ar_token_num": 16},
}


def cfg(name: str) -> PARConfig:
    # Distinct small dims: C 40, H 2, K 20, F 112, V 37, 11 classes.
    return PARConfig(
        dim=40, n_layer=2, n_head=2, multiple_of=7, vocab_size=37, num_classes=11, **CONFIGS[name]
    )


@functools.cache
def params(name: str):
    rng = np.random.default_rng(0)
    out = {}
    for path, leaf in sorted(
        traverse_util.flatten_dict(abstract_params(cfg(name)), sep="/").items()
    ):
        noise = rng.standard_normal(leaf.shape).astype(np.float32)
        if path.endswith("kernel"):
            out[path] = noise * np.float32(1.5 / np.sqrt(leaf.shape[0]))
        elif path.endswith("scale"):
            out[path] = 1 + 0.1 * noise
        else:
            out[path] = noise
    return traverse_util.unflatten_dict(out, sep="/")


@functools.cache
def _tf_fn(name, dtype):
    return jax.jit(lambda p, l, t: PAR(cfg(name), dtype=dtype).apply({"params": p}, l, t))


def tf_logits(name, labels, tokens, dtype=jnp.float32):
    fn = _tf_fn(name, jnp.dtype(dtype).name)
    return np.asarray(fn(params(name), jnp.asarray(labels), jnp.asarray(tokens)))
