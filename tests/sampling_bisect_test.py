"""The sort-free top-k / top-p filter ("bisect") against the sort reference ("sort").

Both implement FoundationVision/VAR models/helpers.py `sample_with_top_k_top_p_`. The top-k part
must agree exactly (integer counts); the top-p part may differ only for entries whose cumulative
softmax mass lies within float32 rounding of 1 - top_p, because the two methods add the same
probabilities in different orders (tree reductions vs a cumsum).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arvg_jax import sampling
from arvg_jax.kernels import sampling_pallas

SHAPE = (2, 256, 4096)  # [B, l, V] of VAR's last scale (16 x 16 tokens), batch 2
# Each of the two float32 masses (the reference cumsum, the bisect masked sum) was measured
# within 3.5 ulps of the exact float64 mass (1.5 M sums, CPU); a decision can only flip where the
# reference mass is within their combined error of the threshold.
BOUNDARY_ULPS = 8


def _var_like_logits(seed: int) -> dict[str, np.ndarray]:
    """CFG-mixed logits shaped like VAR's: per-row temperature, correlated cond / uncond rows,
    mixed with the guidance weights of the first, a middle and the last scale (t = 0, 0.5, 1.5);
    plus the last ones rounded to bfloat16 and a coarse grid (many exact ties)."""
    rng = np.random.default_rng(seed)
    scale = rng.uniform(0.5, 6.0, size=(*SHAPE[:-1], 1)).astype(np.float32)
    cond = rng.standard_normal(SHAPE).astype(np.float32) * scale
    uncond = 0.8 * cond + 0.6 * scale * rng.standard_normal(SHAPE).astype(np.float32)
    out = {f"cfg_t{t}": ((1 + t) * cond - t * uncond).astype(np.float32) for t in (0.0, 0.5, 1.5)}
    out["bf16_ties"] = np.asarray(
        jnp.asarray(out["cfg_t1.5"]).astype(jnp.bfloat16).astype(jnp.float32)
    )
    out["coarse_ties"] = (np.round(cond * 4) / 4).astype(np.float32)
    return out


# The testing switch: where the Triton kernel cannot run, method "pallas" runs it in Pallas
# interpret mode (sampling.top_k_top_p_filter refuses nothing itself; ExecOptions.resolve does).
INTERPRET = not sampling_pallas.available()


@functools.partial(jax.jit, static_argnames=("top_k", "top_p", "method"))
def _filter(x, *, top_k, top_p, method):
    return sampling.top_k_top_p_filter(x, top_k, top_p, method=method, interpret=INTERPRET)


def _reference_cumsum(x: np.ndarray, top_k: int) -> np.ndarray:
    """The float32 cumulative mass the sort reference compares with 1 - top_p, per entry."""
    x = jnp.asarray(x)
    if top_k:
        x = jnp.where(x < jax.lax.top_k(x, top_k)[0][..., -1:], -jnp.inf, x)
    order = jnp.argsort(x, axis=-1, stable=True)
    cum = jnp.cumsum(jax.nn.softmax(jnp.take_along_axis(x, order, -1), axis=-1), axis=-1)
    return np.asarray(jnp.put_along_axis(jnp.zeros_like(cum), order, cum, axis=-1, inplace=False))


def _assert_same_up_to_rounding(x, top_k, top_p, method="bisect") -> tuple[int, int]:
    """Same output as the sort reference except at entries on the top-p boundary (asserted per
    entry); returns (rows, rows that differ)."""
    ref = np.asarray(_filter(x, top_k=top_k, top_p=top_p, method="sort"))
    out = np.asarray(_filter(x, top_k=top_k, top_p=top_p, method=method))
    kept_ref, kept = np.isfinite(ref), np.isfinite(out)
    np.testing.assert_array_equal(out[kept], x[kept])  # survivors unchanged
    diff = kept_ref != kept
    if diff.any():
        thr = np.float32(1 - top_p)
        cum = _reference_cumsum(x, top_k)[diff]
        ulps = np.abs(cum.astype(np.float64) - thr) / np.spacing(thr)
        assert ulps.max() <= BOUNDARY_ULPS, (cum, ulps)
    rows = diff.reshape(-1, diff.shape[-1]).any(-1)
    return rows.size, int(rows.sum())


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_bisect_matches_sort_on_var_like_logits(seed):
    total = differ = 0
    for name, x in _var_like_logits(seed).items():
        for top_k, top_p in ((900, 0.96), (0, 0.96), (900, 0.5)):
            n, d = _assert_same_up_to_rounding(x, top_k, top_p)
            total, differ = total + n, differ + d
            assert d <= 2, (name, top_k, top_p, d)
    # Measured: 2 differing rows (one entry each, 0 and 2 ulps from 1 - top_p) in 1.4e5 rows.
    assert differ / total < 1e-3


def test_top_k_alone_is_exact_including_ties():
    for x in _var_like_logits(2).values():
        for top_k in (1, 2, 900, 4095):
            ref = _filter(x, top_k=top_k, top_p=0.0, method="sort")
            np.testing.assert_array_equal(_filter(x, top_k=top_k, top_p=0.0, method="bisect"), ref)


@pytest.mark.parametrize(
    "method",
    [
        pytest.param("bisect:1", marks=pytest.mark.slow),  # ~20 s each; bisect:6 / bisect:4:0
        "bisect:3",  # cover the bits-per-pass and chunk paths
        pytest.param("bisect:6", marks=pytest.mark.slow),
        "bisect:4:0",
        pytest.param("bisect:1:0", marks=pytest.mark.slow),
    ],
)
def test_bits_per_pass_and_chunks_do_not_change_the_result(method):
    x = _var_like_logits(3)["bf16_ties"][:, :32]
    for top_k, top_p in ((900, 0.96), (5, 0.3)):
        assert _assert_same_up_to_rounding(x, top_k, top_p, method=method)[1] == 0


def test_ties_straddling_the_top_p_cut_are_removed_lowest_index_first():
    # Masses 1/8 at indices 0, 2, 3, 4 (tied logits) and 1/2 at index 1. Ascending stable order
    # 0, 2, 3, 4, 1 with cumulative 1/8, 2/8, 3/8, 4/8, 1: 1 - top_p = 0.3 removes 0 and 2.
    logits = np.log(np.array([1, 4, 1, 1, 1], np.float32))
    for method in ("sort", "bisect", "bisect:1"):
        out = np.asarray(sampling.top_k_top_p_filter(jnp.asarray(logits), 0, 0.7, method=method))
        assert np.nonzero(np.isfinite(out))[0].tolist() == [1, 3, 4], method
        # All four tied entries are the k-th largest: top-k keeps them all, top-p as above.
        out = np.asarray(sampling.top_k_top_p_filter(jnp.asarray(logits), 2, 0.7, method=method))
        assert np.nonzero(np.isfinite(out))[0].tolist() == [1, 3, 4], method


@pytest.mark.parametrize("method", ["bisect", "pallas"])  # pallas: arvg_jax.kernels.sampling_pallas
def test_zero_signs_negative_values_and_infinities(method):
    logits = np.array([-0.0, 0.0, -3.5, -np.inf, 2.0, -0.0, -1e-30, 1e30], np.float32)
    for top_k in (0, 1, 3):
        for top_p in (0.0, 0.5, 1.0):
            kw = {"top_k": top_k, "top_p": top_p}
            ref = _filter(logits, method="sort", **kw)
            out = _filter(logits, method=method, **kw)
            np.testing.assert_array_equal(out, ref, err_msg=f"top_k {top_k} top_p {top_p}")


@pytest.mark.slow  # ~13 s
def test_greedy_and_keyed_draws_are_those_of_the_sort_filter():
    draw = jax.jit(
        functools.partial(sampling.sample_tokens, top_k=900, top_p=0.96),
        static_argnames=("greedy", "method"),
    )
    x = _var_like_logits(4)
    key = jax.random.key(0)
    for name in ("cfg_t1.5", "bf16_ties"):
        logits = jnp.asarray(x[name][:, :64])
        for greedy in (True, False):
            ref = draw(key, logits, greedy=greedy, method="sort")
            out = draw(key, logits, greedy=greedy, method="bisect")
            np.testing.assert_array_equal(out, ref, err_msg=f"{name} greedy={greedy}")


def test_keys_order_like_floats():
    # (XLA flushes subnormals to zero, so they share the key of 0 as they compare equal to it.)
    x = np.array([-np.inf, -3e38, -1.0, -2e-38, -0.0, 0.0, 2e-38, 1.0, 3e38, np.inf], np.float32)
    keys = np.asarray(sampling._sortable_key(jnp.asarray(x))).astype(np.int64)
    assert np.all(np.diff(keys[[0, 1, 2, 3, 4, 6, 7, 8, 9]]) > 0) and keys[4] == keys[5]
    np.testing.assert_array_equal(sampling._key_to_float(jnp.asarray(keys, jnp.uint32)), x + 0.0)


def test_filter_method_specs():
    assert sampling.parse_filter_method("sort")[0] == "sort"
    assert sampling.parse_filter_method("bisect") == ("bisect", 4, 512)
    assert sampling.parse_filter_method("bisect:2") == ("bisect", 2, 512)
    assert sampling.parse_filter_method("bisect:2:0") == ("bisect", 2, 0)
    for bad in ("radix", "bisect:0", "bisect:7", "sort:2", "bisect:x", "bisect:4:1:2", "bisect::"):
        with pytest.raises(ValueError):
            sampling.parse_filter_method(bad)
