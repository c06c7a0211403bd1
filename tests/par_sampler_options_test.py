"""PAR sampler options on a tiny random model: draws, PRNG keys, no retrace, bfloat16."""

import jax
import jax.numpy as jnp
import numpy as np
from _par_tiny import cfg as _cfg
from _par_tiny import params as _params
from _par_tiny import tf_logits as _tf_logits

from arvg_jax.families.par import sampler


def test_sampling_filters_keys_and_no_retrace():
    cfg, params = _cfg("4x"), _params("4x")
    labels = np.array([1, 2, 7], np.int32)
    before = sampler._generate_jit._cache_size()
    # top-k 1 leaves one candidate: a draw is the CFG argmax whatever the key or temperature.
    runs = [
        sampler.generate(
            params, labels, jax.random.key(s), cfg=cfg, cfg_scale=2.5, top_k=1, temperature=t
        )
        for s, t in ((1, 1.0), (2, 0.5))
    ]
    tokens = np.asarray(runs[0]["tokens"])
    np.testing.assert_array_equal(runs[1]["tokens"], tokens)
    cond = _tf_logits("4x", labels, tokens)
    uncond = _tf_logits("4x", np.full_like(labels, cfg.num_classes), tokens)
    mixed = uncond + (cond - uncond) * np.float32(2.5)
    top2 = np.sort(mixed, axis=-1)[..., -2:]
    clear = top2[..., 1] - top2[..., 0] > 1e-3
    np.testing.assert_array_equal(tokens[clear], mixed.argmax(-1)[clear])
    # Full draws: different keys give different samples, all within the vocabulary.
    a, b = (
        np.asarray(
            sampler.generate(params, labels, jax.random.key(s), cfg=cfg, cfg_scale=2.5)["tokens"]
        )
        for s in (3, 4)
    )
    assert not np.array_equal(a, b) and a.min() >= 0 and a.max() < cfg.vocab_size
    # One program per static setting (top_k 1, top_k 0); keys, temperature, labels are traced.
    assert sampler._generate_jit._cache_size() == before + 2


def test_bfloat16_execution():
    cfg, name = _cfg("4x"), "4x"
    labels = np.array([4, 9, 1], np.int32)
    out = sampler.generate(
        _params(name),
        labels,
        jax.random.key(0),
        cfg=cfg,
        greedy=True,
        dtype="bfloat16",
        return_first_logits=True,
    )
    assert out["tokens"].dtype == jnp.int32 and out["logits_first"].dtype == jnp.float32
    tokens = np.asarray(out["tokens"])
    ref = _tf_logits(name, labels, tokens)  # float32
    bf16 = _tf_logits(name, labels, tokens, jnp.bfloat16)
    assert bf16.dtype == np.float32
    rel = np.linalg.norm(bf16 - ref) / np.linalg.norm(ref)
    assert 1e-4 < rel < 5e-2  # bf16 rounding is visible but small
    agree = (bf16.argmax(-1) == ref.argmax(-1)).mean()
    assert agree > 0.8
