"""Training pieces shared by the families: stage hyper-parameters, the AdamW schedule, progress logging.

Dims: N dataset size, B batch.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax


@dataclasses.dataclass(frozen=True, kw_only=True)
class StageHParams:
    """One training stage's optimisation settings."""

    steps: int  # optimizer steps
    batch: int  # B, images (or token sequences) per step
    lr: float  # peak learning rate
    warmup: int = 0  # linear warm-up steps, then cosine decay to lr * end_lr_ratio
    end_lr_ratio: float = 0.05
    weight_decay: float = 0.0  # AdamW decay, on >= 2-D params only
    b2: float = 0.99  # Adam beta2
    clip: float = 1.0  # global-norm gradient clip (0 = off)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def lr_schedule(hp: StageHParams) -> optax.Schedule:
    """Linear warm-up to `hp.lr`, then cosine decay over the remaining steps."""
    warmup = min(hp.warmup, max(hp.steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0 if warmup else hp.lr,
        peak_value=hp.lr,
        warmup_steps=warmup,
        decay_steps=max(hp.steps, warmup + 1),
        end_value=hp.lr * hp.end_lr_ratio,
    )


def make_optimizer(hp: StageHParams) -> optax.GradientTransformation:
    """Global-norm clip, then AdamW (decay masked to tensors of rank >= 2)."""
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
    adamw = optax.adamw(
        lr_schedule(hp), b1=0.9, b2=hp.b2, weight_decay=hp.weight_decay, mask=decay_mask
    )
    if hp.clip > 0:
        return optax.chain(optax.clip_by_global_norm(hp.clip), adamw)
    return adamw


def sample_batch(key: jax.Array, arrays: tuple[jax.Array, ...], batch: int) -> tuple:
    """Draws `batch` rows (with replacement) of the same random indices from each [N, ...] array."""
    idx = jax.random.randint(key, (batch,), 0, arrays[0].shape[0])
    return tuple(jnp.take(a, idx, axis=0) for a in arrays)


def count_params(params) -> int:
    return int(sum(x.size for x in jax.tree.leaves(params)))


def log(msg: str) -> None:
    print(msg, file=sys.stdout, flush=True)


class StepLogger:
    """Prints `stage step/steps key=value ... (x step/s)` every `every` steps, fetching the
    device values only then (so the loop stays asynchronous in between)."""

    def __init__(self, stage: str, steps: int, every: int, sink: Callable[[str], None] = log):
        self.stage, self.steps, self.every, self.sink = stage, steps, max(int(every), 1), sink
        self.t0 = self.t_last = time.perf_counter()
        self.n_last = 0
        self.last: dict[str, float] = {}
        self.rate = float("nan")

    def __call__(self, step: int, metrics: dict[str, Any], force: bool = False) -> None:
        """Call after finishing `step` (1-based count of completed steps)."""
        if not force and step % self.every and step != self.steps:
            return
        vals = {k: float(v) for k, v in jax.device_get(metrics).items()}
        now = time.perf_counter()
        if step > self.n_last:
            self.rate = (step - self.n_last) / max(now - self.t_last, 1e-9)
        self.t_last, self.n_last, self.last = now, step, vals
        txt = " ".join(f"{k}={v:.4g}" for k, v in vals.items())
        self.sink(
            f"[{self.stage}] {step}/{self.steps} {txt} ({self.rate:.2f} step/s, "
            f"{now - self.t0:.0f}s)"
        )
