"""Trains the tiny shapes models (classifier, multi-scale VQVAE, VAR) and writes their assets.

    # CPU smoke test (about a minute):
    python scripts/train_tiny.py --quick --steps 20 --out /tmp/tiny_quick
    # The shipped models (one H100: 498 s; the VAE stage stopped at its time limit, step 6500):
    PYTHONPATH=. python scripts/train_tiny.py --out arvg_jax/assets/tiny --num-train 64000 \
        --cls-steps 1500 --vae-steps 10000 --var-steps 19000 --vae-max-s 120 --var-max-s 235 \
        --num-gen 1200 --log-every 500
    # Re-evaluate saved assets with other sampling settings (CPU is fine):
    python scripts/train_tiny.py --out arvg_jax/assets/tiny --eval-only --num-gen 1200 \
        --gen cfg3:3.0:0:0 --gen cfg1.5_p0.96:1.5:0:0.96

Writes classifier.npz, vae.npz, var.npz, recipe.json (the `arvg_jax.assets.load_tiny` layout)
and samples.png into --out, re-saving after every stage and every minute of VAR training.

Other families: `python scripts/train_tiny.py --family rar|par|mar [...]` hands the remaining
arguments to that family's recipe (`arvg_jax.families.<name>.train.main`; `--help` there), which
writes `arvg_jax/assets/tiny/<name>/` by default.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--family", default="var")
    known, rest = pre.parse_known_args(argv)
    if known.family != "var":
        import importlib

        from arvg_jax import families

        families.get(known.family)  # a one-line error for an unknown family
        train = importlib.import_module(f"arvg_jax.families.{known.family}.train")
        return train.main(rest)
    argv = rest
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--family", default="var", help="var (this recipe) or rar, par, mar")
    p.add_argument("--out", type=pathlib.Path, required=True, help="output directory")
    p.add_argument(
        "--eval-only",
        action="store_true",
        help="no training: re-run the generation evaluation of the assets in --out",
    )
    p.add_argument(
        "--gen",
        action="append",
        metavar="NAME:CFG:TOPK:TOPP",
        help="a sampling setting to evaluate (repeatable; the first makes samples.png)",
    )
    p.add_argument("--quick", action="store_true", help="tiny CPU smoke-test recipe")
    p.add_argument("--steps", type=int, help="steps of every stage (overrides the recipe)")
    p.add_argument("--vae-steps", type=int)
    p.add_argument("--var-steps", type=int)
    p.add_argument("--cls-steps", type=int)
    for stage in ("cls", "vae", "var"):
        p.add_argument(f"--{stage}-max-s", type=float, help=f"wall limit of the {stage} stage")
    p.add_argument("--num-train", type=int)
    p.add_argument("--num-gen", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--log-every", type=int)
    p.add_argument(
        "--stages",
        default="classifier,vae,var,eval",
        help="comma-separated prefix of classifier,vae,var,eval",
    )
    args = p.parse_args(argv)

    from arvg_jax.families.var.train import TinyRecipe, reevaluate_tiny, train_tiny

    recipe = TinyRecipe.quick() if args.quick else TinyRecipe.default()
    settings = recipe.gen_settings
    if args.gen:
        settings = tuple(
            (n, float(c), int(k), float(t)) for n, c, k, t in (g.split(":") for g in args.gen)
        )
    if args.eval_only:
        reevaluate_tiny(
            args.out,
            settings=settings,
            num_gen=args.num_gen or recipe.num_gen,
            gen_batch=recipe.gen_batch,
        )
        return 0
    recipe = recipe.with_steps(args.steps, args.steps, args.steps)
    recipe = recipe.with_steps(args.vae_steps, args.var_steps, args.cls_steps)
    over = {
        "num_train": args.num_train,
        "num_gen": args.num_gen,
        "seed": args.seed,
        "log_every": args.log_every,
    }
    import dataclasses

    over["gen_settings"] = settings
    recipe = dataclasses.replace(recipe, **{k: v for k, v in over.items() if v is not None})
    limits = {
        name: v
        for name, v in (
            ("classifier", args.cls_max_s),
            ("vae", args.vae_max_s),
            ("var", args.var_max_s),
        )
        if v is not None
    }
    train_tiny(recipe, args.out, time_limits=limits, stages=tuple(args.stages.split(",")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
