"""PAR greedy generation without CFG (cfg_scale 1: no uncond rows) vs the official fixture."""

import numpy as np
import pytest
from _par_fixture import (
    check_same_layout,
    check_tokens_until_near_tie,
    fixture,
    reference_arrays,
    rel_err,
)

from arvg_jax.families.par import reference as par_reference


@pytest.fixture
def par_dir(reference):
    return str(reference("par", "io.npz").parent)


def test_greedy_generation_without_cfg(par_dir):
    ref = reference_arrays(par_dir)
    out = par_reference.generation_nocfg(fixture(par_dir))
    for name, value in out.items():
        check_same_layout(value, ref[name])
    full = check_tokens_until_near_tie(
        out["gen_nocfg_tokens"], ref["gen_nocfg_tokens"], ref["gen_nocfg_top2_margin"]
    )
    assert full.all()
    np.testing.assert_array_equal(out["gen_nocfg_tokens_raster"], ref["gen_nocfg_tokens_raster"])
    np.testing.assert_allclose(
        out["gen_nocfg_top2_margin"], ref["gen_nocfg_top2_margin"], rtol=0, atol=1e-4
    )
    ref_first = ref["gen_nocfg_logits_first_every8"]
    assert rel_err(out["gen_nocfg_logits_first_every8"], ref_first) <= 1e-5
