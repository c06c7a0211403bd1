"""MAR's tensor-parallel rules (`arvg_jax.parallel.rules`): the encoder's and decoder's MLP hidden
columns over "model" (fc1 by output columns and its bias, fc2 by input rows). The fused qkv
kernels are laid out q | k | v, so attention stays replicated; the small diffusion head too.
"""

from jax.sharding import PartitionSpec as P

RULES = (
    (r"transformer/(en|de)coder_blocks_\d+/mlp/fc1/kernel", P(None, "model")),
    (r"transformer/(en|de)coder_blocks_\d+/mlp/fc1/bias", P("model")),
    (r"transformer/(en|de)coder_blocks_\d+/mlp/fc2/kernel", P("model", None)),
)
