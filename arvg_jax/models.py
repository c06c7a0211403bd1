"""Loading models for the command line: presets, official checkpoints, quantized directories.

A `Model` bundles everything generation needs (configs and params of the transformer and of its
tokenizer) whatever its origin, so `arvg generate`, `quantize`, `evaluate` and `bench` treat float
and quantized models alike.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any

import numpy as np

from arvg_jax import assets
from arvg_jax.tokenizers.var_vqvae import VQVAEConfig
from arvg_jax.var import VARConfig

VAR_PRESETS = {
    "var-d16": VARConfig.d16,
    "var-d20": VARConfig.d20,
    "var-d24": VARConfig.d24,
    "var-d30": VARConfig.d30,
    "var-d36": VARConfig.d36,
    "var-tiny": VARConfig.tiny,
}
MODEL_CHOICES = (*VAR_PRESETS, "var")


@dataclasses.dataclass
class Model:
    """A generator and its tokenizer. `params` may hold QArray leaves (quantized)."""

    family: str
    cfg: VARConfig
    params: dict[str, Any]
    vae_cfg: VQVAEConfig
    vae_params: dict[str, Any]
    name: str
    recipe: dict[str, Any] | None = None  # set for quantized models
    source: dict[str, Any] = dataclasses.field(default_factory=dict)  # where it came from

    @property
    def quantized(self) -> bool:
        return self.recipe is not None


# One serialisation of configs for every file we write (quantized checkpoints, packaged tiny
# models): architecture fields only. Runtime choices (compute dtype, sampler implementation
# options: `arvg_jax.assets._RUNTIME_FIELDS`) are never pinned by a file, so a checkpoint gets
# today's defaults, and older checkpoints that stored them still load.
config_to_dict = assets.config_to_dict
config_from_dict = assets.config_from_dict


def resolve_configs(
    model: str, config_path: str | os.PathLike | None
) -> tuple[VARConfig, VQVAEConfig]:
    """(VAR config, VQVAE config) for `--model NAME` or `--model var --config config.json`."""
    from converters.var_vae import vae_config_from_fixture

    if model == "var":
        if config_path is None:
            raise ValueError("--model var needs --config config.json (official constructor args)")
        conf = json.loads(pathlib.Path(config_path).read_text())
        return VARConfig.from_official(conf), vae_config_from_fixture(conf)
    if model not in VAR_PRESETS:
        raise ValueError(f"unknown model {model!r}; choose one of {', '.join(MODEL_CHOICES)}")
    if config_path is not None:
        raise ValueError(f"--config is only for --model var (got --model {model})")
    cfg = VAR_PRESETS[model]()
    if model == "var-tiny":
        vae_cfg = VQVAEConfig(
            ch=32,
            ch_mult=(1, 1),
            num_res_blocks=1,
            vocab_size=cfg.vocab_size,
            z_channels=cfg.cvae,
            patch_nums=cfg.patch_nums,
        )
    else:
        vae_cfg = VQVAEConfig(patch_nums=cfg.patch_nums)
    return cfg, vae_cfg


def load_float(
    model: str, ckpt: str, vae: str, config_path: str | None = None, *, key: str | None = None
) -> Model:
    """Converts official checkpoints (no torch) into a float `Model`."""
    from converters import load_state_dict
    from converters.var import convert_var
    from converters.var_vae import convert_vae

    cfg, vae_cfg = resolve_configs(model, config_path)
    params = convert_var(load_state_dict(ckpt, key=key), cfg)
    vae_params = convert_vae(load_state_dict(vae), vae_cfg)
    return Model(
        "var",
        cfg,
        params,
        vae_cfg,
        vae_params,
        name=model,
        source={"ckpt": str(ckpt), "vae": str(vae), "config": config_path},
    )


def random_model(model: str, seed: int = 0, config_path: str | None = None) -> Model:
    """Seeded random weights at a preset's full size (benchmarks, demos without checkpoints)."""
    import jax

    from arvg_jax.tokenizers import var_vqvae
    from arvg_jax.var import VAR

    cfg, vae_cfg = resolve_configs(model, config_path)
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    labels = np.zeros((1,), np.int32)
    x = np.zeros((1, cfg.seq_len - cfg.first_l, cfg.cvae), np.float32)
    params = jax.jit(lambda k: VAR(cfg).init(k, labels, x)["params"])(k1)
    vae_params = jax.jit(var_vqvae.init_params, static_argnums=0)(vae_cfg, k2)  # one compile
    return Model(
        "var",
        cfg,
        params,
        vae_cfg,
        vae_params,
        name=f"{model} (random weights)",
        source={"random_seed": seed},
    )


def load_quantized(directory: str | os.PathLike) -> Model:
    """Restores a directory written by `arvg quantize` (self-contained: includes the VQVAE)."""
    from quant import checkpoint

    params, vae_params, meta = checkpoint.load(directory)
    if meta["family"] != "var":
        raise ValueError(f"{directory}: family {meta['family']!r} is not supported yet")
    try:
        cfg = config_from_dict(VARConfig, meta["model_config"])
        vae_cfg = config_from_dict(VQVAEConfig, meta["vae_config"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"{directory}: model_config / vae_config in its metadata: {e}") from e
    if vae_params is None:
        raise ValueError(f"{directory}: has no tokenizer params (vae/)")
    return Model(
        "var",
        cfg,
        params,
        vae_cfg,
        vae_params,
        name=meta.get("name", str(directory)),
        recipe=meta["recipe"],
        source=meta.get("source", {}),
    )


def add_model_arguments(parser, *, quantized: bool = True) -> None:
    """The shared flags: --model/--ckpt/--vae/--config (float) and --quantized DIR."""
    g = parser.add_argument_group("model")
    g.add_argument(
        "--model",
        choices=MODEL_CHOICES,
        help="preset (var-d16 … var-d36) or 'var' with --config config.json",
    )
    g.add_argument("--ckpt", help="official transformer checkpoint, e.g. var_d16.pth")
    g.add_argument("--vae", help="official tokenizer checkpoint, e.g. vae_ch160v4096z32.pth")
    g.add_argument("--config", help="official constructor arguments as JSON (--model var)")
    g.add_argument(
        "--ckpt-key", default=None, help="entry of a wrapped checkpoint to use (e.g. model_ema)"
    )
    g.add_argument(
        "--random-weights",
        action="store_true",
        help="seeded random weights at the preset's size instead of --ckpt/--vae",
    )
    if quantized:
        g.add_argument("--quantized", metavar="DIR", help="a directory written by arvg quantize")


def model_from_args(args) -> Model:
    """--quantized DIR, or the float model of --model/--ckpt/--vae/--config."""
    if getattr(args, "quantized", None):
        if args.model or args.ckpt:
            raise ValueError("give either --quantized DIR or --model/--ckpt/--vae, not both")
        return load_quantized(args.quantized)
    return float_model_from_args(args)


def float_model_from_args(args) -> Model:
    """The float model of --model/--ckpt/--vae/--config (or --random-weights)."""
    if not args.model:
        raise ValueError("give --model (with --ckpt and --vae) or --quantized DIR")
    if args.random_weights:
        return random_model(args.model, config_path=args.config)
    if not args.ckpt or not args.vae:
        raise ValueError(f"--model {args.model} needs --ckpt and --vae (or --random-weights)")
    return load_float(args.model, args.ckpt, args.vae, args.config, key=args.ckpt_key)
