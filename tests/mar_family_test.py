"""MARFamily: registry entry, official sampling defaults, EMA default, per-image keys via the CLI."""

import json

import numpy as np
import pytest

from arvg_jax import families
from arvg_jax.families.mar.config import MARConfig
from arvg_jax.tokenizers.kl16_vae import KL16Config


def test_registry_lists_the_mar_presets():
    mar = families.get("mar")
    presets = mar.presets()
    assert set(presets) == {"mar-b", "mar-l", "mar-h", "mar-test", "mar-tiny"}
    assert {"mar", "mar-b", "mar-test"} <= set(families.model_choices())
    fam, preset = families.preset("mar-h")
    assert fam is mar and preset.config() == MARConfig.huge()
    assert preset.tokenizer_config() == KL16Config.release()
    assert families.preset("mar-test")[1].config() == MARConfig.tiny()
    assert [n for n, p in presets.items() if p.packaged] == ["mar-tiny"]
    assert presets["mar-b"].config().num_classes == 1000


def test_sampling_defaults_are_the_official_ones():
    # main_mar.py: --num_iter 64, --cfg_schedule linear, --temperature 1.0,
    # --num_sampling_steps 100; README FID commands: --cfg 2.9 / 3.0 / 3.2 for B / L / H.
    mar = families.get("mar")
    common = {"num_iter": 64, "cfg_schedule": "linear", "temperature": 1.0}
    common["num_sampling_steps"] = "100"
    for name, cfg_scale in (("mar-b", 2.9), ("mar-l", 3.0), ("mar-h", 3.2), ("mar-test", 1.0)):
        got = mar.sampling_defaults(families.preset(name)[1].config())
        assert got == {**common, "cfg": cfg_scale}, name
    assert mar.sampling_defaults() == {**common, "cfg": 1.0}  # main_mar.py's bare default
    flags = families.sampling_arguments()
    assert flags["num_iter"].flag == "--num-iter" and flags["cfg"].type is float


def test_configs_from_fixture_and_ema_default(reference):
    from converters import load_state_dict

    fixture = reference("mar")
    mar = families.get("mar")
    official = json.loads((fixture / "config.json").read_text())
    cfg, tok_cfg = mar.configs_from_official(official)
    assert cfg == MARConfig.tiny() and tok_cfg == KL16Config.tiny()
    ema = load_state_dict(fixture / "mar.pth", key="model_ema")
    raw = load_state_dict(fixture / "mar.pth", key="model")
    wrapped = {"model": raw, "model_ema": ema}
    leaf = lambda p: np.asarray(p["transformer"]["z_proj"]["kernel"])
    want_ema, want_raw = leaf(mar.convert(ema, cfg)), leaf(mar.convert(raw, cfg))
    assert not np.array_equal(want_ema, want_raw)
    np.testing.assert_array_equal(leaf(mar.convert(wrapped, cfg)), want_ema)  # EMA by default
    np.testing.assert_array_equal(leaf(mar.convert(wrapped, cfg, weights="model")), want_raw)
    with pytest.raises(ValueError, match="weights must be one of"):
        mar.convert(wrapped, cfg, weights="ema")
    vae = load_state_dict(fixture / "kl16.ckpt", key="model")
    a = mar.convert_tokenizer({"model": vae}, tok_cfg)
    b = mar.convert_tokenizer(vae, tok_cfg)
    np.testing.assert_array_equal(
        np.asarray(a["post_quant_conv"]["kernel"]), np.asarray(b["post_quant_conv"]["kernel"])
    )


def test_no_teacher_forced_logits():
    mar = families.get("mar")
    with pytest.raises(NotImplementedError, match="continuous"):
        mar.teacher_forced_logits(None, None, MARConfig.tiny(), None, [0], None, options=None)


@pytest.mark.slow  # keyed sampling stays in the default run for VAR and PAR
def test_cli_images_do_not_depend_on_the_batch(tmp_path):
    from arvg_jax.cli import main

    outs = {}
    for batch in (1, 2):
        png, npz = tmp_path / f"b{batch}.png", tmp_path / f"b{batch}.npz"
        # Few AR and head steps keep it fast; CFG on, so both halves' noise is per image too.
        argv = ["generate", "--model", "mar-test", "--random-weights", "--classes", "1,2"]
        argv += ["--seed", "0", "--batch", str(batch), "--out", str(png)]
        argv += ["--num-iter", "2", "--num-sampling-steps", "2", "--cfg", "2.0"]
        argv += ["--save-tokens", str(npz)]
        assert main(argv) == 0
        outs[batch] = (png.read_bytes(), np.load(npz)["tokens"])
    assert outs[1][0] == outs[2][0]
    tokens = outs[2][1]
    cfg = MARConfig.tiny()
    assert tokens.dtype == np.float32 and tokens.shape == (2, cfg.seq_len, cfg.token_embed_dim)
    np.testing.assert_array_equal(outs[1][1], tokens)
    assert not np.array_equal(tokens[0], tokens[1])


def test_packaged_tiny_mar_is_the_recipe_and_loads():
    # The shipped weights (arvg_jax/assets/tiny/mar) are the recipe's architecture, every leaf
    # has the shape the model and the KL decoder expect, and the demo samples with the head
    # steps the packaged config records.
    import jax
    from flax import traverse_util

    from arvg_jax import assets
    from arvg_jax.families.mar.model import abstract_params
    from arvg_jax.families.mar.train import MARTinyRecipe
    from arvg_jax.tokenizers import kl16_vae

    mar = families.get("mar")
    preset = mar.presets()["mar-tiny"]
    recipe = MARTinyRecipe.default()
    assert preset.config() == recipe.mar and preset.tokenizer_config() == recipe.vae
    cfg, params, tok_cfg, tok_params, meta = assets.load_family_tiny(mar)
    assert meta["status"] == "complete" and meta["weights"] == "ema"
    assert cfg == recipe.mar and tok_cfg == recipe.vae
    assert mar.demo_sampling()["num_sampling_steps"] == cfg.num_sampling_steps

    def shapes(tree):
        return {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(tree, sep="/").items()}

    assert shapes(params) == shapes(abstract_params(cfg))
    assert shapes(tok_params) == shapes(kl16_vae.abstract_params(tok_cfg))
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves((params, tok_params)))
