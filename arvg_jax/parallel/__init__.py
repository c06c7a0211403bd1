"""Running on many devices with JAX's own machinery: meshes (`jax.sharding.Mesh`), shardings
derived from rules on the parameter tree (`NamedSharding`, `PartitionSpec`), the samplers inside
`jax.shard_map`, `jax.distributed` for several hosts and orbax for sharded checkpoints.
docs/scale_out.md is the user's guide.
"""

from arvg_jax.parallel.mesh import (
    DATA,
    MODEL,
    describe,
    make_mesh,
    maybe_initialize_distributed,
    parse_spec,
)

__all__ = [
    "DATA",
    "MODEL",
    "describe",
    "make_mesh",
    "maybe_initialize_distributed",
    "parse_spec",
]
