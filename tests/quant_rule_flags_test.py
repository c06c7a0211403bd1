"""Core additions for RAR: smoothed rules without GPS / with a second shift, and token-group fits
on inputs that start past position 0 (RAR's final layer drops the cls token)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from quant import _quantizers as Q
from quant._fit import FitInput
from quant.coverage import Coverage, FoldRule, QuantRule

FOLD = FoldRule(norm="ada", scale=0, shift=1)


def test_gps_and_final_shift_flags_select_layers():
    rules = (
        QuantRule(path=r"b_\d+/qkv", kind="qkv", smooth=True, fold=FOLD),
        QuantRule(path="head", kind="head", smooth=True, gps=False, final_shift=True, fold=FOLD),
        QuantRule(path="ada", kind="ada"),
    )
    cov = Coverage(rules, ("b_0/qkv", "ada", "head"), width=5)
    assert cov.smoothed() == ("b_0/qkv", "head")
    assert cov.gps_scaled() == ("b_0/qkv",)
    assert cov.final_shifted() == ("head",)
    for bad in ({"gps": False}, {"final_shift": True}):
        with pytest.raises(ValueError, match="apply to smooth=True rules"):
            QuantRule(path="x", kind="x", **bad)


def test_group_fit_on_a_slice_of_positions_uses_their_groups():
    """x covers positions 1..4 of a 5-position table: each token is fitted into the group of its
    absolute position, and the returned quantizer keeps the whole table."""
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((3, 4, 7)) * np.array([1, 3, 0.5, 2])[None, :, None]).astype(
        np.float32
    )
    table = np.array([0, 0, 1, 2, 2], np.int32)  # position 0 shares position 1's group
    positions = np.arange(1, 5)
    got = jax.jit(lambda v: FitInput.groups(8, table).fit_input(v, positions))(jnp.asarray(x))
    want = Q.fit_act_quant(x, 8, group_of_position=table[positions])
    np.testing.assert_array_equal(np.asarray(got.group_of_position), table)
    for a in ("scale", "zero_point"):
        np.testing.assert_array_equal(np.asarray(getattr(got, a)), np.asarray(getattr(want, a)))
    # Without positions the tokens are the table's first ones (PAR calibrates a prefix).
    prefix = FitInput.groups(8, table).fit_input(jnp.asarray(x))
    want = Q.fit_act_quant(x, 8, group_of_position=table[:4])
    np.testing.assert_array_equal(np.asarray(prefix.scale), np.asarray(want.scale))
    with pytest.raises(ValueError, match=r"token groups \[0, 1\] have no position"):
        FitInput.groups(8, table).fit_input(jnp.asarray(x[:, 2:]), positions[2:])  # groups 0, 1
