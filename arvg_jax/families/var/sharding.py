"""VAR's tensor-parallel rules (`arvg_jax.parallel.rules`): attention heads and FFN columns over
"model".

fc1 [C, 4C] is split by output columns (and its bias), fc2 [4C, C] by input rows, so each device
holds a slice of the hidden layer and one reduction joins fc2's partial sums. Attention (`heads`):
the fused qkv [C, 3C] is laid out q | k | v, so the placement puts its columns in model-shard-major
order (`arvg_jax.parallel.heads`) and splits them, each device computing its H/M heads; proj [C, C]
is split by input rows (one reduction). Paths match the per-block tree (blocks_<i>) and the stacked
inference layout (blocks).
"""

from jax.sharding import PartitionSpec as P

from arvg_jax.parallel.heads import FusedHeads

RULES = (
    (r"blocks(_\d+)?/ffn/fc1/kernel", P(None, "model")),
    (r"blocks(_\d+)?/ffn/fc1/bias", P("model")),
    (r"blocks(_\d+)?/ffn/fc2/kernel", P("model", None)),
)


def heads(cfg) -> tuple[FusedHeads, ...]:
    """The fused attention layers of `cfg` (a `VARConfig`)."""
    h = cfg.num_heads
    return (FusedHeads(r"blocks(_\d+)?/attn/qkv", r"blocks(_\d+)?/attn/proj", h, h, cfg.head_dim),)
