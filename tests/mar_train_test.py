"""Tiny MAR training: the diffusion loss matches the sampler's parametrisation, the losses fall,
the recipe writes assets that `--model mar-tiny` loads and `arvg demo` runs on."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arvg_jax import assets, families
from arvg_jax.families.mar import diffloss
from arvg_jax.families.mar.config import MARConfig
from arvg_jax.families.mar.train import (
    MARTinyRecipe,
    fold_token_scale,
    init_mar_state,
    mar_train_step,
    train_tiny,
)
from arvg_jax.families.mar.train._mar import loss_terms_from_output, p_mean_logvar, random_mask
from arvg_jax.tokenizers import kl16_vae
from arvg_jax.tokenizers.kl16_vae import KL16Config
from arvg_jax.train import StageHParams

# Distinct small dims: 5x5 tokens of D 3, widths 14 / 22 (heads 2), buffer 3, head 13 x 1.
CFG = MARConfig(
    img_size=20,
    vae_stride=4,
    encoder_embed_dim=14,
    encoder_depth=1,
    encoder_num_heads=2,
    decoder_embed_dim=22,
    decoder_depth=1,
    decoder_num_heads=2,
    vae_embed_dim=3,
    class_num=5,
    buffer_size=3,
    diffloss_d=1,
    diffloss_w=13,
    diffusion_batch_mul=2,
)


def test_training_mean_and_variance_are_the_samplers():
    """The loss's p(x_{t-1}|x_t) is the one `diffloss.p_sample_loop` samples from (full 1000-step
    schedule), and the VLB vanishes when the head predicts the true noise and posterior variance."""
    rng = np.random.default_rng(0)
    m, d = 7, 3
    t = jnp.asarray([1, 5, 100, 400, 777, 998, 999], jnp.int32)
    x0, x_t, noise, eps = (jnp.asarray(rng.standard_normal((m, d)), jnp.float32) for _ in range(4))
    v = jnp.asarray(rng.uniform(-1, 1, (m, d)), jnp.float32)
    mean, log_var = p_mean_logvar(x_t, t, eps, v)
    tab = diffloss._step_tables(diffloss.make_schedule(""))
    j = 999 - np.asarray(t)  # the sampler's tables run i = S-1 .. 0
    frac = (np.asarray(v) + 1) / 2
    want_lv = frac * tab["max_log"][j, None] + (1 - frac) * tab["min_log"][j, None]
    x0_hat = tab["recip"][j, None] * np.asarray(x_t) - tab["recipm1"][j, None] * np.asarray(eps)
    want_mean = tab["coef1"][j, None] * x0_hat + tab["coef2"][j, None] * np.asarray(x_t)
    np.testing.assert_allclose(log_var, want_lv, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(mean, want_mean, rtol=1e-5, atol=1e-5)

    # q_sample'd x_t with eps = noise and v = -1 (posterior variance): mse 0 and KL 0.
    ac = diffloss.make_schedule("").alphas_cumprod[np.asarray(t)][:, None]
    x_t = (np.sqrt(ac) * x0 + np.sqrt(1 - ac) * noise).astype(np.float32)
    terms = loss_terms_from_output(x0, x_t, t, noise, noise, -jnp.ones((m, d)))
    np.testing.assert_allclose(terms["mse"], 0, atol=1e-7)
    np.testing.assert_allclose(terms["vb"], 0, atol=2e-4)


def test_mask_ratio_follows_the_official_truncated_normal():
    masks, ratios = jax.vmap(lambda k: random_mask(k, 2, 64, 0.7))(
        jax.random.split(jax.random.key(0), 256)
    )
    ratios = np.asarray(ratios)
    assert ratios.min() >= 0.7 and ratios.max() <= 1.0
    counts = np.asarray(masks).sum(-1)  # [256, 2]: one ratio per batch, ceil(64 * ratio) each
    np.testing.assert_array_equal(counts[:, 0], np.ceil(64 * ratios))
    np.testing.assert_array_equal(counts[:, 0], counts[:, 1])


@pytest.mark.slow  # compiles the MAR train step (minutes on 2 loaded cores)
def test_mar_steps_reduce_loss():
    hp = StageHParams(steps=40, batch=8, lr=3e-3, warmup=2, b2=0.95)
    rng = np.random.default_rng(1)
    # Eight fixed token maps: their class decides them.
    means = jnp.asarray(rng.standard_normal((8, CFG.seq_len, 3)), jnp.float32)
    moments = (means, jnp.zeros_like(means))
    labels = jnp.arange(8, dtype=jnp.int32) % 5
    state = init_mar_state(CFG, hp, jax.random.key(0), ema=True)
    key = jax.random.key(3)
    losses = []
    for _ in range(hp.steps):
        state, m = mar_train_step(state, moments, labels, key, cfg=CFG, hp=hp, ema_decay=0.9)
        losses.append(float(m["mse"]))
    assert np.mean(losses[-8:]) < 0.8 * np.mean(losses[:4]), losses
    assert set(state) == {"params", "opt_state", "step", "ema"}


def test_folded_token_scale_decodes_latents():
    cfg = KL16Config(embed_dim=3, ch=32, ch_mult=(1, 1), num_res_blocks=1)
    params = jax.tree.map(
        lambda a: 0.3 * jax.random.normal(jax.random.key(a.size), a.shape),
        kl16_vae.abstract_params(cfg),
    )
    lat = jax.random.normal(jax.random.key(9), (1, 2, 2, 3))
    folded = fold_token_scale(params, 0.7)
    got = kl16_vae.decode(folded, (lat / 0.7) / 0.2325, cfg=cfg)  # tokens = latents / std
    np.testing.assert_allclose(got, kl16_vae.decode(params, lat, cfg=cfg), rtol=2e-4, atol=2e-4)


def _smoke_recipe() -> MARTinyRecipe:
    q = MARTinyRecipe.quick()
    return dataclasses.replace(
        q.with_steps(3, 3), num_train=48, num_eval=24, num_gen=12, gen_batch=12, log_every=1
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("mar_tiny")
    meta = train_tiny(_smoke_recipe(), out)
    return out, meta


@pytest.mark.slow  # compiles the VAE and MAR steps, the sampler and the classifier (~1-2 min)
def test_recipe_writes_loadable_assets(trained, monkeypatch):
    out, meta = trained
    assert meta["status"] == "complete"
    assert {"latent_std", "mar_eval_loss", "generation"} <= set(meta["metrics"])
    assert (out / "samples.png").is_file()
    fam = families.get("mar")
    cfg, params, tok_cfg, _, _ = assets.load_family_tiny(fam, out)
    assert set(params) == {"transformer", "diffloss"}
    assert cfg == _smoke_recipe().mar and tok_cfg == _smoke_recipe().vae
    monkeypatch.setattr(assets, "family_dir", lambda name, root=None: out)
    from arvg_jax.models import packaged_model

    model = packaged_model("mar-tiny")
    imgs = model.generate(0, [1, 2], **fam.demo_sampling())["images"]
    assert imgs.shape == (2, 32, 32, 3) and np.isfinite(imgs).all()


@pytest.mark.slow  # the demo: calibration, three quantized models, generation (minutes)
def test_demo_runs_on_the_trained_assets(trained, monkeypatch, tmp_path):
    from arvg_jax import cli

    out, _ = trained
    monkeypatch.setattr(assets, "family_dir", lambda name, root=None: out)
    argv = ["demo", "--model", "mar-tiny", "--out", str(tmp_path / "d"), "--per-class", "1"]
    assert cli.main([*argv, "--calib", "4", "--quiet"]) == 0
    assert (tmp_path / "d" / "float_vs_quantized.png").is_file()
