"""`arvg_jax.metrics.reference.run_reference` gives every output of reference/eval/io.npz
(names, shapes, dtypes) within tolerances.json."""

import json

import numpy as np
import pytest

from arvg_jax.metrics.reference import run_reference


@pytest.fixture(scope="module")
def computed():
    from conftest import require_reference

    folder = require_reference("eval", "io.npz").parent
    with np.load(folder / "io.npz") as io:
        want = {k: io[k] for k in io.files}
    inputs = set(json.loads((folder / "inputs.json").read_text()))
    tol = json.loads((folder / "tolerances.json").read_text())
    return run_reference(folder), want, inputs, tol


def test_every_output_is_computed(computed):
    got, want, inputs, tol = computed
    outputs = set(want) - inputs
    assert outputs <= set(got), sorted(outputs - set(got))
    assert set(got) - outputs == set(), "run_reference returned arrays the fixture lacks"
    assert outputs == {k for k in tol if not k.startswith("_")}  # every output has a tolerance
    for k in outputs:
        assert got[k].shape == want[k].shape, (k, got[k].shape, want[k].shape)
        assert got[k].dtype == want[k].dtype, (k, got[k].dtype, want[k].dtype)


def test_outputs_within_tolerance(computed):
    got, want, inputs, tol = computed
    errors = {}
    for k in sorted(set(want) - inputs):
        a, b = np.asarray(got[k], np.float64), np.asarray(want[k], np.float64)
        errors[k] = float(np.linalg.norm(a - b) / np.linalg.norm(b))
    bad = {k: (e, tol[k]["tol"]) for k, e in errors.items() if not e <= tol[k]["tol"]}
    assert not bad, bad
