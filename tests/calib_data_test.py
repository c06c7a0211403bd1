"""Class labels of the generated calibration images (`quant.algorithms.calib_data`)."""

import types

import numpy as np
import pytest

from arvg_jax.families.var import calibration
from arvg_jax.families.var import sampler as var_sampler
from quant.algorithms import calib_data


def test_every_class_can_be_drawn_by_default():
    c = 7
    labels = calib_data.draw_labels(500, c, seed=42)
    assert labels.dtype == np.int32 and labels.shape == (500,)
    assert set(labels.tolist()) == set(range(c))  # the last class, c - 1, included


def test_all_but_last_reproduces_the_official_var_range():
    c = 7
    labels = calib_data.draw_labels(500, c, seed=42, class_draw="all-but-last")
    assert set(labels.tolist()) == set(range(c - 1))  # torch.randint(0, C - 1) never gives C - 1
    assert calib_data.draw_labels(3, 1, seed=0, class_draw="all-but-last").tolist() == [0, 0, 0]


def test_labels_are_deterministic_and_the_draw_is_checked():
    np.testing.assert_array_equal(
        calib_data.draw_labels(13, 1000, seed=3), calib_data.draw_labels(13, 1000, seed=3)
    )
    with pytest.raises(ValueError, match="class_draw"):
        calib_data.draw_labels(3, 5, seed=0, class_draw="official")


@pytest.mark.parametrize("class_draw", ["all", "all-but-last"])
def test_generate_candidates_draws_the_last_class(monkeypatch, class_draw):
    """The label draw reaches the candidates (the generator is stubbed: only labels matter)."""
    calls = []

    def fake_generate(params, vae_params, var_cfg, vae_cfg, labels, keys, **kw):
        calls.append(np.asarray(labels))
        return {"tokens": np.zeros((len(labels), 5), np.int32)}

    monkeypatch.setattr(var_sampler, "stack_blocks", lambda p: p)
    monkeypatch.setattr(var_sampler, "generate", fake_generate)
    cfg = types.SimpleNamespace(num_classes=3)
    cands = calibration.generate_candidates(
        {}, {}, cfg, None, 60, gen_batch=16, class_draw=class_draw, progress=False
    )
    cond = cands.labels[:60]
    np.testing.assert_array_equal(np.concatenate(calls), cond)
    assert (2 in cond) == (class_draw == "all")
    assert np.all(cands.labels[60:] == 3)  # the null class
