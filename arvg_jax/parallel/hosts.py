"""Several processes (hosts) sharing one `arvg sample` run: who writes which shard.

Shard s belongs to process s mod P (P processes): every process derives the same assignment
from the shard index alone, so a restart, with the same or another number of processes, skips the
finished shards and regenerates exactly the missing ones. Image i always draws with
`fold_in(PRNGKey(seed), i)`, so the union of the processes' shards equals a one-device run.

The process index and count come from `jax.distributed` (`jax.process_index()`,
`jax.process_count()`), or, for a batch-scheduler job array whose tasks do not talk to each other,
from ARVG_PROCESS_INDEX and ARVG_PROCESS_COUNT.
"""

from __future__ import annotations

import os

INDEX_ENV, COUNT_ENV = "ARVG_PROCESS_INDEX", "ARVG_PROCESS_COUNT"


def process_info() -> tuple[int, int, bool]:
    """(index, count, coordinated): coordinated is True under `jax.distributed` (the processes can
    wait for each other), False for a job array (environment variables) or a single process."""
    env_index, env_count = os.environ.get(INDEX_ENV), os.environ.get(COUNT_ENV)
    if env_index is not None or env_count is not None:
        try:
            index, count = int(env_index or ""), int(env_count or "")
        except ValueError:
            raise ValueError(f"{INDEX_ENV} and {COUNT_ENV} must both be integers") from None
        if not 0 <= index < count:
            raise ValueError(f"{INDEX_ENV}={index} outside [0, {COUNT_ENV}={count})")
        return index, count, False
    import jax

    count = jax.process_count()
    return jax.process_index(), count, count > 1


def my_shards(total: int, done: set[int], index: int, count: int) -> list[int]:
    """The unfinished shards of process `index` of `count`: s with s % count == index."""
    return [s for s in range(index, total, count) if s not in done]


def barrier(name: str, coordinated: bool) -> None:
    """Waits until every process got here (`jax.distributed` only; otherwise nothing to wait
    for)."""
    if coordinated:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
