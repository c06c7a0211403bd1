"""End-to-end generation timing: images/s, latency per batch, compile time, memory, retraces.

One row per (model, variant, batch). Timing follows the device README's method: a first call
(trace + compile + run, reported apart as warm-up), then timed calls of the already compiled
function, each ended by `block_until_ready` on the images, with new labels and keys every call
(same shapes, so no recompilation; checked through the jit cache size). The median is reported.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from arvg_jax import sampling
from arvg_jax.families.var import sampler as var_sampler
from arvg_jax.options import ExecOptions


def _device_memory() -> dict[str, int] | None:
    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:  # noqa: BLE001 - backends without allocator statistics
        return None
    if not stats:
        return None
    keys = ("bytes_in_use", "peak_bytes_in_use", "bytes_limit")
    return {k: int(stats[k]) for k in keys if k in stats}


def _program_memory(args, kwargs) -> dict[str, int] | None:
    """Memory plan of the compiled generate program (argument + output + temp - alias)."""
    try:
        compiled = var_sampler._generate_jit.lower(*args, **kwargs).compile()  # cache hit
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001
        return None
    if m is None:
        return None
    out = {
        "argument_bytes": int(m.argument_size_in_bytes),
        "output_bytes": int(m.output_size_in_bytes),
        "temp_bytes": int(m.temp_size_in_bytes),
        "alias_bytes": int(m.alias_size_in_bytes),
    }
    out["total_bytes"] = (
        out["argument_bytes"] + out["output_bytes"] + out["temp_bytes"] - out["alias_bytes"]
    )
    return out


def _compiled_text(args, kwargs) -> str | None:
    try:
        return var_sampler._generate_jit.lower(*args, **kwargs).compile().as_text()
    except Exception:  # noqa: BLE001
        return None


def time_generation(
    params,
    vae_params,
    var_cfg,
    vae_cfg,
    batch: int,
    *,
    opts=None,
    seed: int = 0,
    cfg: float = 1.5,
    top_k: int = 900,
    top_p: float = 0.96,
    min_repeats: int = 3,
    max_repeats: int = 5,
    seconds: float = 20.0,
    profile_dir: str | None = None,
    want_hlo: bool = False,
) -> dict[str, Any]:
    """Times `var_sampler.generate` at one batch size; returns a result dict (see module doc)."""
    rng = np.random.default_rng(seed)
    key = jax.random.PRNGKey(seed)
    opts = (opts or ExecOptions()).resolve()

    def call(i):
        labels = rng.integers(0, var_cfg.num_classes, size=batch).astype(np.int32)
        out = var_sampler.generate(
            params,
            vae_params,
            var_cfg,
            vae_cfg,
            labels,
            jax.random.fold_in(key, i),
            cfg=cfg,
            top_k=top_k,
            top_p=top_p,
            options=opts,
        )
        out["images"].block_until_ready()
        return out

    t0 = time.perf_counter()
    out = call(0)
    first = time.perf_counter() - t0
    finite = bool(np.all(np.isfinite(np.asarray(out["images"]))))
    cache_after_first = var_sampler._generate_jit._cache_size()
    times = []
    t_start = time.perf_counter()
    while len(times) < max_repeats:
        t = time.perf_counter()
        call(len(times) + 1)
        times.append(time.perf_counter() - t)
        if len(times) >= min_repeats and time.perf_counter() - t_start > seconds:
            break
    retraced = var_sampler._generate_jit._cache_size() != cache_after_first
    med = statistics.median(times)
    row = {
        "batch": batch,
        "images_per_s": batch / med,
        "latency_ms_median": 1e3 * med,
        "latency_ms_min": 1e3 * min(times),
        "latency_ms_max": 1e3 * max(times),
        "latencies_ms": [round(1e3 * t, 3) for t in times],
        "first_call_s": first,
        "compile_s_est": max(first - med, 0.0),
        "retraced_on_same_shape": retraced,
        "images_finite": finite,
    }
    # The same (cached) executable, for its memory plan / HLO.
    labels = np.zeros((batch,), np.int32)
    args = (
        params,
        vae_params,
        jnp.asarray(labels),
        sampling.per_image_keys(key, batch),
        var_sampler.cfg_schedule(cfg, var_cfg.num_scales),
    )
    kwargs = {
        "var_cfg": var_cfg,
        "opts": opts,
        "vae_cfg": vae_cfg,
        "top_k": int(top_k),
        "top_p": float(top_p),
        "greedy": False,
        "return_margin": False,
    }
    row["program_memory"] = _program_memory(args, kwargs)
    row["device_memory"] = _device_memory()
    if want_hlo:
        row["_hlo_text"] = _compiled_text(args, kwargs)
    if profile_dir is not None:
        try:
            with jax.profiler.trace(profile_dir):
                call(10_000)
            row["_profile_dir"] = profile_dir
        except Exception as e:  # noqa: BLE001 - a profiler problem must not lose the timing
            row["profile_error"] = f"{type(e).__name__}: {str(e)[:300]}"
    return row
