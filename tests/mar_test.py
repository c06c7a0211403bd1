"""MAR port: every output of the official fixture (`reference/mar/io.npz`) and the mask schedule.

Tolerances (reference/README "MAR"): |Δ| ≤ 1e-5·max|ref| for transformer, head, sampler and
tokens; ≤ 3e-5·max|ref| for images; integers and masks exact; `tolerances.json` narrows some
comparisons to a slice (the official CFG uncond half of `DiffLoss.sample`).
"""

import functools
import json
import pathlib

import numpy as np

from arvg_jax.families.mar import sampler
from arvg_jax.families.mar.reference import run_reference


@functools.lru_cache(maxsize=1)
def _outputs(fixture: pathlib.Path) -> dict:
    return run_reference(fixture)


def test_fixture_outputs(reference):
    fixture = reference("mar")
    ref = np.load(fixture / "io.npz")
    inputs = set(json.loads((fixture / "inputs.json").read_text()))
    tolerances = json.loads((fixture / "tolerances.json").read_text())
    out = _outputs(fixture)
    names = [k for k in ref.files if k not in inputs]
    assert sorted(out) == sorted(names)
    failures = []
    for name in names:
        a, b = out[name], ref[name]
        if a.shape != b.shape or a.dtype != b.dtype:
            failures.append(f"{name}: {a.shape} {a.dtype} vs {b.shape} {b.dtype}")
            continue
        if name in tolerances and "slice" in tolerances[name]:
            index = eval(f"np.s_{tolerances[name]['slice']}")  # e.g. "[:, 0:6]"
            a, b = a[index], b[index]
        if b.dtype == bool or b.dtype.kind in "iu":
            if not np.array_equal(a, b):
                failures.append(f"{name}: {int((a != b).sum())} entries differ")
            continue
        tol = 3e-5 if name.endswith("_img") else 1e-5
        err = float(np.abs(a - b).max() / np.abs(b).max())
        if not err <= tol:
            failures.append(f"{name}: {err:.3g} > {tol}")
    assert not failures, failures


def test_generation_row_bookkeeping(reference):
    # Each sample's pred masks partition the positions, and step k samples 20, 55, 84, 97.
    out = _outputs(reference("mar"))
    for prefix in ("gcfg", "gnocfg"):
        pred = out[f"{prefix}_pred_mask"]  # [K, B, L]
        np.testing.assert_array_equal(pred.sum(0), np.ones(pred.shape[1:]))
        assert tuple(pred[:, 0].sum(-1)) == sampler.mask_schedule(256, 4).counts


def test_mask_schedule():
    assert sampler.mask_schedule(256, 4).counts == (20, 55, 84, 97)
    assert sampler.mask_schedule(256, 4).mask_len == (236, 181, 97, 1)
    for k in (1, 7, 64):
        assert sum(sampler.mask_schedule(256, k).counts) == 256
    assert set(sampler.mask_schedule(256, 256).counts) == {1}  # one token per step
    assert sum(sampler.mask_schedule(25, 30).counts) == 25  # more steps than tokens
