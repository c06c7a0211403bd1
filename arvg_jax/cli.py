"""The `arvg` command line: thin dispatch to `arvg_jax.commands.<name>`.

Each command module defines `add_arguments(parser)` and `run(args) -> int`. Modules are imported
only when their command runs, so `arvg inspect` never pays for building a model.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> one-line help. The module arvg_jax.commands.<name> implements it.
COMMANDS = {
    "models": "list the model families and their presets (every --model value)",
    "demo": "quantize the embedded default model and write images and a report",
    "convert": "convert official checkpoints once into Flax params (orbax dir or safetensors)",
    "inspect": "list the keys, shapes and dtypes of a checkpoint (or a quantized directory)",
    "generate": "generate images from a float checkpoint or a quantized directory",
    "sample": "sample many images into one resumable ADM .npz batch (FID, IS, precision, recall)",
    "quantize": "quantize a float checkpoint (rtn | smoothquant | ptq4arvg) into a directory",
    "evaluate": "compare a quantized model with its float model, or score samples (FID, IS, ...)",
    "bench": "benchmark generation throughput, latency and memory",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="arvg",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(
            name,
            help=help_text,
            description=help_text,
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        )
        p.set_defaults(_module=f"arvg_jax.commands.{name}")
        try:
            module = importlib.import_module(f"arvg_jax.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"arvg_jax.commands.{name}":
                raise
            p.set_defaults(_missing=True)
            continue
        module.add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_missing", False):
        print(f"arvg {args.command}: not available in this build", file=sys.stderr)
        return 2
    module = importlib.import_module(args._module)
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
