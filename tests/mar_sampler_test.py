"""MAR model and sampler on a prime-sized random config (no fixture): fixed-shape masking, jit."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arvg_jax.families.mar import sampler
from arvg_jax.families.mar.config import MARConfig
from arvg_jax.families.mar.model import MAR, abstract_params

# Prime sizes so shapes cannot be confused: L = 25 tokens of 5 channels, width 28 (7 per head).
PRIME = MARConfig(
    img_size=80,
    vae_stride=16,
    encoder_embed_dim=28,
    encoder_depth=1,
    encoder_num_heads=4,
    decoder_embed_dim=20,
    decoder_depth=2,
    decoder_num_heads=2,
    norm_eps=1e-6,
    vae_embed_dim=5,
    class_num=11,
    buffer_size=3,
    diffloss_d=1,
    diffloss_w=13,
    num_sampling_steps="5",
)


def _random_params(cfg: MARConfig, seed: int = 0) -> dict:
    # Every leaf random (the official init zeroes adaLN and LN affines, hiding paths); numpy
    # draws, since compiling ~100 threefry samplers costs far more than the tests themselves.
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda x: jnp.asarray(0.3 * rng.standard_normal(x.shape), jnp.float32), abstract_params(cfg)
    )


def test_unknown_token_values_do_not_matter():
    cfg = PRIME
    params = _random_params(cfg)["transformer"]
    rng = np.random.default_rng(0)
    b, l, d = 3, cfg.seq_len, cfg.token_embed_dim
    tokens = rng.normal(size=(b, l, d)).astype(np.float32)
    mask = (rng.random((b, l)) < 0.6).astype(np.float32)
    other = np.where(mask[..., None] > 0, 1e3 * rng.normal(size=tokens.shape), tokens)
    labels, drop = np.array([1, 4, 10]), np.array([False, True, False])
    fwd = jax.jit(MAR(cfg).apply)
    z1 = fwd({"params": params}, tokens, mask, labels, drop)
    z2 = fwd({"params": params}, other.astype(np.float32), mask, labels, drop)
    np.testing.assert_array_equal(np.asarray(z1), np.asarray(z2))


def test_key_masking_equals_gathering():
    # The official encoder drops the unknown rows (a per-sample gather); ours masks them as keys.
    cfg = PRIME
    params = _random_params(cfg, 1)["transformer"]
    rng = np.random.default_rng(1)
    l, d, nb, c = cfg.seq_len, cfg.token_embed_dim, cfg.buffer_size, cfg.encoder_embed_dim
    tokens = rng.normal(size=(1, l, d)).astype(np.float32)
    mask = np.zeros((1, l), np.float32)
    mask[0, rng.permutation(l)[:14]] = 1
    keep = np.concatenate([np.ones(nb, bool), mask[0] == 0])
    labels, drop = np.array([7]), np.array([False])

    @jax.jit
    def both(p):
        m = MAR(cfg).bind({"params": p})
        cvec = m.class_vectors(labels, drop)
        ours = m.encode(tokens, mask, cvec)
        # Gathered form, step by step as mar.py forward_mae_encoder.
        x = jnp.concatenate([jnp.broadcast_to(cvec[:, None], (1, nb, c)), m.z_proj(tokens)], 1)
        x = m.z_proj_ln(x + m.encoder_pos_embed_learned[None])[:, keep]
        for block in m.encoder_blocks:
            x = block(x, None, np.arange(x.shape[1]))
        return ours[:, keep], m.encoder_norm(x)

    ours, gathered = both(params)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(gathered), rtol=1e-5, atol=1e-6)


def _check_record(tokens, rec, cfg):
    assert tokens.shape == (2, cfg.seq_len, cfg.token_embed_dim)
    assert bool(jnp.all(jnp.isfinite(tokens)))
    pred = np.asarray(rec["pred_mask"])
    np.testing.assert_array_equal(pred.sum(0), np.ones((2, cfg.seq_len)))  # each token once
    np.testing.assert_array_equal(np.asarray(rec["mask"])[0], True)  # all unknown at the start
    # Tokens are zero until sampled, then fixed.
    toks = np.asarray(rec["tokens"])
    sampled = np.cumsum(pred, 0) > 0
    assert np.all(toks[~sampled] == 0)
    np.testing.assert_array_equal(toks[-1], np.asarray(tokens))


def test_conditional_cfg_sampler_with_prng():
    cfg = PRIME
    params = _random_params(cfg, 2)
    kw = {"cfg": cfg, "num_iter": 4, "cfg_scale": 3.0, "record": True}
    tokens, rec = sampler.sample_tokens(params, jnp.array([3, 5]), jax.random.key(0), **kw)
    _check_record(tokens, rec, cfg)
    # Linear schedule; the last step's mask_len is clamped to 1.
    l = cfg.seq_len
    assert np.asarray(rec["cfg_iter"])[-1] == np.float32(1 + np.float32(2.0) * (l - 1) / l)
    # New labels, keys, CFG scale and temperature reuse the compiled sampler.
    before = sampler._sample._cache_size()
    kw["cfg_scale"] = 2.5
    again, _ = sampler.sample_tokens(
        params, jnp.array([1, 2]), jax.random.key(9), temperature=0.5, **kw
    )
    assert sampler._sample._cache_size() == before
    assert not np.array_equal(np.asarray(again), np.asarray(tokens))


def test_unconditional_constant_cfg_sampler_with_prng():
    # labels None: both halves use fake_latent (official `labels is None` branch).
    cfg = dataclasses.replace(PRIME, decoder_depth=1)
    params = _random_params(cfg, 3)
    tokens, rec = sampler.sample_tokens(
        params,
        None,
        jax.random.key(1),
        cfg=cfg,
        batch=2,
        num_iter=3,
        cfg_scale=2.0,
        cfg_schedule="constant",
        temperature=0.9,
        record=True,
    )
    _check_record(tokens, rec, cfg)
    np.testing.assert_array_equal(np.asarray(rec["cfg_iter"]), np.float32(2.0))


def test_unpatchify_layout():
    cfg = PRIME
    tokens = jnp.arange(2 * cfg.seq_len * 5, dtype=jnp.float32).reshape(2, cfg.seq_len, 5)
    lat = np.asarray(sampler.unpatchify(tokens, cfg))  # latents[b, c, h, w] = tokens[b, 5h + w, c]
    assert lat.shape == (2, 5, 5, 5)
    assert lat[1, 3, 2, 4] == tokens[1, 5 * 2 + 4, 3]


@pytest.mark.parametrize("name", ["base", "large", "huge"])
def test_release_presets_trace(name):
    # The whole sampler traces at release sizes (head dim 64 / 64 / 80), nothing allocated.
    cfg = getattr(MARConfig, name)()
    out = jax.eval_shape(
        lambda p, labels, key: sampler.sample_tokens(
            p, labels, key, cfg=cfg, num_iter=64, cfg_scale=2.9
        )[0],
        abstract_params(cfg),
        jax.ShapeDtypeStruct((3,), jnp.int32),
        jax.random.key(0),
    )
    assert out.shape == (3, 256, 16) and out.dtype == jnp.float32
