"""RAR (bytedance/1d-tokenizer `modeling/rar.py`): randomized-order AR, raster at inference.

Modules: `config` (RARConfig, presets, per-size sampling settings), `model`, `sampler` (one
`lax.fori_loop` over the 256 positions, KV cache at traced offsets), `reference` (the
official-code fixture). Tokenizer: `arvg_jax.tokenizers.maskgit_vqgan`; converters:
`converters.rar`, `converters.maskgit_vqgan`.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from arvg_jax import argtypes
from arvg_jax.families import Family, Preset, SamplingArg
from arvg_jax.families.rar.config import RARConfig, SamplingSettings
from arvg_jax.tokenizers.maskgit_vqgan import MaskGITVQGANConfig

__all__ = ["FAMILY", "RARConfig", "RARFamily", "SamplingSettings"]

SIZES = ("b", "l", "xl", "xxl")


def _settings_for(cfg: RARConfig | None) -> SamplingSettings:
    """The README FID sampling settings of the release size `cfg` is (RAR-B's otherwise)."""
    for size in SIZES:
        if cfg is not None and getattr(RARConfig, size)() == cfg:
            return getattr(SamplingSettings, size)()
    return SamplingSettings.b()


class RARFamily(Family):
    name = "rar"
    description = "RAR: randomized autoregressive visual generation (raster order at inference)"
    config_cls = RARConfig
    tokenizer_config_cls = MaskGITVQGANConfig
    checkpoint_help = "official RAR checkpoint, e.g. rar_xl.bin"
    tokenizer_help = "official MaskGIT-VQGAN tokenizer, e.g. maskgit-vqgan-imagenet-f16-256.bin"

    def presets(self) -> Mapping[str, Preset]:
        out = {
            f"rar-{size}": Preset(
                name=f"rar-{size}",
                config=getattr(RARConfig, size),
                tokenizer_config=MaskGITVQGANConfig.release,
                description=f"RAR-{size.upper()} (256 px, MaskGIT-VQGAN tokens)",
            )
            for size in SIZES
        }
        out["rar-test"] = Preset(
            name="rar-test",
            config=RARConfig.tiny,
            tokenizer_config=MaskGITVQGANConfig.tiny,
            description="test size (prime dims), random weights only",
        )
        return out

    def configs_from_official(self, official):
        cfg = RARConfig.from_json(official)
        tok = MaskGITVQGANConfig.from_official(
            official["tokenizer"], official.get("tokenizer_codebook")
        )
        return cfg, tok

    def num_classes(self, cfg) -> int:
        return int(cfg.condition_num_classes)

    def convert(self, state_dict, cfg):
        from converters.rar import convert_rar

        return convert_rar(state_dict, cfg)

    def convert_tokenizer(self, state_dict, tok_cfg):
        from converters.maskgit_vqgan import convert_maskgit_vqgan

        return convert_maskgit_vqgan(state_dict, tok_cfg)

    def init_params(self, cfg, tok_cfg, seed):
        import jax
        import jax.numpy as jnp

        from arvg_jax.families.rar.model import RAR
        from arvg_jax.tokenizers.maskgit_vqgan import MaskGITVQGAN

        k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
        tokens = jnp.zeros((1, cfg.image_seq_len), jnp.int32)
        cond = jnp.zeros((1,), jnp.int32)
        params = jax.jit(lambda k: RAR(cfg).init(k, tokens, cond)["params"])(k1)
        vq_tokens = jnp.zeros((1, tok_cfg.num_tokens), jnp.int32)
        tok_params = jax.jit(lambda k: MaskGITVQGAN(tok_cfg).init(k, vq_tokens)["params"])(k2)
        return params, tok_params

    def sampling_arguments(self, cfg=None):
        # rar.py `generate` with the README's per-size FID settings.
        s = _settings_for(cfg)
        return (
            SamplingArg(
                name="guidance_scale",
                type=float,
                default=s.guidance_scale,
                help="CFG scale (0: the official no-CFG branch)",
                valid=argtypes.NON_NEGATIVE,
            ),
            SamplingArg(
                name="guidance_scale_pow",
                type=float,
                default=s.guidance_scale_pow,
                help="power of the cosine CFG schedule",
                valid=argtypes.NON_NEGATIVE,
            ),
            SamplingArg(
                name="randomize_temperature",
                type=float,
                default=s.randomize_temperature,
                help="softmax temperature",
                valid=argtypes.POSITIVE,
            ),
            SamplingArg(name="greedy", type=bool, default=False, help="argmax instead of a draw"),
        )

    def demo_sampling(self):
        return self.sampling_defaults()

    def generate(self, params, tok_params, cfg, tok_cfg, labels, keys, /, *, options, **sampling):
        from arvg_jax.families.rar import sampler

        greedy = bool(sampling.pop("greedy", False))
        settings = SamplingSettings(**{**self.sampling_defaults_for(cfg), **sampling})
        out = sampler.generate(
            params,
            cfg,
            labels,
            keys,
            settings=settings,
            greedy=greedy,
            vq_params=tok_params,
            vq_cfg=tok_cfg,
            dtype=options.compute_dtype,
        )
        return {"tokens": out["tokens"], "images": out["images"]}

    def sampling_defaults_for(self, cfg) -> dict:
        return {a.name: a.default for a in self.sampling_arguments(cfg) if a.name != "greedy"}

    def teacher_forced_logits(
        self, params, tok_params, cfg, tok_cfg, labels, tokens, *, options, batch=16
    ):
        import jax
        import jax.numpy as jnp

        from arvg_jax.families.rar.model import RAR

        model = RAR(cfg, options.compute_dtype)
        fn = jax.jit(lambda p, t, c: model.apply({"params": p}, t, c)[:, : cfg.image_seq_len])
        outs = []
        for i in range(0, len(labels), batch):
            cond = cfg.condition_id(jnp.asarray(labels[i : i + batch], jnp.int32))
            outs.append(np.asarray(fn(params, jnp.asarray(tokens[i : i + batch]), cond)))
        return np.concatenate(outs)

    def reference_outputs(self, fixture_dir):
        import pathlib

        from arvg_jax.families.rar.reference import run_reference

        return run_reference(pathlib.Path(fixture_dir))


FAMILY = RARFamily()
