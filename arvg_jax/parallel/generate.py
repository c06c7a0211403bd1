"""A family's jitted `generate` run over a mesh: the batch split over "data", params placed by
the family's sharding rules (replicated, or split over "model").

Each "data" shard runs the family's own sampler on its slice of the labels and per-image keys
inside `jax.shard_map`: its CFG-doubled rows (cond and uncond of its own images) stay on its
device, nothing crosses devices, and image i draws with its own key `fold_in(PRNGKey(seed), i)`
wherever it runs, so the tokens equal a one-device run. On a mesh with a "model" axis the map is
manual over "data" only; inside, jit partitions the model-sharded params (GSPMD) and inserts the
reductions tensor parallelism needs: one per attention (its heads split over "model", see
`arvg_jax.parallel.heads`) and one per MLP.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from arvg_jax.parallel.mesh import DATA, MODEL


def padded_batch(batch: int, mesh) -> int:
    """`batch` rounded up to a multiple of the data axis (the rows past it are dropped)."""
    d = mesh.shape[DATA]
    return -(-batch // d) * d


def check_batch(n: int, mesh, what: str = "batch") -> None:
    if n % mesh.shape[DATA]:
        raise ValueError(
            f"{what} of {n} rows does not divide over data={mesh.shape[DATA]} devices: "
            f"use a multiple of {mesh.shape[DATA]} (or another --mesh)"
        )


def shard_batch(x, mesh):
    """An array split over "data" along its first axis."""
    return jax.device_put(x, NamedSharding(mesh, PartitionSpec(DATA)))


@functools.lru_cache(maxsize=64)
def _compiled(fam, mesh, cfg, tok_cfg, options, sampling: tuple):
    kwargs = dict(sampling)

    def local(params, tok_params, labels, keys):
        return fam.generate(
            params, tok_params, cfg, tok_cfg, labels, keys, options=options, **kwargs
        )

    manual = {DATA} if mesh.shape[MODEL] > 1 else set(mesh.axis_names)
    data = PartitionSpec(DATA)
    mapped = jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(PartitionSpec(), PartitionSpec(), data, data),
        out_specs=data,
        axis_names=manual,
        check_vma=False,  # the samplers are written per device; nothing is reduced over "data"
    )
    return jax.jit(mapped)


def generate(fam, mesh, params, tok_params, cfg, tok_cfg, labels, keys, /, *, options, **sampling):
    """`fam.generate` over `mesh`: {"tokens", "images"} split over "data" (np.asarray gathers).

    `params` / `tok_params` should already be on the mesh (`rules.place`: once per run, not per
    batch; with `fam.sharding_rules(cfg)` attention runs head-parallel, and the sampler is told
    the qkv column order the placement chose, `ExecOptions.qkv_shards`); labels int [B] and keys
    [B, 2] are split here. B must be a multiple of the data axis (`padded_batch`). The leading
    arguments are positional-only: a sampling setting may be called `cfg` (VAR's and MAR's
    guidance scale).
    """
    fn, args = _program(
        fam, mesh, params, tok_params, cfg, tok_cfg, labels, keys, options, sampling
    )
    with jax.threefry_partitionable(True):
        return fn(*args)


def lower(fam, mesh, params, tok_params, cfg, tok_cfg, labels, keys, /, *, options, **sampling):
    """The program `generate` runs, lowered (`.compile().as_text()` shows each device's share:
    how the tests check that attention is head-parallel)."""
    fn, args = _program(
        fam, mesh, params, tok_params, cfg, tok_cfg, labels, keys, options, sampling
    )
    with jax.threefry_partitionable(True):
        return fn.lower(*args)


def _program(fam, mesh, params, tok_params, cfg, tok_cfg, labels, keys, options, sampling):
    """(the jitted sampler, its arguments) of `generate`."""
    import jax.numpy as jnp

    from arvg_jax.parallel import heads

    labels = jnp.asarray(labels, jnp.int32)
    check_batch(labels.shape[0], mesh)
    _, fused = heads.split_rules(fam.sharding_rules(cfg))
    shards = heads.tree_shards(params, fused)
    if shards not in (1, mesh.shape[MODEL]):
        raise ValueError(
            f"params placed head-parallel for model={shards}, but the mesh has "
            f"model={mesh.shape[MODEL]}: place them on this mesh (rules.place)"
        )
    options = options.replace(qkv_shards=shards)
    fn = _compiled(fam, mesh, cfg, tok_cfg, options, tuple(sorted(sampling.items())))
    return fn, (params, tok_params, shard_batch(labels, mesh), shard_batch(keys, mesh))


def shard_rows(batch: dict, mesh) -> dict:
    """A calibration batch (dict of arrays with one leading row axis) split over "data".

    Raises:
      ValueError: the row count does not divide over the data axis (no padding here: padded rows
        would enter the calibration statistics).
    """
    rows = {int(np.shape(v)[0]) for v in batch.values()}
    if len(rows) != 1:
        raise ValueError(f"calibration batch: arrays with different row counts {sorted(rows)}")
    (n,) = rows
    check_batch(n, mesh, "calibration batch (--calib)")
    return {k: shard_batch(v, mesh) for k, v in batch.items()}
