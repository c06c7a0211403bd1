"""MAR diffusion head: respaced cosine schedule (exact), SimpleMLPAdaLN and the p_sample loop."""

import functools
import json
import math

import jax
import numpy as np
import pytest

from arvg_jax.families.mar import diffloss
from arvg_jax.families.mar.config import MARConfig
from converters.mar import load_mar

_SCHED = (
    "timestep_map",
    "betas",
    "alphas_cumprod",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
)


@functools.lru_cache(maxsize=1)
def _load(fixture):
    cfg = MARConfig.from_fixture(json.loads((fixture / "config.json").read_text())["mar"])
    params = load_mar(fixture / "mar.pth", cfg, weights="model_ema")["diffloss"]
    return cfg, params, dict(np.load(fixture / "io.npz"))


def _rel(a, b):
    return float(np.abs(np.asarray(a) - b).max() / np.abs(b).max())


def test_space_timesteps():
    # Python round is half-to-even: 166.5 -> 166, 499.5 -> 500, 832.5 -> 832.
    assert diffloss.space_timesteps(1000, "7") == [0, 166, 333, 500, 666, 832, 999]
    steps = diffloss.space_timesteps(1000, "100")
    assert len(steps) == 100 and steps[:7] == [0, 10, 20, 30, 40, 50, 61] and steps[-1] == 999
    assert diffloss.space_timesteps(1000, "ddim10") == list(range(0, 1000, 100))
    assert diffloss.space_timesteps(10, "2,3") == [0, 4, 5, 7, 9]
    with pytest.raises(ValueError, match="cannot divide"):
        diffloss.space_timesteps(10, "6,6")
    assert diffloss.make_schedule("").num_steps == 1000


def test_timestep_frequencies():
    f = diffloss.timestep_frequencies()
    assert f.dtype == np.float32 and f.shape == (128,)
    assert f[0] == 1.0 and abs(f[64] - math.exp(-math.log(1e4) / 2)) < 1e-7


@pytest.mark.parametrize("prefix,steps", [("sched", "100"), ("gsched", "7")])
def test_schedule_is_exact(reference, prefix, steps):
    *_, io = _load(reference("mar"))
    s = diffloss.make_schedule(steps)
    for key in _SCHED:
        np.testing.assert_array_equal(getattr(s, key), io[f"{prefix}_{key}"], err_msg=key)


def test_head_matches_fixture(reference):
    cfg, params, io = _load(reference("mar"))
    kw = {"width": cfg.diffloss_w, "depth": cfg.diffloss_d}
    x, t, c = io["head_x"], io["head_t"], io["head_c"]
    out = jax.jit(functools.partial(diffloss.head_apply, **kw))(params, x, t, c)
    assert _rel(out, io["head_out"]) <= 1e-5
    cfg_fn = jax.jit(functools.partial(diffloss.head_apply_cfg, **kw))
    assert _rel(cfg_fn(params, x, t, c, io["head_cfg_scale"]), io["head_cfg_out"]) <= 1e-5


def test_sample_matches_fixture(reference):
    cfg, params, io = _load(reference("mar"))
    run = jax.jit(
        functools.partial(
            diffloss.sample,
            schedule=diffloss.make_schedule("100"),
            width=cfg.diffloss_w,
            depth=cfg.diffloss_d,
            return_trajectory=True,
        )
    )
    p = "ds_nocfg"
    out, traj = run(
        params, io[f"{p}_z"], io[f"{p}_noise0"], io[f"{p}_noise"], io[f"{p}_temperature"], None
    )
    assert _rel(out, io[f"{p}_out"]) <= 1e-5 and _rel(traj, io[f"{p}_traj"]) <= 1e-5
    p = "ds_cfg"
    out, traj = run(
        params,
        io[f"{p}_z"],
        io[f"{p}_noise0"],
        io[f"{p}_noise"],
        io[f"{p}_temperature"],
        io[f"{p}_scale"],
    )
    # Rows 0-5 are the sample; the uncond half is carried as the official code carries it.
    assert _rel(out[:6], io[f"{p}_out"][:6]) <= 1e-5
    assert _rel(traj[:, :6], io[f"{p}_traj"][:, :6]) <= 1e-5
    assert _rel(out, io[f"{p}_out"]) <= 1e-5
