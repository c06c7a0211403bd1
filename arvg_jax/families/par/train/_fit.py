"""A stage loop that fits its cosine schedule to a wall-time budget.

The tiny recipes stop a stage at its `--*-max-s` limit; a stage cut that way ends at a high
learning rate. Here the first `probe` steps (within the warm-up, where every schedule length
gives the same learning rates) measure the step rate, then the planned step count is lowered so
that the whole cosine decay fits the remaining budget; the rest runs under that schedule, still
stopped by the limit as a safety net. Without a limit it is `train_loop` itself.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

import jax

from arvg_jax.train._common import StageHParams, log
from arvg_jax.train.loop import train_loop


def fitted_train_loop(
    stage: str,
    hp: StageHParams,
    make_step: Callable[[StageHParams], Callable[[Any], tuple[Any, dict]]],
    state: Any,
    *,
    log_every: int,
    time_limit: float = math.inf,
    on_save: Callable[[Any, int, dict], None] | None = None,
    probe: int = 100,
    margin: float = 0.95,
) -> tuple[Any, dict[str, Any]]:
    """`train_loop` whose step count is fitted to `time_limit` seconds.

    Args:
        make_step: hp -> step function `state -> (state, metrics)` under that schedule (each new
            hp compiles once; the fitted one is compiled after the probe).
        probe: steps measured at the planned schedule (at most hp.warmup, so the learning rates
            they see are those of any schedule length).
        margin: share of the remaining budget the fitted steps are planned to take.

    Returns:
        (state, record): `train_loop`'s record over all steps, plus "steps_fitted" and the probe's
        "probe_step_per_s" when fitted.
    """
    probe = min(probe, hp.warmup, hp.steps)
    if not math.isfinite(time_limit) or probe < 2:
        return train_loop(
            stage,
            hp,
            make_step(hp),
            state,
            log_every=log_every,
            time_limit=time_limit,
            on_save=on_save,
        )
    t0 = time.perf_counter()
    step = make_step(hp)
    state, metrics = step(state)  # compiles
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    for _ in range(probe - 1):
        state, metrics = step(state)
    jax.block_until_ready(metrics)
    rate = (probe - 1) / max(time.perf_counter() - t1, 1e-9)
    # The fitted schedule compiles once more (about compile_s) before its steps run.
    budget = time_limit - (time.perf_counter() - t0) - compile_s
    fitted = min(hp.steps, probe + max(int(rate * budget * margin), 0))
    fit_hp = dataclasses.replace(hp, steps=fitted)
    log(
        f"[{stage}] probe {probe} steps at {rate:.1f} step/s (compile {compile_s:.1f}s): "
        f"{fitted} of {hp.steps} planned steps fit {time_limit:.0f}s"
    )
    rest_hp = dataclasses.replace(fit_hp, steps=fitted - probe)
    state, record = train_loop(
        stage,
        rest_hp,
        make_step(fit_hp),
        state,
        log_every=log_every,
        time_limit=time_limit - (time.perf_counter() - t0),
        on_save=None if on_save is None else (lambda s, n, m: on_save(s, n + probe, m)),
    )
    wall = time.perf_counter() - t0
    record.update(
        {
            **hp.to_dict(),
            "steps_planned": hp.steps,
            "steps_fitted": fitted,
            "steps_done": record["steps_done"] + probe,
            "wall_s": round(wall, 1),
            "step_per_s_overall": round((record["steps_done"] + probe) / wall, 2),
            "probe_step_per_s": round(rate, 2),
            "compile_s": round(compile_s, 1),
        }
    )
    return state, record
