"""The stage loop of the tiny recipes: jitted steps under a step count and a wall-time limit.

Dims: N dataset rows, B batch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

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

    The limit and `on_save(state, steps_done, last_metrics)` are checked every `log_every` steps
    (the only host syncs), `on_save` at most every `save_every_s` seconds. A stage cut short keeps
    its cosine schedule (cut, not rescaled); the record says how many steps ran.

    Returns:
        (final state, the stage record {steps_planned, steps_done, wall_s, step/s, final metrics,
        the hyper-parameters}).
    """
    logger = StepLogger(stage, hp.steps, log_every)
    t_start = t_saved = time.perf_counter()
    steps_done, metrics = 0, {}
    for i in range(hp.steps):
        state, metrics = step_fn(state)
        steps_done = i + 1
        logger(steps_done, metrics)
        if steps_done % max(log_every, 1) == 0:
            now = time.perf_counter()
            if now - t_start > time_limit:
                log(f"[{stage}] time limit {time_limit:.0f}s reached at step {steps_done}")
                break
            if on_save is not None and now - t_saved > save_every_s:
                on_save(state, steps_done, logger.last)
                t_saved = now
    if steps_done % max(log_every, 1) and steps_done != hp.steps:
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


def batched_apply(fn: Callable[[jax.Array], Any], x: np.ndarray, batch: int) -> Any:
    """Applies a jitted fn to [N, ...] in equal batches (last padded); numpy results (arrays or
    tuples of arrays) concatenated along the first axis."""
    n, outs = x.shape[0], []
    for s in range(0, n, batch):
        xb = x[s : s + batch]
        pad = batch - xb.shape[0] if n > batch else 0
        if pad:
            xb = np.concatenate([xb, np.repeat(xb[-1:], pad, 0)])
        res = jax.device_get(fn(jnp.asarray(xb)))
        outs.append(jax.tree.map(lambda a, m=xb.shape[0] - pad: np.asarray(a)[:m], res))
    return jax.tree.map(lambda *a: np.concatenate(a), *outs)


def with_stage_steps(recipe: Any, steps: dict[str, int | None]) -> Any:
    """A copy of a frozen recipe dataclass with some `StageHParams` fields' step counts replaced
    ({field name: steps}, None keeps); warm-up is capped at a tenth of the new count."""
    import dataclasses

    rep = {}
    for name, n in steps.items():
        if n is not None:
            hp = getattr(recipe, name)
            rep[name] = dataclasses.replace(hp, steps=n, warmup=min(hp.warmup, n // 10))
    return dataclasses.replace(recipe, **rep)


def recipe_to_dict(recipe: Any, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """A recipe dataclass as JSON-able values (fields with `to_dict` use it), minus `skip`."""
    import dataclasses

    out: dict[str, Any] = {}
    for f in dataclasses.fields(recipe):
        if f.name not in skip:
            v = getattr(recipe, f.name)
            out[f.name] = v.to_dict() if hasattr(v, "to_dict") else v
    return out


def dataset_record(recipe: Any) -> dict[str, Any]:
    """recipe.json's "dataset" entry for a recipe with image_size, data/eval seeds and sizes."""
    from arvg_jax.data import shapes

    return {
        "name": "arvg_jax.data.shapes",
        "class_names": list(shapes.CLASS_NAMES),
        "image_size": recipe.image_size,
        "train": {"seed": recipe.data_seed, "n": recipe.num_train},
        "eval": {"seed": recipe.eval_seed, "n": recipe.num_eval},
        "supersample": 2,
    }


def run_stamp() -> dict[str, Any]:
    """recipe.json's provenance entries: parameter dtype, jax version, device, UTC date."""
    import datetime

    from arvg_jax.train.evaluation import device_desc

    return {
        "param_dtype": "float32",
        "jax_version": jax.__version__,
        "device": device_desc(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
