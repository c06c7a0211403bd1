"""Valid-row masks of calibration (`FitInput.restrict`, `quant._calibrate.statistics_input`): rows
a fixed-shape model computes but the official code drops (MAR's masked encoder tokens) reach no
fitted quantizer and no transform statistic."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from quant import _tree
from quant._calibrate import statistics_input
from quant._fit import FitInput
from quant.algorithms.smoothquant import input_absmax

N, T, C = 3, 7, 5
TABLE = np.array([0, 1, 2, 2, 2, 2, 2], np.int32)  # two one-token groups, then the rest


def _data(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, T, C)).astype(np.float32)
    valid = rng.random((N, T)) < 0.6
    valid[:, :2] = True  # the one-token groups always have rows
    valid[0, 2] = True
    return x, valid


def _fill_invalid(x, valid, value):
    out = x.copy()
    out[~valid] = value
    return out


def _leaves(q):
    return [np.asarray(v) for v in jax.tree_util.tree_leaves(q)]


PLACEHOLDERS = {
    "tensor": FitInput("tensor", 6),
    "channel": FitInput("channel", 6, sink_tokens=1),
    "groups": FitInput.groups(6, TABLE),
}


@pytest.mark.parametrize("kind", sorted(PLACEHOLDERS))
def test_invalid_rows_change_no_fitted_quantizer(kind):
    x, valid = _data()
    fit = PLACEHOLDERS[kind].restrict(valid)
    huge = fit.fit_input(_fill_invalid(x, valid, 1e6))
    other = fit.fit_input(_fill_invalid(x, valid, -3e5))  # eager: the jit path is in mar_quant_test
    assert type(huge) is type(other)
    for a, b in zip(_leaves(huge), _leaves(other), strict=True):
        np.testing.assert_array_equal(a, b)
    if kind == "tensor":  # without the restriction the huge rows do move the quantizer
        loose = PLACEHOLDERS[kind].fit_input(_fill_invalid(x, valid, 1e6))
        assert any(not np.array_equal(a, b) for a, b in zip(_leaves(loose), _leaves(huge)))


@pytest.mark.parametrize("kind", sorted(PLACEHOLDERS))
def test_all_valid_restriction_is_the_unrestricted_fit(kind):
    x, _ = _data(1)
    full = PLACEHOLDERS[kind].fit_input(x)
    restricted = PLACEHOLDERS[kind].restrict(np.ones((N, T), bool)).fit_input(x)
    for a, b in zip(_leaves(full), _leaves(restricted), strict=True):
        np.testing.assert_array_equal(a, b)


def test_restricted_tensor_fit_is_the_fit_of_the_valid_rows():
    x, valid = _data(2)
    got = PLACEHOLDERS["tensor"].restrict(valid).fit_input(x)
    want = PLACEHOLDERS["tensor"].fit_input(x[valid][None])
    for a, b in zip(_leaves(got), _leaves(want), strict=True):
        np.testing.assert_array_equal(a, b)


def test_restrict_refuses_an_empty_group():
    valid = np.ones((N, T), bool)
    valid[:, 1] = False
    with pytest.raises(ValueError, match="no valid row"):
        PLACEHOLDERS["groups"].restrict(valid)


class _Adapter:
    sink_tokens = 1

    def __init__(self, valid):
        self.valid = valid

    def sink_excluded(self, name):
        return name == "a"

    def valid_rows(self, name, batch):
        return self.valid if batch is not None else None


def test_statistics_see_only_valid_non_sink_rows():
    x, valid = _data(3)
    ad = _Adapter(valid)
    keep = valid.copy()
    keep[:, :1] = False
    np.testing.assert_array_equal(np.asarray(statistics_input(ad, "a", x, {})), x[keep])
    np.testing.assert_array_equal(np.asarray(statistics_input(ad, "b", x, {})), x[valid])
    np.testing.assert_array_equal(np.asarray(statistics_input(ad, "a", x)), x[:, 1:])
    absmax = input_absmax(ad, "a", _fill_invalid(x, valid, 1e6), {})
    np.testing.assert_array_equal(absmax, np.abs(x[keep]).max(axis=0))


def test_unrestricted_placeholders_stay_plain_pytrees():
    # `rows` is None until `restrict`: the placeholder's leaves are unchanged for other families.
    assert jax.tree_util.tree_leaves(PLACEHOLDERS["tensor"]) == []
    flat = _tree.flatten({"l": {"input_quant": PLACEHOLDERS["tensor"].restrict(np.ones((1, 2)))}})
    assert len(jax.tree_util.tree_leaves(flat)) == 1
