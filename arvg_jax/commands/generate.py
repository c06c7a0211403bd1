"""`arvg generate`: class-conditional images from a float checkpoint or a quantized directory.

    arvg generate --model var-d16 --ckpt var_d16.pth --vae vae_ch160v4096z32.pth \
        --classes 207,360 --cfg 1.5 --seed 0 --out grid.png
    arvg generate --quantized out/var-d16-w8a8 --classes 207,360 --seed 0 --out grid.png
"""

from __future__ import annotations

import sys


class NonFiniteImages(ValueError):
    """Generated images hold NaN / Inf (the model's activations overflowed)."""


def add_arguments(parser) -> None:
    from arvg_jax.argtypes import POSITIVE_INT, SEED
    from arvg_jax.models import add_model_arguments
    from arvg_jax.parallel import cli as parallel_cli

    add_model_arguments(parser)
    g = parser.add_argument_group("sampling")
    g.add_argument(
        "--classes",
        required=True,
        help="comma-separated class ids, e.g. 207,360 (repeat ids for more samples)",
    )
    add_sampling_arguments(g)
    g.add_argument("--seed", type=SEED, default=0, help="image i draws with fold_in(seed key, i)")
    g.add_argument("--batch", type=POSITIVE_INT, default=32, help="images per compiled batch")
    g.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    g.add_argument(
        "--out",
        required=True,
        help="output image, a grid of all images; the extension picks the format (.png, .jpg, "
        ".webp, ...)",
    )
    g.add_argument("--save-tokens", help="also write tokens and labels to this .npz")
    parallel_cli.add_arguments(parser)


def add_sampling_arguments(group) -> None:
    """Every family's sampling settings as flags (default: the model family's official value),
    each checked against the ranges the families declare (`SamplingArg.valid`)."""
    from arvg_jax import argtypes, families

    per_family: dict[str, list[str]] = {}
    valid: dict[str, list] = {}
    for fam in families.all_families().values():
        for a in fam.sampling_arguments():
            per_family.setdefault(a.name, []).append(f"{fam.name} {a.default}")
            if a.valid is not None:
                valid.setdefault(a.name, []).append((fam.name, a.valid))
    for arg in families.sampling_arguments().values():
        if arg.type is bool:
            group.add_argument(arg.flag, action="store_true", default=None, help=arg.help)
        else:
            official = "; ".join(per_family[arg.name])
            check = argtypes.AnyOf(tuple(valid[arg.name])) if arg.name in valid else arg.type
            allowed = f"; {check.describe()}" if arg.name in valid else ""
            group.add_argument(
                arg.flag,
                type=check,
                default=None,
                help=f"{arg.help} (default: the official value, per size where it varies: "
                f"{official}{allowed})",
            )


def sampling_from_args(model, args) -> dict:
    """The model family's sampling settings: given flags, else the official defaults.

    Raises:
      ValueError: a flag outside the range this family accepts (e.g. --top-p 0 for PAR), or a
        flag of another family (it would be ignored).
    """
    from arvg_jax import argtypes, families

    own = model.fam.sampling_arguments(model.cfg)
    foreign = [
        a.flag
        for name, a in families.sampling_arguments().items()
        if getattr(args, name, None) is not None and name not in {o.name for o in own}
    ]
    if foreign:
        raise ValueError(
            f"{', '.join(foreign)}: not a sampling setting of {model.family} (its settings: "
            f"{', '.join(a.flag for a in own)})"
        )
    out = {}
    for arg in own:
        value = getattr(args, arg.name, None)
        if value is not None:
            argtypes.check(arg.valid, value, arg.flag, model.family)
        out[arg.name] = arg.default if value is None else value
    return out


def parse_classes(text: str, num_classes: int) -> list[int]:
    try:
        classes = [int(c) for c in text.replace(" ", "").split(",") if c]
    except ValueError:
        raise ValueError(f"--classes {text!r}: expected comma-separated integers") from None
    if not classes:
        raise ValueError("--classes: give at least one class id")
    bad = [c for c in classes if not 0 <= c < num_classes]
    if bad:
        raise ValueError(f"--classes: {bad} outside [0, {num_classes})")
    return classes


def generate_images(
    model,
    classes,
    *,
    seed,
    sampling,
    batch,
    options=None,
    progress=True,
    start=0,
    on_batch=None,
    mesh=None,
):
    """Generates in fixed-size batches (the last one padded, so one compile serves all).

    Image i (of `classes`) draws with `families.image_keys(seed, start + i, 1)`: the batch size
    changes speed only, and `start` lets a caller generate a long run in pieces (`arvg sample`).
    `on_batch(n)`, if given, is called after each batch with its number of images.
    `mesh` (`arvg_jax.parallel.make_mesh`) of several devices splits each batch over its "data"
    axis (the batch is rounded up to a multiple of it) and the params by the family's sharding
    rules; the images stay the same.
    """
    import numpy as np

    from arvg_jax.families import image_keys
    from arvg_jax.options import ExecOptions
    from arvg_jax.progress import Progress

    fam = model.fam
    # The family's fastest layout (VAR: packed int8 kernels, stacked blocks): same values.
    params = fam.inference_layout(model.params)
    options = options or ExecOptions()
    labels = np.asarray(classes, np.int32)
    n = len(labels)
    b = min(batch, n)
    vae_params, gen = model.vae_params, fam.generate
    if mesh is not None and mesh.size > 1:
        import functools

        from arvg_jax.parallel import generate as parallel_generate
        from arvg_jax.parallel import rules

        b = parallel_generate.padded_batch(b, mesh)
        params = rules.place(params, fam.sharding_rules(model.cfg), mesh)
        vae_params = rules.replicate(vae_params, mesh)
        gen = functools.partial(parallel_generate.generate, fam, mesh)
    images, tokens = [], []
    bar = Progress((n + b - 1) // b, "generate", enabled=progress)
    for lo in range(0, n, b):
        chunk = labels[lo : lo + b]
        pad = b - len(chunk)
        padded = np.concatenate([chunk, np.full((pad,), chunk[-1], np.int32)]) if pad else chunk
        out = gen(
            params,
            vae_params,
            model.cfg,
            model.vae_cfg,
            padded,
            image_keys(seed, start + lo, b),
            options=options,
            **sampling,
        )
        finite = np.asarray(out.get("finite", True))
        if not finite.all():  # NaN logits still give tokens: refuse before any image is kept
            bad = np.flatnonzero(~np.broadcast_to(finite, padded.shape)[: len(chunk)])
            bar.close()  # its last draw goes before the message, not after it
            raise NonFiniteImages(_nonfinite_message(model, start + lo, chunk, bad, out["tokens"]))
        images.append(np.asarray(out["images"])[: len(chunk)])
        if not np.isfinite(images[-1]).all():
            bar.close()
            raise NonFiniteImages(
                f"images {start + lo}-{start + lo + len(chunk) - 1}: the generated images hold "
                "NaN/Inf (the model's activations overflowed; check the weights and settings)"
            )
        tokens.append(np.asarray(out["tokens"])[: len(chunk)])
        bar.update()
        if on_batch is not None:
            on_batch(len(chunk))
    bar.close()
    return np.concatenate(images), np.concatenate(tokens), labels


def _nonfinite_message(model, first: int, labels, bad, tokens) -> str:
    """One line: which images went non-finite while sampling, and the first non-finite layer
    of the family's teacher-forced forward on them (`arvg_jax.nonfinite.locate`)."""
    import numpy as np

    from arvg_jax import nonfinite

    where = nonfinite.locate(model, np.asarray(labels)[bad], np.asarray(tokens)[bad])
    shown = ", ".join(str(first + int(i)) for i in bad[:8]) + (", ..." if len(bad) > 8 else "")
    return (
        f"image(s) {shown}: NaN/Inf in the model's logits while sampling (the weights overflow "
        f"at run time); {where}"
    )


def run(args) -> int:
    import numpy as np

    from arvg_jax import atomic, imageio
    from arvg_jax.models import model_from_args
    from arvg_jax.options import ExecOptions
    from arvg_jax.parallel import cli as parallel_cli
    from arvg_jax.parallel import describe
    from converters import CheckpointError, ConversionError

    try:
        mesh = parallel_cli.mesh_from_args(args)  # first: jax.distributed precedes device use
        imageio.image_format(args.out)  # refuse an unknown extension before generating
        model = model_from_args(args)
        classes = parse_classes(args.classes, model.num_classes)
        sampling = sampling_from_args(model, args)
    except (ValueError, CheckpointError, ConversionError, FileNotFoundError) as e:
        print(f"arvg generate: {e}", file=sys.stderr)
        return 2
    kind = (
        f"quantized {model.recipe['method']} {model.recipe['w_bits']}/{model.recipe['a_bits']}"
        if model.quantized
        else "float"
    )
    settings = ", ".join(f"{k} {v}" for k, v in sampling.items())
    print(
        f"{model.name}: {kind}, {len(classes)} image(s), {settings}, seed {args.seed}; "
        f"{describe(mesh)}",
        file=sys.stderr,
    )
    try:
        images, tokens, labels = generate_images(
            model,
            classes,
            seed=args.seed,
            sampling=sampling,
            batch=args.batch,
            options=ExecOptions(dtype=args.dtype),
            mesh=mesh,
        )
    except NonFiniteImages as e:
        print(f"arvg generate: {e}", file=sys.stderr)
        return 1
    path = imageio.write_image(args.out, imageio.make_grid(imageio.to_uint8(images)))
    if args.save_tokens:

        def save_tokens(tmp):
            with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a name
                np.savez(f, tokens=tokens, labels=labels)

        atomic.write(args.save_tokens, save_tokens)
    print(f"wrote {path}", file=sys.stderr)
    return 0
