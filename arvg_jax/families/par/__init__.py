"""PAR (YuqingWang1029/PAR): parallelized autoregressive generation on the LlamaGen backbone.

Modules: `config` (PARConfig, presets), `layout` (PAR order, RoPE table, group mask), `model`,
`sampler` (sequential-then-parallel passes, KV cache, CFG, one jit program; VQ-16 decode and
evaluation post-processing), `family` (`PARFamily`, this family in the registry), `reference`
(the official-code fixture). Tokenizer: `arvg_jax.tokenizers.llamagen_vq16`; converters:
`converters.par`, `converters.llamagen_vq16`.
"""

from arvg_jax.families.par.config import PARConfig
from arvg_jax.families.par.family import PARFamily

__all__ = ["FAMILY", "PARConfig", "PARFamily"]

FAMILY = PARFamily()
