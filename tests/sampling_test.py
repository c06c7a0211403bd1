"""Top-k / top-p filtering (models/helpers.py semantics), CFG mixing, token draws."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arvg_jax import sampling

NEG = -np.inf
LOGITS = np.array([1.0, 3.0, 2.0, 3.0, 0.0], np.float32)  # a tie at the top


def _kept(logits) -> list[int]:
    return np.nonzero(np.isfinite(np.asarray(logits)))[0].tolist()


@pytest.mark.parametrize(
    ("top_k", "kept"),
    [(1, [1, 3]), (2, [1, 3]), (3, [1, 2, 3]), (5, [0, 1, 2, 3, 4]), (0, [0, 1, 2, 3, 4])],
    ids=["k1_tie", "k2", "k3", "k_eq_V", "disabled"],
)
def test_top_k_keeps_everything_at_least_the_kth_largest(top_k, kept):
    out = sampling.top_k_top_p_filter(jnp.asarray(LOGITS), top_k=top_k, top_p=0.0)
    assert _kept(out) == kept
    np.testing.assert_array_equal(np.asarray(out)[kept], LOGITS[kept])  # survivors unchanged


def test_top_k_larger_than_vocab_keeps_all():
    out = sampling.top_k_top_p_filter(jnp.asarray(LOGITS), top_k=900, top_p=0.0)
    np.testing.assert_array_equal(out, LOGITS)


def test_top_p_masks_the_ascending_cumulative_mass_up_to_one_minus_p():
    logits = np.log(np.array([0.1, 0.4, 0.2, 0.3], np.float32))
    # Ascending probabilities 0.1, 0.2, 0.3, 0.4; cumulative 0.1, 0.3, 0.6, 1.0.
    cases = {0.95: [0, 1, 2, 3], 0.85: [1, 2, 3], 0.6: [1, 3], 0.45: [1, 3], 0.35: [1]}
    for top_p, kept in cases.items():
        out = sampling.top_k_top_p_filter(jnp.asarray(logits), top_k=0, top_p=top_p)
        assert _kept(out) == kept, top_p
    # top_p = 0 disables the filter (the official `if top_p > 0`).
    out = sampling.top_k_top_p_filter(jnp.asarray(logits), top_k=0, top_p=0.0)
    np.testing.assert_array_equal(out, logits)


def test_top_p_always_keeps_the_max_even_for_a_tiny_p():
    logits = np.array([0.5, 2.0, -1.0], np.float32)
    out = sampling.top_k_top_p_filter(jnp.asarray(logits), top_k=0, top_p=1e-9)
    assert _kept(out) == [1]
    # A tie at the top: exactly one survives (the last in the stable ascending order).
    out = sampling.top_k_top_p_filter(jnp.asarray(LOGITS), top_k=0, top_p=1e-9)
    assert _kept(out) == [3]


def test_top_k_then_top_p_on_a_batch():
    logits = np.stack([LOGITS, LOGITS[::-1], np.zeros(5, np.float32)])[None]  # [1, 3, 5]
    out = np.asarray(sampling.top_k_top_p_filter(jnp.asarray(logits), top_k=3, top_p=0.6))
    # Row 0 after top-3: {3, 3, 2} -> softmax (0.42, 0.42, 0.16): cumulative 0.16 <= 0.4 drops 2.
    assert _kept(out[0, 0]) == [1, 3]
    assert _kept(out[0, 1]) == [1, 3]
    # Uniform row: top-3 keeps all five (ties); cumulative 0.2, 0.4 <= 0.4 drop two entries.
    assert len(_kept(out[0, 2])) == 3


def test_cfg_mix():
    cond = jnp.array([1.0, -2.0, 0.5])
    uncond = jnp.array([0.5, 1.0, 0.5])
    np.testing.assert_array_equal(sampling.cfg_mix(cond, uncond, 0.0), cond)
    np.testing.assert_allclose(sampling.cfg_mix(cond, uncond, 1.5), [1.75, -6.5, 0.5])
    np.testing.assert_allclose(
        sampling.cfg_mix(cond, uncond, 1.5, one_plus_t=2.5), [1.75, -6.5, 0.5]
    )


def test_greedy_is_argmax_of_the_filtered_logits():
    logits = jnp.asarray(np.random.default_rng(0).standard_normal((2, 7, 11)), jnp.float32)
    tok = sampling.sample_tokens(jax.random.key(0), logits, top_k=3, top_p=0.5, greedy=True)
    assert tok.dtype == jnp.int32
    np.testing.assert_array_equal(tok, np.argmax(np.asarray(logits), -1))


def test_draws_stay_in_the_kept_set_and_follow_softmax():
    logits = jnp.asarray([0.0, 1.0, 2.0, 0.5, -1.0], jnp.float32)
    n = 20000
    draws = jax.jit(jax.vmap(lambda k: sampling.sample_tokens(k, logits, top_k=3, top_p=0.0)))(
        jax.random.split(jax.random.key(0), n)
    )
    counts = np.bincount(np.asarray(draws), minlength=5)
    assert counts[0] == 0 and counts[4] == 0  # filtered out by top-3
    kept = np.array([1.0, 2.0, 0.5])
    probs = np.exp(kept) / np.exp(kept).sum()
    freq = counts[[1, 2, 3]] / n
    # 4 standard deviations of a binomial frequency.
    assert np.all(np.abs(freq - probs) < 4 * np.sqrt(probs * (1 - probs) / n))


def test_top2_margin():
    logits = jnp.asarray([[1.0, 4.0, 3.5], [2.0, 2.0, 0.0]])
    np.testing.assert_allclose(sampling.top2_margin(logits), [0.5, 0.0])
