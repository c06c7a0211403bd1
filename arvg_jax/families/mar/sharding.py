"""MAR's tensor-parallel rules (`arvg_jax.parallel.rules`): the encoder's and decoder's attention
heads and MLP hidden columns over "model".

fc1 by output columns (and its bias), fc2 by input rows. Attention (`heads`; the encoder and the
decoder have head counts of their own): the fused qkv [C, 3C] in model-shard-major column order
(`arvg_jax.parallel.heads`), split by columns, proj by input rows. The small diffusion head stays
replicated.
"""

from jax.sharding import PartitionSpec as P

from arvg_jax.parallel.heads import FusedHeads

RULES = (
    (r"transformer/(en|de)coder_blocks_\d+/mlp/fc1/kernel", P(None, "model")),
    (r"transformer/(en|de)coder_blocks_\d+/mlp/fc1/bias", P("model")),
    (r"transformer/(en|de)coder_blocks_\d+/mlp/fc2/kernel", P("model", None)),
)


def heads(cfg) -> tuple[FusedHeads, ...]:
    """The fused attention layers of `cfg` (a `MARConfig`): encoder, then decoder."""
    out = []
    for part, width, h in (
        ("encoder", cfg.encoder_embed_dim, cfg.encoder_num_heads),
        ("decoder", cfg.decoder_embed_dim, cfg.decoder_num_heads),
    ):
        block = rf"transformer/{part}_blocks_\d+/attn"
        out.append(FusedHeads(block + "/qkv", block + "/proj", h, h, width // h))
    return tuple(out)
