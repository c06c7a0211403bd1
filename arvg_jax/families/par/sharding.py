"""PAR's tensor-parallel rules (`arvg_jax.parallel.rules`): attention heads and SwiGLU hidden columns
over "model".

w1 and w3 [C, F] by output columns, w2 [F, C] by input rows: one reduction per block. Attention
(`heads`): wqkv [C, (H + 2G) K] (GQA: G kv heads, query head h reads kv head h // (H / G)) in
model-shard-major column order (`arvg_jax.parallel.heads`: device m holds q heads
[m H/M, (m + 1) H/M) and the kv heads they read), split by columns; wo [H K, C] by input rows.
"""

from jax.sharding import PartitionSpec as P

from arvg_jax.parallel.heads import FusedHeads

RULES = (
    (r"layers_\d+/feed_forward/w[13]/kernel", P(None, "model")),
    (r"layers_\d+/feed_forward/w2/kernel", P("model", None)),
)


def heads(cfg) -> tuple[FusedHeads, ...]:
    """The fused attention layers of `cfg` (a `PARConfig`)."""
    return (
        FusedHeads(
            r"layers_\d+/attention/wqkv",
            r"layers_\d+/attention/wo",
            cfg.n_head,
            cfg.kv_heads,
            cfg.head_dim,
        ),
    )
