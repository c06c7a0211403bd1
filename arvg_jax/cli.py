"""The `arvg` command line: thin dispatch to `arvg_jax.commands.<name>`.

Each command module defines `add_arguments(parser)` and `run(args) -> int`. Modules are imported
only when their command runs, so `arvg inspect` never pays for building a model.

Every command runs under `arvg_jax.interrupt.run`: Ctrl-C / SIGTERM end it within about a second
with one line and exit status 130. A bad argument ends with one line naming the flag (status 2).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from arvg_jax import interrupt

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


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except the uninformative None / False of optional flags and switches."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line, "arvg generate: argument --batch: must be ...", status 2."""

    def error(self, message: str):
        message = " ".join(message.split())
        self.exit(2, f"{self.prog}: {message} (see {self.prog} -h)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="arvg",
        description=__doc__.splitlines()[0],
        formatter_class=_Formatter,
    )
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Parser
    )
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(
            name,
            help=help_text,
            description=help_text,
            formatter_class=_Formatter,
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


def _command(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    interrupt.set_prog(f"arvg {args.command}")
    if getattr(args, "_missing", False):
        print(f"arvg {args.command}: not available in this build", file=sys.stderr)
        return 2
    module = importlib.import_module(args._module)
    return int(module.run(args) or 0)


def main(argv: list[str] | None = None) -> int:
    """Runs one command; `argv` None (the `arvg` script) reads sys.argv and owns the process."""
    return interrupt.run(lambda: _command(argv), prog="arvg", restore=argv is not None)


if __name__ == "__main__":
    sys.exit(main())
