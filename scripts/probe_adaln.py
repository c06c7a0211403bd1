"""Times the AdaLN kernel against its XLA ops at VAR-d30 batch-64 shapes.

`arvg_jax.kernels.adaln_pallas.adaln` for one block at the given scales (``x [2 * batch, l, 1920]``
float32, bf16 modulations and branch output): the ``h1`` form (LN + modulation + the qkv input
quantizer's codes and row sums) and the ``h2`` form (the residual add first, writing ``x'``),
or with ``--float`` the bf16-output forms. Rows: microseconds per call (median of 5 rounds of
--calls calls) for the XLA ops (`adaln_pallas.reference`) and for the kernel at each
(rows, warps) setting, and how many codes differ from the XLA ops.

    PYTHONPATH=. python3 scripts/probe_adaln.py --out $OUT/adaln.json
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
from arvg_jax.kernels import adaln_pallas as ap

C = 1920  # VAR-d30 width


def median_us(f, args, calls: int) -> float:
    jax.block_until_ready(f(*args))
    rounds = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(calls):
            y = f(*args)
        jax.block_until_ready(y)
        rounds.append((time.perf_counter() - t) / calls * 1e6)
    return float(np.median(rounds))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--batch", type=int, default=64, help="images (the kernel sees 2x: CFG)")
    p.add_argument("--sides", default="16", help="scales by side (l = side²)")
    p.add_argument("--rows", default="1,2,4")
    p.add_argument("--warps", default="2,4,8")
    p.add_argument("--float", action="store_true", help="bf16 output instead of int8 codes")
    p.add_argument("--calls", type=int, default=20)
    p.add_argument("--interpret", action="store_true", help="Pallas interpret mode (CPU check)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    b = 2 * args.batch
    rows_out = []
    for side in (int(s) for s in args.sides.split(",")):
        length = side * side
        k = jax.random.split(jax.random.key(side), 6)
        x = jax.random.normal(k[0], (b, length, C), jnp.float32) * 3
        mods = [(jax.random.normal(k[i], (b, C)) * 0.3).astype(jnp.bfloat16) for i in (1, 2, 3)]
        delta = jax.random.normal(k[4], (b, length, C)).astype(jnp.bfloat16)
        qkw = (
            {}
            if args.float
            else {
                "quant_scale": jnp.full((length,), 0.03, jnp.float32),
                "quant_zero": jnp.zeros((length,), jnp.float32),
                "quant_bits": 8,
            }
        )
        for form in ("h1", "h2"):
            # Every array is an argument of the jitted call (closed-over constants would let
            # XLA fold 1 / scale into a multiplication the sampler never sees).
            arrays = {"delta": delta, "gamma": mods[2]} if form == "h2" else {}
            arrays.update({k_: v for k_, v in qkw.items() if k_ != "quant_bits"})
            static = {"eps": 1e-6, "quant_bits": qkw.get("quant_bits")}

            def call(fn, x, scale, shift, arrays, static=static):
                return fn(x, scale, shift, **arrays, **static)

            inputs = (x, mods[0], mods[1], arrays)
            ref_fn = jax.jit(functools.partial(call, ap.reference))
            ref = ref_fn(*inputs)
            row = {"side": side, "form": form, "float": args.float, "impl": "xla"}
            row["us"] = median_us(ref_fn, inputs, args.calls)
            rows_out.append(row)
            print(json.dumps(row), flush=True)
            for r in (int(v) for v in args.rows.split(",")):
                for w in (int(v) for v in args.warps.split(",")):
                    kernel = functools.partial(
                        ap.adaln, rows=r, num_warps=w, interpret=args.interpret
                    )
                    fn = jax.jit(functools.partial(call, kernel))
                    got = fn(*inputs)
                    g, rr = jax.tree_util.tree_leaves(got[1]), jax.tree_util.tree_leaves(ref[1])
                    differ = float(np.mean(np.asarray(g[0]) != np.asarray(rr[0])))
                    row = {"side": side, "form": form, "float": args.float, "impl": "pallas"}
                    row.update(rows=r, warps=w, differ=differ)
                    row["us"] = median_us(fn, inputs, args.calls)
                    rows_out.append(row)
                    print(json.dumps(row), flush=True)
    if args.out:
        report.write_json(args.out, report.probe_doc(rows_out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
