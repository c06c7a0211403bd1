"""VAR sampler: greedy CFG generation vs the official run, self-consistency, no retrace."""

import functools
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from arvg_jax import sampling
from arvg_jax.families.var import sampler as var_sampler
from arvg_jax.families.var.model import VAR, VARConfig
from arvg_jax.options import ExecOptions
from arvg_jax.tokenizers import var_vqvae
from converters.torch_reader import load_state_dict
from converters.var import abstract_params, convert_var
from converters.var_vae import convert_vae, vae_config_from_fixture

NEAR_TIE = 1e-3  # reference/README.md: a differing token needs a reference top-2 margin below it


@functools.cache
def _reference_models(var_dir: str):
    with open(f"{var_dir}/config.json") as f:
        official = json.load(f)
    cfg, vae_cfg = VARConfig.from_official(official), vae_config_from_fixture(official)
    params = convert_var(load_state_dict(f"{var_dir}/var.pth"), cfg)
    vae_params = convert_vae(load_state_dict(f"{var_dir}/vae.pth"), vae_cfg)
    return cfg, vae_cfg, params, vae_params


def _noise_tree(abstract: dict, seed: int) -> dict:
    """Random leaves: kernels ~ 0.5/sqrt(fan_in), norm scales 1 ± 0.1, the rest 0.3·N(0, 1)."""
    rng = np.random.default_rng(seed)
    out = {}
    for path, leaf in sorted(traverse_util.flatten_dict(abstract, sep="/").items()):
        noise = rng.standard_normal(leaf.shape).astype(np.float32)
        if path.endswith("kernel"):
            out[path] = noise * np.float32(0.5 / np.sqrt(np.prod(leaf.shape[:-1])))
        elif path.endswith("scale"):
            out[path] = 1 + 0.1 * noise
        elif path.endswith("scale_mul"):
            out[path] = np.log(8.0, dtype=np.float32) + 0.3 * noise
        else:
            out[path] = 0.3 * noise
    return traverse_util.unflatten_dict(out, sep="/")


@functools.cache
def _tiny_models():
    cfg = VARConfig.tiny()
    vae_cfg = var_vqvae.VQVAEConfig(
        vocab_size=cfg.vocab_size,
        z_channels=cfg.cvae,
        ch=32,
        ch_mult=(1,),
        num_res_blocks=1,
        patch_nums=cfg.patch_nums,
    )
    params = _noise_tree(abstract_params(cfg), 0)
    vae_params = _noise_tree(var_vqvae.abstract_params(vae_cfg), 1)
    return cfg, vae_cfg, params, vae_params


def _check_tokens_until_near_tie(tokens, ref_tokens, ref_margin) -> list[bool]:
    """Asserts tokens equal the reference up to its first near-tie; returns per-sample equality."""
    tokens, full_match = np.asarray(tokens), []
    for b in range(ref_tokens.shape[0]):
        diff = np.nonzero(tokens[b] != ref_tokens[b])[0]
        ties = np.nonzero(ref_margin[b] < NEAR_TIE)[0]
        if diff.size:
            assert ties.size and diff[0] >= ties[0], (b, diff[0], ref_margin[b, diff[0]])
        full_match.append(diff.size == 0)
    return full_match


@pytest.mark.parametrize("cfg_scale", [1.5, 0.0], ids=["cfg1p5", "cfg0p0"])
def test_greedy_generation_matches_reference(reference, cfg_scale):
    cfg, vae_cfg, params, vae_params = _reference_models(str(reference("var")))
    io = np.load(reference("var", "io.npz"))
    prefix = "gen_cfg1p5" if cfg_scale == 1.5 else "gen_cfg0p0"
    out = var_sampler.generate(
        params,
        vae_params,
        cfg,
        vae_cfg,
        io[f"{prefix}_labels"],
        jax.random.key(0),
        cfg=cfg_scale,
        top_k=1,  # the reference run: top_k=1, top_p=0 (greedy)
        top_p=0.0,
        greedy=True,
        return_logits_margin=True,
    )
    ref_tokens, ref_margin = io[f"{prefix}_idx"], io[f"{prefix}_top2_margin"]
    assert out["tokens"].dtype == jnp.int32 and out["tokens"].shape == ref_tokens.shape
    full_match = _check_tokens_until_near_tie(out["tokens"], ref_tokens, ref_margin)
    assert any(full_match)  # the fixture's samples match in full at float32
    margin = np.asarray(out["top2_margin"])
    ref_img = io[f"{prefix}_img"].transpose(0, 2, 3, 1)  # NCHW -> NHWC
    assert out["images"].shape == ref_img.shape
    for b in np.nonzero(full_match)[0]:
        np.testing.assert_allclose(margin[b], ref_margin[b], rtol=0, atol=1e-4)
        assert np.abs(np.asarray(out["images"][b]) - ref_img[b]).max() <= 1e-4


@pytest.mark.slow  # ~15 s; the greedy reference test pins the same tokens
def test_greedy_tokens_are_the_teacher_forced_cfg_argmax():
    cfg, vae_cfg, params, vae_params = _tiny_models()
    labels, cfg_scale = np.array([3, 7, 10], np.int32), 2.0
    out = var_sampler.generate(
        params,
        vae_params,
        cfg,
        vae_cfg,
        labels,
        jax.random.key(0),
        cfg=cfg_scale,
        top_k=0,
        top_p=0.0,
        greedy=True,
        return_logits_margin=True,
    )
    tokens = np.asarray(out["tokens"])

    @jax.jit
    def teacher_forced(params, vae_params, tokens):
        """CFG-mixed logits of the full (uncached) forward on the generated tokens, and the image."""
        idx_list = var_vqvae.split_idx(vae_cfg, tokens)
        x_in = var_vqvae.idx_to_var_input(vae_params, vae_cfg, idx_list)
        both = jnp.concatenate([labels, jnp.full_like(labels, cfg.num_classes)])
        logits = VAR(cfg).apply({"params": params}, both, jnp.concatenate([x_in, x_in]))
        weights = var_sampler.cfg_schedule(cfg_scale, cfg.num_scales)[cfg.levels]  # [L, 2]
        mixed = sampling.cfg_mix(logits[:3], logits[3:], weights[:, 1:], one_plus_t=weights[:, :1])
        return mixed, var_vqvae.idx_to_img(vae_params, vae_cfg, idx_list)

    mixed, img = teacher_forced(params, vae_params, tokens)
    np.testing.assert_allclose(out["top2_margin"], sampling.top2_margin(mixed), atol=1e-5)
    assert np.asarray(out["top2_margin"]).min() > 1e-4  # no near-tie that could flip an argmax
    np.testing.assert_array_equal(tokens, np.argmax(np.asarray(mixed), -1))
    np.testing.assert_allclose(out["images"], (img + 1) * 0.5, rtol=0, atol=1e-6)


def test_sampling_is_keyed_and_does_not_retrace(monkeypatch):
    cfg, vae_cfg, params, vae_params = _tiny_models()
    traced = jax.jit(
        chex.assert_max_traces(var_sampler._generate_impl, n=1),
        static_argnames=var_sampler.STATIC_ARGNAMES,
    )
    monkeypatch.setattr(var_sampler, "_generate_jit", traced)
    run = functools.partial(
        var_sampler.generate, params, vae_params, cfg, vae_cfg, top_k=20, top_p=0.9
    )
    a = run(np.array([1, 2, 3, 4]), jax.random.key(0), cfg=1.5)
    b = run(np.array([1, 2, 3, 4]), jax.random.key(0), cfg=1.5)
    c = run(np.array([5, 6, 7, 8]), jax.random.key(1), cfg=3.0)  # same shapes: no retrace
    np.testing.assert_array_equal(a["tokens"], b["tokens"])
    assert (np.asarray(a["tokens"]) != np.asarray(c["tokens"])).any()
    assert a["images"].shape == (4, 3, 3, 3)
    assert "top2_margin" not in a


@pytest.mark.slow  # ~35 s; sample_command_test checks batch-independent images
def test_images_depend_on_their_key_only():
    """Image i draws with image_keys(seed, i): batch size and batch position change nothing."""
    from arvg_jax.families import image_keys

    cfg, vae_cfg, params, vae_params = _tiny_models()
    labels = np.array([1, 2, 3, 4, 5], np.int32)
    run = functools.partial(
        var_sampler.generate, params, vae_params, cfg, vae_cfg, top_k=20, top_p=0.9, cfg=1.5
    )
    whole = np.asarray(run(labels, image_keys(11, 0, 5))["tokens"])
    parts = [np.asarray(run(labels[i : i + 2], image_keys(11, i, 2))["tokens"]) for i in (0, 2)]
    last = np.asarray(run(labels[4:], image_keys(11, 4, 1))["tokens"])
    np.testing.assert_array_equal(whole, np.concatenate([*parts, last]))
    # One key stands for images 0..B-1 of that key.
    np.testing.assert_array_equal(whole, np.asarray(run(labels, jax.random.PRNGKey(11))["tokens"]))


def test_bfloat16_generation():
    cfg, vae_cfg, params, vae_params = _tiny_models()
    out = var_sampler.generate(
        params,
        vae_params,
        cfg,
        vae_cfg,
        np.array([0, 9]),
        jax.random.key(3),
        greedy=True,
        options=ExecOptions(dtype="bfloat16"),
        return_logits_margin=True,
    )
    tokens = np.asarray(out["tokens"])
    assert tokens.dtype == np.int32 and tokens.shape == (2, cfg.seq_len)
    assert tokens.min() >= 0 and tokens.max() < cfg.vocab_size
    assert out["images"].dtype == jnp.float32 and out["top2_margin"].dtype == jnp.float32
    img = np.asarray(out["images"])
    assert np.isfinite(img).all() and img.min() >= 0 and img.max() <= 1
    # Params are untouched float32; the compute dtype is an execution option, not a config field.
    assert jax.tree.leaves(params)[0].dtype == np.float32 and not hasattr(cfg, "dtype")


def test_mismatched_vqvae_is_refused():
    _, vae_cfg, params, vae_params = _tiny_models()
    with pytest.raises(ValueError, match="patch_nums differ"):
        var_sampler.generate(
            params,
            vae_params,
            VARConfig.tiny(patch_nums=(1, 2, 4)),
            vae_cfg,
            np.array([0]),
            jax.random.key(0),
        )
