"""Times the attention prologue kernel against its XLA ops at VAR-d30 batch-64 shapes.

The stacked sampler's attention prologue (`arvg_jax.kernels.attn_prologue_pallas`: qkv bias, rounding,
q/k l2-normalisation, k/v written into the layer-stacked cache) for one block at the given
scales: ``qkv [2 * batch, l, 5760]`` (CFG doubles the batch) in float32 (the bf16 sampler's
default matmul output) or bfloat16 (``matmul_out="dtype"``, and the int8 kernels' output), and
the full ``[30, 2 * batch, 704, 30, 64]`` bf16 caches, updated in place (donated) so that no
call copies them. Rows: microseconds per call (median of 5 rounds of --calls calls) for the XLA
ops (`attn_prologue_pallas.reference`) and for the kernel at each (rows, warps) setting, and the
kernel's largest difference from the XLA ops in bf16 ulps.

    PYTHONPATH=. python3 scripts/probe_attn_prologue.py --out $OUT/prologue.json
"""

from __future__ import annotations

import argparse
import functools
import json
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax
import jax.numpy as jnp
import numpy as np

from arvg_jax.families.var.bench import report
from arvg_jax.kernels import attn_prologue_pallas as ap

D, H, K, LP = 30, 30, 64, 704  # VAR-d30: 30 blocks of 30 heads of 64; cache 680 -> 704


def _offset(side: int) -> int:
    """Cache position of the first token of the scale of this side (VAR's 256-px scales)."""
    sides = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
    return sum(s * s for s in sides[: sides.index(side)])


def median_us(step, state, calls: int):
    state = step(state)
    jax.block_until_ready(state)
    rounds = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(calls):
            state = step(state)
        jax.block_until_ready(state)
        rounds.append((time.perf_counter() - t) / calls * 1e6)
    return float(np.median(rounds)), state


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--batch", type=int, default=64, help="images (the kernel sees 2x: CFG)")
    p.add_argument("--sides", default="13,16", help="scales by side (l = side²)")
    p.add_argument("--dtypes", default="float32,bfloat16", help="qkv input dtypes")
    p.add_argument("--rows", default="16,32,64,128")
    p.add_argument("--warps", default="1,2,4,8")
    p.add_argument("--heads", default="1", help="heads per program")
    p.add_argument(
        "--depth", type=int, default=D, help="cache blocks (30: over 4 GB, 64-bit offsets)"
    )
    p.add_argument("--calls", type=int, default=20)
    p.add_argument("--out", default=None, help="JSON file for the rows")
    p.add_argument("--interpret", action="store_true", help="Pallas interpret mode (CPU check)")
    args = p.parse_args(argv)
    b = 2 * args.batch
    rows_out = []
    d = args.depth
    kc = jnp.zeros((d, b, LP, H, K), jnp.bfloat16)
    vc = jnp.zeros((d, b, LP, H, K), jnp.bfloat16)
    scale = jnp.linspace(1.0, 100.0, H, dtype=jnp.float32)
    for side in (int(s) for s in args.sides.split(",")):
        length, offset = side * side, _offset(side)
        for dt in args.dtypes.split(","):
            qkv = jax.random.normal(jax.random.key(side), (b, length, 3 * H * K), jnp.float32)
            qkv = (qkv * 4).astype(dt)
            bias = jnp.linspace(-1, 1, 3 * H * K, dtype=jnp.float32) if dt == "float32" else None
            layer = jnp.int32(d - 1)
            kw = {"offset": offset, "round_dtype": jnp.bfloat16}

            def make(fn, inputs=(qkv, bias, scale, layer), kw=kw):
                @functools.partial(jax.jit, donate_argnums=(0,))
                def call(state, qkv_in, x_bias, head_scale, at_layer):
                    return fn(qkv_in, x_bias, head_scale, state[1], state[2], at_layer, **kw)

                return lambda state: call(state, *inputs)  # inputs as arguments, not constants

            ref_us, (rq, kc, vc) = median_us(make(ap.reference), (None, kc, vc), args.calls)
            rk = kc[d - 1, :, offset : offset + length]
            rq, rk = np.asarray(rq, np.float32), np.asarray(rk, np.float32)
            row = {"side": side, "l": length, "qkv_dtype": dt, "impl": "xla", "depth": d}
            row["us"] = ref_us
            rows_out.append(row)
            print(json.dumps(row), flush=True)
            grid = [
                (r, w, hp)
                for r in (int(x) for x in args.rows.split(","))
                for w in (int(x) for x in args.warps.split(","))
                for hp in (int(x) for x in args.heads.split(","))
            ]
            for r, w, hp in grid:
                fn = functools.partial(
                    ap.prologue, rows=r, heads=hp, num_warps=w, interpret=args.interpret
                )
                us, (q, kc, vc) = median_us(make(fn), (None, kc, vc), args.calls)
                k = np.asarray(kc[d - 1, :, offset : offset + length], np.float32)
                q = np.asarray(q, np.float32)
                ulp = max(_max_ulps(q, rq), _max_ulps(k, rk))
                row = {
                    "side": side,
                    "l": length,
                    "qkv_dtype": dt,
                    "impl": "pallas",
                    "rows": r,
                    "warps": w,
                    "heads": hp,
                    "depth": d,
                    "us": us,
                    "max_bf16_ulps_vs_xla": ulp,
                }
                rows_out.append(row)
                print(json.dumps(row), flush=True)
    if args.out:
        report.write_json(args.out, report.probe_doc(rows_out))
    return 0


def _max_ulps(a: np.ndarray, b: np.ndarray) -> float:
    spacing = np.maximum(np.abs(b), np.finfo(np.float32).tiny) * 2.0**-7
    return float((np.abs(a.astype(np.float64) - b) / spacing).max())


if __name__ == "__main__":
    sys.exit(main())
