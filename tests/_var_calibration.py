"""Shared, cached set-up of the PTQ4ARVG/DGC tests: the reference VAR and generated candidates.

Generation (one jit compile, ~25 s on 2 CPU cores) is the expensive part; it is cached per process
so `ptq4arvg_test.py` and `dgc_test.py` share it when they run together.
"""

from __future__ import annotations

import functools

import numpy as np

NUM_IMAGES = 8  # generated images: 16 cond/uncond candidates
CALIB_IMAGES = 4  # images 0..3 calibrate (8 sequences), images 4..7 evaluate (8 sequences)


@functools.cache
def reference_model(var_dir: str):
    from arvg_jax.models import load_float

    return load_float("var", f"{var_dir}/var.pth", f"{var_dir}/vae.pth", f"{var_dir}/config.json")


@functools.cache
def candidates(var_dir: str):
    """16 candidates from 8 images of the float reference VAR (official sampling settings)."""
    from arvg_jax.families.var.calibration import generate_candidates

    m = reference_model(var_dir)
    return generate_candidates(
        m.params, m.vae_params, m.cfg, m.vae_cfg, NUM_IMAGES, gen_batch=NUM_IMAGES, progress=False
    )


def rows_of_images(cands, images) -> np.ndarray:
    """Candidate rows (cond and uncond) of the given images."""
    return np.nonzero(np.isin(cands.image, np.asarray(images)))[0]


@functools.cache
def candidate_batch(var_dir: str) -> dict:
    """The model inputs of all 16 candidates (`calibration_batch` of every row)."""
    from arvg_jax.families.var.calibration import calibration_batch

    m = reference_model(var_dir)
    return calibration_batch(m.vae_params, m.vae_cfg, candidates(var_dir))


@functools.cache
def split_batches(var_dir: str):
    """(calibration batch, held-out evaluation batch), both halves of disjoint images."""
    c, everything = candidates(var_dir), candidate_batch(var_dir)
    cal = rows_of_images(c, range(CALIB_IMAGES))
    ev = rows_of_images(c, range(CALIB_IMAGES, NUM_IMAGES))
    return ({k: v[cal] for k, v in everything.items()}, {k: v[ev] for k, v in everything.items()})
