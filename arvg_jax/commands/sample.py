"""`arvg sample`: many class-conditional images into one ADM batch file, resumably.

    arvg sample --model var-d16 --ckpt var_d16.pth --vae vae_ch160v4096z32.pth \
        --num-images 50000 --per-class 50 --seed 0 --out samples.npz
    arvg sample --quantized out/var-d16-w8a8 --num-images 50000 --out samples.npz

Output: `arr_0` uint8 [N, H, W, 3] and the class labels as `arr_1` int64 [N] (guided-diffusion
`scripts/image_sample.py` writes `np.savez(path, arr, label_arr)`; the ADM evaluator reads only
`arr_0`, the VAR / RAR / MAR scripts write `arr_0` alone). Label order: image i has class
(i // per_class) % num_classes, i.e. 50 per class with the classes in order as VAR's and MAR's FID
runs draw them (RAR's `sample_imagenet_rar.py` cycles the classes instead, `i % 1000`; FID and
the other metrics ignore the order).

Resuming: images go to fixed-size shards under `<out>.shards/` (`arvg_jax.sample_shards`); a rerun
with the same settings skips the finished shards. Image i always draws with
`families.image_keys(seed, i, 1)`, so the file is the same whatever --batch is or how often the run
was interrupted. Ctrl-C stops within a second and keeps the finished shards (exit status 130;
`arvg_jax.interrupt`).

Devices and hosts (docs/scale_out.md): each batch is split over the "data" axis of `--mesh`
(default: every local device); with several processes (`--distributed`, or ARVG_PROCESS_INDEX /
ARVG_PROCESS_COUNT for a job array) process p writes the shards s with s % P == p
(`arvg_jax.parallel.hosts`) and process 0 joins them once all exist.
"""

from __future__ import annotations

import sys

# Seconds Ctrl-C waits for the batch in flight before the process ends without it.
_STOP_WAIT_S = 0.5


def add_arguments(parser) -> None:
    from arvg_jax.argtypes import POSITIVE_INT, SEED
    from arvg_jax.commands.generate import add_sampling_arguments
    from arvg_jax.models import add_model_arguments
    from arvg_jax.parallel import cli as parallel_cli

    add_model_arguments(parser)
    g = parser.add_argument_group("sampling")
    add_sampling_arguments(g)
    g.add_argument(
        "--num-images", type=POSITIVE_INT, required=True, help="images in all (50000 for FID)"
    )
    g.add_argument(
        "--per-class",
        type=POSITIVE_INT,
        default=50,
        help="consecutive images per class: image i has class (i // per_class) %% num_classes",
    )
    g.add_argument("--seed", type=SEED, default=0, help="image i draws with fold_in(seed key, i)")
    g.add_argument(
        "--batch", type=POSITIVE_INT, default=32, help="images per compiled batch (speed only)"
    )
    g.add_argument(
        "--shard-size",
        type=POSITIVE_INT,
        default=1000,
        help="images per shard file (part of the run: a resumed run must use the same)",
    )
    g.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    g.add_argument("--out", required=True, help="output .npz (arr_0 images, arr_1 labels)")
    g.add_argument(
        "--keep-shards", action="store_true", help="keep <out>.shards/ after writing --out"
    )
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    parallel_cli.add_arguments(parser)


class _Stopped(Exception):
    """Raised inside the worker between batches once Ctrl-C was pressed."""


def _check_sizes(args) -> None:
    for flag in ("num_images", "per_class", "batch", "shard_size"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be positive")


def run_identity(model, sampling, args) -> dict:
    """What makes the images of a run: a resumed run must match it in every field."""
    return {
        "model": model.name,
        "family": model.family,
        "source": model.source,
        "recipe": model.recipe,
        "sampling": sampling,
        "seed": args.seed,
        "num_images": args.num_images,
        "per_class": args.per_class,
        "num_classes": model.num_classes,
        "shard_size": args.shard_size,
        "dtype": args.dtype,
    }


def _generate_shards(model, todo, *, args, sampling, options, mesh, directory, bar):
    """Generates and writes the shards in `todo` until done or Ctrl-C (`arvg_jax.interrupt`)."""
    import numpy as np

    from arvg_jax import interrupt, sample_shards
    from arvg_jax.commands import generate

    left = [0]  # images of the current shard not yet counted (its padding is not counted)

    def on_batch(n):
        step = min(n, left[0])
        left[0] -= step
        bar.update(step)
        if interrupt.stop_requested():
            raise _Stopped

    try:
        for index in todo:
            if interrupt.stop_requested():
                return
            start, end = sample_shards.shard_range(index, args.num_images, args.shard_size)
            labels = sample_shards.labels_for(start, end, args.per_class, model.num_classes)
            # A short last shard is padded to a whole batch (images past its end are dropped), so
            # every batch has one size and compiles once.
            batch = min(args.batch, args.shard_size)
            pad = max(batch - len(labels), 0)
            padded = np.concatenate([labels, np.full(pad, labels[-1], labels.dtype)])
            left[0] = len(labels)
            images, _, _ = generate.generate_images(
                model,
                padded,
                seed=args.seed,
                sampling=sampling,
                batch=batch,
                options=options,
                progress=False,
                start=start,
                on_batch=on_batch,
                mesh=mesh,
            )
            images = model.fam.to_uint8(images[: len(labels)])
            sample_shards.write_shard(directory, index, images, labels)
    except _Stopped:
        return


def run(args) -> int:
    import pathlib
    import shutil

    from tqdm import tqdm

    from arvg_jax import interrupt, sample_shards
    from arvg_jax.commands.generate import NonFiniteImages, sampling_from_args
    from arvg_jax.models import model_from_args
    from arvg_jax.options import ExecOptions
    from arvg_jax.parallel import cli as parallel_cli
    from arvg_jax.parallel import describe, hosts
    from converters import CheckpointError, ConversionError

    out = pathlib.Path(args.out)
    directory = sample_shards.shard_dir(out)
    try:
        _check_sizes(args)
        mesh = parallel_cli.mesh_from_args(args)  # first: jax.distributed precedes device use
        index, count, coordinated = hosts.process_info()
        if out.exists():
            raise ValueError(f"{out} exists: delete it or choose another --out")
        sample_shards.check_dir(directory)  # before loading the model
        model = model_from_args(args)
        sampling = sampling_from_args(model, args)
        # Only process 0 deletes stale temporaries: another's could be a shard being written.
        differs = sample_shards.open_run(
            directory, run_identity(model, sampling, args), clean=index == 0
        )
        if differs:
            raise ValueError(
                f"{directory} holds shards of another run (differs in {', '.join(differs)}): "
                "rerun with its settings, or delete it to start over"
            )
    except (ValueError, CheckpointError, ConversionError, OSError) as e:
        print(f"arvg sample: {e}", file=sys.stderr)
        return 2
    hosts.barrier("arvg-sample-open", coordinated)  # the temporaries are gone before anyone writes

    total = sample_shards.num_shards(args.num_images, args.shard_size)
    done = sample_shards.finished(directory, total)
    todo = hosts.my_shards(total, done, index, count)
    mine = hosts.my_shards(total, set(), index, count)
    spans = [sample_shards.shard_range(i, args.num_images, args.shard_size) for i in mine]
    my_images = sum(end - start for start, end in spans)
    done_images = sum(end - start for i, (start, end) in zip(mine, spans) if i in done)
    kind = f"quantized {model.recipe['method']}" if model.quantized else "float"
    settings = ", ".join(f"{k} {v}" for k, v in sampling.items())
    share = f"; process {index} of {count}: {len(mine)} shards" if count > 1 else ""
    print(
        f"{model.name}: {kind}, {args.num_images} images ({args.per_class} per class, classes in "
        f"order), {settings}, seed {args.seed}; {len(done)} of {total} shards already done"
        f"{share}; {describe(mesh)}",
        file=sys.stderr,
    )
    tty = bool(getattr(sys.stderr, "isatty", lambda: False)())
    bar = tqdm(
        total=my_images,
        initial=done_images,
        desc="sample",
        unit="img",
        file=sys.stderr,
        disable=args.quiet,
        mininterval=0.1 if tty else 10.0,
        dynamic_ncols=True,
    )

    def kept() -> str:
        bar.close()
        done = len(sample_shards.finished(directory, total))
        return f"interrupted; {done} of {total} shards kept, rerun to resume"

    # Ctrl-C: the batch that ends within the grace period still counts; an unfinished shard is at
    # most a temporary file, which the rerun deletes.
    interrupt.set_grace(_STOP_WAIT_S)
    interrupt.set_report(kept)
    try:
        _generate_shards(
            model,
            todo,
            args=args,
            sampling=sampling,
            options=ExecOptions(dtype=args.dtype),
            mesh=mesh,
            directory=directory,
            bar=bar,
        )
    except NonFiniteImages as e:
        bar.close()
        print(f"arvg sample: {e}", file=sys.stderr)
        return 1
    bar.close()
    interrupt.check()  # stopped by Ctrl-C: the main thread reports and exits
    hosts.barrier("arvg-sample-done", coordinated)
    if index != 0:
        print(f"process {index} of {count}: its shards are written", file=sys.stderr)
        return 0
    missing = total - len(sample_shards.finished(directory, total))
    if missing:  # a job array without jax.distributed: other tasks are still writing
        print(
            f"{missing} of {total} shards belong to other processes and are not written yet: "
            "rerun process 0 once they finish to write --out",
            file=sys.stderr,
        )
        return 0
    shape = sample_shards.assemble(directory, out, total)
    if not args.keep_shards:
        shutil.rmtree(directory)
    print(f"wrote {out}: arr_0 uint8 {list(shape)}, arr_1 labels", file=sys.stderr)
    return 0
