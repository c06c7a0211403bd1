"""Tiny RAR training (`families/rar/train`): loss = the family's teacher-forced CE, loss decrease,
tokenizer train/inference parity, and (slow) the quick recipe end to end through `arvg demo`."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from arvg_jax.families.rar import FAMILY
from arvg_jax.families.rar.config import RARConfig
from arvg_jax.families.rar.train import (
    decode_params,
    init_rar_state,
    init_tokenizer_state,
    rar_loss,
    rar_train_step,
    reconstruct,
    tokenize,
    tokenizer_loss,
    tokenizer_train_step,
)
from arvg_jax.options import ExecOptions
from arvg_jax.tokenizers import maskgit_vqgan
from arvg_jax.tokenizers.maskgit_vqgan import MaskGITVQGANConfig
from arvg_jax.train import StageHParams
from arvg_jax.train.vq import VQLossConfig

# Prime dims: C 26, D 2, H 2, F 34, n 9 (3 x 3), 7 classes, V 11; tokenizer 6 px -> 3 x 3, Z 7.
CFG = RARConfig.tiny()
TOK_CFG = MaskGITVQGANConfig.tiny()


def _token_data(n=64, seed=0):
    """Class-dependent token sequences (token k of class c: (c + k) mod V, some noise)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CFG.condition_num_classes, n).astype(np.int32)
    k = np.arange(CFG.image_seq_len)
    tokens = (labels[:, None] + k[None, :]) % CFG.codebook_size
    noise = rng.random(tokens.shape) < 0.1
    tokens = np.where(noise, rng.integers(0, CFG.codebook_size, tokens.shape), tokens)
    return tokens.astype(np.int32), labels


@pytest.mark.slow  # training recipe (~45 s)
def test_rar_loss_is_family_teacher_forced_ce_and_decreases():
    tokens, labels = _token_data()
    hp = StageHParams(steps=12, batch=32, lr=1e-2, warmup=0)
    state = init_rar_state(CFG, hp, jax.random.key(0))
    # The training loss is the cross-entropy of the family's own teacher-forced logits.
    params0 = jax.tree.map(np.asarray, state["params"])
    cond = CFG.condition_id(jnp.asarray(labels[:8]))
    loss, _ = jax.jit(rar_loss, static_argnums=1)(params0, CFG, jnp.asarray(tokens[:8]), cond)
    logits = FAMILY.teacher_forced_logits(
        params0, None, CFG, None, labels[:8], tokens[:8], options=ExecOptions()
    )
    ce = optax.softmax_cross_entropy_with_integer_labels(jnp.asarray(logits), tokens[:8])
    np.testing.assert_allclose(float(loss), float(jnp.mean(ce)), rtol=1e-5)

    key = jax.random.key(1)
    losses = []
    for _ in range(hp.steps):
        state, m = rar_train_step(
            state, jnp.asarray(tokens), jnp.asarray(labels), key, cfg=CFG, hp=hp, cond_drop=0.1
        )
        losses.append(float(m["loss"]))
    assert losses[-1] < 0.7 * losses[0], losses
    # adaLN-Zero start (rar.py): the blocks begin as the identity, and learn.
    assert not np.any(params0["blocks_0"]["adaLN_modulation"]["kernel"])
    assert np.any(np.asarray(state["params"]["blocks_0"]["adaLN_modulation"]["kernel"]))


def test_rar_tiny_preset_is_the_recipe_and_packaged():
    from arvg_jax.families.rar.train import RARTinyRecipe

    preset = FAMILY.presets()["rar-tiny"]
    recipe = RARTinyRecipe.default()
    assert preset.packaged and preset.config() == recipe.model
    assert preset.tokenizer_config() == recipe.tokenizer
    assert recipe.tokenizer.image_size == 32 and recipe.tokenizer.num_tokens == 64
    # The demo (and compare) sample the tiny model with its own settings, which are also the
    # CLI defaults for its config.
    demo = FAMILY.demo_sampling()
    assert demo == {**FAMILY.sampling_defaults(recipe.model), "greedy": False}
    assert demo["guidance_scale"] == recipe.gen_settings[0][1]


def _blocky_images(n, seed=0):
    """Images in [-1, 1] with one colour per 2x2 cell (a few codes can represent them)."""
    rng = np.random.default_rng(seed)
    cells = rng.uniform(-1, 1, (n, TOK_CFG.resolution // 2, TOK_CFG.resolution // 2, 3))
    return np.repeat(np.repeat(cells.astype(np.float32), 2, 1), 2, 2)


@jax.jit
def _train_and_inference_paths(params, x):
    _, aux = tokenizer_loss(params, TOK_CFG, x, VQLossConfig())
    tok = tokenize(params, TOK_CFG, x)
    dec = maskgit_vqgan.decode_tokens(decode_params(params), TOK_CFG, tok) * 2 - 1
    return aux["idx"], tok, reconstruct(params, TOK_CFG, x), dec


@pytest.mark.slow  # training recipe (~30 s)
def test_tokenizer_training_quantizer_matches_inference():
    params = init_tokenizer_state(
        TOK_CFG, StageHParams(steps=1, batch=1, lr=1e-3), VQLossConfig(), jax.random.key(0)
    )["params"]
    # A codebook at the latent's scale, so that many codes are hit.
    params["quantize"]["embedding"] = jax.random.normal(jax.random.key(1), (11, 7))
    idx, tok, recon, dec = _train_and_inference_paths(params, jnp.asarray(_blocky_images(5)))
    tok = np.asarray(tok)
    assert tok.shape == (5, TOK_CFG.num_tokens) and len(np.unique(tok)) > 3
    np.testing.assert_array_equal(np.asarray(idx).reshape(5, -1), tok)
    # The shipped tokenizer (no encoder) decodes the tokens as the training round trip does.
    np.testing.assert_allclose(np.asarray(recon), np.asarray(dec), atol=1e-6)
    assert set(decode_params(params)) == {"quantize", "decoder"}


@pytest.mark.slow
def test_tokenizer_loss_decreases():
    images = _blocky_images(48)
    hp = StageHParams(steps=15, batch=16, lr=3e-3, warmup=0)
    lcfg = VQLossConfig(restart_every=5)
    state = init_tokenizer_state(TOK_CFG, hp, lcfg, jax.random.key(0))
    losses = []
    for _ in range(hp.steps):
        state, m = tokenizer_train_step(
            state, jnp.asarray(images), jax.random.key(2), cfg=TOK_CFG, hp=hp, loss_cfg=lcfg
        )
        losses.append(float(m["loss"]))
    assert losses[-1] < losses[0], losses


@pytest.mark.slow
def test_quick_recipe_assets_load_and_demo_runs(tmp_path, monkeypatch):
    """Quick recipe (CPU, minutes): assets -> `load_family_tiny` -> `arvg demo --model rar-tiny`
    -> `compare_tiny.py --model rar-tiny`."""
    import dataclasses
    import pathlib

    from arvg_jax import assets, cli
    from arvg_jax.families.rar.train import RARTinyRecipe, train_rar_tiny

    out = tmp_path / "tiny" / "rar"
    recipe = dataclasses.replace(
        RARTinyRecipe.quick().with_steps(4, 4), num_gen=12, gen_batch=12, num_train=96
    )
    meta = train_rar_tiny(recipe, out)
    assert meta["status"] == "complete"
    assert {"model.npz", "tokenizer.npz", "recipe.json", "samples.png"} <= {
        p.name for p in out.iterdir()
    }
    rec = json.loads((out / "recipe.json").read_text())
    assert rec["stages"]["rar"]["steps_done"] == 4 and "g3" in rec["metrics"]["generation"]
    monkeypatch.setattr(assets, "family_dir", lambda fam, root=None: pathlib.Path(out))
    cfg, _, tok_cfg, _, _ = assets.load_family_tiny(FAMILY)
    assert cfg == recipe.model and tok_cfg == recipe.tokenizer
    assert tok_cfg.image_size == 32
    demo_out = tmp_path / "demo"
    rc = cli.main(
        ["demo", "--model", "rar-tiny", "--out", str(demo_out), "--per-class", "1"]
        + ["--calib", "4", "--quiet"]
    )
    assert rc == 0 and (demo_out / "float_vs_quantized.png").is_file()
