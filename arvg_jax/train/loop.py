"""The stage loop every tiny recipe runs: N jitted steps, progress lines, a wall-time limit,
periodic checkpoints, and a JSON-able record of what ran."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import jax

from arvg_jax.train._common import StageHParams, StepLogger, log


def train_loop(
    stage: str,
    hp: StageHParams,
    step_fn: Callable[[Any], tuple[Any, dict]],
    state: Any,
    *,
    log_every: int,
    time_limit: float = math.inf,
    on_save: Callable[[Any, int, dict], None] | None = None,
    save_every_s: float = 60.0,
) -> tuple[Any, dict[str, Any]]:
    """Runs `state, metrics = step_fn(state)` hp.steps times, or until `time_limit` seconds.

    The limit and checkpoints are checked every `log_every` steps (when the device values are
    fetched anyway); a stage cut short keeps its cosine schedule (the learning rate is then not
    fully decayed) and records the steps reached.

    Returns:
        (final state, record {steps_planned, steps_done, wall_s, step_per_s_overall,
        step_per_s_last_interval, final_metrics, **hp}).
    """
    logger = StepLogger(stage, hp.steps, log_every)
    t_start = t_saved = time.perf_counter()
    steps_done, metrics = 0, {}
    for i in range(hp.steps):
        state, metrics = step_fn(state)
        steps_done = i + 1
        logger(steps_done, metrics)
        if steps_done % log_every == 0:
            now = time.perf_counter()
            if now - t_start > time_limit:
                log(f"[{stage}] time limit {time_limit:.0f}s reached at step {steps_done}")
                break
            if on_save is not None and now - t_saved > save_every_s:
                on_save(state, steps_done, logger.last)
                t_saved = now
    if steps_done % log_every and steps_done != hp.steps:
        logger(steps_done, metrics, force=True)
    jax.block_until_ready(state)
    wall = time.perf_counter() - t_start
    record = {
        "steps_planned": hp.steps,
        "steps_done": steps_done,
        "wall_s": round(wall, 1),
        "step_per_s_overall": round(steps_done / wall, 2),
        "step_per_s_last_interval": round(logger.rate, 2),
        "final_metrics": {k: round(v, 5) for k, v in logger.last.items()},
        **hp.to_dict(),
    }
    return state, record
