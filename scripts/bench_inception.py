"""Inception feature throughput of the ADM evaluator port (issue 21 item 6).

Runs `arvg_jax.metrics.compute_activations` (the path `arvg evaluate --samples` takes: host uint8
batches -> device -> pool / spatial / logits back to the host) over N uint8 256x256 images and
prints images/s per (batch, precision). Random weights (speed does not depend on them) unless
--weights is given; the images cycle through a pool of distinct random arrays (never zeros).

    PYTHONPATH=. python scripts/bench_inception.py --images 5000 --batches 64,256 \
        --precisions highest,default --full 50000
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import jax
import numpy as np
from jax import lax

from arvg_jax.metrics import activations
from arvg_jax.metrics.inception import InceptionConfig, init_params

PRECISIONS = {"highest": lax.Precision.HIGHEST, "default": lax.Precision.DEFAULT}


def batches(pool: np.ndarray, n: int, batch: int):
    for i in range(0, n, batch):
        m = min(batch, n - i)
        j = (i // batch) % (len(pool) // batch)
        yield pool[j * batch : j * batch + m]


def timed(params, pool, n, batch, precision) -> float:
    start = time.perf_counter()
    out = activations.compute_activations(
        params, batches(pool, n, batch), batch_size=batch, precision=precision
    )
    seconds = time.perf_counter() - start
    assert out["pool"].shape == (n, 2048) and np.isfinite(out["pool"]).all()
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=5000, help="images per timed sweep row")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batches", default="64,256")
    ap.add_argument("--precisions", default="highest,default")
    ap.add_argument("--full", type=int, default=0, help="then one run of this many images")
    ap.add_argument("--full-limit-s", type=float, default=240, help="skip --full if predicted over")
    ap.add_argument("--weights", help="a .pth of the FID Inception (default: random weights)")
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args()

    config = InceptionConfig.adm()
    if args.weights:
        from converters.inception import load_inception

        params = load_inception(args.weights, config)
    else:
        params = init_params(config, jax.random.PRNGKey(0))
    bs = [int(b) for b in args.batches.split(",")]
    rng = np.random.default_rng(0)
    pool = rng.integers(0, 256, (4 * max(bs), args.size, args.size, 3), dtype=np.uint8)
    print(f"devices: {jax.devices()}", flush=True)
    rows = []
    for pname in args.precisions.split(","):
        for b in bs:
            t0 = time.perf_counter()
            timed(params, pool, b, b, PRECISIONS[pname])  # compile + one batch
            first = time.perf_counter() - t0
            s = timed(params, pool, args.images, b, PRECISIONS[pname])
            row = {
                "precision": pname,
                "batch": b,
                "images": args.images,
                "seconds": s,
                "images_per_s": args.images / s,
                "first_call_s": first,
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.full:
        best = max(
            (r for r in rows if r["precision"] == "highest"), key=lambda r: r["images_per_s"]
        )
        predicted = args.full / best["images_per_s"]
        if predicted <= args.full_limit_s:
            s = timed(params, pool, args.full, best["batch"], PRECISIONS["highest"])
            row = {
                "precision": "highest",
                "batch": best["batch"],
                "images": args.full,
                "seconds": s,
                "images_per_s": args.full / s,
                "full": True,
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
        else:
            print(f"--full skipped: predicted {predicted:.0f} s", flush=True)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"peak host RSS {rss:.2f} GiB", flush=True)
    print("| precision | batch | images | s | images/s |")
    for r in rows:
        print(
            f"| {r['precision']} | {r['batch']} | {r['images']} | {r['seconds']:.2f} | "
            f"{r['images_per_s']:.0f} |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "peak_rss_gib": rss}, f, indent=1)


if __name__ == "__main__":
    main()
