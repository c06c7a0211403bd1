"""The Pallas Triton module, imported without touching the process's warning filters.

jax >= 0.10 warns "The Pallas Triton backend is deprecated" when the module is imported; these
kernels are measured on it (BENCHMARKS.md) and keep using it, so the warning is silenced for that
one import only (`warnings.catch_warnings`), never for the user's process.
"""

from __future__ import annotations

import functools
import warnings


@functools.cache
def triton():
    """`jax.experimental.pallas.triton` (ImportError where this jax has no Triton backend)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"The Pallas Triton backend is deprecated")
        from jax.experimental.pallas import triton as plt
    return plt
