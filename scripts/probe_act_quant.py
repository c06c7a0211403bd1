"""Times VAR's fc1 -> GELU -> fc2-input quantization on one Hopper GPU, fused and unfused.

Rows (microseconds per call, median of 5 rounds of --calls back-to-back calls):
  * ``bf16_kernel``: the fused int8 GEMM with its bf16 epilogue (fc1 alone);
  * ``unfused``: that kernel, then GELU + quantize + row sums as one XLA pass (what the model ran
    before the quantizing epilogue);
  * ``fused_libdevice`` / ``fused_approx``: the quantizing epilogue (``int8_dense_fused(...,
    out_quant=..., activation="gelu_tanh")``) with libdevice's tanhf or ``tanh.approx.f32``;
  * ``fused_linear``: the quantizing epilogue without an activation (its cost without tanh).
For each fused GELU row the fraction of codes that differ from the unfused path's (and the
largest difference), and whether the partial sums are those of the codes. ``--variants`` times
the kernel rows once per kernel variant (``VARIANTS``; keys ``"{variant}:{row}_us"`` for all but
the first, which keeps the plain keys); the codes of every variant are compared as above.

    PYTHONPATH=. python3 scripts/probe_act_quant.py --out $OUT/act_quant.json
    PYTHONPATH=. python3 scripts/probe_act_quant.py --variants ws,pp,pp_s5 --out $OUT/pp.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax
import jax.numpy as jnp
import numpy as np

from quant import _pallas_gpu as pg

# VAR-d30 fc1 at the last three scales of batch 64 with CFG: M = 128 l, K = C, N = 4C.
SHAPES = ((32768, 1920, 7680), (21632, 1920, 7680), (12800, 1920, 7680))
# Kernel variants (``int8_dense_fused`` keyword arguments) selectable with --variants.
VARIANTS = {
    "ws": {},  # the default: cooperative consumers, CTA tile 256 x 128
    "pp": {"variant": "pp"},  # ping-pong consumers, 128 x 128 tiles, 4 ring slots
    "pp_s3": {"variant": "pp", "stages": 3},
    "pp_s5": {"variant": "pp", "stages": 5},
}


def problem(m, k, n, seed=0):
    """Random codes, per-row/per-column quantizers and a next-layer quantizer whose codes span
    a few dozen steps (like a calibrated fc2 input)."""
    r = np.random.default_rng(seed)
    q_x = r.integers(-128, 128, (m, k)).astype(np.int8)
    q_w = r.integers(-127, 128, (n, k)).astype(np.int8)
    s_x = r.uniform(0.5, 1.5, m).astype(np.float32) * 1e-3
    z_x = r.integers(-20, 21, m).astype(np.int32)
    s_w = r.uniform(0.5, 1.5, n).astype(np.float32) * 1e-3
    z_w = r.integers(-8, 9, n).astype(np.int32)
    bias = r.normal(size=n).astype(np.float32) * 0.1
    s_o = r.uniform(0.02, 0.04, m).astype(np.float32)
    z_o = r.integers(-4, 5, m).astype(np.float32)
    q_x, q_w = jnp.asarray(q_x), jnp.asarray(q_w)
    sums = (jnp.sum(q_x, 1, dtype=jnp.int32), jnp.sum(q_w, 1, dtype=jnp.int32))
    args = (q_x, q_w, s_x, z_x, sums[0], s_w, z_w, sums[1], bias)
    return tuple(jnp.asarray(a) for a in args), (jnp.asarray(s_o), jnp.asarray(z_o))


def median_us(f, args, calls):
    jax.block_until_ready(f(*args))
    jax.block_until_ready(f(*args))
    rounds = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(calls):
            out = f(*args)
        jax.block_until_ready(out)
        rounds.append((time.perf_counter() - t) / calls)
    return 1e6 * float(np.median(rounds))


def unfused(*a):
    """Kernel to bf16, then GELU, quantization (dividing, as ActQuant.quantize) and row sums in
    XLA (exact bf16 roundings)."""
    y = pg.int8_dense_fused(*a[:9])
    v = pg._activation_input(y.astype(jnp.float32), "gelu_tanh")
    q = pg._quantize_codes(v, a[9][:, None], a[10][:, None], 8, divide=True).astype(jnp.int8)
    return q, jnp.sum(q, 1, dtype=jnp.int32)


def fused(approx, activation, **kw):
    def f(*a):
        oq = (a[9], a[10], 8)
        return pg.int8_dense_fused(
            *a[:9], out_quant=oq, activation=activation, approx_math=approx, **kw
        )

    return jax.jit(f)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=20)
    p.add_argument("--out", default="out/act_quant.json")
    p.add_argument("--variants", default="ws", help=f"comma list from {list(VARIANTS)}")
    args = p.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    if unknown := [v for v in variants if v not in VARIANTS]:
        sys.exit(f"probe_act_quant: unknown variants {unknown}; choose from {list(VARIANTS)}")
    if not pg.available():
        sys.exit(f"probe_act_quant: {pg.unavailable_reason()}")
    rows = []
    for m, k, n in SHAPES:
        operands, (s_o, z_o) = problem(m, k, n)
        full = (*operands, s_o, z_o)
        row = {"shape": [m, k, n]}
        ref = jax.jit(unfused)
        row["unfused_us"] = median_us(ref, full, args.calls)
        q_ref = np.asarray(ref(*full)[0], np.int32)
        for i, variant in enumerate(variants):
            kw = VARIANTS[variant]
            key = "" if i == 0 else f"{variant}:"
            kernel = jax.jit(lambda *a, kw=kw: pg.int8_dense_fused(*a, **kw))
            try:  # a variant may not fit the bf16 epilogue's output tile in shared memory
                row[f"{key}bf16_kernel_us"] = median_us(kernel, operands, args.calls)
            except ValueError as e:
                row[f"{key}bf16_kernel_error"] = str(e)
            for name, approx, act in (
                ("fused_libdevice", False, "gelu_tanh"),
                ("fused_approx", True, "gelu_tanh"),
                ("fused_linear", False, None),
            ):
                f = fused(approx, act, **kw)
                row[f"{key}{name}_us"] = median_us(f, full, args.calls)
                if act is not None:
                    q, partial = (np.asarray(a) for a in f(*full))
                    d = np.abs(q.astype(np.int32) - q_ref)
                    row[f"{key}{name}_codes_differing"] = float(np.mean(d > 0))
                    row[f"{key}{name}_max_code_diff"] = int(d.max())
                    row[f"{key}{name}_sums_exact"] = bool(
                        np.array_equal(partial.sum(0), q.astype(np.int32).sum(1))
                    )
        print(json.dumps(row), flush=True)
        rows.append(row)
    meta = {
        "device": str(jax.devices()[0].device_kind),
        "jax": jax.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
    }
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
