"""RAR on a tiny random config: cached decode vs teacher forcing, orders, schedule, sampler."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from arvg_jax.families.rar import RARConfig, SamplingSettings
from arvg_jax.families.rar.model import RAR, abstract_params, init_caches, position_rows, shuffle
from arvg_jax.families.rar.sampler import _generate_jit, generate, guidance_schedule
from arvg_jax.tokenizers.maskgit_vqgan import MaskGITVQGANConfig
from arvg_jax.tokenizers.maskgit_vqgan import abstract_params as vq_abs

LOGIT_TOL = 1e-5  # |Δ| <= 1e-5·max|ref|


def _max_rel(ours, ref) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


@functools.cache
def _random_params(cfg: RARConfig, seed: int = 0) -> dict:
    """Noise in every leaf (adaLN included, unlike the official zero init)."""
    flat = traverse_util.flatten_dict(abstract_params(cfg), sep="/")
    rng = np.random.default_rng(seed)
    out = {}
    for path, leaf in sorted(flat.items()):
        noise = rng.standard_normal(leaf.shape).astype(np.float32)
        if path.endswith("kernel"):
            out[path] = noise * np.float32(0.5 / np.sqrt(leaf.shape[0]))
        elif path.endswith("scale"):
            out[path] = 1 + 0.1 * noise
        else:
            out[path] = 0.3 * noise
    return traverse_util.unflatten_dict(out, sep="/")


def _tiny_inputs(cfg, batch=3, seed=1):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, cfg.codebook_size, (batch, cfg.image_seq_len)).astype(np.int32)
    labels = rng.integers(0, cfg.condition_num_classes, batch).astype(np.int32)
    orders = np.stack([rng.permutation(cfg.image_seq_len) for _ in range(batch)]).astype(np.int32)
    return tokens, labels, orders


@functools.partial(jax.jit, static_argnames=("cfg",))
def _teacher(params, tokens, condition, orders, *, cfg):
    return RAR(cfg).apply({"params": params}, tokens, condition, orders)


@functools.partial(jax.jit, static_argnames=("cfg",))
def _cached(params, tokens, condition, orders, *, cfg):
    """Feeds the teacher sequence one token at a time through the KV cache (traced offset)."""
    model = RAR(cfg)
    b = tokens.shape[0]
    slots = shuffle(tokens, orders)
    seq = jnp.concatenate([jnp.zeros((b, 1), jnp.int32), condition[:, None], slots], 1)

    def body(pos, carry):
        caches, out = carry
        ids = jax.lax.dynamic_slice_in_dim(seq, pos, 1, axis=1)
        logits, caches = model.apply(
            {"params": params},
            ids,
            condition,
            caches,
            offset=pos,
            orders=orders,
            method=RAR.decode,
        )
        return caches, out.at[:, pos].set(logits[:, 0])

    out = jnp.zeros((b, cfg.seq_len, cfg.codebook_size), jnp.float32)
    _, out = jax.lax.fori_loop(0, cfg.seq_len, body, (init_caches(cfg, b), out))
    return out[:, 1:]  # drop the cls output, as the teacher-forced forward does


def test_cached_decode_matches_teacher_forcing():
    """Raster and random orders; the cache offset is the fori_loop's traced index."""
    cfg = RARConfig.tiny()
    params = _random_params(cfg)
    tokens, labels, orders = _tiny_inputs(cfg)
    cond = cfg.condition_id(labels)
    raster = np.broadcast_to(np.arange(cfg.image_seq_len, dtype=np.int32), tokens.shape)
    for o in (raster, orders):
        full = _teacher(params, tokens, cond, o, cfg=cfg)
        assert full.shape == (3, cfg.image_seq_len + 1, cfg.codebook_size)
        assert _max_rel(_cached(params, tokens, cond, o, cfg=cfg), full) <= LOGIT_TOL


def test_position_rows_follow_the_order():
    n = 5
    orders = jnp.asarray([[3, 0, 4, 1, 2]], jnp.int32)
    positions = jnp.arange(n + 2, dtype=jnp.int32)
    pos_rows, ta_rows = position_rows(positions, orders, n)
    # cls, cond keep rows 0, 1; slot k gets 2 + o[k].
    np.testing.assert_array_equal(pos_rows[0], [0, 1, 5, 2, 6, 3, 4])
    # cls none, cond 2 + o[0], slot k 2 + o[k + 1], the last position none.
    np.testing.assert_array_equal(ta_rows[0], [-1, 5, 2, 6, 3, 4, -1])
    raster_pos, raster_ta = position_rows(positions, None, n)
    np.testing.assert_array_equal(raster_pos[0], np.arange(n + 2))
    np.testing.assert_array_equal(raster_ta[0], [-1, 2, 3, 4, 5, 6, -1])
    tokens = jnp.arange(10, 15)[None]
    np.testing.assert_array_equal(shuffle(tokens, orders), [[13, 10, 14, 11, 12]])


def test_guidance_schedule():
    g = guidance_schedule(16.0, 2.75, 256)
    assert g.dtype == np.float32 and g.shape == (256,)
    assert g[0] == 1.0 and g[1] == 1.0
    assert abs(g[128] - 1.803) < 1e-3 and abs(g[255] - 15.996) < 1e-3
    # pow 0: 0 ** 0 = 1, so a constant scale (the official expression's corner case).
    np.testing.assert_array_equal(guidance_schedule(8.0, 0.0, 7), np.full(7, 8.0, np.float32))


@pytest.mark.parametrize(
    ("name", "sizes"),
    [
        ("b", (16.0, 2.75, 1.0)),
        ("l", (15.5, 2.5, 1.02)),
        ("xl", (6.9, 1.5, 1.02)),
        ("xxl", (8.0, 1.2, 1.02)),
    ],
)
def test_sampling_defaults_per_size(name, sizes):
    st = getattr(SamplingSettings, name)()
    assert (st.guidance_scale, st.guidance_scale_pow, st.randomize_temperature) == sizes


def test_sampler_compiles_once_and_is_deterministic():
    """New guidance values, labels and keys reuse the compiled program; a key fixes the draw."""
    cfg = RARConfig.tiny()
    params = _random_params(cfg)
    labels = np.array([0, 6], np.int32)
    before = _generate_jit._cache_size()
    runs = [
        generate(params, cfg, labels, jax.random.key(3), settings=SamplingSettings.b()),
        generate(params, cfg, labels[::-1], jax.random.key(4), settings=SamplingSettings.xl()),
        generate(params, cfg, labels, jax.random.key(3), settings=SamplingSettings.b()),
    ]
    assert _generate_jit._cache_size() == before + 1
    tok = np.asarray(runs[0]["tokens"])
    assert tok.shape == (2, cfg.image_seq_len) and tok.min() >= 0 and tok.max() < cfg.codebook_size
    np.testing.assert_array_equal(runs[2]["tokens"], tok)


def test_greedy_sampler_matches_teacher_forcing():
    """Greedy tokens re-fed as the teacher input: every step's logits are the teacher logits."""
    cfg = RARConfig.tiny()
    params = _random_params(cfg)
    labels = np.array([2, 5, 6], np.int32)
    st = SamplingSettings(guidance_scale=0.0, randomize_temperature=1.0)
    gen = generate(params, cfg, labels, jax.random.key(0), settings=st, greedy=True, record_steps=4)
    cond = cfg.condition_id(labels)
    raster = np.broadcast_to(np.arange(cfg.image_seq_len, dtype=np.int32), (3, cfg.image_seq_len))
    full = _teacher(params, gen["tokens"], cond, raster, cfg=cfg)
    np.testing.assert_array_equal(gen["tokens"], np.argmax(full[:, :-1], -1))
    assert _max_rel(gen["logits_first"], full[:, :4]) <= LOGIT_TOL
    assert _max_rel(gen["cond_logits_first"], full[:, :4]) <= LOGIT_TOL


def test_bfloat16_generation_with_decode():
    """bfloat16 block matmuls and cache, tokenizer decode inside the same program."""
    cfg, vq_cfg = RARConfig.tiny(), MaskGITVQGANConfig.tiny()
    rng = np.random.default_rng(0)
    vq_params = jax.tree.map(
        lambda a: rng.standard_normal(a.shape).astype(np.float32) * 0.3, vq_abs(vq_cfg)
    )
    out = generate(
        _random_params(cfg),
        cfg,
        np.array([1, 4], np.int32),
        jax.random.key(0),
        vq_params=vq_params,
        vq_cfg=vq_cfg,
        dtype=jnp.bfloat16,
    )
    assert out["images"].shape == (2, vq_cfg.resolution, vq_cfg.resolution, 3)
    assert out["images"].dtype == jnp.float32
    assert float(out["images"].min()) >= 0 and float(out["images"].max()) <= 1
    tok = np.asarray(out["tokens"])
    assert tok.min() >= 0 and tok.max() < cfg.codebook_size
