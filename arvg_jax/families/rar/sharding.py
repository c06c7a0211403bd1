"""RAR's tensor-parallel rules (`arvg_jax.parallel.rules`): attention heads and MLP columns over
"model".

fc1 [C, I] by output columns (and its bias), fc2 [I, C] by input rows: one reduction per MLP.
Attention (`heads`): the fused qkv [C, 3C] in model-shard-major column order
(`arvg_jax.parallel.heads`), split by columns, proj by input rows: one reduction.
"""

from jax.sharding import PartitionSpec as P

from arvg_jax.parallel.heads import FusedHeads

RULES = (
    (r"blocks_\d+/mlp/fc1/kernel", P(None, "model")),
    (r"blocks_\d+/mlp/fc1/bias", P("model")),
    (r"blocks_\d+/mlp/fc2/kernel", P("model", None)),
)


def heads(cfg) -> tuple[FusedHeads, ...]:
    """The fused attention layers of `cfg` (a `RARConfig`)."""
    h = cfg.num_attention_heads
    return (FusedHeads(r"blocks_\d+/attn/qkv", r"blocks_\d+/attn/proj", h, h, cfg.head_dim),)
