"""RAR (bytedance/1d-tokenizer `modeling/rar.py`): randomized-order AR, raster at inference."""

from arvg_jax.families.rar.config import RARConfig, SamplingSettings

__all__ = ["RARConfig", "SamplingSettings"]
