"""`arvg generate`: class-conditional images from a float checkpoint or a quantized directory.

    arvg generate --model var-d16 --ckpt var_d16.pth --vae vae_ch160v4096z32.pth \
        --classes 207,360 --cfg 1.5 --seed 0 --out grid.png
    arvg generate --quantized out/var-d16-w8a8 --classes 207,360 --seed 0 --out grid.png
"""

from __future__ import annotations

import sys


def add_arguments(parser) -> None:
    from arvg_jax.models import add_model_arguments

    add_model_arguments(parser)
    g = parser.add_argument_group("sampling")
    g.add_argument(
        "--classes",
        required=True,
        help="comma-separated class ids, e.g. 207,360 (repeat ids for more samples)",
    )
    g.add_argument("--cfg", type=float, default=1.5, help="guidance scale (official FID: 1.5)")
    g.add_argument("--top-k", type=int, default=900, help="0 disables (official FID: 900)")
    g.add_argument("--top-p", type=float, default=0.96, help="0 disables (official FID: 0.96)")
    g.add_argument("--greedy", action="store_true", help="argmax instead of sampling")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--batch", type=int, default=32, help="images per compiled batch")
    g.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    g.add_argument("--out", required=True, help="output PNG (a grid of all images)")
    g.add_argument("--save-tokens", help="also write tokens and labels to this .npz")


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
    model, classes, *, seed, cfg, top_k, top_p, greedy, batch, dtype, progress=True
):
    """Generates in fixed-size batches (the last one padded, so one compile serves all)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from arvg_jax import var_sampler
    from arvg_jax.progress import Progress

    # Packed int8 kernels and stacked blocks: same values, the fast GPU path, a faster compile.
    params = var_sampler.inference_layout(model.params)
    labels = np.asarray(classes, np.int32)
    n = len(labels)
    b = min(batch, n)
    chunks = [labels[i : i + b] for i in range(0, n, b)]
    key = jax.random.PRNGKey(seed)
    images, tokens = [], []
    bar = Progress(len(chunks), "generate", enabled=progress)
    for i, chunk in enumerate(chunks):
        pad = b - len(chunk)
        padded = np.concatenate([chunk, np.full((pad,), chunk[-1], np.int32)]) if pad else chunk
        out = var_sampler.generate(
            params,
            model.vae_params,
            model.cfg,
            model.vae_cfg,
            padded,
            jax.random.fold_in(key, i),
            cfg=cfg,
            top_k=top_k,
            top_p=top_p,
            greedy=greedy,
            dtype=jnp.dtype(dtype).type,
        )
        images.append(np.asarray(out["images"])[: len(chunk)])
        tokens.append(np.asarray(out["tokens"])[: len(chunk)])
        bar.update()
    return np.concatenate(images), np.concatenate(tokens), labels


def run(args) -> int:
    import numpy as np

    from arvg_jax import imageio
    from arvg_jax.models import model_from_args
    from converters import CheckpointError, ConversionError

    try:
        model = model_from_args(args)
        classes = parse_classes(args.classes, model.cfg.num_classes)
    except (ValueError, CheckpointError, ConversionError, FileNotFoundError) as e:
        print(f"arvg generate: {e}", file=sys.stderr)
        return 2
    kind = (
        f"quantized {model.recipe['method']} {model.recipe['w_bits']}/{model.recipe['a_bits']}"
        if model.quantized
        else "float"
    )
    print(
        f"{model.name}: {kind}, {len(classes)} image(s), cfg {args.cfg}, seed {args.seed}",
        file=sys.stderr,
    )
    images, tokens, labels = generate_images(
        model,
        classes,
        seed=args.seed,
        cfg=args.cfg,
        top_k=args.top_k,
        top_p=args.top_p,
        greedy=args.greedy,
        batch=args.batch,
        dtype=args.dtype,
    )
    path = imageio.write_png(args.out, imageio.make_grid(imageio.to_uint8(images)))
    if args.save_tokens:
        np.savez(args.save_tokens, tokens=tokens, labels=labels)
    print(f"wrote {path}", file=sys.stderr)
    return 0
