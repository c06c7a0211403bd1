"""MAR (LTH14/mar): masked AR with continuous tokens and a diffusion head.

Modules: `config` (MARConfig), `model` (encoder-decoder), `diffloss` (head, schedule, p_sample
loop), `sampler` (sample_tokens, per-image keys), `reference` (fixture check), `family`
(MARFamily: presets mar-b / mar-l / mar-h / mar-test, official sampling defaults, EMA weights by
default). Tokenizer: `arvg_jax.tokenizers.kl16_vae`; converters: `converters.mar`,
`converters.kl16_vae`.
"""

from __future__ import annotations

from arvg_jax.families.mar.config import MARConfig
from arvg_jax.families.mar.family import MARFamily

__all__ = ["FAMILY", "MARConfig", "MARFamily"]

FAMILY = MARFamily()
