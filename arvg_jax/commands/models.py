"""`arvg models`: the model families and their presets (every `--model` value).

arvg models
"""

from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument(
        "--family", default=None, help="list only this family (default: all of them)"
    )


def run(args) -> int:
    from arvg_jax import families

    regs = families.all_families()
    if args.family is not None:
        regs = {args.family: families.get(args.family)}
    for fam in regs.values():
        print(f"{fam.name}: {fam.description}")
        for name, p in fam.presets().items():
            tag = "  [packaged weights]" if p.packaged else ""
            print(f"  {name:<16} {p.description}{tag}")
        print(
            f"  {fam.name:<16} any size: --model {fam.name} --config config.json "
            "(official constructor arguments)"
        )
    return 0
