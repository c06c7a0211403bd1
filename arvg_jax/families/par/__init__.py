"""PAR (YuqingWang1029/PAR): parallelized autoregressive generation on the LlamaGen backbone."""

from arvg_jax.families.par.config import PARConfig

__all__ = ["PARConfig"]

# Not registered yet: the registry entry comes with its Family class.
FAMILY = None
