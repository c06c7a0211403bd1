"""GEMM micro-benchmark at the real shapes of VAR sampling: our int8 Dense vs bfloat16.

Rows M = 2B x l (CFG doubles the batch; l = tokens of one scale step), K/N from the width C:
qkv C->3C, proj C->C, fc1 C->4C, fc2 4C->C at the chosen scales, plus ada_lin (M = 2B, C->6C)
and head (M = 2B x l of the last scale, C->V). Variants, each a whole linear layer from a bf16
input to a bf16 output:

  * ``bf16``: bf16 x bf16 matmul with float32 accumulation, + bias (the bf16 model's Dense);
  * ``int8_qarray``: ``quant.dense`` on the ``QArray`` kernel ([I, O] layout);
  * ``int8_packed``: ``PackedKernel`` ([O, I] + column sums), plain XLA expression;
  * ``int8_barrier``: ``PackedKernel`` with optimization barriers (the GPU default);
  * ``int8_gemm_only``: the bare s8 x s8 -> s32 dot, [O, I] layout (no quantize / dequantize).

Activation quantizers are per tensor here (token-group lookups add a [L, 1] gather only).
Each time is the median over trials of back-to-back calls (asynchronous dispatch hides launch
gaps), rotating among weight copies that together exceed the L2 cache.
Roofline: max(2MKN / peak, bytes / HBM) with int8 1979 TOP/s, bf16 989 TFLOP/s dense and
3.35 TB/s; int8 bytes = MK + KN (int8) + 2MN (bf16 out), bf16 bytes = 2MK + 2KN + 2MN.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from arvg_jax.families.var.bench.profile import hlo_summary

INT8_PEAK = 1979e12
BF16_PEAK = 989e12
HBM_BW = 3.35e12
L2_BYTES = 50e6

VARIANTS = ("bf16", "int8_qarray", "int8_packed", "int8_barrier", "int8_gemm_only")


def gemm_shapes(cfg, batch: int, scales=None) -> list[dict[str, Any]]:
    """[{name, M, K, N}] for a VARConfig at a batch size; scales = indices (default: last)."""
    c, f, v = cfg.embed_dim, cfg.mlp_dim, cfg.vocab_size
    pn = cfg.patch_nums
    scales = [len(pn) - 1] if scales is None else [s % len(pn) for s in scales]
    out = []
    for si in scales:
        m = 2 * batch * pn[si] ** 2
        tag = f"{pn[si]}x{pn[si]}"
        out += [
            {"name": f"qkv@{tag}", "M": m, "K": c, "N": 3 * c},
            {"name": f"proj@{tag}", "M": m, "K": c, "N": c},
            {"name": f"fc1@{tag}", "M": m, "K": c, "N": f},
            {"name": f"fc2@{tag}", "M": m, "K": f, "N": c},
        ]
    out.append({"name": "ada_lin", "M": 2 * batch, "K": c, "N": 6 * c})
    out.append({"name": f"head@{pn[-1]}x{pn[-1]}", "M": 2 * batch * pn[-1] ** 2, "K": c, "N": v})
    return out


def roofline_s(m: int, k: int, n: int, kind: str) -> float:
    if kind == "int8":
        return max(2 * m * k * n / INT8_PEAK, (m * k + k * n + 2 * m * n) / HBM_BW)
    return max(2 * m * k * n / BF16_PEAK, (2 * m * k + 2 * k * n + 2 * m * n) / HBM_BW)


def _fns():
    from quant import dense
    from quant._packed import packed_dense

    def bf16(x, w, b, *_):
        y = jnp.dot(x, w, preferred_element_type=jnp.float32) + b
        return y.astype(jnp.bfloat16)

    def int8_qarray(x, qk, b, aq):
        return dense(x, qk, b, aq)

    def int8_packed(x, pk, b, aq):
        return packed_dense(x, pk, b, aq, impl="xla")

    def int8_barrier(x, pk, b, aq):
        return packed_dense(x, pk, b, aq, impl="barrier")

    def int8_gemm_only(qx, wt, *_):
        return jax.lax.dot_general(
            qx, wt, (((1,), (1,)), ((), ())), preferred_element_type=jnp.int32
        )

    return {
        "bf16": bf16,
        "int8_qarray": int8_qarray,
        "int8_packed": int8_packed,
        "int8_barrier": int8_barrier,
        "int8_gemm_only": int8_gemm_only,
    }


def _time(f, arg_sets, trials: int, min_trial_s: float) -> float:
    jax.block_until_ready(f(*arg_sets[0]))
    t = time.perf_counter()
    jax.block_until_ready(f(*arg_sets[0]))
    one = max(time.perf_counter() - t, 1e-6)
    n = int(min(max(math.ceil(min_trial_s / one), 3), 200))
    res = []
    for _ in range(trials):
        t = time.perf_counter()
        o = None
        for i in range(n):
            o = f(*arg_sets[i % len(arg_sets)])
        jax.block_until_ready(o)
        res.append((time.perf_counter() - t) / n)
    return statistics.median(res)


def run_gemm(
    shapes,
    *,
    variants=VARIANTS,
    trials: int = 5,
    min_trial_s: float = 0.02,
    seed: int = 0,
    hlo_for_first: bool = True,
    log=print,
) -> list[dict[str, Any]]:
    """Times every variant at every shape; returns one row per shape."""
    from arvg_jax.families.var.bench.build import _rtn_minmax
    from quant._packed import pack_kernel
    from quant._qarray import ActQuant

    fns = _fns()
    rows = []
    key = jax.random.PRNGKey(seed)
    for si, shp in enumerate(shapes):
        m, k, n = shp["M"], shp["K"], shp["N"]
        copies = int(min(8, max(1, math.ceil(3 * L2_BYTES / (k * n)))))
        keys = jax.random.split(jax.random.fold_in(key, si), copies + 1)
        x = jax.random.normal(keys[0], (m, k), jnp.float32).astype(jnp.bfloat16)
        b = jnp.zeros((n,), jnp.float32)
        ws = [jax.random.normal(kk, (k, n), jnp.float32) * (k**-0.5) for kk in keys[1:]]
        qks = [_rtn_minmax(w, 8) for w in ws]
        pks = [pack_kernel(q) for q in qks]
        wbf = [w.astype(jnp.bfloat16) for w in ws]
        del ws
        xf = np.asarray(x[: min(m, 4096)].astype(jnp.float32))
        lo, hi = min(float(xf.min()), 0.0), max(float(xf.max()), 0.0)
        delta = (hi - lo) / 255
        aq = ActQuant.from_official(np.float32(delta), np.round(-lo / delta), 8)
        qx = aq.quantize(x)
        wts = [p.codes() for p in pks]
        args = {
            "bf16": [(x, w, b, None) for w in wbf],
            "int8_qarray": [(x, q, b, aq) for q in qks],
            "int8_packed": [(x, p, b, aq) for p in pks],
            "int8_barrier": [(x, p, b, aq) for p in pks],
            "int8_gemm_only": [(qx, w) for w in wts],
        }
        row = dict(shp)
        row["flop"] = 2 * m * k * n
        row["roofline_int8_us"] = 1e6 * roofline_s(m, k, n, "int8")
        row["roofline_bf16_us"] = 1e6 * roofline_s(m, k, n, "bf16")
        row["us"], row["hlo"] = {}, {}
        for v in variants:
            f = jax.jit(fns[v])
            try:
                t = _time(f, args[v], trials, min_trial_s)
                row["us"][v] = 1e6 * t
                if hlo_for_first and si == 0:
                    row["hlo"][v] = hlo_summary(f.lower(*args[v][0]).compile().as_text())
            except Exception as e:  # noqa: BLE001 - report and go on
                row["us"][v] = None
                row.setdefault("errors", {})[v] = f"{type(e).__name__}: {str(e)[:300]}"
        tb = row["us"].get("bf16")
        row["speedup_vs_bf16"] = {v: (tb / t if tb and t else None) for v, t in row["us"].items()}
        row["tops"] = {
            v: (row["flop"] / (t * 1e-6) / 1e12 if t else None) for v, t in row["us"].items()
        }
        row["roofline_fraction"] = {
            v: (
                (row["roofline_bf16_us"] if v == "bf16" else row["roofline_int8_us"]) / t
                if t
                else None
            )
            for v, t in row["us"].items()
        }
        rows.append(row)
        log(
            f"gemm {shp['name']:14s} M={m:6d} K={k:5d} N={n:5d} | "
            + " | ".join(
                f"{v} {row['us'][v]:.1f}us" if row["us"][v] else f"{v} FAIL" for v in variants
            )
            + f" | int8 roofline {row['roofline_int8_us']:.1f}us"
        )
        del x, wbf, qks, pks, qx, wts, args
    return rows
