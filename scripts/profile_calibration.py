"""Where PTQ4ARVG calibration time goes, per block: the searches and the stage forwards.

    PYTHONPATH=. python3 scripts/profile_calibration.py --out $OUT/profile_calib.json

Builds ONE full-width block of a VAR preset (random weights, 128 calibration sequences by
default), then times (compile apart from run) the order-statistics sort and the percentile
search at the sizes a block produces, and stages B, D (needs B), E, G on that block, and traces
one run of the slowest stage with jax.profiler (kernel time by category and the top kernels).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))


def _timed(fn, *args, repeats=2):
    import jax

    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        runs.append(time.perf_counter() - t)
    return {"first_s": first, "run_s": min(runs)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="var-d30")
    p.add_argument("--calib", type=int, default=128)
    p.add_argument("--bits", default="w8a8")
    p.add_argument("--out", required=True)
    args = p.parse_args()

    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax import lax

    from arvg_jax.families.var.bench.build import random_params
    from arvg_jax.families.var.bench.profile import summarize_trace
    from arvg_jax.families.var.model import VAR
    from arvg_jax.families.var.quant_adapter import VARAdapter
    from arvg_jax.models import resolve_configs
    from quant._fit import _sortable, search_rows
    from quant.algorithms import ptq4arvg as P
    from quant.recipes import Recipe

    out = {"jax": jax.__version__, "device": jax.devices()[0].device_kind, "pieces": {}}

    def dump():
        pathlib.Path(args.out).write_text(json.dumps(out, indent=1, default=str))

    _, cfg, _ = resolve_configs(args.model, None)
    cfg = dataclasses.replace(cfg, depth=1)
    n, length, c = args.calib, cfg.seq_len, cfg.embed_dim
    labels = jax.ShapeDtypeStruct((1,), jnp.int32)
    x_abs = jax.ShapeDtypeStruct((1, length - cfg.first_l, cfg.cvae), jnp.float32)
    abstract = jax.eval_shape(
        lambda k, l, x: VAR(cfg).init(k, l, x)["params"], jax.random.PRNGKey(0), labels, x_abs
    )
    params = random_params(abstract, 0)
    rng = np.random.default_rng(0)
    batch = {
        "labels": rng.integers(0, cfg.num_classes, n).astype(np.int32),
        "x": jnp.asarray(rng.standard_normal((n, length - cfg.first_l, cfg.cvae), np.float32)),
    }

    sort = jax.jit(lambda x: lax.sort(_sortable(x), dimension=1))
    search = jax.jit(search_rows, static_argnames="bits")
    key = jax.random.PRNGKey(1)
    for rows, size in [(1, n * (length - 1) * 4 * c), (1, n * (length - 1) * c), (c, n * length)]:
        x = jax.random.normal(key, (rows, size), jnp.float32)
        out["pieces"][f"sort[{rows},{size}]"] = _timed(sort, x)
        out["pieces"][f"search[{rows},{size}]"] = _timed(lambda v: search(v, bits=8), x)
        del x
        print(json.dumps(out["pieces"]), flush=True)
        dump()

    adapter = VARAdapter(cfg)
    recipe = Recipe.parse("ptq4arvg", args.bits, calib=n)
    stages = {}
    for name, stage in P.STAGES:
        t = time.perf_counter()
        new = stage(adapter, params, batch, recipe, progress=False)
        jax.block_until_ready(new)
        first = time.perf_counter() - t
        t = time.perf_counter()
        jax.block_until_ready(stage(adapter, params, batch, recipe, progress=False))
        stages[name] = {"first_s": first, "run_s": time.perf_counter() - t}
        params = new
        out["stages_one_block"] = stages
        print(name, stages[name], flush=True)
        dump()

    # Trace B and G on the float tree (a valid input to both: G needs no calib_quant leaves).
    base = random_params(abstract, 0)
    for name in ("B", "G"):
        fn = dict(P.STAGES)[name]
        state = out.setdefault("traces", {})
        src = base
        with tempfile.TemporaryDirectory() as d:
            with jax.profiler.trace(d):
                t = time.perf_counter()
                jax.block_until_ready(fn(adapter, src, batch, recipe, progress=False))
                wall = time.perf_counter() - t
            state[name] = summarize_trace(d, None, top=25, wall_s=wall)
        print(name, json.dumps(state[name]["categories_ms"]), flush=True)
        for k in state[name]["top_kernels"][:12]:
            print(f"  {k['ms']:9.2f} ms x{k['count']:4d} {k['category']:12s} {k['kernel'][:90]}")
        dump()
    return 0


if __name__ == "__main__":
    sys.exit(main())
