"""Tiny-model training: quantizer parity with inference, loss decrease, FID formula, assets."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from arvg_jax import assets
from arvg_jax.eval import (
    ClassifierConfig,
    classify,
    feature_fid,
    frechet_distance,
    gaussian_stats,
    init_classifier,
)
from arvg_jax.families.var.model import VAR, VARConfig
from arvg_jax.families.var.train import (
    StageHParams,
    VQLossConfig,
    decode_unclamped,
    init_var_state,
    init_vqvae_state,
    quantize_multiscale,
    tokenize,
    var_eval_loss,
    var_train_step,
    vqvae_loss,
    vqvae_train_step,
)
from arvg_jax.tokenizers import var_vqvae
from arvg_jax.tokenizers.var_vqvae import VQVAEConfig

# Distinct small dims: V 37, Cv 7, 4-px images -> 4x4 latent (one level, no downsampling),
# scales (1, 2, 4), 12 classes. ch 32 is the least width the 32-group GroupNorm allows.
VAE_CFG = VQVAEConfig(
    vocab_size=37, z_channels=7, ch=32, ch_mult=(1,), num_res_blocks=1, patch_nums=(1, 2, 4)
)
VAR_CFG = VARConfig.tiny(vocab_size=37, cvae=7, num_classes=12, patch_nums=(1, 2, 4))


def _images(n, seed=0):
    from arvg_jax.data import shapes

    return shapes.make_dataset(n, seed=seed, size=VAE_CFG.image_size)


def _random_vae_params(seed):
    params = var_vqvae.init_params(VAE_CFG, jax.random.key(seed))
    # A codebook at the latent's scale so many codes are hit.
    params["quantize"]["embedding"] = jax.random.normal(jax.random.key(seed + 1), (37, 7))
    return params


@jax.jit
def _train_and_inference_paths(params, x):
    f = var_vqvae.encode(params, VAE_CFG, x)
    train = quantize_multiscale(params["quantize"], VAE_CFG, f, 0.25)
    idx_inf, f_hat = var_vqvae.latent_to_idx(params, VAE_CFG, f)
    img_train = decode_unclamped(params, VAE_CFG, f_hat)
    img_inf = var_vqvae.fhat_to_img(params, VAE_CFG, f_hat)
    return train, idx_inf, f_hat, img_train, img_inf


@pytest.mark.slow  # training recipe (~30 s)
def test_training_quantizer_matches_inference_tokens():
    params = _random_vae_params(3)
    x, _ = _images(5)
    (f_st, vq_loss, idx_train, z), idx_inf, f_hat, img_train, img_inf = _train_and_inference_paths(
        params, jnp.asarray(x)
    )
    for a, b in zip(idx_train, idx_inf, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert len({int(i) for a in idx_inf for i in np.asarray(a).ravel()}) > 3
    np.testing.assert_allclose(np.asarray(f_st), np.asarray(f_hat), atol=1e-5)
    assert z.shape == (5 * (1 + 4 + 16), 7) and float(vq_loss) > 0
    # The training decoder is the inference decoder without the clamp.
    np.testing.assert_allclose(np.clip(img_train, -1, 1), img_inf, atol=1e-5)
    np.testing.assert_array_equal(
        np.asarray(tokenize(params, VAE_CFG, jnp.asarray(x))),
        np.concatenate([np.asarray(a) for a in idx_inf], axis=1),
    )


@pytest.mark.slow  # training-recipe check (~30 s); the shipped assets are the real test
def test_tokenizer_steps_reduce_loss():
    x, _ = _images(8)
    x = jnp.asarray(x)
    hp = StageHParams(steps=12, batch=8, lr=3e-3)
    lcfg = VQLossConfig(restart_every=4)
    state = init_vqvae_state(VAE_CFG, hp, lcfg, jax.random.key(0))
    loss_fn = jax.jit(lambda p: vqvae_loss(p, VAE_CFG, x, lcfg)[0])
    before = float(loss_fn(state["params"]))
    key = jax.random.key(1)
    for _ in range(hp.steps):
        state, metrics = vqvae_train_step(state, x, key, cfg=VAE_CFG, hp=hp, loss_cfg=lcfg)
    after = float(loss_fn(state["params"]))
    assert int(state["step"]) == hp.steps
    assert np.isfinite(after) and after < 0.8 * before, (before, after)
    # Dead-code re-seeding ran (most of the 37 codes start unused on 8 images).
    assert int(metrics["used"]) >= 1


@pytest.mark.slow  # training-recipe check (~40 s)
def test_var_steps_reduce_loss():
    vae_params = _random_vae_params(5)
    x, y = _images(12)
    tokens = tokenize(vae_params, VAE_CFG, jnp.asarray(x))
    labels = jnp.asarray(y)
    hp = StageHParams(steps=15, batch=12, lr=3e-3, weight_decay=0.01)
    state = init_var_state(VAR_CFG, hp, jax.random.key(7))
    ev = lambda p: float(
        var_eval_loss(p, vae_params, tokens, labels, cfg=VAR_CFG, vae_cfg=VAE_CFG)["loss"]
    )
    before = ev(state["params"])
    # Near-uniform first logits (scaled head init): CE close to log V.
    assert abs(before - np.log(37)) < 0.1
    key = jax.random.key(8)
    for _ in range(hp.steps):
        state, metrics = var_train_step(
            state,
            tokens,
            labels,
            vae_params,
            key,
            cfg=VAR_CFG,
            vae_cfg=VAE_CFG,
            hp=hp,
            cond_drop=0.1,
        )
    after = ev(state["params"])
    assert np.isfinite(float(metrics["grad_norm"]))
    assert after < before - 0.3, (before, after)


def test_frechet_distance_matches_direct_formula():
    rng = np.random.default_rng(0)
    d = 5
    a, b = rng.normal(size=(d, d)), rng.normal(size=(d, d))
    s1, s2 = a @ a.T + 0.1 * np.eye(d), b @ b.T + 0.1 * np.eye(d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    # tr sqrt(S1 S2) = sum of square roots of the (real, positive) eigenvalues of S1 S2.
    eig = np.linalg.eigvals(s1 @ s2)
    direct = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.sum(np.sqrt(eig.real))
    np.testing.assert_allclose(frechet_distance(mu1, s1, mu2, s2), direct, rtol=1e-9)
    # Diagonal covariances: sum of (mu1 - mu2)^2 + (sigma1 - sigma2)^2 per dimension.
    v1, v2 = rng.uniform(0.5, 2, d), rng.uniform(0.5, 2, d)
    expect = np.sum((mu1 - mu2) ** 2 + (np.sqrt(v1) - np.sqrt(v2)) ** 2)
    np.testing.assert_allclose(
        frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)), expect, rtol=1e-9
    )
    # A singular covariance is fine and a set against itself is at distance 0.
    feats = rng.normal(size=(3, d))  # rank-2 covariance
    assert abs(feature_fid(feats, feats)) < 1e-6
    _, sig = gaussian_stats(feats)
    np.testing.assert_allclose(sig, np.cov(feats, rowvar=False))
    with pytest.raises(ValueError, match="shape mismatch"):
        frechet_distance(mu1, s1, mu2[:3], s2[:3, :3])


@pytest.mark.slow  # ~40 s; the packaged-assets tests load every family's files
def test_assets_round_trip(tmp_path):
    var_params = VAR(VAR_CFG).init(
        jax.random.key(0), jnp.zeros((1,), jnp.int32), jnp.zeros((1, 20, 7), jnp.float32)
    )["params"]
    vae_params = _random_vae_params(1)
    ccfg = ClassifierConfig(num_classes=12, widths=(16, 32), feature_dim=11)
    cls_params = init_classifier(ccfg, jax.random.key(2), image_size=4)
    assets.save_params(tmp_path / "var.npz", var_params)
    assets.save_params(tmp_path / "vae.npz", vae_params)
    n16 = assets.save_params(tmp_path / "classifier.npz", cls_params, dtype=np.float16)
    assert n16 > 0
    with pytest.raises(assets.AssetsMissingError, match="recipe.json"):
        assets.load_tiny(tmp_path)
    meta = {
        "var_config": assets.config_to_dict(VAR_CFG),
        "vae_config": assets.config_to_dict(VAE_CFG),
        "classifier_config": ccfg.to_dict(),
    }
    assets.write_json(tmp_path / "recipe.json", meta)
    assert not list(tmp_path.glob("*.tmp"))  # atomic writes leave no temp files
    var_cfg, var_p, vae_cfg, vae_p, cls_p, meta2 = assets.load_tiny(tmp_path)
    assert var_cfg == VAR_CFG and vae_cfg == VAE_CFG
    assert assets.tiny_classifier_config(meta2) == ccfg
    assert json.loads((tmp_path / "recipe.json").read_text()) == meta2
    for saved, loaded, exact in ((var_params, var_p, True), (vae_params, vae_p, True)):
        fs, fl = (traverse_util.flatten_dict(t, sep="/") for t in (saved, loaded))
        assert fs.keys() == fl.keys()
        for k in fs:
            assert fl[k].dtype == np.float32
            np.testing.assert_array_equal(np.asarray(fs[k]), fl[k], err_msg=k)
    fs, fl = (traverse_util.flatten_dict(t, sep="/") for t in (cls_params, cls_p))
    for k in fs:  # stored as float16: equal after the same rounding
        np.testing.assert_array_equal(
            np.asarray(fs[k]).astype(np.float16).astype(np.float32), fl[k]
        )
    # The loaded trees drive the models.
    logits, feats = classify(cls_p, ccfg, np.zeros((3, 4, 4, 3), np.float32))
    assert logits.shape == (3, 12) and feats.shape == (3, 11)
    out = VAR(var_cfg).apply(
        {"params": var_p}, jnp.zeros((2,), jnp.int32), jnp.zeros((2, 20, 7), jnp.float32)
    )
    assert out.shape == (2, 21, 37)
    (tmp_path / "var.npz").write_bytes(b"not a zip")
    with pytest.raises(assets.AssetsMissingError, match="var.npz"):
        assets.load_tiny(tmp_path)


def test_packaged_tiny_assets_match_their_configs():
    try:
        var_cfg, var_p, vae_cfg, vae_p, cls_p, meta = assets.load_tiny()
    except assets.AssetsMissingError as e:
        pytest.skip(str(e))
    assert meta["status"] == "complete"
    assert var_cfg.patch_nums == vae_cfg.patch_nums
    assert (var_cfg.vocab_size, var_cfg.cvae) == (vae_cfg.vocab_size, vae_cfg.z_channels)
    ccfg = assets.tiny_classifier_config(meta)
    abstract = {
        "var": jax.eval_shape(
            lambda: VAR(var_cfg).init(
                jax.random.key(0),
                jnp.zeros((1,), jnp.int32),
                jnp.zeros((1, var_cfg.seq_len - var_cfg.first_l, var_cfg.cvae)),
            )["params"]
        ),
        "vae": var_vqvae.abstract_params(vae_cfg),
        "cls": jax.eval_shape(
            lambda: init_classifier(ccfg, jax.random.key(0), meta["dataset"]["image_size"])
        ),
    }
    for name, tree in (("var", var_p), ("vae", vae_p), ("cls", cls_p)):
        want = {k: v.shape for k, v in traverse_util.flatten_dict(abstract[name], sep="/").items()}
        got = {k: v.shape for k, v in traverse_util.flatten_dict(tree, sep="/").items()}
        assert got == want, name
    sizes = sum((assets.TINY_DIR / f).stat().st_size for f in assets.TINY_FILES)
    assert sizes <= 20 * 2**20
    # The shipped classifier recognises fresh real images (a seed used by neither split).
    from arvg_jax.data import shapes

    x, y = shapes.make_dataset(48, seed=12345, size=meta["dataset"]["image_size"])
    logits, _ = classify(cls_p, ccfg, x)
    assert np.mean(logits.argmax(-1) == y) >= 0.9
