"""Training the tiny MAR (KL VAE tokenizer + MAR with its diffusion head) on the shapes dataset.

    # CPU smoke test (a few minutes on 2 cores):
    python scripts/train_tiny.py --family mar --quick --out /tmp/mar_quick
    # The shipped model (one H100, about 4 minutes; the limits stop a stage early on a slower
    # device, its cosine schedule then cut short; recipe.json records the steps reached):
    PYTHONPATH=. python scripts/train_tiny.py --family mar --vae-max-s 40 --mar-max-s 110 \
        --log-every 250

    # Other sampling settings on saved assets (merged into recipe.json, samples.png rewritten):
    PYTHONPATH=. python scripts/train_tiny.py --family mar --eval-only \
        --gen cfg3:cfg=3 --gen cfg2_t0.9:cfg=2,temperature=0.9

Writes model.npz, tokenizer.npz, recipe.json and samples.png into --out (default
`arvg_jax/assets/tiny/mar`, what `--model mar-tiny` loads).
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib

from arvg_jax.families.mar.train._mar import (
    diffusion_loss_terms,
    init_mar_params,
    init_mar_state,
    mar_eval_loss,
    mar_loss,
    mar_train_step,
    random_mask,
)
from arvg_jax.families.mar.train._recipe import DEMO_SAMPLING, MARTinyRecipe
from arvg_jax.families.mar.train._tiny import STAGES, reevaluate, train_tiny
from arvg_jax.families.mar.train._vae import (
    Encoder,
    VAELossConfig,
    encode_moments,
    fold_token_scale,
    init_vae_state,
    reconstruct,
    vae_loss,
    vae_train_step,
)

__all__ = [
    "DEMO_SAMPLING",
    "STAGES",
    "Encoder",
    "MARTinyRecipe",
    "VAELossConfig",
    "diffusion_loss_terms",
    "encode_moments",
    "fold_token_scale",
    "init_mar_params",
    "init_mar_state",
    "init_vae_state",
    "main",
    "mar_eval_loss",
    "mar_loss",
    "mar_train_step",
    "random_mask",
    "reconstruct",
    "reevaluate",
    "train_tiny",
    "vae_loss",
    "vae_train_step",
]


def _parse_gen(text: str) -> tuple[str, dict]:
    """`NAME:cfg=2,temperature=0.9` -> (NAME, DEMO_SAMPLING with those values), typed as the
    family's sampling arguments."""
    from arvg_jax import families

    name, _, rest = text.partition(":")
    types = {a.name: a.type for a in families.get("mar").sampling_arguments()}
    out = dict(DEMO_SAMPLING)
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        if key not in types:
            raise SystemExit(f"--gen {text}: unknown setting {key!r}; known: {sorted(types)}")
        out[key] = types[key](value)
    return name, out


def main(argv: list[str] | None = None) -> int:
    """`scripts/train_tiny.py --family mar [args]`."""
    from arvg_jax import assets

    p = argparse.ArgumentParser(
        prog="train_tiny.py --family mar", description=__doc__.splitlines()[0]
    )
    p.add_argument("--out", type=pathlib.Path, default=assets.family_dir("mar"))
    p.add_argument("--quick", action="store_true", help="tiny CPU smoke-test recipe")
    p.add_argument("--steps", type=int, help="steps of every stage")
    p.add_argument("--vae-steps", type=int)
    p.add_argument("--mar-steps", type=int)
    p.add_argument("--vae-max-s", type=float, help="wall limit of the VAE stage (s)")
    p.add_argument("--mar-max-s", type=float, help="wall limit of the MAR stage (s)")
    p.add_argument("--num-train", type=int)
    p.add_argument("--num-gen", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--log-every", type=int)
    p.add_argument("--stages", default=",".join(STAGES), help="a prefix of vae,mar,eval")
    p.add_argument("--classifier-dir", type=pathlib.Path, help="shared classifier's assets dir")
    p.add_argument(
        "--eval-only",
        action="store_true",
        help="no training: re-run the generation evaluation of the assets in --out",
    )
    p.add_argument(
        "--gen",
        action="append",
        metavar="NAME:KEY=VALUE,...",
        help="a sampling setting to evaluate over the demo one (repeatable; the first makes "
        "samples.png), e.g. cfg2_t0.9:cfg=2,temperature=0.9",
    )
    args = p.parse_args(argv)
    stages = tuple(args.stages.split(","))
    if stages != STAGES[: len(stages)]:
        p.error(f"--stages must be a prefix of {','.join(STAGES)}")

    recipe = MARTinyRecipe.quick() if args.quick else MARTinyRecipe.default()
    if args.gen:
        recipe = dataclasses.replace(recipe, gen_settings=tuple(_parse_gen(g) for g in args.gen))
    if args.eval_only:
        reevaluate(
            args.out,
            recipe.gen_settings,
            num_gen=args.num_gen or recipe.num_gen,
            gen_batch=recipe.gen_batch,
            classifier_dir=args.classifier_dir,
        )
        return 0
    recipe = recipe.with_steps(args.steps, args.steps)
    recipe = recipe.with_steps(args.vae_steps, args.mar_steps)
    over = {
        "num_train": args.num_train,
        "num_gen": args.num_gen,
        "seed": args.seed,
        "log_every": args.log_every,
    }
    recipe = dataclasses.replace(recipe, **{k: v for k, v in over.items() if v is not None})
    limits = {k: v for k, v in (("vae", args.vae_max_s), ("mar", args.mar_max_s)) if v}
    train_tiny(
        recipe, args.out, time_limits=limits, stages=stages, classifier_dir=args.classifier_dir
    )
    return 0
