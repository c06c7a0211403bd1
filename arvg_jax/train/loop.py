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


def device_desc() -> str:
    """ "platform:device kind xcount" of the default backend (recorded with measured numbers)."""
    d = jax.devices()[0]
    return f"{d.platform}:{getattr(d, 'device_kind', '?')} x{jax.device_count()}"


class StageRun:
    """Bookkeeping of one tiny-recipe run: the recipe.json meta dict, the files in `out`, the
    per-stage wall limits, and the stage loop recording into meta["stages"].

    Attributes:
        out: pathlib.Path output directory; meta: dict written to out / "recipe.json".
    """

    def __init__(self, out, meta: dict[str, Any], time_limits: dict[str, float], log_every: int):
        self.out, self.meta, self.time_limits, self.log_every = out, meta, time_limits, log_every
        self.t0 = time.perf_counter()
        meta.setdefault("status", "running")
        meta.setdefault("stages", {})
        meta.setdefault("metrics", {})

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def save_meta(self) -> None:
        from arvg_jax import assets

        self.meta["wall_time_s"] = round(self.elapsed(), 1)
        assets.write_json(self.out / "recipe.json", self.meta)

    def save_params(self, name: str, params) -> None:
        """Writes out/<name>.npz (float32) and records its size in meta["file_bytes"]."""
        from arvg_jax import assets

        size = assets.save_params(self.out / f"{name}.npz", jax.device_get(params))
        self.meta.setdefault("file_bytes", {})[f"{name}.npz"] = size

    def loop(self, stage: str, hp: StageHParams, step_fn, state, on_save=None):
        """`train_loop` under the stage's wall limit; its record goes to meta["stages"][stage]."""
        state, record = train_loop(
            stage,
            hp,
            step_fn,
            state,
            log_every=self.log_every,
            time_limit=self.time_limits.get(stage, math.inf),
            on_save=on_save,
        )
        self.meta["stages"][stage] = record
        return state

    def finish(self, status: str = "complete") -> dict[str, Any]:
        self.meta["status"] = status
        self.save_meta()
        log(f"done in {self.elapsed():.0f}s ({status})")
        return self.meta


def shapes_dataset_meta(recipe: Any) -> dict[str, Any]:
    """recipe.json "dataset" of a recipe with image_size, data_seed, num_train, eval_seed and
    num_eval fields (the procedural `arvg_jax.data.shapes` sets it draws)."""
    from arvg_jax.data import shapes

    return {
        "name": "arvg_jax.data.shapes",
        "class_names": list(shapes.CLASS_NAMES),
        "image_size": recipe.image_size,
        "train": {"seed": recipe.data_seed, "n": recipe.num_train},
        "eval": {"seed": recipe.eval_seed, "n": recipe.num_eval},
    }
