"""Recomputes every output array of an official reference fixture with the JAX port.

    python scripts/reference_check.py --family var --fixture ../shared/reference/var --out var_out.npz
    python scripts/reference_check.py --family quant --fixture ../shared/reference/quant --out q.npz
    python scripts/reference_check.py --family eval --fixture ../shared/reference/eval --out e.npz

The fixture directory has the layout of `../shared/reference/<family>/` (config.json, the official
checkpoint files, inputs.json and io.npz / cases.npz holding at least the input arrays). Outputs
are computed on the CPU in float32 (matmul precision "highest"), never copied from the fixture, and
written to OUT with the reference's names, shapes and dtypes. Where the fixture also holds the
reference outputs, a comparison table is printed (informational; the tests are the check).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

# Parity runs on the CPU in float32; set before jax is imported anywhere.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

# Fixtures that are not a model family; every registered family is checked through the registry.
OTHERS = {
    "quant": "quant._reference:run_quant_reference",  # writes OUT itself
    "eval": "arvg_jax.metrics.reference:run_reference",  # returns the arrays
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", required=True, help="a model family (var, ...) or quant")
    parser.add_argument("--fixture", required=True, type=pathlib.Path)
    parser.add_argument("--out", required=True, type=pathlib.Path)
    args = parser.parse_args(argv)
    from arvg_jax import families

    known = (*families.all_families(), *OTHERS)
    if args.family not in known:
        print(
            f"reference_check: {args.family!r} is not ported yet (ported: {', '.join(known)})",
            file=sys.stderr,
        )
        return 2
    if not args.fixture.is_dir():
        print(f"reference_check: {args.fixture}: not a directory", file=sys.stderr)
        return 2

    import importlib

    import jax

    jax.config.update("jax_default_matmul_precision", "highest")
    if args.family in OTHERS:
        module_name, fn_name = OTHERS[args.family].split(":")
        fn = getattr(importlib.import_module(module_name), fn_name)
        if args.family == "quant":
            fn(args.fixture, args.out)
        else:
            from arvg_jax.reference import write_outputs

            write_outputs(fn(args.fixture), args.fixture, args.out)
    else:
        from arvg_jax.reference import run_family_reference

        run_family_reference(args.family, args.fixture, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
