"""RAR's tensor-parallel rules (`arvg_jax.parallel.rules`): the MLP's hidden columns over "model".

fc1 [C, I] by output columns (and its bias), fc2 [I, C] by input rows: one reduction per block.
The fused qkv kernel is laid out q | k | v, so attention stays replicated.
"""

from jax.sharding import PartitionSpec as P

RULES = (
    (r"blocks_\d+/mlp/fc1/kernel", P(None, "model")),
    (r"blocks_\d+/mlp/fc1/bias", P("model")),
    (r"blocks_\d+/mlp/fc2/kernel", P("model", None)),
)
