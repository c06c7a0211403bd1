"""Shared helpers of the PAR parity tests: the fixture (converted once) and the checks."""

import functools
import pathlib

import numpy as np

from arvg_jax.families.par.reference import Fixture

NEAR_TIE = 1e-3  # reference/README.md: a differing token needs a reference top-2 margin below it


@functools.cache
def fixture(path: str) -> Fixture:
    return Fixture(pathlib.Path(path))


def reference_arrays(path: str) -> dict[str, np.ndarray]:
    with np.load(pathlib.Path(path) / "io.npz") as npz:
        return {k: npz[k] for k in npz.files}


def rel_err(ours, ref) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(ours - ref) / np.linalg.norm(ref))


def check_same_layout(ours: np.ndarray, ref: np.ndarray) -> None:
    assert ours.shape == ref.shape and ours.dtype == ref.dtype, (ours.shape, ours.dtype, ref.dtype)


def check_tokens_until_near_tie(tokens, ref_tokens, ref_margin) -> np.ndarray:
    """Asserts tokens equal the reference up to its first near-tie; returns per-row equality."""
    tokens, full = np.asarray(tokens), []
    for b in range(ref_tokens.shape[0]):
        diff = np.nonzero(tokens[b] != ref_tokens[b])[0]
        ties = np.nonzero(ref_margin[b] < NEAR_TIE)[0]
        if diff.size:
            assert ties.size and diff[0] >= ties[0], (b, diff[0], ref_margin[b, diff[0]])
        full.append(diff.size == 0)
    return np.array(full)
