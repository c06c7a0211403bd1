"""`arvg convert`: official checkpoints -> Flax params on disk (orbax directory or safetensors file).

    arvg convert --model var-d16 --ckpt var_d16.pth --vae vae_ch160v4096z32.pth --out conv/var-d16
    arvg generate --ckpt conv/var-d16 --classes 207,360 --out grid.png   # --model/--vae from it

Every later command then reads the converted params instead of re-mapping the torch files
(`arvg_jax.conversion`). The configs, source file names and sha256 go into its config.json.
"""

from __future__ import annotations

import sys


def add_arguments(parser) -> None:
    from arvg_jax.models import add_model_arguments

    add_model_arguments(parser, quantized=False)
    g = parser.add_argument_group("output")
    g.add_argument("--out", required=True, help="output directory (orbax) or .safetensors file")
    g.add_argument(
        "--dtype",
        choices=["float32", "bfloat16"],
        default="float32",
        help="storage dtype of floating params (float32 is bit-exact; loads as float32)",
    )
    g.add_argument(
        "--format",
        dest="fmt",
        choices=["orbax", "safetensors"],
        default="orbax",
        help="orbax directory with config.json, or one portable .safetensors file",
    )
    g.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --out that arvg wrote (a directory holding a .arvg marker "
        "file, or a converted .safetensors file)",
    )
    g.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args) -> int:
    from arvg_jax import conversion
    from converters import CheckpointError, ConversionError

    try:
        if not args.model and not (args.ckpt and conversion.is_converted(args.ckpt)):
            raise ValueError("give --model (a preset, or a family with --config) and --ckpt/--vae")
        report = conversion.convert(
            args.model,
            args.ckpt,
            args.vae,
            out=args.out,
            config=args.config,
            ckpt_key=args.ckpt_key,
            dtype=args.dtype,
            fmt=args.fmt,
            overwrite=args.overwrite,
            random_weights=args.random_weights,
            allow_nonfinite=args.allow_nonfinite,
            progress=not args.quiet,
        )
    except (
        ValueError,
        CheckpointError,
        ConversionError,
        OSError,
    ) as e:
        print(f"arvg convert: {e}", file=sys.stderr)
        return 2
    print(report)
    return 0
