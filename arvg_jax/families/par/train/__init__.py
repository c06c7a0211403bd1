"""Training of the tiny PAR (`par-tiny`) on the built-in shapes dataset.

    # CPU smoke test (about a minute):
    python scripts/train_tiny.py --family par --quick --out /tmp/par_quick
    # The shipped model (one H100, about 4 min; writes arvg_jax/assets/tiny/par/):
    PYTHONPATH=. python scripts/train_tiny.py --family par --tok-max-s 70 --gpt-max-s 100 \
        --log-every 500

Stages: "tokenizer" (LlamaGen VQ, `_tokenizer.py`), "gpt" (teacher-forced PAR, `_gpt.py`),
"eval" (generation scored by the shared shapes classifier); `_run.train_tiny_par` runs them.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib

from arvg_jax.families.par.train._gpt import (
    gpt_eval,
    gpt_loss,
    gpt_train_step,
    init_gpt_params,
    init_gpt_state,
    raster_to_par,
)
from arvg_jax.families.par.train._recipe import STAGES, TinyPARRecipe
from arvg_jax.families.par.train._run import train_tiny_par
from arvg_jax.families.par.train._tokenizer import (
    init_tokenizer_state,
    reconstruct,
    tokenize,
    tokenizer_loss,
    tokenizer_train_step,
)

__all__ = [
    "STAGES",
    "TinyPARRecipe",
    "gpt_eval",
    "gpt_loss",
    "gpt_train_step",
    "init_gpt_params",
    "init_gpt_state",
    "init_tokenizer_state",
    "main",
    "raster_to_par",
    "reconstruct",
    "tokenize",
    "tokenizer_loss",
    "tokenizer_train_step",
    "train_tiny_par",
]


def main(argv: list[str] | None = None) -> int:
    """`scripts/train_tiny.py --family par [args]`."""
    from arvg_jax import assets

    p = argparse.ArgumentParser(
        prog="train_tiny.py --family par", description=__doc__.split("\n")[0]
    )
    p.add_argument("--out", type=pathlib.Path, default=assets.family_dir("par"))
    p.add_argument("--quick", action="store_true", help="tiny CPU smoke-test recipe")
    p.add_argument("--steps", type=int, help="steps of every stage (overrides the recipe)")
    p.add_argument("--tok-steps", type=int, help="tokenizer steps")
    p.add_argument("--gpt-steps", type=int, help="GPT steps")
    p.add_argument("--tok-max-s", type=float, help="wall limit (s) of the tokenizer stage")
    p.add_argument("--gpt-max-s", type=float, help="wall limit (s) of the GPT stage")
    p.add_argument("--num-train", type=int)
    p.add_argument("--num-gen", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--log-every", type=int)
    p.add_argument("--stages", default=",".join(STAGES), help=f"a prefix of {','.join(STAGES)}")
    args = p.parse_args(argv)

    recipe = TinyPARRecipe.quick() if args.quick else TinyPARRecipe.default()
    recipe = recipe.with_steps(args.steps, args.steps).with_steps(args.tok_steps, args.gpt_steps)
    over = {
        "num_train": args.num_train,
        "num_gen": args.num_gen,
        "seed": args.seed,
        "log_every": args.log_every,
    }
    recipe = dataclasses.replace(recipe, **{k: v for k, v in over.items() if v is not None})
    limits = {"tokenizer": args.tok_max_s, "gpt": args.gpt_max_s}
    train_tiny_par(
        recipe,
        args.out,
        time_limits={k: v for k, v in limits.items() if v is not None},
        stages=tuple(args.stages.split(",")),
    )
    return 0
