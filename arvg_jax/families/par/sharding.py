"""PAR's tensor-parallel rules (`arvg_jax.parallel.rules`): the SwiGLU hidden columns over "model".

w1 and w3 [C, I] by output columns, w2 [I, C] by input rows: one reduction per block. The fused
wqkv kernel is laid out q | k | v, so attention stays replicated.
"""

from jax.sharding import PartitionSpec as P

RULES = (
    (r"layers_\d+/feed_forward/w[13]/kernel", P(None, "model")),
    (r"layers_\d+/feed_forward/w2/kernel", P("model", None)),
)
