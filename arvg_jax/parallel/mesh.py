"""Device meshes from a `--mesh` spec, and the multi-host start-up (`jax.distributed`).

A spec names axis sizes: ``"data=8"``, ``"data=4,model=2"``, ``"model=2"`` (data takes the rest);
a mesh smaller than the device count uses the first devices (``"data=1"``: one device).
Two axes exist: ``data`` (the batch: images, their CFG-doubled rows, calibration rows) and
``model`` (tensor parallelism: the columns of the layers a family's sharding rules name). No spec:
every local device on ``data``.

Meshes are built over this process's *local* devices: on several hosts each process samples its
own shards (`arvg_jax.parallel.hosts`), so no collective ever crosses hosts.
"""

from __future__ import annotations

import os

import numpy as np

DATA, MODEL = "data", "model"
AXES = (DATA, MODEL)
DISTRIBUTED_ENV = "ARVG_DISTRIBUTED"


def parse_spec(spec: str | None, num_devices: int) -> dict[str, int]:
    """{"data": d, "model": m} with d * m <= num_devices (a mesh may use the first devices
    only: "data=1" runs on one).

    Raises:
      ValueError: one line naming the problem (unknown axis, bad size, sizes that do not
        multiply to the device count).
    """
    sizes: dict[str, int] = {}
    for part in (spec or "").replace(" ", "").split(","):
        if not part:
            continue
        name, eq, value = part.partition("=")
        if not eq or name not in AXES or name in sizes:
            raise ValueError(
                f"--mesh {spec!r}: expected comma-separated {'|'.join(AXES)}=N, each axis once"
            )
        try:
            sizes[name] = int(value)
        except ValueError:
            raise ValueError(f"--mesh {spec!r}: {name}={value!r} is not an integer") from None
        if sizes[name] < 1:
            raise ValueError(f"--mesh {spec!r}: {name} must be >= 1")
    model = sizes.get(MODEL, 1)
    if DATA not in sizes:
        if num_devices % model:
            raise ValueError(
                f"--mesh {spec!r}: model={model} does not divide {num_devices} devices"
            )
        sizes[DATA] = num_devices // model
    if sizes[DATA] * model > num_devices:
        raise ValueError(
            f"--mesh {spec!r}: data={sizes[DATA]} x model={model} = {sizes[DATA] * model} devices, "
            f"but {num_devices} local devices exist"
        )
    return {DATA: sizes[DATA], MODEL: model}


def make_mesh(spec: str | None = None, devices=None):
    """A `jax.sharding.Mesh` with axes ("data", "model") over `devices` (default: the local ones).

    Axis types are `Auto`: jit propagates the shardings of its inputs (GSPMD), and the samplers
    run unchanged inside `jax.shard_map` over "data".
    """
    import jax
    from jax.sharding import AxisType, Mesh

    devices = list(jax.local_devices() if devices is None else devices)
    sizes = parse_spec(spec, len(devices))
    used = devices[: sizes[DATA] * sizes[MODEL]]
    grid = np.asarray(used, dtype=object).reshape(sizes[DATA], sizes[MODEL])
    return Mesh(grid, AXES, axis_types=(AxisType.Auto, AxisType.Auto))


def describe(mesh) -> str:
    """One line: "mesh data=4 x model=2 over 8 cpu devices"."""
    devices = mesh.devices.reshape(-1)
    return (
        f"mesh data={mesh.shape[DATA]} x model={mesh.shape[MODEL]} over {len(devices)} "
        f"{devices[0].platform} device(s)"
    )


def maybe_initialize_distributed(flag: bool = False) -> bool:
    """Calls `jax.distributed.initialize()` when `flag` (`--distributed`) or the environment
    variable ARVG_DISTRIBUTED=1 asks for it; returns whether it did.

    With no arguments `jax.distributed.initialize` finds the coordinator itself on Cloud TPU pods,
    SLURM and Open MPI, or from JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID.
    It must run before anything touches a device.
    """
    if not (flag or os.environ.get(DISTRIBUTED_ENV, "") not in ("", "0")):
        return False
    import jax

    jax.distributed.initialize()
    return True
