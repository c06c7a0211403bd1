"""PAR reference check: every output array of a `reference/par/` fixture, computed by the port.

Reads `config.json`, converts `par.pth` and `llamagen_vq16.pth` with our converters (no torch),
takes the input arrays of `io.npz` (`inputs.json`) and recomputes every other array on the CPU in
float32 (greedy generation, as the fixture was made). Array meanings: reference/README.md, "PAR".

Dims: B batch, N tokens, V vocabulary, A tokens per parallel pass.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from arvg_jax.families.par import layout, sampler
from arvg_jax.families.par.config import PARConfig
from arvg_jax.families.par.model import PAR
from arvg_jax.tokenizers import llamagen_vq16 as vq16

# Column strides of the fixture's subsampled logits (README: `tf_logits_every64`,
# `gen_nocfg_logits_first_every8`).
TF_STRIDE = 64
NOCFG_FIRST_STRIDE = 8


class Fixture:
    """A fixture directory: config, converted params (loaded on first use) and input arrays."""

    def __init__(self, fixture_dir: pathlib.Path):
        self.dir = pathlib.Path(fixture_dir)
        self.config = json.loads((self.dir / "config.json").read_text())
        names = json.loads((self.dir / "inputs.json").read_text())
        with np.load(self.dir / "io.npz") as npz:
            self.inputs = {k: npz[k] for k in names}
        self.cfg = PARConfig.from_fixture(self.config)
        self.vq_cfg = vq16.VQ16Config.from_fixture(self.config["vq"])
        self._params: dict[str, Any] = {}

    @property
    def params(self) -> dict:
        if "gpt" not in self._params:
            from converters.par import load_par

            self._params["gpt"] = load_par(self.dir / "par.pth", self.cfg)
        return self._params["gpt"]

    @property
    def vq_params(self) -> dict:
        if "vq" not in self._params:
            from converters.llamagen_vq16 import load_vq16

            self._params["vq"] = load_vq16(self.dir / "llamagen_vq16.pth", self.vq_cfg)
        return self._params["vq"]

    @property
    def grid(self) -> tuple[int, int]:
        g = self.config.get("latent_size", self.cfg.grid_size)
        return (g, g)


def tables(fx: Fixture) -> dict[str, np.ndarray]:
    """Order table, RoPE table, teacher-forcing group mask and the generation pass schedule."""
    cfg = fx.cfg
    input_pos, token_step = layout.pass_schedule(cfg)
    return {
        "par_index_to_raster": layout.par_index_to_raster(cfg),
        "rope_freqs_cis": layout.rope_table(cfg),
        "group_mask": layout.group_mask(cfg, cfg.seq_len),
        "gen_step_input_pos": input_pos,
        "gen_token_step": token_step,
    }


def teacher_forcing(fx: Fixture) -> dict[str, np.ndarray]:
    """`tf_logits_every64`: teacher-forced logits [B, N, V / 64] in PAR order."""
    labels, tokens = fx.inputs["tf_labels"], fx.inputs["tf_tokens"]
    fn = jax.jit(lambda p, l, t: PAR(fx.cfg).apply({"params": p}, l, t)[..., ::TF_STRIDE])
    logits = fn(fx.params, jnp.asarray(labels, jnp.int32), jnp.asarray(tokens, jnp.int32))
    return {"tf_logits_every64": np.asarray(logits, np.float32)}


def _decode(fx: Fixture, tokens_raster: np.ndarray) -> jax.Array:
    fn = jax.jit(lambda p, t: vq16.decode_code(p, fx.vq_cfg, t, fx.grid))
    return fn(fx.vq_params, jnp.asarray(tokens_raster, jnp.int32))  # [B, H, W, 3]


def decoder(fx: Fixture) -> dict[str, np.ndarray]:
    """`dec_img`: `decode_code` of the fixed raster tokens, NCHW, not clamped."""
    img = _decode(fx, fx.inputs["dec_tokens"])
    return {"dec_img": np.asarray(img, np.float32).transpose(0, 3, 1, 2)}


def _generate(fx: Fixture, name: str) -> dict[str, Any]:
    s = fx.config["sampling"]
    cfg_scale = s["cfg_scale"] if name == "cfg" else 1.0
    return sampler.generate(
        fx.params,
        jnp.asarray(fx.inputs[f"gen_{name}_labels"], jnp.int32),
        jax.random.key(fx.config.get("seed", 0)),
        cfg=fx.cfg,
        cfg_scale=cfg_scale,
        cfg_interval=s["cfg_interval"],
        temperature=s["temperature"],
        top_k=s["top_k"],
        top_p=s["top_p"],
        greedy=not s["sample_logits"],
        return_margin=True,
        return_first_logits=True,
    )


def generation_cfg(fx: Fixture) -> dict[str, np.ndarray]:
    """The `gen_cfg_*` outputs: tokens, margins, first logits, raster tokens and images."""
    out = _generate(fx, "cfg")
    tokens = np.asarray(out["tokens"]).astype(np.int64)
    decode = jax.jit(
        lambda p, t: sampler.decode_images(
            p, fx.vq_cfg, t, cfg=fx.cfg, eval_size=fx.config["image_size_eval"]
        )
    )
    imgs = decode(fx.vq_params, jnp.asarray(out["tokens"]))
    return {
        "gen_cfg_tokens": tokens,
        "gen_cfg_top2_margin": np.asarray(out["top2_margin"], np.float32),
        "gen_cfg_logits_first": np.asarray(out["logits_first"], np.float32),
        "gen_cfg_tokens_raster": np.asarray(layout.par_to_raster(tokens, fx.cfg)),
        "gen_cfg_img_eval": np.asarray(imgs["images"], np.float32).transpose(0, 3, 1, 2),
        "gen_cfg_img_uint8": np.asarray(imgs["uint8"]),
    }


def generation_nocfg(fx: Fixture) -> dict[str, np.ndarray]:
    """The `gen_nocfg_*` outputs (cfg_scale 1: no uncond rows)."""
    out = _generate(fx, "nocfg")
    tokens = np.asarray(out["tokens"]).astype(np.int64)
    first = np.asarray(out["logits_first"], np.float32)[..., ::NOCFG_FIRST_STRIDE]
    return {
        "gen_nocfg_tokens": tokens,
        "gen_nocfg_top2_margin": np.asarray(out["top2_margin"], np.float32),
        "gen_nocfg_logits_first_every8": first,
        "gen_nocfg_tokens_raster": np.asarray(layout.par_to_raster(tokens, fx.cfg)),
    }


# The parts of the check and the outputs each computes (tests run them one by one).
PARTS: Mapping[str, tuple[Callable[[Fixture], dict[str, np.ndarray]], tuple[str, ...]]] = {
    "tables": (
        tables,
        (
            "par_index_to_raster",
            "rope_freqs_cis",
            "group_mask",
            "gen_step_input_pos",
            "gen_token_step",
        ),
    ),
    "teacher_forcing": (teacher_forcing, ("tf_logits_every64",)),
    "decoder": (decoder, ("dec_img",)),
    "generation_cfg": (
        generation_cfg,
        (
            "gen_cfg_tokens",
            "gen_cfg_top2_margin",
            "gen_cfg_logits_first",
            "gen_cfg_tokens_raster",
            "gen_cfg_img_eval",
            "gen_cfg_img_uint8",
        ),
    ),
    "generation_nocfg": (
        generation_nocfg,
        (
            "gen_nocfg_tokens",
            "gen_nocfg_top2_margin",
            "gen_nocfg_logits_first_every8",
            "gen_nocfg_tokens_raster",
        ),
    ),
}


def run_reference(fixture_dir: pathlib.Path) -> dict[str, np.ndarray]:
    """Every output array of `fixture_dir/io.npz` (names, shapes, dtypes as there).

    Args:
        fixture_dir: a directory laid out as `reference/par/` (its `io.npz` needs only the
            input arrays named in `inputs.json`).

    Returns:
        name -> numpy array, outputs only (computed, never read from the fixture).
    """
    fx = Fixture(pathlib.Path(fixture_dir))
    out: dict[str, np.ndarray] = {}
    for fn, _names in PARTS.values():
        out.update(fn(fx))
    return out
