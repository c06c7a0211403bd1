"""PAR sampler on tiny random models (4x and 16x): cached generation = teacher forcing, CFG,
cfg_interval, layout at 16x, the HF top-k / top-p filter."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _par_tiny import cfg as _cfg
from _par_tiny import params as _params
from _par_tiny import tf_logits as _tf_logits

from arvg_jax.families.par import layout, sampler
from arvg_jax.families.par.config import PARConfig


def _cfg_on_per_token(cfg: PARConfig, cfg_interval: float) -> np.ndarray:
    """generate.py's cfg_flag for each PAR token (prefill always on)."""
    a, n = cfg.ar_token_num, cfg.block_size
    on = np.ones(n, bool)
    if cfg_interval > -1:
        for j in range(1, a):  # decode_n_tokens: i = j - 1
            on[j] = not (j - 1 > cfg_interval)
        for m in range((n - a) // a):  # decode_n_tokens_multi: i = m * a
            on[a * (m + 1) : a * (m + 2)] = not (m * a > cfg_interval)
    return on


@pytest.mark.parametrize(
    "name,cfg_scale,cfg_interval",
    [("4x", 1.0, -1), ("4x", 2.5, 2), ("16x", 2.5, 17)],
    ids=["4x-nocfg", "4x-cfg-interval2", "16x-cfg-interval17"],
)
def test_cached_greedy_equals_teacher_forced_argmax(name, cfg_scale, cfg_interval):
    cfg = _cfg(name)
    labels = np.array([3, 10, 0], np.int32)
    out = sampler.generate(
        _params(name),
        labels,
        jax.random.key(0),
        cfg=cfg,
        cfg_scale=cfg_scale,
        cfg_interval=cfg_interval,
        greedy=True,
        return_margin=True,
        return_first_logits=True,
    )
    tokens = np.asarray(out["tokens"])
    assert tokens.shape == (3, cfg.block_size) and tokens.dtype == np.int32
    mixed = _tf_logits(name, labels, tokens)
    if cfg_scale > 1.0:
        uncond = _tf_logits(name, np.full_like(labels, cfg.num_classes), tokens)
        on = _cfg_on_per_token(cfg, cfg_interval)[None, :, None]
        mixed = np.where(on, uncond + (mixed - uncond) * np.float32(cfg_scale), mixed)
    a = cfg.ar_token_num
    np.testing.assert_allclose(out["logits_first"], mixed[:, : 2 * a], rtol=0, atol=1e-4)
    top2 = np.sort(mixed, axis=-1)[..., -2:]
    np.testing.assert_allclose(out["top2_margin"], top2[..., 1] - top2[..., 0], atol=1e-4)
    clear = out["top2_margin"] > 1e-3  # no near-tie that could flip an argmax
    assert clear.mean() > 0.9
    np.testing.assert_array_equal(tokens[clear], mixed.argmax(-1)[clear])


def test_layout_16x():
    cfg = _cfg("16x")
    idx = layout.par_index_to_raster(cfg)
    # The first group: local cell (0, 0) of each of the 4 x 4 regions of side 2.
    np.testing.assert_array_equal(idx[:16], [r * 2 * 8 + c * 2 for r in range(4) for c in range(4)])
    tokens = np.arange(64)[None] + 100
    raster = np.asarray(layout.par_to_raster(tokens, cfg))
    np.testing.assert_array_equal(raster[0, idx], tokens[0])
    mask = layout.group_mask(cfg, cfg.seq_len)
    assert mask[16:32, :32].all() and not mask[16:32, 32:].any() and not mask[15, 16:].any()
    rope = layout.rope_table(cfg)
    assert not rope[0].any() and not rope[17:32].any() and rope[16].any()
    pos, step = layout.pass_schedule(cfg)
    assert pos.shape == (16 + 3, 16) and (pos[16] == np.arange(16, 32)).all()
    assert step[-1] == cfg.num_passes - 1


def test_hf_filter_matches_numpy():
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((5, 37)).astype(np.float32) * 3
    logits[0, 3] = logits[0, 5]  # a tie
    for top_k, top_p in [(0, 0.7), (5, 1.0), (5, 0.5), (40, 0.95), (0, 1e-6)]:
        got = np.asarray(sampler.top_k_top_p_filter(jnp.asarray(logits), top_k, top_p))
        want = logits.copy()
        if top_k > 0:
            kth = np.sort(want, -1)[:, -min(top_k, 37)][:, None]
            want[want < kth] = -np.inf
        if top_p < 1.0:
            for row in want:
                order = np.argsort(-row, kind="stable")
                p = np.exp(row[order] - row[order][0])
                cum = np.cumsum(p / p.sum())
                remove = np.concatenate([[False], cum[:-1] > top_p])
                row[order[remove]] = -np.inf
        np.testing.assert_array_equal(got, want, err_msg=f"top_k={top_k} top_p={top_p}")
