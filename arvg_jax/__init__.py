"""arvg-jax: autoregressive visual generation models (VAR, RAR, ...) in JAX, and their quantization.

The public Python API (imported lazily: `import arvg_jax` costs nothing until used)::

    import arvg_jax
    model = arvg_jax.load("var-tiny")                 # preset, converted dir, or quantized dir
    out = model.generate(0, [0, 1, 2])                # {"tokens", "images"}
    logits = model.logits([0, 1, 2], out["tokens"])  # teacher-forced, float32
    arvg_jax.convert("var-d16", "var_d16.pth", "vae_ch160v4096z32.pth", out="converted/var-d16")

* `load(path_or_preset, ...)` -> `Model` (`arvg_jax.api.load`)
* `convert(model, ckpt, vae, *, out, dtype, fmt)` -> `Report` (`arvg_jax.conversion.convert`)
* `families`: the family registry (`families.all_families()`, `families.get("var")`)
* `ExecOptions`: how a model runs (dtype, kernels; `arvg_jax.options`)
* `Model`: what `load` returns (`arvg_jax.models.Model`)

Quantization lives in the sibling package `quant` (`quant.quantize`, `quant.rtn`, ...).
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["ExecOptions", "Model", "convert", "families", "load"]

_LAZY = {
    "load": ("arvg_jax.api", "load"),
    "convert": ("arvg_jax.conversion", "convert"),
    "ExecOptions": ("arvg_jax.options", "ExecOptions"),
    "Model": ("arvg_jax.models", "Model"),
    "families": ("arvg_jax.families", None),
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'arvg_jax' has no attribute {name!r}")
    module, attr = _LAZY[name]
    value = importlib.import_module(module)
    return value if attr is None else getattr(value, attr)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
