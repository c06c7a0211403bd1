"""arvg_jax.families.par: PAR in the registry, the CLI (`arvg models`, `arvg generate`),
per-image keys, teacher-forced logits and the official sampling defaults."""

import contextlib
import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arvg_jax import cli, families
from arvg_jax.families.par import layout
from arvg_jax.families.par.config import PARConfig
from arvg_jax.families.par.model import PAR
from arvg_jax.options import ExecOptions

PRESETS = ("par-xl-4x", "par-xxl-4x", "par-3b-4x", "par-xl-16x", "par-xxl-16x", "par-3b-16x")

# YuqingWang1029/PAR autoregressive/sample/sample_c2i_ddp.py argparse defaults, and the README's
# per-release --cfg-scale (PAR-3B-4x 1.345, PAR-XXL-4x 1.435, PAR-XL-4x and PAR-3B-16x 1.5).
OFFICIAL = {"cfg_interval": -1.0, "top_k": 0, "top_p": 1.0, "temperature": 1.0, "greedy": False}
OFFICIAL_CFG_SCALE = {
    "par-xl-4x": 1.5,
    "par-xxl-4x": 1.435,
    "par-3b-4x": 1.345,
    "par-xl-16x": 1.5,
    "par-xxl-16x": 1.5,
    "par-3b-16x": 1.5,
    "par-test": 1.5,
}


def test_registry_lists_the_par_presets():
    fam = families.get("par")
    assert set(fam.presets()) == {*PRESETS, "par-test", "par-tiny"}
    assert {*PRESETS, "par-test", "par"} <= set(families.model_choices())
    got, preset = families.preset("par-3b-16x")
    assert got is fam and preset.config() == PARConfig.gpt3b_16x()
    assert preset.tokenizer_config().codebook_size == preset.config().vocab_size
    assert [n for n, p in fam.presets().items() if p.packaged] == ["par-tiny"]


def test_arvg_models_lists_them(capsys):
    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    for name in (*PRESETS, "par-test"):
        assert f"  {name} " in out
    assert "--model par --config config.json" in out


@pytest.mark.parametrize("name", sorted(OFFICIAL_CFG_SCALE))
def test_sampling_defaults_are_the_official_ones(name):
    fam, preset = families.preset(name)
    args = {a.name: a for a in fam.sampling_arguments(preset.config())}
    assert {k: a.default for k, a in args.items()} == {
        "cfg_scale": OFFICIAL_CFG_SCALE[name],
        **OFFICIAL,
    }
    assert args["greedy"].type is bool and args["top_k"].type is int
    assert fam.sampling_defaults()["cfg_scale"] == 1.5  # no config: the script default


@pytest.mark.slow  # ~30 s; var_sampler_test and sample_command_test check the same property
def test_generate_images_do_not_depend_on_the_batch(tmp_path):
    """`arvg generate` with --batch 1 and --batch 2: image i draws with image_keys(seed, i)."""
    pngs, npzs = [], []
    for batch in (1, 2):
        png, npz = tmp_path / f"b{batch}.png", tmp_path / f"b{batch}.npz"
        argv = ["generate", "--model", "par-test", "--random-weights", "--classes", "1,2"]
        argv += ["--seed", "0", "--batch", str(batch), "--out", str(png)]
        with contextlib.redirect_stderr(io.StringIO()):
            assert cli.main([*argv, "--save-tokens", str(npz)]) == 0
        pngs.append(png.read_bytes())
        npzs.append(np.load(npz))
    assert pngs[0] == pngs[1]
    tokens = npzs[0]["tokens"]
    np.testing.assert_array_equal(tokens, npzs[1]["tokens"])
    cfg = PARConfig.tiny()
    assert tokens.shape == (2, cfg.block_size) and not np.array_equal(tokens[0], tokens[1])


def test_generate_returns_raster_tokens_and_images_in_0_1():
    fam = families.get("par")
    cfg, tok_cfg = fam.presets()["par-test"].config(), fam.presets()["par-test"].tokenizer_config()
    params, tok_params = fam.init_params(cfg, tok_cfg, seed=1)
    labels = np.array([3, 5], np.int32)
    out = fam.generate(
        params,
        tok_params,
        cfg,
        tok_cfg,
        labels,
        families.image_keys(0, 0, 2),
        options=ExecOptions(),
        greedy=True,
        cfg_scale=1.0,
    )
    tokens, images = np.asarray(out["tokens"]), np.asarray(out["images"])
    assert tokens.dtype == np.int32 and tokens.shape == (2, cfg.block_size)
    assert images.dtype == np.float32 and images.shape == (2, 256, 256, 3)
    assert images.min() >= 0 and images.max() <= 1
    # Greedy without CFG: each raster token is the argmax of its teacher-forced logits.
    logits = fam.teacher_forced_logits(
        params, tok_params, cfg, tok_cfg, labels, tokens, options=ExecOptions(), batch=1
    )
    assert logits.shape == (2, cfg.block_size, cfg.vocab_size) and logits.dtype == np.float32
    top2 = np.sort(logits, axis=-1)[..., -2:]
    clear = top2[..., 1] - top2[..., 0] > 1e-3
    assert clear.mean() > 0.9
    np.testing.assert_array_equal(logits.argmax(-1)[clear], tokens[clear])
    # Raster-order logits are the model's PAR-order logits permuted back.
    par_tokens = tokens[:, layout.par_index_to_raster(cfg)]
    ref = PAR(cfg).apply({"params": params}, jnp.asarray(labels), jnp.asarray(par_tokens))
    np.testing.assert_allclose(
        logits[:, layout.par_index_to_raster(cfg)], np.asarray(ref), rtol=1e-5, atol=1e-5
    )


def test_sampler_row_i_draws_with_key_i_only():
    from _par_tiny import cfg as tiny_cfg
    from _par_tiny import params as tiny_params

    from arvg_jax.families.par import sampler

    cfg, params = tiny_cfg("4x"), tiny_params("4x")
    labels = np.array([1, 2, 7], np.int32)
    keys = families.image_keys(3, 0, 3)
    full = np.asarray(sampler.generate(params, labels, keys, cfg=cfg, cfg_scale=2.5)["tokens"])
    # Reordering the batch reorders the images (same program: no new compile).
    rev = sampler.generate(params, labels[::-1], keys[::-1], cfg=cfg, cfg_scale=2.5)["tokens"]
    np.testing.assert_array_equal(full[::-1], rev)
    # A single key stands for the per-image keys fold_in(key, i).
    key = jax.random.PRNGKey(5)
    folded = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(3, dtype=jnp.uint32))
    one = sampler.generate(params, labels, key, cfg=cfg, cfg_scale=2.5)["tokens"]
    two = sampler.generate(params, labels, folded, cfg=cfg, cfg_scale=2.5)["tokens"]
    np.testing.assert_array_equal(one, two)
    assert not np.array_equal(one, full)
