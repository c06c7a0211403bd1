"""Probe: the fused Pallas Mosaic GPU int8 Dense (quant._pallas_gpu) against bf16 and XLA on H100.

Run on the GPU machine::

    PYTHONPATH=. python3 scripts/probe_pallas_int8.py --out $OUT/pallas.json

For each (M, K, N) of VAR-d30 (batch 64, last scale: M = 32768; also M = 12800 and 2048):

* correctness: every Pallas config's bf16 output against the exact reference (the s32
  ``dot_general`` and the same epilogue in float32, before the bf16 rounding), on fresh random
  int8 codes with non-zero zero points; max relative error must stay within bf16 rounding
  (2^-8, plus float32 reassociation slack). A padded odd shape is checked first.
* timing: warm-up, then the median over ``--runs`` runs of back-to-back calls (each run ~2 ms or
  more, at least 8 calls) rotating weight copies that together exceed L2 (50 MB) twice:
  ``bf16`` (``x @ w.T``, bf16 in and out), ``gemm_only`` (bare s8 x s8 -> s32 cuBLASLt GEMM),
  ``xla_barrier`` (cuBLASLt GEMM, optimization barrier, XLA epilogue: the project's GPU path),
  ``xla`` (the same without the barrier: XLA may fuse into a Triton GEMM) and the Pallas configs.

Robustness (the script is meant to run once, unattended): before this process touches the GPU,
a child process compiles and checks every Pallas config at a padded odd shape (a fresh child
after a runtime failure, a crash or a hang > ``--preflight-config-s``), and only the configs that
passed are timed. Every variant then runs under try/except, so a compile failure is reported
(truncated error text) and the rest still runs. All configs run on the first shape (fc1, which
every tile divides); the ``--keep`` fastest plus the fastest one that fits every remaining shape
go on. A config is skipped where its tile does not divide the shape (the wrapper would pad and
the timing would include a copy of the output). The JSON is rewritten after every shape; a
watchdog thread writes it and exits after ``--hard-timeout`` seconds (a hung kernel). Shapes
that would start after ``--time-budget`` seconds are skipped. The table is printed last.

CPU dry run of the whole flow (jax >= 0.11.2, Mosaic GPU interpret mode, meaningless timings)::

    PYTHONPATH=. python3 scripts/probe_pallas_int8.py --interpret --shapes 512x256x512 --runs 2
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import math
import os
import statistics
import sys
import threading
import time
import traceback

T_IMPORT = time.time()

import jax
import jax.numpy as jnp
from jax import lax

from quant import _pallas_gpu as pg

L2_BYTES = 50e6
PEAK_INT8 = 1979e12  # H100 SXM dense int8 OP/s (the % of peak column)
PEAK_BF16 = 989e12
SHAPES = [  # (M, K, N, name); fc1 first: every config's tiles divide it (the fair comparison)
    (32768, 1920, 7680, "fc1"),
    (32768, 1920, 5760, "qkv"),
    (32768, 7680, 1920, "fc2"),
    (32768, 1920, 1920, "proj"),
    (32768, 1920, 4096, "head"),
    (12800, 1920, 5760, "qkv@10x10"),
    (2048, 1920, 5760, "qkv@4x4"),
    (12800, 7680, 1920, "fc2@10x10"),
    (2048, 7680, 1920, "fc2@4x4"),
]
# Pallas configs: name -> kwargs of pg.int8_dense_fused. "primary" ones run on the first shape;
# the fallbacks only if no primary config compiled and passed there. A config runs only on shapes
# its cluster tile and K step divide (else the wrapper would pad, and time a copy of the output).
CONFIGS = {
    # persistent warp-specialized, 2 consumer warpgroups of 128x128 (CTA 256x128), K step 128
    "ws_m": {"variant": "ws", "split": "m", "block_k": 128, "stages": 3},
    # the same in 2-CTA clusters along N: the activation tile is TMA-multicast to both CTAs
    "ws_m_clN": {"variant": "ws", "split": "m", "cluster": "n", "block_k": 128, "stages": 3},
    # ... along M: the weight tile is multicast
    "ws_m_clM": {"variant": "ws", "split": "m", "cluster": "m", "block_k": 128, "stages": 3},
    # CTA 128x256
    "ws_n": {"variant": "ws", "split": "n", "block_k": 128, "stages": 3},
    # K step 64 (64-byte swizzle), 4 stages
    "ws_m_k64s4": {"variant": "ws", "split": "m", "block_k": 64, "stages": 4},
    # one warpgroup per CTA, 2 CTAs per SM
    "pipe_s2": {"variant": "pipeline", "block_k": 128, "stages": 2},
    # ping-pong consumers, each on its own 128x128 tiles, one ring of 4 (5) K-step slots
    "pp_s4": {"variant": "pp", "block_k": 128, "stages": 4},
    "pp_s5": {"variant": "pp", "block_k": 128, "stages": 5},
}
FALLBACK_CONFIGS = {
    "ws_m_lane": {"variant": "ws", "split": "m", "stages": 3, "semantics": "lane"},
    "pipe_s2_lane": {"variant": "pipeline", "stages": 2, "semantics": "lane"},
    "pipe_s4": {"variant": "pipeline", "block_k": 128, "stages": 4},
}
ERR_LIMIT = 2.0**-8 * 1.02 + 1e-4  # bf16 round-to-nearest + float32 reassociation slack


def log(*args):
    print(*args, flush=True)


def short_error(e: BaseException, limit: int = 400) -> str:
    text = f"{type(e).__name__}: {e}"
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ----------------------------------------------------------------------------------------------
# Data (generated on the device).


def _rows(key, m: int):
    k1, k2 = jax.random.split(key)
    s_x = jax.random.uniform(k1, (m,), jnp.float32, 0.5, 1.5) * 1e-2
    z_x = jax.random.randint(k2, (m,), -20, 21, jnp.int32)
    return s_x, z_x


@functools.partial(jax.jit, static_argnums=(1, 2))
def make_activations(key, m: int, k: int):
    k1, k2, k3 = jax.random.split(key, 3)
    q_x = jax.random.randint(k1, (m, k), -128, 128, jnp.int32).astype(jnp.int8)
    s_x, z_x = _rows(k2, m)
    sum_x = jnp.sum(q_x, axis=1, dtype=jnp.int32)
    x = jax.random.normal(k3, (m, k), jnp.bfloat16)
    return q_x, s_x, z_x, sum_x, x


@functools.partial(jax.jit, static_argnums=(1, 2))
def make_weight(key, n: int, k: int):
    k1, k2, k3, k4, k5 = jax.random.split(key, 5)
    q_w = jax.random.randint(k1, (n, k), -127, 128, jnp.int32).astype(jnp.int8)
    s_w = jax.random.uniform(k2, (n,), jnp.float32, 0.5, 1.5) * 1e-2
    z_w = jax.random.randint(k3, (n,), -8, 9, jnp.int32)
    z_w = jnp.where(z_w == 0, 1, z_w)  # non-zero zero points: the Σq_x term is exercised
    colsum = jnp.sum(q_w, axis=1, dtype=jnp.int32)
    bias = jax.random.normal(k4, (n,), jnp.float32)
    w = jax.random.normal(k5, (n, k), jnp.bfloat16)
    return q_w, s_w, z_w, colsum, bias, w


# ----------------------------------------------------------------------------------------------
# Variants. Argument order everywhere: (q_x, q_w, s_x, z_x, sum_x, s_w, z_w, colsum, bias).


def bf16_linear(x, w):
    return lax.dot_general(x, w, (((1,), (1,)), ((), ())))  # bf16 x bf16 -> bf16, [M, N]


def gemm_only(q_x, q_w):
    return lax.dot_general(q_x, q_w, (((1,), (1,)), ((), ())), preferred_element_type=jnp.int32)


def xla_int8(*args, barrier: bool):
    return pg.int8_dense_reference(*args, barrier=barrier)


def reference_f32(*args):
    return pg.int8_dense_reference(*args, out_dtype=jnp.float32, barrier=True)


@jax.jit
def error_stats(out, ref32):
    """(max relative error, fraction of elements not equal to bf16(ref32))."""
    out = out.astype(jnp.float32)
    floor = 1e-3 * jnp.sqrt(jnp.mean(jnp.square(ref32)))  # cancellation near zero
    rel = jnp.abs(out - ref32) / jnp.maximum(jnp.abs(ref32), floor)
    mismatch = jnp.mean((out != ref32.astype(jnp.bfloat16).astype(jnp.float32)).astype(jnp.float32))
    return jnp.max(rel), mismatch


# ----------------------------------------------------------------------------------------------
# Timing.


def bench(fn, arg_sets, runs: int, min_calls: int = 8, run_seconds: float = 2e-3):
    """Median seconds per call over ``runs`` runs of back-to-back calls rotating ``arg_sets``."""
    n = len(arg_sets)
    out = None
    for i in range(3):  # warm-up
        out = fn(*arg_sets[i % n])
    jax.block_until_ready(out)
    t0 = time.perf_counter()
    for i in range(min_calls):
        out = fn(*arg_sets[i % n])
    jax.block_until_ready(out)
    single = (time.perf_counter() - t0) / min_calls
    calls = int(min(64, max(min_calls, math.ceil(run_seconds / max(single, 1e-7)))))
    times = []
    idx = 0
    for _ in range(runs):
        t0 = time.perf_counter()
        for _ in range(calls):
            out = fn(*arg_sets[idx % n])
            idx += 1
        jax.block_until_ready(out)
        times.append((time.perf_counter() - t0) / calls)
    return statistics.median(times), calls


# ----------------------------------------------------------------------------------------------
# The run.


class Run:
    def __init__(self, args):
        self.args = args
        self.t_start = T_IMPORT
        self.lock = threading.Lock()
        self.stage = "start"
        self.doc = {
            "meta": {
                "jax": jax.__version__,
                "jaxlib": _jaxlib_version(),
                "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "command": " ".join(sys.argv),
                "runs": args.runs,
                "err_limit": ERR_LIMIT,
                "xla_flags": os.environ.get("XLA_FLAGS", ""),
            },
            "padded_check": [],
            "shapes": [],
        }

    def add_device_meta(self):
        """Initializes this process's backend (after the preflight children are done)."""
        dev = jax.devices()[0]
        self.doc["meta"].update(
            device=str(dev),
            device_kind=getattr(dev, "device_kind", "?"),
            compute_capability=str(getattr(dev, "compute_capability", "?")),
            platform=dev.platform,
            pallas_available=pg.available(),
            pallas_unavailable_reason=pg.unavailable_reason(),
        )

    def elapsed(self) -> float:
        return time.time() - self.t_start

    def write(self):
        if not self.args.out:
            return
        with self.lock:
            os.makedirs(os.path.dirname(os.path.abspath(self.args.out)), exist_ok=True)
            tmp = self.args.out + ".tmp"
            with open(tmp, "w") as f:
                json.dump(self.doc, f, indent=1)
            os.replace(tmp, self.args.out)


def _jaxlib_version() -> str:
    try:
        import jaxlib

        return jaxlib.__version__
    except (ImportError, AttributeError):
        return "?"


PADDED_SHAPE = (1000, 1000, 520)  # odd sizes: the wrapper pads all three dimensions


def preflight_child(names: list[str], interpret: bool) -> None:
    """Child process: the padded-shape correctness check of each config, one JSON line each.

    Runs in its own process so that a kernel that hangs, crashes or poisons the CUDA context
    costs only that config, not the whole probe.
    """
    print(f"PREFLIGHT_AVAILABLE {json.dumps(pg.unavailable_reason())}", flush=True)
    m, k, n = PADDED_SHAPE
    key = jax.random.key(7)
    q_x, s_x, z_x, sum_x, _ = make_activations(key, m, k)
    q_w, s_w, z_w, colsum, bias, _ = make_weight(jax.random.fold_in(key, 1), n, k)
    args = (q_x, q_w, s_x, z_x, sum_x, s_w, z_w, colsum, bias)
    ref32 = jax.block_until_ready(jax.jit(reference_f32)(*args))
    all_configs = {**CONFIGS, **FALLBACK_CONFIGS}
    for name in names:
        print(f"PREFLIGHT_START {name}", flush=True)
        kw = dict(all_configs[name])
        if interpret:
            kw["interpret"] = pg.plgpu.InterpretGPUParams()
        if kw.get("variant") == "ws":
            kw.setdefault("num_ctas", 4)  # several tiles per persistent CTA (and 2 clusters)
        rec = {"config": name, "shape": [m, k, n]}
        t0 = time.perf_counter()
        try:
            out = jax.jit(functools.partial(pg.int8_dense_fused, **kw))(*args)
            err, mism = (float(v) for v in error_stats(out, ref32))
            rec.update(max_rel_err=err, mismatch_frac=mism, ok=err <= ERR_LIMIT)
        except Exception as e:  # noqa: BLE001 - report and go on
            rec.update(error=short_error(e), ok=False)
        rec["seconds"] = round(time.perf_counter() - t0, 2)
        print(f"PREFLIGHT {json.dumps(rec)}", flush=True)


def padded_check_inprocess(run: Run, configs: dict) -> dict:
    """The padded check in this process (when no preflight child can run)."""
    m, k, n = PADDED_SHAPE
    key = jax.random.key(7)
    q_x, s_x, z_x, sum_x, _ = make_activations(key, m, k)
    q_w, s_w, z_w, colsum, bias, _ = make_weight(jax.random.fold_in(key, 1), n, k)
    args = (q_x, q_w, s_x, z_x, sum_x, s_w, z_w, colsum, bias)
    ref32 = jax.jit(reference_f32)(*args)
    results = {}
    for name, kw in configs.items():
        kw = dict(kw)
        if run.args.interpret:
            kw["interpret"] = pg.plgpu.InterpretGPUParams()
        rec = {"config": name, "shape": [m, k, n], "in_process": True}
        try:
            out = jax.jit(functools.partial(pg.int8_dense_fused, **kw))(*args)
            err, mism = (float(v) for v in error_stats(out, ref32))
            rec.update(max_rel_err=err, mismatch_frac=mism, ok=err <= ERR_LIMIT)
        except Exception as e:  # noqa: BLE001 - report and go on
            rec.update(error=short_error(e), ok=False)
        log(f"padded check {rec}")
        results[name] = rec
        run.doc["padded_check"].append(rec)
    run.write()
    return results


def _may_poison(rec: dict) -> bool:
    """A runtime failure (not a Python error while tracing / lowering / checking arguments)."""
    err = rec.get("error", "")
    if not err:
        return False
    tracing_errors = ("ValueError", "TypeError", "NotImplementedError", "KeyError", "Attribute")
    return not err.startswith(tracing_errors) or "CUDA" in err or "cuda" in err


def preflight(run: Run, names: list[str], per_config_s: float, startup_s: float) -> dict:
    """Runs ``preflight_child`` in subprocesses; a fresh child after any failure, hang or crash.

    Returns {config name: record with "ok"}, or None if no child could even start (then the
    caller checks in-process).
    """
    import queue
    import subprocess

    results: dict = {}
    remaining = list(names)
    started = False
    env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false")
    while remaining:
        cmd = [sys.executable, os.path.abspath(__file__), "--preflight-child", ",".join(remaining)]
        if run.args.interpret:
            cmd.append("--interpret")
        log(f"preflight child for {remaining}")
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, bufsize=1
        )
        lines: queue.Queue = queue.Queue()

        def pump(stream=proc.stdout, q=lines):
            for line in stream:
                q.put(line.rstrip("\n"))
            q.put(None)

        threading.Thread(target=pump, daemon=True).start()
        tail: list[str] = []
        current = None
        deadline = time.time() + startup_s
        restart = False
        while True:
            try:
                line = lines.get(timeout=max(0.1, deadline - time.time()))
            except queue.Empty:
                line = "TIMEOUT"
            if line == "TIMEOUT" or line is None:
                if line == "TIMEOUT":
                    proc.kill()
                proc.wait()
                what = (
                    f"hung for > {per_config_s if current else startup_s:.0f}s"
                    if line == "TIMEOUT"
                    else f"child exited with code {proc.returncode}"
                )
                detail = f"{what}; last output: {' | '.join(tail[-6:])}"[-600:]
                if current is None:  # died or hung before any config
                    if not started:
                        log(f"preflight child failed to start ({detail}): checking in-process")
                        return None
                    for name in remaining:
                        results[name] = {"config": name, "ok": False, "error": detail}
                    remaining = []
                else:
                    results[current] = {"config": current, "ok": False, "error": detail}
                    remaining.remove(current)
                    restart = bool(remaining)
                break
            if line.startswith("PREFLIGHT_AVAILABLE "):
                started = True
                reason = json.loads(line.split(" ", 1)[1])
                if reason and not run.args.interpret:
                    proc.kill()
                    for name in remaining:
                        results[name] = {"config": name, "ok": False, "error": f"{reason}"}
                    remaining = []
                    break
            elif line.startswith("PREFLIGHT_START "):
                current = line.split(" ", 1)[1]
                deadline = time.time() + per_config_s
            elif line.startswith("PREFLIGHT "):
                rec = json.loads(line.split(" ", 1)[1])
                results[rec["config"]] = rec
                log(f"preflight {rec}")
                remaining.remove(rec["config"])
                current = None
                deadline = time.time() + per_config_s
                if _may_poison(rec) and remaining:
                    proc.kill()  # the CUDA context may be poisoned: continue in a fresh child
                    proc.wait()
                    restart = True
                    break
            else:
                tail.append(line)
        if not restart:
            if proc.poll() is None:
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
            break
    for name in names:
        rec = results.get(name, {"config": name, "ok": False, "error": "no preflight result"})
        run.doc["padded_check"].append(rec)
    run.write()
    return results


def fits(kw: dict, m: int, k: int, n: int) -> bool:
    """True if the config needs no padding at this shape."""
    cfg = pg.FusedConfig(
        **{f: v for f, v in kw.items() if f in pg.FusedConfig.__dataclass_fields__}
    )
    tm, tn = cfg.cluster_tile()
    return m % tm == 0 and n % tn == 0 and k % cfg.block_k == 0


def probe_shape(run, m, k, n, name, configs: dict, baselines: list, ratio_ref=None):
    """Times ``baselines`` and the Pallas ``configs`` at one shape. ``ratio_ref``: a previous
    record of the same shape whose bf16 / xla_barrier times give the ratios (fallback pass)."""
    args = run.args
    rec = {"name": name, "M": m, "K": k, "N": n, "variants": {}}
    run.doc["shapes"].append(rec)
    ops = 2.0 * m * k * n
    key = jax.random.key(hash((m, k, n)) % (2**31))
    run.stage = f"{name}: data"
    q_x, s_x, z_x, sum_x, x = make_activations(key, m, k)
    n_int8 = int(min(32, max(3, math.ceil(2 * L2_BYTES / (n * k)))))
    n_bf16 = int(min(32, max(3, math.ceil(2 * L2_BYTES / (2 * n * k)))))
    weights = [make_weight(jax.random.fold_in(key, 1 + i), n, k) for i in range(n_int8)]
    int8_sets = [(q_x, w[0], s_x, z_x, sum_x, *w[1:5]) for w in weights]
    bf16_sets = [(x, weights[i % n_int8][5]) for i in range(n_bf16)]
    gemm_sets = [(q_x, w[0]) for w in weights]
    rec["weight_copies"] = {"int8": n_int8, "bf16": n_bf16}
    jax.block_until_ready((int8_sets, bf16_sets))
    run.stage = f"{name}: reference"
    ref32 = jax.jit(reference_f32)(*int8_sets[0])

    def record(vname, fn, sets, check=False):
        run.stage = f"{name}: {vname}"
        v = {}
        try:
            t0 = time.perf_counter()
            out = jax.block_until_ready(fn(*sets[0]))
            v["first_call_s"] = round(time.perf_counter() - t0, 3)
            if check:
                err, mism = (float(e) for e in error_stats(out, ref32))
                v.update(max_rel_err=err, mismatch_frac=mism, correct=err <= ERR_LIMIT)
            del out
            sec, calls = bench(fn, sets, args.runs)
            peak = PEAK_BF16 if vname == "bf16" else PEAK_INT8
            v.update(
                us=sec * 1e6,
                tops=ops / sec / 1e12,
                pct_peak=100 * ops / sec / peak,
                calls_per_run=calls,
            )
        except Exception as e:  # noqa: BLE001 - report and go on
            v["error"] = short_error(e)
            if args.verbose:
                traceback.print_exc()
        rec["variants"][vname] = v
        log(f"  {name} {vname}: {v}")
        return v

    if "bf16" in baselines:
        record("bf16", jax.jit(bf16_linear), bf16_sets)
    if "gemm_only" in baselines:
        record("gemm_only", jax.jit(gemm_only), gemm_sets)
    if "xla_barrier" in baselines:
        record("xla_barrier", jax.jit(functools.partial(xla_int8, barrier=True)), int8_sets, True)
    if "xla" in baselines and run.plain_xla_left > 0:
        run.plain_xla_left -= 1
        record("xla", jax.jit(functools.partial(xla_int8, barrier=False)), int8_sets, True)
    for cname, kw in configs.items():
        if not fits(kw, m, k, n):
            tile = pg.FusedConfig(**kw).cluster_tile()
            rec["variants"][f"pallas:{cname}"] = {
                "skipped": f"tile {tile} x K {kw.get('block_k', 128)} does not divide the shape"
            }
            continue
        if args.interpret:
            kw = {**kw, "interpret": pg.plgpu.InterpretGPUParams()}
            if kw.get("variant") == "ws":
                kw.setdefault("num_ctas", 2)
        fn = jax.jit(functools.partial(pg.int8_dense_fused, **kw))
        record(f"pallas:{cname}", fn, int8_sets, True)
    # Ratios against bf16 and the XLA int8 layer, from this run.
    ref = ratio_ref or rec
    bf = ref["variants"].get("bf16", {}).get("us")
    xb = ref["variants"].get("xla_barrier", {}).get("us")
    for v in rec["variants"].values():
        if "us" in v:
            v["x_bf16"] = bf / v["us"] if bf else None
            v["x_xla_barrier"] = xb / v["us"] if xb else None
    run.write()
    return rec


def table(doc) -> str:
    lines = []
    meta = doc["meta"]
    lines.append(
        f"jax {meta.get('jax')} | {meta.get('device_kind', '?')} (cc "
        f"{meta.get('compute_capability', '?')}) | pallas available: "
        f"{meta.get('pallas_available', '?')}"
        + (
            f" ({meta.get('pallas_unavailable_reason')})"
            if not meta.get("pallas_available")
            else ""
        )
    )
    if meta.get("watchdog"):
        lines.append(f"WATCHDOG: {meta['watchdog']}")
    for p in doc["padded_check"]:
        status = "ok" if p.get("ok") else "FAIL"
        detail = p.get("error") or f"max_rel_err {p.get('max_rel_err', float('nan')):.2e}"
        lines.append(
            f"padded {p.get('shape', list(PADDED_SHAPE))} {p['config']}: {status} ({detail})"
        )
    hdr = (
        f"{'layer':<10} {'M x K x N':<18} {'variant':<26} {'us':>9} {'TOP/s':>7} {'%pk':>4} "
        f"{'x bf16':>7} {'x xlaB':>7} {'max rel err':>11}  status"
    )
    lines.append(hdr)
    lines.append("-" * len(hdr))
    for s in doc["shapes"]:
        shape = f"{s['M']}x{s['K']}x{s['N']}"
        best = None
        for vname, v in s["variants"].items():
            if "skipped" in v:
                status = "skipped: " + v["skipped"]
            elif "error" in v:
                status = "ERROR " + v["error"][:150]
            elif v.get("correct") is False:
                status = "WRONG"
            else:
                status = "ok"
            us = f"{v['us']:.1f}" if "us" in v else "-"
            tops = f"{v['tops']:.0f}" if "tops" in v else "-"
            pct = f"{v['pct_peak']:.0f}" if "pct_peak" in v else "-"
            xb = f"{v['x_bf16']:.2f}" if v.get("x_bf16") else "-"
            xx = f"{v['x_xla_barrier']:.2f}" if v.get("x_xla_barrier") else "-"
            err = f"{v['max_rel_err']:.2e}" if "max_rel_err" in v else ""
            lines.append(
                f"{s['name']:<10} {shape:<18} {vname:<26} {us:>9} {tops:>7} {pct:>4} {xb:>7} {xx:>7} "
                f"{err:>11}  {status}"
            )
            better = best is None or ("us" in v and v["us"] < best[1]["us"])
            if vname.startswith("pallas:") and status == "ok" and "us" in v and better:
                best = (vname, v)
        if best:
            lines.append(
                f"{'':<10} {'':<18} {'=> best ' + best[0][7:]:<26} {best[1]['us']:>9.1f} "
                f"{best[1]['tops']:>7.0f} {best[1]['pct_peak']:>4.0f} "
                f"{best[1].get('x_bf16') or 0:>7.2f} "
                f"{best[1].get('x_xla_barrier') or 0:>7.2f}"
            )
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="", help="JSON path (rewritten after every shape)")
    ap.add_argument("--runs", type=int, default=20, help="timed runs per variant (median)")
    ap.add_argument(
        "--shapes",
        default="",
        help="comma list of layer names from SHAPES, or MxKxN triples; default: all",
    )
    ap.add_argument(
        "--configs", default="", help=f"comma list from {list(CONFIGS) + list(FALLBACK_CONFIGS)}"
    )
    ap.add_argument("--baselines", default="bf16,gemm_only,xla_barrier,xla")
    ap.add_argument(
        "--plain-xla-shapes",
        type=int,
        default=3,
        help="time the no-barrier XLA variant (slow Triton autotuning) on this many shapes",
    )
    ap.add_argument(
        "--keep", type=int, default=3, help="after the first shape, keep this many configs"
    )
    ap.add_argument(
        "--time-budget", type=float, default=185.0, help="start no shape after this (seconds)"
    )
    ap.add_argument(
        "--hard-timeout", type=float, default=225.0, help="watchdog: write JSON and exit (seconds)"
    )
    ap.add_argument(
        "--no-preflight", action="store_true", help="skip the padded check in a child process"
    )
    ap.add_argument("--preflight-config-s", type=float, default=45.0)
    ap.add_argument("--preflight-startup-s", type=float, default=90.0)
    ap.add_argument("--preflight-child", default="", help=argparse.SUPPRESS)
    ap.add_argument("--verbose", action="store_true", help="print tracebacks")
    ap.add_argument(
        "--interpret",
        action="store_true",
        help="CPU dry run of this script: Pallas kernels in Mosaic GPU interpret mode (jax >= "
        "0.11.2); timings meaningless, use tiny --shapes",
    )
    args = ap.parse_args(argv)
    if args.preflight_child:
        preflight_child(args.preflight_child.split(","), args.interpret)
        return

    run = Run(args)
    run.plain_xla_left = args.plain_xla_shapes
    log(f"jax {jax.__version__} | {sys.argv}")

    def watchdog():
        run.doc["meta"]["watchdog"] = (
            f"hard timeout {args.hard_timeout:.0f}s hit during: {run.stage} (a hung kernel?)"
        )
        log(f"WATCHDOG: {run.doc['meta']['watchdog']}")
        try:
            run.write()
            log(table(run.doc))
        finally:
            os._exit(3)

    timer = threading.Timer(args.hard_timeout, watchdog)
    timer.daemon = True
    timer.start()

    if args.shapes:
        shapes = []
        for item in args.shapes.split(","):
            named = [s for s in SHAPES if s[3] == item]
            if named:
                shapes += named
            else:
                m, k, n = (int(v) for v in item.lower().split("x"))
                shapes.append((m, k, n, item))
    else:
        shapes = SHAPES
    all_configs = {**CONFIGS, **FALLBACK_CONFIGS}
    if args.configs:
        configs = {c: all_configs[c] for c in args.configs.split(",")}
        fallbacks = {}
    else:
        configs, fallbacks = dict(CONFIGS), dict(FALLBACK_CONFIGS)
    baselines = [b for b in args.baselines.split(",") if b]

    if pg.plgpu is None:
        configs, fallbacks = {}, {}
    log(f"Pallas configs: {configs} (fallbacks {list(fallbacks)})")
    pre = None
    if configs and not args.no_preflight:
        # Before this process touches the GPU: the children get the whole device.
        run.stage = "preflight"
        names = list(configs) + list(fallbacks)
        pre = preflight(run, names, args.preflight_config_s, args.preflight_startup_s)
    run.add_device_meta()
    log(f"devices {jax.devices()} | backend {jax.default_backend()}")
    log(f"pallas available: {pg.available()} ({pg.unavailable_reason()})")
    if not pg.available() and not (args.interpret and pg.plgpu is not None):
        log("Pallas kernel unavailable here: timing the XLA baselines only.")
        configs, fallbacks = {}, {}
    if configs and pre is None:
        run.stage = "padded check (in-process)"
        pre = padded_check_inprocess(run, {**configs, **fallbacks})
    if pre is not None:
        configs = {c: kw for c, kw in configs.items() if pre.get(c, {}).get("ok")}
        fallbacks = {c: kw for c, kw in fallbacks.items() if pre.get(c, {}).get("ok")}
        log(f"configs after the padded check: {list(configs)} (fallbacks {list(fallbacks)})")
        if not configs:
            configs, fallbacks = fallbacks, {}

    for i, (m, k, n, name) in enumerate(shapes):
        if run.elapsed() > args.time_budget:
            log(f"time budget {args.time_budget:.0f}s spent: skipping {name} and later shapes")
            run.doc["meta"]["skipped_shapes"] = [s[3] for s in shapes[i:]]
            break
        log(f"== {name} M={m} K={k} N={n} (t={run.elapsed():.0f}s)")
        rec = probe_shape(run, m, k, n, name, configs, baselines)
        if i == 0 and configs:
            good = {
                c: rec["variants"][f"pallas:{c}"]["us"]
                for c in configs
                if "us" in rec["variants"][f"pallas:{c}"]
                and rec["variants"][f"pallas:{c}"].get("correct")
            }
            if not good and fallbacks:
                log("no primary config compiled and passed: trying the fallbacks")
                rec2 = probe_shape(run, m, k, n, name + "/fallback", fallbacks, [], rec)
                good = {
                    c: rec2["variants"][f"pallas:{c}"]["us"]
                    for c in fallbacks
                    if "us" in rec2["variants"][f"pallas:{c}"]
                    and rec2["variants"][f"pallas:{c}"].get("correct")
                }
                configs = dict(fallbacks)
            ranked = sorted(good, key=good.get)
            kept = ranked[: args.keep]
            # ... plus the fastest config that fits every remaining shape, so that no shape is
            # left without a Pallas number.
            rest = shapes[i + 1 :]
            universal = [c for c in ranked if all(fits(configs[c], *s[:3]) for s in rest)]
            if universal and universal[0] not in kept:
                kept.append(universal[0])
            configs = {c: configs[c] for c in kept}
            log(f"configs kept for the other shapes: {kept}")
            run.doc["meta"]["kept_configs"] = kept
    timer.cancel()
    run.doc["meta"]["elapsed_s"] = round(run.elapsed(), 1)
    run.write()
    log("")
    log(table(run.doc))


if __name__ == "__main__":
    main()
