"""`arvg quantize`: float checkpoint -> calibration (generated, DGC-selected) -> quantized directory.

    arvg quantize --model var-d16 --ckpt var_d16.pth --vae vae_ch160v4096z32.pth \
        --method ptq4arvg --bits w6a6 --calib 128 --out q/var-d16-w6a6
"""

from __future__ import annotations

import sys
import time


def add_arguments(parser) -> None:
    from arvg_jax import families
    from arvg_jax.argtypes import POSITIVE_INT, SEED
    from arvg_jax.models import add_model_arguments
    from arvg_jax.parallel import cli as parallel_cli
    from quant.recipes import BITS, METHODS

    add_model_arguments(parser, quantized=False)
    g = parser.add_argument_group("quantization")
    g.add_argument("--method", choices=METHODS, default="ptq4arvg")
    g.add_argument("--bits", default="w8a8", help=f"wXaY, e.g. {', '.join(BITS)}")
    g.add_argument(
        "--calib", type=POSITIVE_INT, default=128, help="calibration sequences (official: 128)"
    )
    g.add_argument("--calib-seed", type=SEED, default=42, help="seed of the calibration samples")
    g.add_argument(
        "--dgc",
        choices=["shrinkage", "official", "none"],
        default="shrinkage",
        help="calibration selection: shrinkage Mahalanobis coverage (default), the "
        "official cond/uncond ratio rule, or cond samples only",
    )
    g.add_argument(
        "--symmetric-weights",
        action="store_true",
        help="symmetric per-channel weights (zero point 0) instead of asymmetric",
    )
    g.add_argument(
        "--coverage",
        action="append",
        default=[],
        metavar="NAME",
        help="also quantize what the family offers under NAME (repeatable): "
        + "; ".join(
            f"{f.name}: {n} ({h})"
            for f in families.all_families().values()
            for n, h in f.coverage_options().items()
        ),
    )
    g.add_argument("--out", required=True, help="output directory (orbax; written atomically)")
    g.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --out that arvg wrote (it holds a .arvg marker file)",
    )
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    parallel_cli.add_arguments(parser)


def format_summary(summary: dict, seconds: float) -> str:
    b = summary["bytes"]
    lines = [f"quantized {sum(summary['by_kind'].values())} layers in {seconds:.1f}s:"]
    for kind, count in sorted(summary["by_kind"].items()):
        groups = summary["groups_by_kind"].get(kind, [])
        lines.append(f"  {kind:8s} x{count:<4d} activation groups {groups}")
    if summary["float_layers"]:
        lines.append(f"  left in float: {', '.join(summary['float_layers'])}")
    lines.append(
        f"bytes: float params {b['float']:,} -> quantized tree {b['quantized']:,} "
        f"({b['quantized'] / b['float']:.2f}x); quantized kernels {b['float_kernels_quantized']:,}"
        f" -> {b['packed_kernels']:,} packed at their bit width"
    )
    return "\n".join(lines)


def run(args) -> int:
    from arvg_jax import atomic
    from arvg_jax.models import config_to_dict, model_from_args, prepare_calibration, quant_adapter
    from arvg_jax.parallel import cli as parallel_cli
    from arvg_jax.parallel import describe, rules
    from arvg_jax.parallel import generate as parallel_generate
    from converters import CheckpointError, ConversionError
    from quant import api, checkpoint
    from quant.recipes import Recipe

    t0 = time.perf_counter()
    try:
        mesh = parallel_cli.mesh_from_args(args)  # first: jax.distributed precedes device use
        if mesh.shape["model"] > 1:
            raise ValueError(
                f"--mesh {args.mesh}: calibration splits its rows over data only (model=1)"
            )
        atomic.check_replaceable(args.out, args.overwrite)  # before minutes of work
        recipe = Recipe.parse(
            args.method,
            args.bits,
            calib=args.calib,
            seed=args.calib_seed,
            dgc=args.dgc,
            weight_symmetric=args.symmetric_weights,
            coverage=tuple(args.coverage),
        )
        parallel_generate.check_batch(
            recipe.calib, mesh, "--calib"
        )  # before the generation, not after
        model = model_from_args(args)
        adapter = quant_adapter(model, recipe.coverage)
    except (
        ValueError,
        CheckpointError,
        ConversionError,
        FileNotFoundError,
        FileExistsError,
        NotImplementedError,
    ) as e:
        print(f"arvg quantize: {e}", file=sys.stderr)
        return 2
    progress = not args.quiet
    print(
        f"{model.name}: {recipe.method} {recipe.bits}, {recipe.calib} calibration sequences "
        f"(seed {recipe.seed}, dgc {recipe.dgc})"
        + (f", coverage + {', '.join(recipe.coverage)}" if recipe.coverage else "")
        + f"; {describe(mesh)}",
        file=sys.stderr,
    )
    import warnings

    try:
        # Overflow shows as NaN / Inf in the activations, reported below in one line naming the
        # layer: numpy's own warnings about it (some from JAX callback threads, which a
        # thread-local np.errstate would miss) only add noise before that line.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            batch, calib_info = prepare_calibration(model, adapter, recipe, progress=progress)
            params = model.params
            if mesh.size > 1:  # rows split over data, params replicated: GSPMD runs each stage
                batch = parallel_generate.shard_rows(batch, mesh)
                params = rules.replicate(params, mesh)
            qparams, summary = api.quantize(adapter, params, batch, recipe, progress=progress)
    except api.NonFiniteError as e:
        print(f"arvg quantize: {e}", file=sys.stderr)
        return 1
    summary["calibration"] = calib_info
    meta = {
        "family": model.family,
        "model_config": config_to_dict(model.cfg),
        "recipe": recipe.to_dict(),
        "vae_params": model.vae_params,
        "vae_config": config_to_dict(model.vae_cfg),
        "summary": summary,
        "extra": {"name": f"{model.name} {recipe.method} {recipe.bits}", "source": model.source},
    }
    try:
        path = atomic.write_dir(
            args.out, lambda tmp: checkpoint.write(tmp, qparams, **meta), overwrite=args.overwrite
        )
    except FileExistsError as e:
        print(f"arvg quantize: {e}", file=sys.stderr)
        return 2
    print(format_summary(summary, time.perf_counter() - t0), file=sys.stderr)
    print(f"wrote {path}", file=sys.stderr)
    return 0
