"""`arvg evaluate --samples`: the ADM evaluator's five numbers for a sample batch file.

    arvg evaluate --samples samples.npz --reference VIRTUAL_imagenet256_labeled.npz \
        --inception weights-inception-2015-12-05-6726825d.pth --out out/eval

Inception Score, FID, sFID, precision and recall exactly as openai/guided-diffusion
`evaluations/evaluator.py` computes them (`arvg_jax.metrics.evaluate`), written to report.json and
report.md (each atomically). The Inception weights are never downloaded: `--inception` names a
file of one of the two published layouts (see `INCEPTION_FILES`).
"""

from __future__ import annotations

import sys

# The FID Inception-v3 (TF graph of 2015-12-05) as the two FID tools publish it; either loads.
_TF = "weights-inception-2015-12-05-6726825d.pth"
_PF = "pt_inception-2015-12-05-6726825d.pth"
INCEPTION_FILES = (
    (
        "torch-fidelity",
        _TF,
        f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{_TF}",
    ),
    (
        "pytorch-fid",
        _PF,
        f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{_PF}",
    ),
)
MISSING_INCEPTION = (
    "--samples needs --inception WEIGHTS (nothing is downloaded): give torch-fidelity's "
    f"{INCEPTION_FILES[0][1]} ({INCEPTION_FILES[0][2]}) or pytorch-fid's "
    f"{INCEPTION_FILES[1][1]} ({INCEPTION_FILES[1][2]})"
)
METRICS = (
    ("inception_score", "Inception Score"),
    ("fid", "FID"),
    ("sfid", "sFID"),
    ("precision", "Precision"),
    ("recall", "Recall"),
)


def add_arguments(parser) -> None:
    from arvg_jax.argtypes import POSITIVE_INT

    g = parser.add_argument_group(
        "sample scores (--samples mode: IS, FID, sFID, precision, recall of a batch file)"
    )
    g.add_argument("--samples", metavar="NPZ", help="sample batch (arr_0 uint8 [N, H, W, 3])")
    g.add_argument(
        "--reference", metavar="NPZ", help="reference batch, e.g. VIRTUAL_imagenet256_labeled.npz"
    )
    g.add_argument(
        "--inception",
        metavar="WEIGHTS",
        help=f"{_TF} (torch-fidelity) or {_PF} (pytorch-fid)",
    )
    g.add_argument(
        "--inception-batch", type=POSITIVE_INT, default=64, help="images per Inception call"
    )
    g.add_argument(
        "--is-split-size", type=POSITIVE_INT, default=5000, help="images per Inception Score split"
    )


def default_out(samples: str) -> str:
    """`samples.npz` -> `samples.eval` beside it."""
    import pathlib

    p = pathlib.Path(samples)
    return str(p.with_name(p.stem + ".eval"))


def report_markdown(report: dict) -> str:
    m = report["metrics"]
    rows = "\n".join(f"| {label} | {m[key]:.4f} |" for key, label in METRICS)
    return (
        f"# ADM evaluator: {report['samples']}\n\n"
        f"{report['num_samples']} samples vs {report['num_reference']} reference images "
        f"({report['reference']}); Inception weights {report['inception']}; "
        f"{report['seconds']:.1f} s\n\n| metric | value |\n| --- | --- |\n{rows}\n"
    )


def run(args) -> int:
    import json
    import os
    import pathlib
    import time

    from arvg_jax import atomic
    from arvg_jax.metrics import adm_npz
    from arvg_jax.metrics.evaluator import EvalSettings, evaluate
    from converters import CheckpointError, ConversionError
    from converters.inception import load_inception

    def fail(msg: str) -> int:
        print(f"arvg evaluate: {msg}", file=sys.stderr)
        return 2

    if getattr(args, "quantized", None) or getattr(args, "model", None):
        return fail("--samples scores a batch file: give no --model / --quantized with it")
    if not args.reference:
        return fail("--samples needs --reference NPZ (e.g. VIRTUAL_imagenet256_labeled.npz)")
    if not args.inception:
        return fail(MISSING_INCEPTION)
    for flag, path in (
        ("--samples", args.samples),
        ("--reference", args.reference),
        ("--inception", args.inception),
    ):
        if not os.path.isfile(path):
            return fail(f"{flag} {path}: no such file")
    if args.inception_batch < 1 or args.is_split_size < 1:
        return fail("--inception-batch and --is-split-size must be positive")
    try:
        out = atomic.check_output_dir(pathlib.Path(args.out or default_out(args.samples)))
        (n_samples, *_), _ = adm_npz.array_shape(args.samples)
        (n_ref, *_), _ = adm_npz.array_shape(args.reference)
        params = load_inception(args.inception)
    except (ValueError, CheckpointError, ConversionError, OSError) as e:
        return fail(str(e))
    settings = EvalSettings(batch_size=args.inception_batch, is_split_size=args.is_split_size)
    start = time.perf_counter()
    metrics = evaluate(params, args.reference, args.samples, settings=settings)
    report = {
        "samples": str(args.samples),
        "reference": str(args.reference),
        "inception": str(args.inception),
        "num_samples": int(n_samples),
        "num_reference": int(n_ref),
        "settings": {"inception_batch": args.inception_batch, "is_split_size": args.is_split_size},
        "metrics": {k: float(metrics[k]) for k, _ in METRICS},
        "seconds": time.perf_counter() - start,
    }
    atomic.output_dir(out)
    markdown = report_markdown(report)
    atomic.write_text(out / "report.json", json.dumps(report, indent=1) + "\n")
    atomic.write_text(out / "report.md", markdown)
    print(markdown)
    print(f"wrote {out / 'report.json'} and {out / 'report.md'}", file=sys.stderr)
    return 0
