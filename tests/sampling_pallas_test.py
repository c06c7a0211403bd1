"""The fused top-k / top-p kernel (`arvg_jax.kernels.sampling_pallas`, method "pallas") against the XLA
"bisect" filter it implements and the "sort" reference.

On a CPU the kernel runs in Pallas interpret mode (same kernel body, evaluated by XLA:CPU; asked
for explicitly, `sampling_bisect_test.INTERPRET`); on an
NVIDIA GPU the same tests run the compiled Triton kernel. The top-k part is exact; the top-p part
adds the same probabilities in a different order than either XLA method, so only entries whose
cumulative mass lies within float32 rounding of 1 - top_p may be decided differently
(`sampling_bisect_test._assert_same_up_to_rounding` asserts that per entry). Signed zeros and
infinities: `sampling_bisect_test.test_zero_signs_negative_values_and_infinities`.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sampling_bisect_test import INTERPRET, _assert_same_up_to_rounding, _filter, _var_like_logits

from arvg_jax import sampling
from arvg_jax.kernels import sampling_pallas

ROWS = 23  # of VAR's last scale (256 tokens per image), kept short for interpret mode


@pytest.mark.parametrize("seed", [0, 1])
def test_pallas_matches_sort_on_var_like_logits(seed):
    total = differ = 0
    for name, x in _var_like_logits(seed).items():
        x = x[:, :ROWS]
        for top_k, top_p in ((900, 0.96), (0, 0.96), (900, 0.5)):
            n, d = _assert_same_up_to_rounding(x, top_k, top_p, method="pallas")
            total, differ = total + n, differ + d
            assert d <= 1, (name, top_k, top_p, d)
    assert differ / total < 1e-2


def test_pallas_equals_bisect_on_top_k_and_on_ties():
    """Top-k alone is an integer search: identical to both XLA methods, ties included. With
    coarse ties the top-p masses are sums of few distinct values: identical too."""
    x = _var_like_logits(2)
    for name in ("bf16_ties", "coarse_ties", "cfg_t0.5"):
        xs = x[name][:, :ROWS]
        for top_k in (1, 2, 900, 4095):
            ref = _filter(xs, top_k=top_k, top_p=0.0, method="sort")
            out = _filter(xs, top_k=top_k, top_p=0.0, method="pallas")
            np.testing.assert_array_equal(out, ref, err_msg=f"{name} top_k {top_k}")


def test_ties_straddling_the_cut_and_non_power_of_two_vocabularies():
    # The case of sampling_bisect_test: ascending stable order 0, 2, 3, 4, 1; 1 - top_p = 0.3
    # removes 0 and 2. V = 5 is padded to 8 inside (with -inf, which carries no mass).
    logits = np.log(np.array([1, 4, 1, 1, 1], np.float32))
    for top_k in (0, 2):
        out = np.asarray(
            sampling_pallas.top_k_top_p_filter(jnp.asarray(logits), top_k, 0.7, interpret=INTERPRET)
        )
        assert np.nonzero(np.isfinite(out))[0].tolist() == [1, 3, 4], top_k
    x = _var_like_logits(5)["cfg_t1.5"][0, :7, :4000]  # V = 4000 pads to 4096
    for top_k, top_p in ((900, 0.96), (3, 0.0), (0, 0.2)):
        assert _assert_same_up_to_rounding(x, top_k, top_p, method="pallas")[1] == 0


def test_bfloat16_logits_keep_their_dtype_and_values():
    x = jnp.asarray(_var_like_logits(6)["cfg_t0.5"][0, :5]).astype(jnp.bfloat16)
    out = sampling.top_k_top_p_filter(x, 900, 0.96, method="pallas", interpret=INTERPRET)
    ref = sampling.top_k_top_p_filter(x.astype(jnp.float32), 900, 0.96, method="sort")
    assert out.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(out.astype(jnp.float32)), np.asarray(ref))


@pytest.mark.slow  # ~15 s in interpret mode on CPU
def test_draws_are_those_of_the_bisect_filter():
    draw = jax.jit(
        functools.partial(sampling.sample_tokens, top_k=900, top_p=0.96, interpret=INTERPRET),
        static_argnames=("greedy", "method"),
    )
    logits = jnp.asarray(_var_like_logits(4)["cfg_t1.5"][:, :ROWS])
    key = jax.random.key(0)
    for greedy in (True, False):
        ref = draw(key, logits, greedy=greedy, method="bisect")
        out = draw(key, logits, greedy=greedy, method="pallas")
        np.testing.assert_array_equal(out, ref, err_msg=f"greedy={greedy}")


def test_auto_picks_the_kernel_only_where_it_compiles():
    x = jnp.asarray(_var_like_logits(7)["cfg_t0.0"][0, :3])
    out = sampling.top_k_top_p_filter(x, 900, 0.96)  # "auto"
    want = "pallas" if sampling_pallas.available() else "sort"
    np.testing.assert_array_equal(out, sampling.top_k_top_p_filter(x, 900, 0.96, method=want))
    assert sampling.parse_filter_method("auto")[0] == "auto"
    assert sampling.parse_filter_method("pallas")[0] == "pallas"
    with pytest.raises(ValueError):
        sampling.parse_filter_method("pallas:2")
