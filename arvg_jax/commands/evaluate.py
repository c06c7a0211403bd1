"""`arvg evaluate`: quantized models against their float model (markdown table + PNG grid), or
(`--samples` mode, `arvg_jax.commands.evaluate_samples`) the ADM evaluator's IS / FID / sFID /
precision / recall of a sample batch file.

    arvg evaluate --model var --config ref/var/config.json --ckpt ref/var/var.pth \
        --vae ref/var/vae.pth --quantized out/rtn-w8a8 out/ptq4arvg-w8a8 --out out/eval
    arvg evaluate --samples samples.npz --reference VIRTUAL_imagenet256_labeled.npz \
        --inception weights-inception-2015-12-05-6726825d.pth --out out/eval

In fidelity mode, `--reference` and `--inception` add the ADM evaluator's five numbers of the
float model's and every quantized model's images (the same labels and keys; `--per-class` images
of each class) to the report, and keep those images as ADM batch files beside it.
"""

from __future__ import annotations

import sys


def add_arguments(parser) -> None:
    from arvg_jax.models import add_model_arguments

    add_model_arguments(parser, quantized=False)
    parser.add_argument(
        "--quantized",
        nargs="+",
        metavar="DIR",
        help="quantized directories (arvg quantize) of this float model (fidelity mode)",
    )
    parser.add_argument(
        "--classes",
        default=None,
        help="comma-separated class ids (default: 8 spread over the classes)",
    )
    from arvg_jax.argtypes import POSITIVE_INT, SEED
    from arvg_jax.commands.generate import add_sampling_arguments

    add_sampling_arguments(parser.add_argument_group("sampling"))
    parser.add_argument(
        "--seed", type=SEED, default=0, help="image i draws with fold_in(seed key, i)"
    )
    parser.add_argument("--batch", type=POSITIVE_INT, default=16, help="images per compiled batch")
    parser.add_argument(
        "--per-class",
        type=POSITIVE_INT,
        default=1,
        help="images of each class (fidelity mode; with --inception, for the sample scores)",
    )
    parser.add_argument(
        "--out",
        help="output directory (new, empty, or one arvg wrote): report.md, grid.png (fidelity; "
        "required) or report.json, report.md (--samples; default <samples>.eval beside the file)",
    )
    from arvg_jax.commands import evaluate_samples

    evaluate_samples.add_arguments(parser)


def evaluate(float_model, q_models, classes, *, seed, sampling, batch, progress=True):
    """Returns (list of Fidelity, {name: images}) for each quantized model."""
    import numpy as np

    from arvg_jax import evaluate as ev
    from arvg_jax.commands.generate import NonFiniteImages, generate_images

    def logits(model, name):
        out = ev.teacher_forced_logits(model, labels, f_tok, batch)
        if out is not None and not np.isfinite(out).all():  # None: no logits (MAR)
            raise NonFiniteImages(f"{name}: NaN/Inf in its logits on the float model's tokens")
        return out

    kw = {"seed": seed, "sampling": sampling, "batch": batch, "progress": progress}
    f_img, f_tok, labels = generate_images(float_model, classes, **kw)
    f_logits = logits(float_model, "float")
    results, images = [], {"float": f_img}
    for name, qm in q_models:
        q_img, q_tok, _ = generate_images(qm, classes, **kw)
        q_logits = logits(qm, name)
        results.append(ev.compare(name, f_logits, q_logits, (f_img, f_tok), (q_img, q_tok)))
        images[name] = q_img
    return results, images


def side_by_side(images: dict, pad: int = 2):
    """One row per model (float first), one column per sample."""
    import numpy as np

    from arvg_jax import imageio

    rows = [imageio.to_uint8(v) for v in images.values()]
    stacked = np.concatenate(rows)
    return imageio.make_grid(stacked, ncols=rows[0].shape[0], pad=pad)


def run(args) -> int:
    import pathlib

    import numpy as np

    from arvg_jax import atomic, imageio
    from arvg_jax import evaluate as ev
    from arvg_jax.commands.generate import NonFiniteImages, parse_classes, sampling_from_args
    from arvg_jax.models import float_model_from_args, load_quantized
    from converters import CheckpointError, ConversionError

    if args.samples:
        from arvg_jax.commands import evaluate_samples

        return evaluate_samples.run(args)
    if not args.quantized:
        print(
            "arvg evaluate: give --quantized DIR ... (float vs quantized fidelity) or --samples "
            "NPZ --reference NPZ --inception WEIGHTS (IS, FID, sFID, precision, recall)",
            file=sys.stderr,
        )
        return 2
    scores = _check_score_args(args)
    if isinstance(scores, str):
        print(f"arvg evaluate: {scores}", file=sys.stderr)
        return 2
    if not args.out:
        print("arvg evaluate: --quantized needs --out DIR", file=sys.stderr)
        return 2
    try:
        float_model = float_model_from_args(args)
        q_models = []
        for d in args.quantized:
            qm = load_quantized(d)
            if qm.cfg != float_model.cfg:
                raise ValueError(f"{d}: quantized from another model config than --model")
            r = qm.recipe
            q_models.append((f"{r['method']} W{r['w_bits']}A{r['a_bits']}", qm))
        n_cls = float_model.num_classes
        classes = (
            parse_classes(args.classes, n_cls)
            if args.classes
            else [int(c) for c in np.linspace(0, n_cls - 1, 8).round()]
        )
        classes = [c for c in classes for _ in range(args.per_class)]
        inception = None
        if scores:
            from converters.inception import load_inception

            inception = load_inception(args.inception)
        sampling = sampling_from_args(float_model, args)
        out = atomic.check_output_dir(pathlib.Path(args.out))
    except (ValueError, CheckpointError, ConversionError, OSError) as e:
        print(f"arvg evaluate: {e}", file=sys.stderr)
        return 2
    try:
        results, images = evaluate(
            float_model,
            q_models,
            classes,
            seed=args.seed,
            sampling=sampling,
            batch=args.batch,
        )
    except NonFiniteImages as e:
        print(f"arvg evaluate: {e}", file=sys.stderr)
        return 1
    atomic.output_dir(out)
    imageio.write_png(out / "grid.png", side_by_side(images))
    table = "\n".join([ev.TABLE_HEADER] + [r.row() for r in results])
    if inception is not None:
        table += "\n\n" + _score_table(float_model, images, inception, args, out)
    report = (
        f"# Fidelity: {float_model.name}\n\nclasses {classes}, seed {args.seed}, "
        f"{', '.join(f'{k} {v}' for k, v in sampling.items())}\n\n{table}\n\n"
        f"Rows of grid.png: float, then {', '.join(n for n, _ in q_models)}.\n"
    )
    atomic.write_text(out / "report.md", report)
    print(table)
    print(f"wrote {out / 'report.md'} and {out / 'grid.png'}", file=sys.stderr)
    return 0


def _check_score_args(args) -> bool | str:
    """Whether fidelity mode adds the sample scores; a message when the flags are incomplete."""
    import os

    from arvg_jax.commands.evaluate_samples import MISSING_INCEPTION

    if not (args.reference or args.inception):
        return False
    if not args.inception:
        return MISSING_INCEPTION.replace("--samples needs", "--reference needs")
    if not args.reference:
        return "--inception needs --reference NPZ (e.g. VIRTUAL_imagenet256_labeled.npz)"
    for flag, path in (("--reference", args.reference), ("--inception", args.inception)):
        if not os.path.isfile(path):
            return f"{flag} {path}: no such file"
    return True


def _score_table(float_model, images: dict, inception, args, out) -> str:
    """The five ADM numbers of each model's images (written as `samples_<i>.npz` batches)."""
    from arvg_jax.commands.evaluate_samples import METRICS
    from arvg_jax.metrics import adm_npz
    from arvg_jax.metrics.evaluator import EvalSettings, evaluate_many

    paths = []
    for i, imgs in enumerate(images.values()):
        path = out / f"samples_{i}.npz"
        adm_npz.write_batch(path, float_model.fam.to_uint8(imgs))
        paths.append(path)
    settings = EvalSettings(batch_size=args.inception_batch, is_split_size=args.is_split_size)
    scores = evaluate_many(inception, args.reference, paths, settings=settings)
    head = "| model | " + " | ".join(label for _, label in METRICS) + " |"
    rule = "|---" * (len(METRICS) + 1) + "|"
    rows = [
        f"| {name} (samples_{i}.npz) | " + " | ".join(f"{m[k]:.4f}" for k, _ in METRICS) + " |"
        for i, (name, m) in enumerate(zip(images, scores))
    ]
    n = len(next(iter(images.values())))
    note = f"ADM evaluator on {n} images per model against {args.reference}:"
    return "\n".join([note, "", head, rule, *rows])
