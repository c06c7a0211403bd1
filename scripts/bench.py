"""Thin wrapper: `python scripts/bench.py ARGS` = `arvg bench ARGS` (see arvg_jax/commands/bench.py).

PYTHONPATH=. python scripts/bench.py --model var-d16 --batches 16 --precisions bfloat16,w8a8
"""

from __future__ import annotations

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from arvg_jax.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
