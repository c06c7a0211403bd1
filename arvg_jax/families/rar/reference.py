"""Recomputes every output array of the RAR reference fixture (`reference/rar/io.npz`).

The fixture was made by the official bytedance/1d-tokenizer code on the CPU in float32 with greedy
sampling (torch.multinomial patched to argmax). Here the fixture's checkpoints are converted with
`converters` (no torch) and the port runs on the CPU in float32; inputs are passed through and
every other array is computed, never copied.
"""

from __future__ import annotations

import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from arvg_jax.families.rar.config import RARConfig, SamplingSettings
from arvg_jax.families.rar.model import RAR, raster_orders, shuffle
from arvg_jax.families.rar.sampler import generate, guidance_schedule
from arvg_jax.tokenizers import maskgit_vqgan
from converters.maskgit_vqgan import convert_maskgit_vqgan
from converters.rar import convert_rar
from converters.torch_reader import load_state_dict

# The fixture records the sampler input / raw logits of steps 0-7 (`*_logits_first`).
RECORD_STEPS = 8


@functools.partial(jax.jit, static_argnames=("cfg",))
def _teacher_forced(params, tokens, condition, orders, *, cfg):
    return RAR(cfg).apply({"params": params}, tokens, condition, orders)


@functools.partial(jax.jit, static_argnames=("cfg",))
def _decode(params, tokens, *, cfg):
    """Unclamped images, float32 NCHW (the fixture's layout)."""
    img = maskgit_vqgan.decode_tokens(params, cfg, tokens, clamp=False)
    return jnp.transpose(img, (0, 3, 1, 2))


def load_fixture_models(fixture_dir: pathlib.Path):
    """(rar_cfg, rar_params, settings, vq_cfg, vq_params) from a fixture directory."""
    config = json.loads((fixture_dir / "config.json").read_text())
    cfg = RARConfig.from_json(config)
    settings = SamplingSettings.from_json(config)
    vq_cfg = maskgit_vqgan.MaskGITVQGANConfig.from_official(
        config["tokenizer"], config.get("tokenizer_codebook")
    )
    params = convert_rar(load_state_dict(fixture_dir / "rar.pth"), cfg)
    vq_params = convert_maskgit_vqgan(load_state_dict(fixture_dir / "maskgit_vqgan.pth"), vq_cfg)
    return cfg, params, settings, vq_cfg, vq_params


def run_reference(fixture_dir: pathlib.Path) -> dict[str, np.ndarray]:
    """Every array of the fixture's io.npz (inputs passed through, outputs computed).

    Args:
        fixture_dir: a directory laid out like `reference/rar/` (config.json, rar.pth,
            maskgit_vqgan.pth, inputs.json, io.npz holding at least the inputs).

    Returns:
        name -> array with the fixture's names, shapes and dtypes.
    """
    fixture_dir = pathlib.Path(fixture_dir)
    names = json.loads((fixture_dir / "inputs.json").read_text())
    data = np.load(fixture_dir / "io.npz")
    inputs = {k: data[k] for k in names}
    cfg, params, settings, vq_cfg, vq_params = load_fixture_models(fixture_dir)
    out: dict[str, np.ndarray] = dict(inputs)
    i64 = np.int64

    # Teacher forcing: RAR.forward (raster at random_ratio 0) and forward_fn with orders.
    labels = jnp.asarray(inputs["tf_labels"], jnp.int32)
    condition = cfg.condition_id(labels)  # preprocess_condition
    tokens = jnp.asarray(inputs["tf_tokens"], jnp.int32)
    orders = jnp.asarray(inputs["tf_orders"], jnp.int32)
    raster = jnp.asarray(raster_orders(tokens.shape[0], cfg.image_seq_len))
    out["tf_condition"] = np.asarray(condition, i64)
    out["tf_logits"] = np.asarray(_teacher_forced(params, tokens, condition, raster, cfg=cfg))
    out["tf_orders_logits"] = np.asarray(
        _teacher_forced(params, tokens, condition, orders, cfg=cfg)
    )
    out["tf_orders_targets"] = np.asarray(shuffle(tokens, orders), i64)

    # Generation (greedy), with and without CFG; decoded together with the fixed-grid tokens.
    runs = {
        "gen_cfg": settings,
        "gen_nocfg": SamplingSettings(
            guidance_scale=0.0,
            guidance_scale_pow=settings.guidance_scale_pow,
            randomize_temperature=settings.randomize_temperature,
        ),
    }
    to_decode = [jnp.asarray(inputs["dec_tokens"], jnp.int32)]
    for prefix, st in runs.items():
        gen = generate(
            params,
            cfg,
            inputs[f"{prefix}_labels"],
            jax.random.key(0),  # unused: greedy
            settings=st,
            greedy=True,
            record_steps=RECORD_STEPS,
        )
        gen = jax.tree.map(np.asarray, gen)
        out[f"{prefix}_tokens"] = gen["tokens"].astype(i64)
        out[f"{prefix}_top2_margin"] = gen["top2_margin"]
        out[f"{prefix}_logits_first"] = gen["logits_first"]
        if st.guidance_scale != 0:
            out[f"{prefix}_cond_logits_first"] = gen["cond_logits_first"]
            out[f"{prefix}_uncond_logits_first"] = gen["uncond_logits_first"]
            out[f"{prefix}_scale_per_step"] = guidance_schedule(
                st.guidance_scale, st.guidance_scale_pow, cfg.image_seq_len
            )
        to_decode.append(jnp.asarray(gen["tokens"]))

    imgs = np.asarray(_decode(vq_params, jnp.concatenate(to_decode), cfg=vq_cfg))
    parts = np.split(imgs, len(to_decode))
    out["dec_img_preclamp"] = parts[0]
    out["dec_img"] = np.clip(parts[0], 0.0, 1.0)
    for prefix, img in zip(runs, parts[1:], strict=True):
        img = np.clip(img, 0.0, 1.0)
        out[f"{prefix}_img"] = img
    # demo_util.sample_fn: (clamp(img, 0, 1) * 255).to(uint8), a truncating cast, NHWC.
    cfg_img = out["gen_cfg_img"]
    out["gen_cfg_img_uint8"] = (np.transpose(cfg_img, (0, 2, 3, 1)) * np.float32(255)).astype(
        np.uint8
    )
    return {k: out[k] for k in data.files if k in out}
