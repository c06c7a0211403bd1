"""Image tokenizers (token maps <-> images) of the ARVG families."""

from arvg_jax.tokenizers import var_vqvae
from arvg_jax.tokenizers.var_vqvae import VQVAEConfig

__all__ = ["VQVAEConfig", "var_vqvae"]
