"""`PARFamily`: PAR in the family registry (presets, converters, init, sampling, teacher forcing).

The sampler settings and post-processing are those of YuqingWang1029/PAR
`autoregressive/sample/sample_c2i_ddp.py` (the FID script; the single-GPU `sample_c2i.py` has
demo defaults, cfg 4.0 / top-k 2000, and is not used): cfg-scale 1.5 (README per release: 1.435
for PAR-XXL-4x, 1.345 for PAR-3B-4x), cfg-interval -1, top-k 0, top-p 1.0, temperature 1.0;
images are decoded with VQ-16 in float32, bicubic-resized to image-size-eval (256; the
tokenizer config's `image_size_eval`) and converted with clamp(127.5 x + 128, 0, 255) truncated
to uint8.

`par-tiny` is the packaged model trained on the built-in shapes dataset (`families/par/train`):
32-px images, an 8 x 8 token grid (VQ with 4x downsampling), 4 tokens per parallel step.

Dims: B images, N tokens, V vocabulary, S image side.
"""

from __future__ import annotations

import functools
import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from arvg_jax import argtypes
from arvg_jax.families import Family, Preset, SamplingArg
from arvg_jax.families.par.config import PARConfig
from arvg_jax.tokenizers.llamagen_vq16 import VQ16Config

# `arvg demo` / compare sampling of the tiny shapes model (the official defaults but a stronger
# guidance, as the tiny VAR: cfg ~3 gives the best class accuracy / FID there).
TINY_DEMO_CFG_SCALE = 3.0

# preset suffix -> PARConfig classmethod (gpt.py GPT_models sizes with PAR's token counts).
SIZES = {
    "xl-4x": "xl_4x",
    "xxl-4x": "xxl_4x",
    "3b-4x": "gpt3b_4x",
    "xl-16x": "xl_16x",
    "xxl-16x": "xxl_16x",
    "3b-16x": "gpt3b_16x",
}

# README sampling commands: --cfg-scale per release; other sizes use the script default 1.5.
_CFG_SCALE = {"xxl_4x": 1.435, "gpt3b_4x": 1.345}
DEFAULT_CFG_SCALE = 1.5


def cfg_scale_for(cfg: PARConfig | None) -> float:
    """The README FID cfg-scale of the release size `cfg` is (the script default otherwise)."""
    for size, scale in _CFG_SCALE.items():
        if cfg is not None and getattr(PARConfig, size)() == cfg:
            return scale
    return DEFAULT_CFG_SCALE


def par_tiny_config() -> PARConfig:
    """`par-tiny`: a 1.7M-param LlamaGen GPT (dim 128, 8 layers, 4 heads) at 4x parallelism on
    an 8 x 8 grid (4 regions of 4 x 4), V 512, 12 shape classes + the null class."""
    from arvg_jax.data import shapes

    return PARConfig(
        dim=128,
        n_layer=8,
        n_head=4,
        multiple_of=32,
        vocab_size=512,
        num_classes=shapes.NUM_CLASSES,
        block_size=64,
        spe_token_num=3,
        ar_token_num=4,
    )


def par_tiny_vq_config() -> VQ16Config:
    """`par-tiny`'s tokenizer: VQ with 4x downsampling (ch 32, ch_mult 1, 2, 2; one res block per
    encoder level, two per decoder level), 512 l2-normalised 8-d codes, 32-px images decoded
    at their own size (image_size_eval == image_size: no resize)."""
    return VQ16Config(
        codebook_size=512,
        codebook_embed_dim=8,
        decoder_ch_mult=(1, 2, 2),
        z_channels=32,
        ch=32,
        num_res_blocks=1,
        image_size=32,
        image_size_eval=32,
    )


def par_test_vq_config() -> VQ16Config:
    """The `par-test` tokenizer: the fixture's tiny VQ-16 (ch 32, z 64; 384 px from 24 x 24)
    with one res block per level (num_res_blocks 0) to compile and decode faster on CPU."""
    return VQ16Config.tiny(num_res_blocks=0)


class PARFamily(Family):
    name = "par"
    description = "PAR: parallelized autoregressive visual generation (LlamaGen GPT, VQ-16 tokens)"
    config_cls = PARConfig
    tokenizer_config_cls = VQ16Config
    checkpoint_help = "official PAR checkpoint, e.g. PAR-XL-4x.pt (state dict under 'model')"
    tokenizer_help = "official LlamaGen VQ-16 tokenizer vq_ds16_c2i.pt (state dict under 'model')"
    # sample_c2i_ddp.py: checkpoint["model"], else ["module"], else ["state_dict"].
    checkpoint_keys = ("model", "module", "state_dict")
    tokenizer_checkpoint_keys = ("model",)

    # ---- presets and configs ----------------------------------------------------------------------
    def presets(self) -> Mapping[str, Preset]:
        out = {}
        for suffix, method in SIZES.items():
            make = getattr(PARConfig, method)
            size, tokens = suffix.split("-")
            release = "" if suffix in ("xl-16x", "xxl-16x") else ", released"
            out[f"par-{suffix}"] = Preset(
                name=f"par-{suffix}",
                config=make,
                tokenizer_config=VQ16Config.release,
                description=f"PAR-{size.upper()}-{tokens} (384 px, VQ-16 tokens{release})",
            )
        out["par-test"] = Preset(
            name="par-test",
            config=PARConfig.tiny,
            tokenizer_config=par_test_vq_config,
            description="test size (the fixture's tiny GPT, a tiny VQ-16), random weights only",
        )
        out["par-tiny"] = Preset(
            name="par-tiny",
            config=par_tiny_config,
            tokenizer_config=par_tiny_vq_config,
            description="tiny PAR trained on the built-in shapes dataset",
            packaged=True,
        )
        return out

    def configs_from_official(self, official: dict[str, Any]) -> tuple[PARConfig, VQ16Config]:
        # A reference fixture's config.json: "gpt" (+ "gpt_defaults") ModelArgs and "vq".
        return PARConfig.from_fixture(official), VQ16Config.from_fixture(official["vq"])

    # ---- parameters ---------------------------------------------------------------------------
    def convert(self, state_dict, cfg):
        # The release .pt files wrap the state dict under "model" (`--ckpt-key model`);
        # `converters.par.wrapper_key(path)` finds the entry as sample_c2i_ddp.py does.
        from converters.par import convert_par

        return convert_par(state_dict, cfg)

    def convert_tokenizer(self, state_dict, tok_cfg):
        from converters.llamagen_vq16 import convert_vq16

        return convert_vq16(state_dict, tok_cfg)

    def init_params(self, cfg, tok_cfg, seed):
        # Two independent numpy streams of `seed`: the GPT's and the tokenizer's.
        gpt_rng, vq_rng = (np.random.default_rng([seed, i]) for i in range(2))
        return _init_gpt(cfg, gpt_rng), _init_vq(tok_cfg, vq_rng)

    # ---- running ------------------------------------------------------------------------------
    def sampling_arguments(self, cfg=None):
        return (
            SamplingArg(
                name="cfg_scale",
                type=float,
                default=cfg_scale_for(cfg),
                help="CFG scale (> 1 adds null-class rows)",
                valid=argtypes.NON_NEGATIVE,
            ),
            SamplingArg(
                name="cfg_interval",
                type=float,
                default=-1.0,
                help="-1: CFG at every pass; else CFG stops after this pass counter",
                valid=argtypes.Range(float, -1),
            ),
            SamplingArg(
                name="top_k",
                type=int,
                default=0,
                help="top-k filter, 0 disables",
                valid=argtypes.NON_NEGATIVE_INT,
            ),
            SamplingArg(
                name="top_p",
                type=float,
                default=1.0,
                help="top-p filter, 1 disables",
                valid=argtypes.Range(float, 0, 1, lo_open=True),  # HF: 0 < top_p <= 1
            ),
            SamplingArg(
                name="temperature",
                type=float,
                default=1.0,
                help="softmax temperature",
                valid=argtypes.POSITIVE,
            ),
            SamplingArg(name="greedy", type=bool, default=False, help="argmax instead of a draw"),
        )

    def demo_sampling(self):
        # Only par-tiny is packaged: the official settings with the tiny model's guidance.
        return {**self.sampling_defaults(), "cfg_scale": TINY_DEMO_CFG_SCALE}

    def generate(self, params, tok_params, cfg, tok_cfg, labels, keys, /, *, options, **sampling):
        """{"tokens": int32 [B, N] raster order, "images": float32 [B, S, S, 3] in [0, 1]}
        (S = tok_cfg.image_size_eval, 256 for the releases).

        `images` is the official uint8 sample / 255 (`imageio.to_uint8` gives its bytes back).
        Image i depends on keys[i] only.
        """
        import jax.numpy as jnp

        from arvg_jax.families.par import layout, sampler

        settings = {**self.sampling_defaults(cfg), **sampling}
        unknown = sorted(set(settings) - set(self.sampling_defaults(cfg)))
        if unknown:
            raise TypeError(f"par: unknown sampling settings {unknown}")
        out = sampler.generate(
            params,
            jnp.asarray(labels, jnp.int32),
            jnp.asarray(keys),
            cfg=cfg,
            cfg_scale=float(settings["cfg_scale"]),
            cfg_interval=float(settings["cfg_interval"]),
            temperature=float(settings["temperature"]),
            top_k=int(settings["top_k"]),
            top_p=float(settings["top_p"]),
            greedy=bool(settings["greedy"]),
            dtype=options.compute_dtype,
            qkv_shards=options.qkv_shards,
        )
        images = _decode_fn(cfg, tok_cfg)(tok_params, out["tokens"])
        return {  # and "finite" bool [B]: the sampler's logits of the image were all finite
            "tokens": layout.par_to_raster(out["tokens"], cfg),
            "images": images,
            "finite": out["finite"],
        }

    def teacher_forced_logits(
        self, params, tok_params, cfg, tok_cfg, labels, tokens, *, options, batch=16
    ):
        """float32 [B, N, V] conditional logits for raster tokens [B, N], in raster order:
        logits[b, i] scores tokens[b, i] (the official forward runs the PAR-order sequence)."""
        import jax.numpy as jnp

        fn = _tf_fn(cfg, jnp.dtype(options.compute_dtype).name, options.qkv_shards)
        outs = []
        for i in range(0, len(labels), batch):
            lab = jnp.asarray(labels[i : i + batch], jnp.int32)
            outs.append(np.asarray(fn(params, lab, jnp.asarray(tokens[i : i + batch], jnp.int32))))
        return np.concatenate(outs)

    # ---- quantization -------------------------------------------------------------------------
    def quant_adapter(self, cfg, *, coverage=()):
        self.check_coverage(coverage)  # the official coverage only
        from arvg_jax.families.par.quant_adapter import PARAdapter

        return PARAdapter(cfg)

    def calibration_generator(self, params, tok_params, cfg, tok_cfg):
        from arvg_jax.families.par.calibration import generate_candidates

        return functools.partial(generate_candidates, params, tok_params, cfg, tok_cfg)

    def calibration_batch(self, tok_params, tok_cfg, candidates):
        from arvg_jax.families.par.calibration import calibration_batch

        del tok_params, tok_cfg  # the GPT embeds its own tokens
        return calibration_batch(candidates)

    # ---- reference check ----------------------------------------------------------------------
    def reference_outputs(self, fixture_dir):
        from arvg_jax.families.par.reference import run_reference

        return run_reference(pathlib.Path(fixture_dir))


# ---- compiled pieces (one per static config) -----------------------------------------------------
def _random_tree(abstract: dict, rng: np.random.Generator, draw) -> dict:
    """Seeded random leaves for an abstract param tree, drawn in sorted path order.

    numpy draws, leaf by leaf: tracing `init` compiles the whole model (~20 s for the VQ decoder
    on CPU) and eager `jax.random` compiles one program per leaf shape.
    `draw(path, rng, shape)` gives one float32 leaf.
    """
    import jax.numpy as jnp
    from flax import traverse_util

    flat = traverse_util.flatten_dict(abstract, sep="/")
    out = {path: jnp.asarray(draw(path, rng, leaf.shape)) for path, leaf in sorted(flat.items())}
    return traverse_util.unflatten_dict(out, sep="/")


def _init_gpt(cfg: PARConfig, rng: np.random.Generator) -> dict:
    """gpt.py `_init_weights`: Linear and Embedding weights ~ N(0, 0.02); RMSNorm scales 1."""
    from arvg_jax.families.par.model import abstract_params

    def draw(path, rng, shape):
        if path.endswith("/scale"):
            return np.ones(shape, np.float32)
        return np.float32(0.02) * rng.standard_normal(shape, np.float32)

    return _random_tree(abstract_params(cfg), rng, draw)


def _init_vq(tok_cfg: VQ16Config, rng: np.random.Generator) -> dict:
    """Flax defaults for the decode path: conv kernels LeCun-normal, biases 0, GroupNorm
    scale 1 / bias 0; codebook rows N(0, 1) (l2-normalised at lookup)."""
    from arvg_jax.tokenizers.llamagen_vq16 import abstract_params

    def draw(path, rng, shape):
        if path.endswith("/bias"):
            return np.zeros(shape, np.float32)
        if path.endswith("/scale"):
            return np.ones(shape, np.float32)
        fan_in = int(np.prod(shape[:-1])) if path.endswith("/kernel") else 1
        return rng.standard_normal(shape, np.float32) / np.float32(np.sqrt(fan_in))

    return _random_tree(abstract_params(tok_cfg), rng, draw)


@functools.cache
def _decode_fn(cfg: PARConfig, tok_cfg: VQ16Config):
    """PAR-order tokens [B, N] -> float32 [B, S, S, 3] in [0, 1] (official uint8 / 255),
    S = tok_cfg.image_size_eval."""
    import jax
    import jax.numpy as jnp

    from arvg_jax.families.par import sampler

    def decode(tok_params, tokens):
        out = sampler.decode_images(
            tok_params, tok_cfg, tokens, cfg=cfg, eval_size=tok_cfg.image_size_eval
        )
        return out["uint8"].astype(jnp.float32) / 255.0

    return jax.jit(decode)


@functools.cache
def _tf_fn(cfg: PARConfig, dtype: str, qkv_shards: int = 1):
    """(params, labels [B], raster tokens [B, N]) -> float32 raster-order logits [B, N, V]."""
    import jax
    import jax.numpy as jnp

    from arvg_jax.families.par import layout, sampler
    from arvg_jax.families.par.model import PAR

    par_index = layout.par_index_to_raster(cfg)  # PAR token p is raster token par_index[p]
    to_raster = np.argsort(par_index)  # raster i is PAR token to_raster[i]
    model = PAR(cfg, dtype=jnp.dtype(dtype), qkv_shards=qkv_shards)

    def fn(params, labels, tokens):
        if jnp.dtype(dtype) != jnp.float32:
            params = sampler.cast_params(params, jnp.dtype(dtype))  # the official model.to(dtype)
        logits = model.apply({"params": params}, labels, tokens[:, par_index])  # PAR order
        return logits[:, to_raster].astype(jnp.float32)

    return jax.jit(fn)
