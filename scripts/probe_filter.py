"""Times VAR's top-k / top-p filter per method on one device, at VAR-d30 batch-64 shapes.

For every scale of VAR (``l = p*p`` tokens per image, 10 scales) the filter runs on CFG-mixed
logits ``[batch, l, 4096]`` (the official sampler filters the mixed logits of ``batch`` images);
rows: microseconds per call (median of 5 rounds of --calls back-to-back calls) for "sort",
"pallas" and optionally "bisect", their sum over the scales (what one generation pays), and how
many rows each method decides differently from "sort" (float rounding at the top-p cut only:
tests/sampling_pallas_test.py).

    PYTHONPATH=. python3 scripts/probe_filter.py --out $OUT/filter.json
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax
import numpy as np

from arvg_jax import sampling

PATCH_NUMS = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)  # VAR's 256 x 256 scales
V = 4096


def logits(batch: int, l: int, seed: int) -> jax.Array:
    """CFG-mixed (t = 1.5) logits with a per-row temperature, as in tests/sampling_bisect_test."""
    k = jax.random.split(jax.random.key(seed), 3)
    scale = jax.random.uniform(k[0], (batch, l, 1), minval=0.5, maxval=6.0)
    cond = jax.random.normal(k[1], (batch, l, V)) * scale
    uncond = 0.8 * cond + 0.6 * scale * jax.random.normal(k[2], (batch, l, V))
    return 2.5 * cond - 1.5 * uncond


def median_us(f, x, calls: int) -> float:
    jax.block_until_ready(f(x))
    rounds = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(calls):
            y = f(x)
        jax.block_until_ready(y)
        rounds.append((time.perf_counter() - t) / calls * 1e6)
    return float(np.median(rounds))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--methods", default="sort,pallas", help="comma list of filter methods")
    p.add_argument("--top-k", type=int, default=900)
    p.add_argument("--top-p", type=float, default=0.96)
    p.add_argument("--calls", type=int, default=10)
    p.add_argument("--out", default="out/filter.json")
    args = p.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        sampling.parse_filter_method(m)  # raises on a bad name
    rows = []
    for pn in PATCH_NUMS:
        x = logits(args.batch, pn * pn, seed=pn)
        row = {"l": pn * pn, "rows": args.batch * pn * pn}
        ref = None
        for m in methods:
            f = jax.jit(
                functools.partial(
                    sampling.top_k_top_p_filter, top_k=args.top_k, top_p=args.top_p, method=m
                )
            )
            row[f"{m}_us"] = median_us(f, x, args.calls)
            kept = np.isfinite(np.asarray(f(x)))
            if ref is None:
                ref = kept
            row[f"{m}_rows_differing"] = int((kept != ref).any(-1).sum())
        rows.append(row)
        print(json.dumps(row), flush=True)
    total = {f"{m}_us": sum(r[f"{m}_us"] for r in rows) for m in methods}
    out = {
        "meta": {
            "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "device": jax.devices()[0].device_kind,
            "jax": jax.__version__,
            "batch": args.batch,
            "top_k": args.top_k,
            "top_p": args.top_p,
            "first_method": methods[0],
        },
        "rows": rows,
        "total_over_scales_us": total,
    }
    print(json.dumps(total))
    path = pathlib.Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
