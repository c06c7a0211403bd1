"""Non-finite weights: which tensors of a state dict hold NaN or infinity, and how many."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from typing import Any

import ml_dtypes
import numpy as np

from converters._errors import CheckpointError
from converters._lazy import LazyTensor

_CHUNK = 1 << 22  # elements tested per step: the boolean temporaries stay ~4 MB
_SHOWN = 3  # tensors named in the message
# Additive attention masks hold -Inf by design (VAR's `attn_bias_for_masking` buffer is 0 / -Inf);
# in these, -Inf is not a finding, NaN and +Inf still are.
MASK_KEYS = re.compile(r"(?:^|\.)(?:attn_bias_for_masking|attn_bias|attn_mask|causal_mask)$")


@dataclasses.dataclass(frozen=True)
class NonFinite:
    """The non-finite values of one tensor.

    Attributes:
        key: The state dict key.
        nan: How many elements are NaN.
        posinf: How many are +Inf.
        neginf: How many are -Inf (complex: either part infinite counts here, by the real sign).
        size: How many elements the tensor has.
    """

    key: str
    nan: int
    posinf: int
    neginf: int
    size: int

    def __str__(self) -> str:
        counts = ((self.nan, "NaN"), (self.posinf, "+Inf"), (self.neginf, "-Inf"))
        parts = [f"{n} {name}" for n, name in counts if n]
        return f"{self.key!r} ({', '.join(parts)} of {self.size})"


def _is_float(dtype: np.dtype) -> bool:
    if dtype.kind in "fc":
        return True
    try:  # bfloat16, float8_*: numpy kind 'V'; ml_dtypes.finfo knows them (and refuses ints)
        ml_dtypes.finfo(dtype)
    except (TypeError, ValueError):
        return False
    return True


def _blocks(a: np.ndarray):
    """`a` in pieces of at most ~`_CHUNK` elements, without copying a contiguous array."""
    if a.ndim == 0 or a.size <= _CHUNK:
        yield a
    elif a.flags.c_contiguous:
        flat = a.reshape(-1)
        for i in range(0, flat.size, _CHUNK):
            yield flat[i : i + _CHUNK]
    else:  # a strided view (e.g. a saved expand()): walk its first axis
        for sub in a:
            yield from _blocks(sub)


def _count(key: str, a: np.ndarray) -> NonFinite | None:
    nan = posinf = neginf = 0
    for block in _blocks(a):
        if np.isfinite(block).all():  # the common case: one pass, one small temporary
            continue
        nan += int(np.count_nonzero(np.isnan(block)))
        inf = np.isinf(block)
        if inf.any():
            sign = block.real if block.dtype.kind == "c" else block
            positive = int(np.count_nonzero(inf & (sign > 0)))
            posinf += positive
            neginf += int(np.count_nonzero(inf)) - positive
    if nan or posinf or neginf:
        return NonFinite(key, nan, posinf, neginf, int(a.size))
    return None


def find_nonfinite(
    state_dict: Mapping[str, Any], *, mask_keys: re.Pattern[str] | None = MASK_KEYS
) -> list[NonFinite]:
    """The tensors of `state_dict` that hold NaN or infinity, in its order.

    Args:
        state_dict: name -> array (numpy, jax, or a `LazyTensor`, which is read here). Integer
            and bool tensors are skipped.
        mask_keys: Keys (`search`ed) of additive masks, whose -Inf values are expected. None:
            report every non-finite value.
    """
    found = []
    for key, value in state_dict.items():
        a = value.load() if isinstance(value, LazyTensor) else np.asarray(value)
        if not (_is_float(a.dtype) and a.size) or (bad := _count(key, a)) is None:
            continue
        if mask_keys is not None and mask_keys.search(key):
            bad = dataclasses.replace(bad, neginf=0)
        if bad.nan or bad.posinf or bad.neginf:
            found.append(bad)
    return found


def check_finite(
    state_dict: Mapping[str, Any],
    path: str | os.PathLike,
    *,
    allow_nonfinite: bool = False,
    mask_keys: re.Pattern[str] | None = MASK_KEYS,
) -> list[NonFinite]:
    """Refuses a checkpoint with NaN or infinite weights, naming the first offending keys.

    A NaN weight silently turns every sample into NaN (and a quantization scale into garbage), so
    it is worth one pass over the weights at load time (about as fast as reading them).

    Args:
        state_dict: name -> array, as `load_state_dict` returns it.
        path: The checkpoint file, for the message.
        allow_nonfinite: Return the findings instead of raising (the CLI's --allow-nonfinite).
        mask_keys: As in `find_nonfinite` (default: attention-mask buffers may hold -Inf).

    Returns:
        The tensors with non-finite values (empty when all are finite).

    Raises:
        CheckpointError: Some tensor holds NaN or infinity and `allow_nonfinite` is False. The
            one-line message names the first few keys with their counts, e.g. `"<path>:
            non-finite values in 2 of 38 tensors: 'head.weight' (3 NaN of 4096), ...; pass
            --allow-nonfinite to load it anyway"`.
    """
    found = find_nonfinite(state_dict, mask_keys=mask_keys)
    if found and not allow_nonfinite:
        shown = ", ".join(map(str, found[:_SHOWN]))
        more = f" and {len(found) - _SHOWN} more" if len(found) > _SHOWN else ""
        raise CheckpointError(
            path,
            f"non-finite values in {len(found)} of {len(state_dict)} tensors: {shown}{more}; "
            "pass --allow-nonfinite to load it anyway",
        )
    return found
