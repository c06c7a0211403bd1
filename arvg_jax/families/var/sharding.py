"""VAR's tensor-parallel rules (`arvg_jax.parallel.rules`): the FFN's hidden columns over "model".

fc1 [C, 4C] is split by output columns (and its bias), fc2 [4C, C] by input rows, so each device
holds a slice of the hidden layer and one reduction joins fc2's partial sums. The fused qkv kernel
[C, 3C] is laid out q | k | v, so no split of its columns follows the heads: attention stays
replicated. Paths match the per-block tree (blocks_<i>) and the stacked inference layout (blocks).
"""

from jax.sharding import PartitionSpec as P

RULES = (
    (r"blocks(_\d+)?/ffn/fc1/kernel", P(None, "model")),
    (r"blocks(_\d+)?/ffn/fc1/bias", P("model")),
    (r"blocks(_\d+)?/ffn/fc2/kernel", P("model", None)),
)
