"""Training pieces shared by every family's tiny-model recipe (`families/<name>/train`).

`StageHParams` / `make_optimizer` (AdamW with warm-up and cosine decay), `sample_batch`,
`StepLogger`, the stage loop (`loop`), the shapes classifier used to score generated samples and
the generation evaluation with it (`evaluation`).
"""

from arvg_jax.train._classifier import classifier_train_step, init_classifier_state
from arvg_jax.train._common import (
    StageHParams,
    StepLogger,
    count_params,
    log,
    lr_schedule,
    make_optimizer,
    sample_batch,
)
from arvg_jax.train.loop import batched_apply, train_loop

__all__ = [
    "StageHParams",
    "StepLogger",
    "batched_apply",
    "classifier_train_step",
    "count_params",
    "init_classifier_state",
    "log",
    "lr_schedule",
    "make_optimizer",
    "sample_batch",
    "train_loop",
]
