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


def head_dim_reason(head_dim: int) -> str | None:
    """Why a per-head Triton kernel cannot take heads of this size (None when it can): its tiles
    are ``[rows, head_dim]`` blocks, whose shapes Triton wants to be powers of two ≥ 16."""
    if head_dim < 16 or head_dim & (head_dim - 1):
        return f"head_dim {head_dim} is not a power of two ≥ 16 (Triton block shapes)"
    return None
