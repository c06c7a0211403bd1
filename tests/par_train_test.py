"""The tiny PAR recipe (`arvg_jax.families.par.train`): losses, training agrees with inference,
and (slow) a quick run whose assets `arvg demo --model par-tiny` and the compare table use."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from arvg_jax.families.par.config import PARConfig
from arvg_jax.families.par.train import (
    TinyPARRecipe,
    gpt_eval,
    gpt_train_step,
    init_gpt_state,
    init_tokenizer_state,
    raster_to_par,
    tokenize,
    tokenizer_train_step,
)
from arvg_jax.tokenizers.llamagen_vq16 import VQ16Config
from arvg_jax.train import StageHParams
from arvg_jax.train.vq import VQLossConfig

# Prime sizes where the architecture allows (head dim a multiple of 4 for the 2-D RoPE; a 4 x 4
# grid at 4x: 4 regions of 2 x 2).
CFG = PARConfig(
    dim=20, n_layer=1, n_head=1, multiple_of=1, vocab_size=37, num_classes=3, block_size=16
)
# No down-sampling (one level): 4 x 4 images are a 4 x 4 token grid (cheap to compile).
TOK_CFG = VQ16Config(
    codebook_size=37,
    codebook_embed_dim=5,
    decoder_ch_mult=(1,),
    z_channels=32,
    ch=32,
    num_res_blocks=0,
    image_size=4,
    image_size_eval=4,
)


def _toy_tokens(n: int, seed: int = 0):
    """Class c's sequences repeat a class-specific pattern with noise: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CFG.num_classes, n).astype(np.int32)
    base = (np.arange(CFG.block_size)[None] * (labels[:, None] + 2)) % CFG.vocab_size
    noise = rng.integers(0, CFG.vocab_size, base.shape)
    tokens = np.where(rng.random(base.shape) < 0.1, noise, base).astype(np.int32)
    return tokens, labels  # raster order


@pytest.mark.slow  # training recipe (~16 s)
def test_gpt_training_lowers_the_loss_and_matches_teacher_forced_logits():
    from arvg_jax.families.par.family import PARFamily
    from arvg_jax.options import ExecOptions

    raster, labels = _toy_tokens(64)
    tokens = raster_to_par(jnp.asarray(raster), CFG)
    hp = StageHParams(steps=30, batch=32, lr=3e-2, warmup=0)
    state = init_gpt_state(CFG, TOK_CFG, hp, seed=0)
    losses = []
    for _ in range(hp.steps):
        state, m = gpt_train_step(
            state, tokens, jnp.asarray(labels), jax.random.key(1), cfg=CFG, hp=hp, cond_drop=0.1
        )
        losses.append(float(m["loss"]))
    assert losses[0] == pytest.approx(np.log(CFG.vocab_size), rel=1e-4)  # zero output head
    assert losses[-1] < 0.6 * losses[0]

    # The training loss is the cross-entropy of the family's teacher-forced (inference) logits.
    params = state["params"]
    ev = gpt_eval(params, jnp.asarray(labels[:8]), tokens[:8], cfg=CFG)
    logits = PARFamily().teacher_forced_logits(
        params, None, CFG, TOK_CFG, labels[:8], raster[:8], options=ExecOptions()
    )
    ce = optax.softmax_cross_entropy_with_integer_labels(jnp.asarray(logits), raster[:8])
    np.testing.assert_allclose(float(ev["loss"]), float(jnp.mean(ce)), rtol=1e-5)


@pytest.mark.slow  # ~80 s on a loaded 2-core CPU (encoder + decoder gradients compile)
def test_tokenizer_step_trains_and_tokenizes_consistently():
    from arvg_jax.data import shapes

    images, _ = shapes.make_dataset(48, seed=3, size=TOK_CFG.image_size)
    hp = StageHParams(steps=12, batch=16, lr=3e-3, warmup=0)
    loss_cfg = VQLossConfig(codebook_init_std=0.4, restart_every=4)
    state = init_tokenizer_state(TOK_CFG, hp, loss_cfg, jax.random.key(0))
    images = jnp.asarray(images)
    metrics = []
    for _ in range(hp.steps):
        state, m = tokenizer_train_step(
            state, images, jax.random.key(2), cfg=TOK_CFG, hp=hp, loss_cfg=loss_cfg
        )
        metrics.append(jax.device_get(m))
    assert metrics[-1]["l1"] < metrics[0]["l1"]
    assert all(np.isfinite(m["loss"]) for m in metrics)
    ids = np.asarray(tokenize(state["params"], TOK_CFG, images[:4]))
    assert ids.shape == (4, TOK_CFG.grid_size**2) and ids.dtype == np.int32
    assert ids.min() >= 0 and ids.max() < TOK_CFG.codebook_size


def test_recipe_sizes_and_preset():
    from arvg_jax.families.par.family import PARFamily
    from arvg_jax.families.par.model import abstract_params
    from arvg_jax.tokenizers import llamagen_vq16

    r = TinyPARRecipe.default()
    preset = PARFamily().presets()["par-tiny"]
    assert (
        preset.packaged and preset.config() == r.model and preset.tokenizer_config() == r.tokenizer
    )
    assert (r.model.grid_size, r.model.ar_token_num, r.model.sub_num) == (8, 4, 2)
    assert r.tokenizer.image_size == r.tokenizer.image_size_eval == 32
    gpt = sum(x.size for x in jax.tree.leaves(abstract_params(r.model)))
    tok = jax.eval_shape(
        lambda k: llamagen_vq16.init_train_params(r.tokenizer, k), jax.random.key(0)
    )
    tok_n = sum(x.size for x in jax.tree.leaves(tok))
    assert gpt <= 2_000_000 and tok_n <= 1_100_000
    assert PARFamily().demo_sampling()["cfg_scale"] == 3.0
    with pytest.raises(ValueError):
        dataclasses.replace(r, image_size=16)


@pytest.mark.slow
def test_quick_recipe_assets_demo_and_compare(tmp_path, monkeypatch):
    from arvg_jax import assets, cli
    from arvg_jax.eval import compare as C
    from arvg_jax.families.par import train

    out = tmp_path / "par"
    argv = ["--quick", "--tok-steps", "3", "--gpt-steps", "20", "--gpt-max-s", "900"]
    assert train.main([*argv, "--num-gen", "24", "--out", str(out)]) == 0
    meta = json.loads((out / "recipe.json").read_text())
    assert meta["status"] == "complete" and (out / "samples.png").is_file()
    assert meta["stages"]["gpt"]["steps_done"] == meta["stages"]["gpt"]["steps_fitted"] == 20
    assert set(meta["metrics"]["generation"]["cfg3"]) >= {"classifier_accuracy", "fid_vs_real"}

    from arvg_jax.families.par.family import PARFamily

    cfg, _, tok_cfg, _, _ = assets.load_family_tiny(PARFamily(), out)
    assert cfg == TinyPARRecipe.quick().model and tok_cfg == TinyPARRecipe.quick().tokenizer

    real_family_dir = assets.family_dir
    monkeypatch.setattr(
        assets,
        "family_dir",
        lambda fam, root=None: out if fam == "par" else real_family_dir(fam, root),
    )
    demo = tmp_path / "demo"
    assert (
        cli.main(
            [
                "demo",
                "--model",
                "par-tiny",
                "--out",
                str(demo),
                "--per-class",
                "1",
                "--calib",
                "4",
                "--quiet",
            ]
        )
        == 0
    )
    assert (demo / "float_vs_quantized.png").is_file() and (demo / "report.md").is_file()

    settings = C.CompareSettings(
        methods=("ptq4arvg",),
        bits=("w8a8",),
        per_class=1,
        calib=8,
        num_real=100,
        noise_seed=None,
    )
    model, scorer, _ = C.tiny_setup(settings, "par-tiny")
    result = C.compare(model, scorer, settings)
    assert [r.name for r in result.rows] == [C.FLOAT, "PTQ4ARVG W8A8"]


def test_packaged_par_tiny_assets_match_their_configs():
    from flax import traverse_util

    from arvg_jax import assets
    from arvg_jax.families.par.family import PARFamily
    from arvg_jax.families.par.model import abstract_params
    from arvg_jax.tokenizers import llamagen_vq16

    try:
        cfg, params, tok_cfg, tok_params, meta = assets.load_family_tiny(PARFamily())
    except assets.AssetsMissingError as e:
        pytest.skip(str(e))
    assert meta["status"] == "complete"
    assert (cfg, tok_cfg) == (TinyPARRecipe.default().model, TinyPARRecipe.default().tokenizer)
    tok_abstract = jax.eval_shape(
        lambda k: llamagen_vq16.init_train_params(tok_cfg, k), jax.random.key(0)
    )
    for tree, want in ((params, abstract_params(cfg)), (tok_params, tok_abstract)):
        got = {k: v.shape for k, v in traverse_util.flatten_dict(tree, sep="/").items()}
        assert got == {k: v.shape for k, v in traverse_util.flatten_dict(want, sep="/").items()}
    root = assets.family_dir("par")
    assert sum((root / f).stat().st_size for f in assets.FAMILY_FILES) <= 20 * 2**20
