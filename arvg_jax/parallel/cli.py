"""The command-line flags of `arvg sample|generate|quantize`: --mesh and --distributed."""

from __future__ import annotations


def add_arguments(parser) -> None:
    g = parser.add_argument_group("devices (docs/scale_out.md)")
    g.add_argument(
        "--mesh",
        default=None,
        metavar="SPEC",
        help='device mesh over this host\'s devices: "data=8", "data=4,model=2" or "model=2" '
        "(data takes the rest). Default: every local device on data. Rows are split over data "
        "(a generation batch is rounded up to a multiple of it, the extra rows dropped); model "
        "splits the layers the family's sharding rules name",
    )
    g.add_argument(
        "--distributed",
        action="store_true",
        help="call jax.distributed.initialize() first (TPU pods, multi-node GPU; the same as "
        "ARVG_DISTRIBUTED=1): each process then samples its own share of the shards",
    )


def mesh_from_args(args):
    """Initializes `jax.distributed` if asked (before anything touches a device), then builds the
    mesh of `--mesh`."""
    from arvg_jax.parallel.mesh import make_mesh, maybe_initialize_distributed

    maybe_initialize_distributed(getattr(args, "distributed", False))
    return make_mesh(getattr(args, "mesh", None))
