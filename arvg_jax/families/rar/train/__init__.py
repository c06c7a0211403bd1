"""Training the tiny RAR (`rar-tiny`) on the procedural shapes dataset.

    # CPU smoke test (a couple of minutes):
    python scripts/train_tiny.py --family rar --quick --out /tmp/rar_quick
    # The shipped model (one H100, about 4 minutes), into arvg_jax/assets/tiny/rar:
    PYTHONPATH=. python scripts/train_tiny.py --family rar --tok-max-s 60 --rar-max-s 110 \
        --log-every 500
    # Re-evaluate saved assets with other sampling settings (name:guidance:pow:temperature):
    PYTHONPATH=. python scripts/train_tiny.py --family rar --eval-only --gen g3:3:0:1 \
        --gen g5:5:0:1

Stages: tokenizer (MaskGIT-VQGAN with an encoder, `_tokenizer`), rar (teacher-forced raster
cross-entropy, `_rar`), eval (generation scored by the shared shapes classifier, `_evaluate`).
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib

from arvg_jax.families.rar.train._rar import (
    drop_labels,
    init_rar_params,
    init_rar_state,
    rar_eval_loss,
    rar_loss,
    rar_train_step,
)
from arvg_jax.families.rar.train._recipe import (
    STAGES,
    RARTinyRecipe,
    reevaluate_rar_tiny,
    train_rar_tiny,
)
from arvg_jax.families.rar.train._tokenizer import (
    Encoder,
    decode_params,
    init_tokenizer_state,
    reconstruct,
    tokenize,
    tokenizer_loss,
    tokenizer_train_step,
)

__all__ = [
    "STAGES",
    "Encoder",
    "RARTinyRecipe",
    "decode_params",
    "drop_labels",
    "init_rar_params",
    "init_rar_state",
    "init_tokenizer_state",
    "main",
    "rar_eval_loss",
    "rar_loss",
    "rar_train_step",
    "reconstruct",
    "reevaluate_rar_tiny",
    "tokenize",
    "tokenizer_loss",
    "tokenizer_train_step",
    "train_rar_tiny",
]


def _parse_gen(spec: str) -> tuple[str, float, float, float]:
    name, g, g_pow, temp = spec.split(":")
    return name, float(g), float(g_pow), float(temp)


def main(argv: list[str] | None = None) -> int:
    """`scripts/train_tiny.py --family rar [args]`."""
    from arvg_jax import assets

    p = argparse.ArgumentParser(
        prog="train_tiny.py --family rar", description=__doc__.split("\n")[0]
    )
    p.add_argument("--out", type=pathlib.Path, default=assets.family_dir("rar"))
    p.add_argument("--quick", action="store_true", help="tiny CPU smoke-test recipe")
    p.add_argument(
        "--eval-only",
        action="store_true",
        help="no training: re-run the generation evaluation of the assets in --out",
    )
    p.add_argument("--steps", type=int, help="steps of every stage (overrides the recipe)")
    p.add_argument("--tok-steps", type=int, help="tokenizer steps")
    p.add_argument("--rar-steps", type=int, help="RAR steps")
    p.add_argument("--tok-max-s", type=float, help="wall limit of the tokenizer stage (s)")
    p.add_argument("--rar-max-s", type=float, help="wall limit of the RAR stage (s)")
    p.add_argument("--num-train", type=int)
    p.add_argument("--num-gen", type=int, help="generated images per evaluated setting")
    p.add_argument("--seed", type=int)
    p.add_argument("--log-every", type=int)
    p.add_argument(
        "--gen",
        action="append",
        type=_parse_gen,
        metavar="NAME:GUIDANCE:POW:TEMPERATURE",
        help="a sampling setting to evaluate (repeatable; the first makes samples.png)",
    )
    p.add_argument("--stages", default=",".join(STAGES), help="a prefix of tokenizer,rar,eval")
    args = p.parse_args(argv)
    stages = tuple(args.stages.split(","))
    if stages != STAGES[: len(stages)]:
        p.error(f"--stages must be a prefix of {','.join(STAGES)}")

    recipe = RARTinyRecipe.quick() if args.quick else RARTinyRecipe.default()
    recipe = recipe.with_steps(args.steps, args.steps).with_steps(args.tok_steps, args.rar_steps)
    over = {
        "num_train": args.num_train,
        "num_gen": args.num_gen,
        "seed": args.seed,
        "log_every": args.log_every,
        "gen_settings": tuple(args.gen) if args.gen else None,
    }
    recipe = dataclasses.replace(recipe, **{k: v for k, v in over.items() if v is not None})
    if args.eval_only:
        reevaluate_rar_tiny(
            args.out,
            settings=recipe.gen_settings,
            num_gen=recipe.num_gen,
            gen_batch=recipe.gen_batch,
            seed=recipe.seed,
        )
        return 0
    limits = {k: v for k, v in (("tokenizer", args.tok_max_s), ("rar", args.rar_max_s)) if v}
    train_rar_tiny(recipe, args.out, time_limits=limits, stages=stages)
    return 0
