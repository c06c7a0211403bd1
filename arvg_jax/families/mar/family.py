"""`MARFamily`: MAR's entry in the family registry (presets, converters, sampler, reference).

Sampling defaults follow LTH14/mar (commit fe470ac): `main_mar.py` (`--num_iter 64`,
`--cfg_schedule linear`, `--temperature 1.0`, `--num_sampling_steps 100`) with the README's
per-size FID guidance (`--cfg 2.9 / 3.0 / 3.2` for MAR-B / L / H; `--cfg 1.0`, the `main_mar.py`
default, for any other size). The README's FID runs use `--num_iter 256`; its note "generation
speed can be significantly increased by reducing the number of autoregressive iterations (e.g.,
`--num_iter 64`)" is the `main_mar.py` default kept here (pass `--num-iter 256` for FID).

Checkpoints: the release `checkpoint-last.pth` wraps `{"model", "model_ema"}`; the official
sampler uses `model_ema` (`engine_mar.evaluate(use_ema=True)`). `arvg` reads the file with
`load_state_dict(path, key=--ckpt-key)`, so on the CLI the choice is `--ckpt-key model_ema`
(the official one) or `--ckpt-key model` (raw training weights); without it a wrapped file is
refused with a message naming both keys, EMA first. A flat state dict (e.g. the HF safetensors
mirror) needs no key. `MARFamily.convert` given the whole wrapped dict picks `weights=`
("model_ema" unless told otherwise).

Generation output: MAR's tokens are continuous, so `generate` returns them as float32
[B, L, D] (`"tokens"`, MAR token space: KL-16 latents x 0.2325, patchified; `sampler.unpatchify`
for latents), and the images float32 [B, H, W, 3] in [0, 1].
"""

from __future__ import annotations

import functools
import pathlib
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from arvg_jax import argtypes
from arvg_jax.families import Family, Preset, SamplingArg
from arvg_jax.families.mar.config import MARConfig
from arvg_jax.tokenizers.kl16_vae import KL16Config

SIZES = {"b": "base", "l": "large", "h": "huge"}
# README FID guidance per release size (the evaluation commands' `--cfg`).
FID_CFG = {"base": 2.9, "large": 3.0, "huge": 3.2}
WEIGHTS = ("model_ema", "model")
TOKEN_SCALE = 0.2325  # engine_mar.py: vae.decode(sampled_tokens / 0.2325) (sampler default)
# `arvg demo` / `compare_tiny.py` sampling of the packaged tiny model (`mar-tiny`): 64 tokens
# need far fewer AR steps than the official 256 (64 iterations); guidance 3 as the tiny VAR
# (`families/mar/train` evaluates exactly these). The head needs 250 respaced steps: the first
# step of a respaced cosine schedule multiplies the error of the predicted eps by
# coef1 * sqrt(1 / alpha_bar - 1) = 632 at 50 steps, 316 at 100, 126 at 250 (32 unrespaced), and
# the tiny head's eps at t = 999 is not precise enough for the smaller counts (a 7,000-step
# model's 50- and 100-step tokens reached std ~200 against 1; the shipped 14,000-step one still
# gives 21 % class accuracy at 100 steps, 90.5 % at 250).
DEMO_SAMPLING = {
    "num_iter": 16,
    "cfg": 3.0,
    "cfg_schedule": "linear",
    "temperature": 1.0,
    "num_sampling_steps": "250",
}


def _release_size(cfg: MARConfig | None) -> str | None:
    for size in FID_CFG:
        if cfg is not None and getattr(MARConfig, size)() == cfg:
            return size
    return None


def _random_tree(abstract: dict, rng: np.random.Generator) -> dict:
    """Numpy-drawn params for an abstract tree: kernels N(0, 1/fan_in), biases 0, norm scales 1,
    embeddings / tokens N(0, 0.02^2). Numpy, not flax init: no compile (seconds at MAR-H size)."""
    import jax
    import jax.numpy as jnp

    def leaf(path, x):
        name = getattr(path[-1], "key", str(path[-1]))
        if name == "kernel":
            fan_in = int(np.prod(x.shape[:-1]))
            value = rng.standard_normal(x.shape, np.float32) / np.float32(np.sqrt(fan_in))
        elif name == "bias":
            value = np.zeros(x.shape, np.float32)
        elif name == "scale":
            value = np.ones(x.shape, np.float32)
        else:  # class_emb, fake_latent, mask_token, learned position embeddings
            value = np.float32(0.02) * rng.standard_normal(x.shape, np.float32)
        return jnp.asarray(value, x.dtype)

    return jax.tree_util.tree_map_with_path(leaf, abstract)


@functools.partial(jax.jit, static_argnames=("cfg", "vae_cfg"))
def decode_images(vae_params: dict, tokens, *, cfg: MARConfig, vae_cfg: KL16Config):
    """MAR tokens [B, L, D] -> float32 images [B, H, W, 3] in [0, 1] (engine_mar.py saves
    `(vae.decode(tokens / 0.2325) + 1) / 2` clipped).

    The decoder runs image by image (`lax.map`): XLA picks convolution algorithms per batch shape,
    and a batch-2 decode differed from a batch-1 decode of the same latents by ~1e-5, enough to
    flip PNG bytes; this way an image's pixels do not depend on the batch it is generated in.
    Its cost is small next to the sampler's (num_iter transformer calls x head steps).
    """
    from arvg_jax.families.mar import sampler

    def one(t):
        img = sampler.tokens_to_image(vae_params, t[None], cfg=cfg, vae_cfg=vae_cfg)[0]
        return jnp.clip((img.astype(jnp.float32) + 1) / 2, 0.0, 1.0)

    return jax.lax.map(one, tokens)


def _tiny_config() -> MARConfig:
    """`mar-tiny`'s architecture (the packaged recipe.json is authoritative when loaded)."""
    from arvg_jax.families.mar.train._recipe import MARTinyRecipe

    return MARTinyRecipe.default().mar


def _tiny_tokenizer_config() -> KL16Config:
    from arvg_jax.families.mar.train._recipe import MARTinyRecipe

    return MARTinyRecipe.default().vae


def _is_wrapped(state_dict: Mapping[str, Any]) -> bool:
    return any(isinstance(v, Mapping) for v in state_dict.values())


def _unwrap(state_dict: Mapping[str, Any], key: str, what: str) -> Mapping[str, Any]:
    if not _is_wrapped(state_dict):
        return state_dict
    if key not in state_dict:
        raise ValueError(
            f"wrapped {what} checkpoint without {key!r}; entries: {sorted(state_dict)}"
        )
    return state_dict[key]


_RESPACING = 'diffusion steps: section counts such as "100" or "50,50", or "ddimN"'


def _valid_respacing(text: str) -> bool:
    """True when the diffusion head can respace its 1000 steps as `text` says."""
    from arvg_jax.families.mar.diffloss import space_timesteps

    return bool(text) and bool(space_timesteps(1000, text))


class MARFamily(Family):
    name = "mar"
    description = "MAR: masked autoregressive generation of continuous tokens with a diffusion head"
    config_cls = MARConfig
    tokenizer_config_cls = KL16Config
    checkpoint_help = (
        "official MAR checkpoint-last.pth with --ckpt-key model_ema (the EMA weights the official "
        "sampler uses; model: raw weights), or a flat state dict"
    )
    tokenizer_help = (
        "KL-16 VAE state dict (flat, e.g. kl16.safetensors; kl16.ckpt wraps it as 'model')"
    )
    # main_mar.py samples with the EMA weights; the KL-16 file holds its weights under "model".
    checkpoint_keys = ("model_ema",)
    tokenizer_checkpoint_keys = ("model",)

    # ---- presets and configs ------------------------------------------------------------------
    def presets(self) -> Mapping[str, Preset]:
        out = {
            f"mar-{short}": Preset(
                name=f"mar-{short}",
                config=getattr(MARConfig, size),
                tokenizer_config=KL16Config.release,
                description=f"MAR-{short.upper()} (256 px, KL-16 continuous tokens, "
                f"diffusion head {getattr(MARConfig, size)().diffloss_d} x "
                f"{getattr(MARConfig, size)().diffloss_w})",
            )
            for short, size in SIZES.items()
        }
        out["mar-tiny"] = Preset(
            name="mar-tiny",
            config=_tiny_config,
            tokenizer_config=_tiny_tokenizer_config,
            # 90.5 % class accuracy at 250 head steps; 100 diverge on it (README "Tiny MAR").
            description="tiny MAR trained on the built-in shapes dataset (samples with 250 "
            "diffusion-head steps)",
            packaged=True,
        )
        out["mar-test"] = Preset(
            name="mar-test",
            config=MARConfig.tiny,
            tokenizer_config=KL16Config.tiny,
            description="test size (the reference fixture's), random weights only",
        )
        return out

    def configs_from_official(self, official):
        """A fixture `config.json` (`{"mar": MAR(...) args, "vae": AutoencoderKL args, ...}`, as
        `reference.run_reference` reads it), or bare `MAR(...)` arguments (release VAE)."""
        if "mar" not in official:
            return MARConfig.from_fixture(official), KL16Config.release()
        scale = official.get("token_scale", TOKEN_SCALE)
        if float(scale) != TOKEN_SCALE:
            raise ValueError(f"token_scale {scale}: the sampler decodes tokens / {TOKEN_SCALE}")
        vae = official.get("vae")
        tok = KL16Config.release() if vae is None else KL16Config.from_fixture(vae)
        return MARConfig.from_fixture(official["mar"]), tok

    # ---- parameters ---------------------------------------------------------------------------
    def convert(self, state_dict, cfg, *, weights: str = "model_ema"):
        """Official MAR state dict -> `{"transformer", "diffloss"}` params.

        Args:
            state_dict: one state dict (the CLI's `--ckpt-key` already chose it, or a flat file),
                or the whole wrapped checkpoint `{"model": sd, "model_ema": sd, ...}`.
            weights: the entry of a wrapped checkpoint: "model_ema" (the official sampler's)
                or "model"; ignored for a flat state dict.
        """
        from converters.mar import convert_mar

        if weights not in WEIGHTS:
            raise ValueError(f"weights must be one of {WEIGHTS}, got {weights!r}")
        return convert_mar(_unwrap(state_dict, weights, "MAR"), cfg)

    def convert_tokenizer(self, state_dict, tok_cfg):
        """KL-16 `AutoencoderKL` state dict (flat, or `kl16.ckpt`'s `{"model": sd}`)."""
        from converters.kl16_vae import convert_kl16

        return convert_kl16(_unwrap(state_dict, "model", "KL-16 VAE"), tok_cfg)

    def init_params(self, cfg, tok_cfg, seed):
        from arvg_jax.families.mar.model import abstract_params
        from arvg_jax.tokenizers import kl16_vae

        rng = np.random.default_rng(seed)
        params = _random_tree(abstract_params(cfg), rng)
        tok_params = _random_tree(kl16_vae.abstract_params(tok_cfg), rng)
        return params, tok_params

    # ---- running ------------------------------------------------------------------------------
    def demo_sampling(self):
        return dict(DEMO_SAMPLING)

    def sampling_arguments(self, cfg=None):
        from arvg_jax.families.mar.sampler import CFG_SCHEDULES

        size = _release_size(cfg)
        steps = cfg.num_sampling_steps if cfg is not None else MARConfig().num_sampling_steps
        return (
            SamplingArg(
                name="num_iter",
                type=int,
                default=64,
                help="MAR: autoregressive iterations",
                valid=argtypes.POSITIVE_INT,
            ),
            SamplingArg(
                name="cfg",
                type=float,
                default=FID_CFG.get(size, 1.0),
                help="CFG scale (1.0 disables CFG)",
                valid=argtypes.NON_NEGATIVE,
            ),
            SamplingArg(
                name="cfg_schedule",
                type=str,
                default="linear",
                help="MAR: CFG schedule over iterations, linear or constant",
                valid=argtypes.OneOf(CFG_SCHEDULES),
            ),
            SamplingArg(
                name="temperature",
                type=float,
                default=1.0,
                help="MAR: diffusion-head noise temperature",
                valid=argtypes.NON_NEGATIVE,  # it scales the noise: 0 is the deterministic mean
            ),
            SamplingArg(
                name="num_sampling_steps",
                type=str,
                default=str(steps),
                help="MAR: diffusion-head respacing (space_timesteps section counts)",
                valid=argtypes.Checked(str, _valid_respacing, _RESPACING),
            ),
        )

    def generate(self, params, tok_params, cfg, tok_cfg, labels, keys, /, *, options, **sampling):
        """Images for class labels. The leading arguments are positional-only, so the sampling
        setting `cfg` (the CFG scale, the official flag name) can come in `**sampling`.

        Returns:
            {"tokens": float32 [B, L, D] (continuous MAR tokens: KL-16 latents x 0.2325,
            patchified), "images": float32 [B, H, W, 3] in [0, 1], "finite": bool [B] (all the
            image's diffusion outputs were finite)}. Image i depends on `keys[i]` only (its
            order and all its diffusion noise).
        """
        from arvg_jax.families.mar import sampler

        defaults = self.sampling_defaults(cfg)
        unknown = sorted(set(sampling) - set(defaults))
        if unknown:
            raise TypeError(f"MAR sampling takes {sorted(defaults)}, got {unknown}")
        s = {**defaults, **sampling}
        tokens, _ = sampler.sample_tokens(
            params,
            jnp.asarray(labels, jnp.int32),
            keys,
            cfg=cfg,
            num_iter=int(s["num_iter"]),
            cfg_scale=float(s["cfg"]),
            cfg_schedule=str(s["cfg_schedule"]),
            temperature=float(s["temperature"]),
            num_sampling_steps=str(s["num_sampling_steps"]),
            dtype=options.compute_dtype,
            qkv_shards=options.qkv_shards,
        )
        images = decode_images(tok_params, tokens, cfg=cfg, vae_cfg=tok_cfg)
        # Every diffusion output lands in `tokens` (each position is drawn once, then kept).
        finite = jnp.isfinite(tokens).all(axis=(1, 2))
        return {"tokens": tokens.astype(jnp.float32), "images": images, "finite": finite}

    def teacher_forced_logits(
        self, params, tok_params, cfg, tok_cfg, labels, tokens, *, options, batch=16
    ):
        raise NotImplementedError(
            "mar: no logits. MAR's tokens are continuous (KL-16 latents) and each is drawn by a "
            "diffusion head conditioned on the transformer's output, so there is no categorical "
            "distribution to score teacher-forced tokens with."
        )

    # ---- quantization -------------------------------------------------------------------------
    def quant_adapter(self, cfg, *, coverage=()):
        """PTQ4ARVG's MAR coverage (`quant_adapter.MARAdapter`); coverage "diffusion_head" also
        quantizes the diffusion head (not official)."""
        from arvg_jax.families.mar.quant_adapter import MARAdapter

        coverage = self.check_coverage(coverage)
        return MARAdapter(cfg, quantize_head="diffusion_head" in coverage)

    def coverage_options(self):
        # The official code keeps the head in float (docs/ptq4arvg.md §1.4); this is our option.
        return {
            "diffusion_head": "also quantize the diffusion head's Linears (per-row weights, "
            "per-tensor inputs; not in the official coverage)"
        }

    def calibration_generator(self, params, tok_params, cfg, tok_cfg):
        from arvg_jax.families.mar.calibration import generate_candidates

        def gen(num_images, *, seed=42, progress=True, **sampling):
            return generate_candidates(
                params,
                tok_params,
                cfg,
                tok_cfg,
                num_images,
                seed=seed,
                progress=progress,
                **sampling,
            )

        return gen

    def calibration_batch(self, tok_params, tok_cfg, candidates):
        from arvg_jax.families.mar.calibration import calibration_batch

        del tok_params, tok_cfg  # MAR's calibration inputs are its continuous tokens
        return calibration_batch(candidates)

    # ---- reference check ----------------------------------------------------------------------
    def reference_outputs(self, fixture_dir):
        from arvg_jax.families.mar.reference import run_reference

        return run_reference(pathlib.Path(fixture_dir))
