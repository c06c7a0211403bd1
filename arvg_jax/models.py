"""Loading models for the command line: presets, official checkpoints, quantized directories.

A `Model` bundles everything generation needs (family, configs and params of the transformer and
of its tokenizer) whatever its origin, so `arvg generate`, `quantize`, `evaluate` and `bench`
treat every family, float or quantized, alike. The family comes from the registry
(`arvg_jax.families`); nothing here names one.

Layout: `_model` (the `Model` type and what commands do with one: quantization adapter,
calibration, teacher-forced logits), `_model_configs` (presets and `--config` files -> configs),
`_model_official` (official checkpoint files -> params), `_model_loaders` (every source of a
`Model`: official or converted checkpoints, random or packaged weights, quantized directories);
this module holds the shared command-line flags and the choice among the loaders, and re-exports
the pieces' names, so `arvg_jax.models` stays the one import. `model_from_args` looks the loaders
up here (`float_model_from_args`), so patching `arvg_jax.models.random_model` (tests do) still
takes effect.
"""

from __future__ import annotations

from arvg_jax import families
from arvg_jax._model import (  # noqa: F401  (re-exported)
    Model,
    prepare_calibration,
    quant_adapter,
    teacher_forced_logits,
)
from arvg_jax._model_configs import (  # noqa: F401  (re-exported)
    config_from_dict,
    config_to_dict,
    model_choices,
    resolve_configs,
)
from arvg_jax._model_loaders import (  # also re-exported
    load_float,
    load_quantized,
    packaged_model,
    random_model,
)
from arvg_jax._model_official import (  # noqa: F401  (re-exported)
    convert_file,
    convert_tokenizer,
    convert_transformer,
    read_state_dict,
)


def add_model_arguments(parser, *, quantized: bool = True) -> None:
    """The shared flags: --model/--ckpt/--vae/--config (float) and --quantized DIR."""
    g = parser.add_argument_group("model")
    g.add_argument(
        "--model",
        choices=model_choices(),
        metavar="MODEL",
        help="a preset (`arvg models` lists them) or a family name with --config config.json",
    )
    g.add_argument(
        "--ckpt",
        help="official transformer checkpoint (e.g. var_d16.pth), or a converted directory / "
        ".safetensors file written by arvg convert (--model and --vae then come from it)",
    )
    g.add_argument(
        "--vae",
        help="official tokenizer checkpoint, e.g. vae_ch160v4096z32.pth (optional with a "
        "converted --ckpt)",
    )
    g.add_argument("--config", help="official constructor arguments as JSON (--model FAMILY)")
    g.add_argument(
        "--ckpt-key", default=None, help="entry of a wrapped checkpoint to use (e.g. model_ema)"
    )
    g.add_argument(
        "--allow-nonfinite",
        action="store_true",
        help="load checkpoints holding NaN / Inf weights (forensics; refused by default)",
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
    """The float model of --model/--ckpt/--vae/--config (or --random-weights, or packaged)."""
    from arvg_jax import conversion

    if args.ckpt and not args.random_weights and conversion.is_converted(args.ckpt):
        return load_float(
            args.model,
            args.ckpt,
            args.vae,
            args.config,
            key=args.ckpt_key,
            allow_nonfinite=getattr(args, "allow_nonfinite", False),
        )
    if not args.model:
        raise ValueError(
            "give --model (with --ckpt and --vae), a converted --ckpt, or --quantized DIR"
        )
    if args.random_weights:
        return random_model(args.model, config_path=args.config)
    if not args.ckpt and not args.vae and args.model not in families.all_families():
        _, preset = families.preset(args.model)
        if preset.packaged:
            return packaged_model(args.model)
    if not args.ckpt or not args.vae:
        raise ValueError(f"--model {args.model} needs --ckpt and --vae (or --random-weights)")
    return load_float(
        args.model,
        args.ckpt,
        args.vae,
        args.config,
        key=args.ckpt_key,
        allow_nonfinite=getattr(args, "allow_nonfinite", False),
    )
