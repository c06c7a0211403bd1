"""Declarative state-dict conversion: a `(flax path regex, torch key templates, hook)` table
checked against an abstract param tree (`jax.eval_shape`), shared by the per-family converters.

Hooks use array methods only, so the same table converts numpy arrays and validates a shapes-only
release manifest through `jax.eval_shape` without allocating anything.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from converters._errors import ConversionError

# (flax path regex, torch key templates filled from the regex groups, hook name)
Rule = tuple[str, tuple[str, ...], str]


# ---- common hooks ----------------------------------------------------------------------------
# Written with array methods only, so one hook serves numpy arrays (conversion: no jax dispatch,
# nothing compiled per shape) and tracers (`jax.eval_shape` validation).
def copy(w):
    return w.astype(np.float32)


def linear_kernel(w):
    """nn.Linear.weight [out, in] -> Dense kernel [in, out]."""
    return w.astype(np.float32).T


def conv_kernel(w):
    """nn.Conv2d.weight [O, I, kh, kw] -> flax Conv kernel [kh, kw, I, O]."""
    return w.astype(np.float32).transpose(2, 3, 1, 0)


def squeeze_leading(w):
    """Drops leading size-1 axes down to rank 2: (1, L, C) -> [L, C]."""
    w = w.astype(np.float32)
    while w.ndim > 2 and w.shape[0] == 1:
        w = w[0]
    return w


def flatten(w):
    """Any shape -> 1-D (e.g. a (1, 1, C) token parameter -> [C])."""
    return w.astype(np.float32).reshape(-1)


COMMON_HOOKS: dict[str, Callable[..., Any]] = {
    "copy": copy,
    "linear_kernel": linear_kernel,
    "conv_kernel": conv_kernel,
    "squeeze_leading": squeeze_leading,
    "flatten": flatten,
}

_TORCH_DTYPES = {
    "torch.float32": np.float32,
    "torch.float16": np.float16,
    "torch.float64": np.float64,
    "torch.int64": np.int64,
    "torch.int32": np.int32,
    "torch.uint8": np.uint8,
}


class Shaped:
    """A shape/dtype stand-in for a manifest entry (no data)."""

    def __init__(self, shape, dtype):
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)


def manifest_sources(manifest: Mapping[str, Any]) -> dict[str, Shaped]:
    """Manifest (key -> [shape, dtype], optional "__wrapper__") -> shape-only sources."""
    out = {}
    for key, entry in manifest.items():
        if key == "__wrapper__":
            continue
        shape, dtype = entry
        out[key] = Shaped(shape, _TORCH_DTYPES.get(dtype, np.float32))
    return out


def _struct(x) -> jax.ShapeDtypeStruct:
    dtype = np.dtype(x.dtype) if not hasattr(x.dtype, "itemsize") else x.dtype
    if not (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)):
        raise TypeError(f"not a numeric array: {dtype}")
    return jax.ShapeDtypeStruct(tuple(x.shape), dtype)


def convert(
    sources: Mapping[str, Any],
    abstract: Mapping[str, Any],
    table: Sequence[Rule],
    *,
    hooks: Mapping[str, Callable[..., Any]] = COMMON_HOOKS,
    ignored: Sequence[str] = (),
    what: str = "state dict",
    convert: bool = True,
) -> dict:
    """Builds the param tree `abstract` from `sources` through `table`.

    Args:
        sources: torch key -> array (or `Shaped` for a manifest).
        abstract: the target param tree (ShapeDtypeStruct leaves).
        table: rules; the first rule whose regex fullmatches a flax path gives its torch keys.
        hooks: hook name -> function of the torch arrays.
        ignored: regexes of torch keys consumed without use (buffers the model recomputes,
            modules that are not ported).
        what: names the model in the error message.
        convert: False validates only and returns ShapeDtypeStruct leaves.

    Returns:
        The nested plain dict of float32 jax arrays.

    Raises:
        ConversionError: listing every missing, unexpected and mis-shaped key.
        AssertionError: a flax path no rule matches (a model change without a table change).
    """
    flat = traverse_util.flatten_dict(dict(abstract), sep="/")
    plan, missing, used = [], [], set()
    for path, target in flat.items():
        for pattern, templates, hook in table:
            m = re.fullmatch(pattern, path)
            if m:
                keys = tuple(t.format(*m.groups()) for t in templates)
                break
        else:
            raise AssertionError(f"no conversion rule for Flax path {path!r}")
        absent = [k for k in keys if k not in sources]
        missing.extend(f"{k} (for {path} {tuple(target.shape)})" for k in absent)
        used.update(keys)
        if not absent:
            plan.append((path, keys, hook, target))
    unexpected = sorted(
        k for k in sources if k not in used and not any(re.fullmatch(p, k) for p in ignored)
    )
    misshaped, fitting = [], []
    for path, keys, hook_name, target in plan:
        hook = hooks[hook_name]
        src_shapes = ", ".join(f"{k} {tuple(sources[k].shape)}" for k in keys)
        try:
            got = jax.eval_shape(hook, *(_struct(sources[k]) for k in keys))
        except (TypeError, ValueError) as e:
            misshaped.append(f"{src_shapes} -> {path}: expected {tuple(target.shape)} ({e})")
            continue
        if got.shape != target.shape:
            misshaped.append(
                f"{src_shapes} -> {path}: got {tuple(got.shape)}, expected {tuple(target.shape)}"
            )
            continue
        fitting.append((path, keys, hook, got))
    if missing or unexpected or misshaped:
        parts = []
        if missing:
            parts.append(f"missing keys: {missing}")
        if unexpected:
            parts.append(f"unexpected keys: {unexpected}")
        if misshaped:
            parts.append(f"mis-shaped keys: {misshaped}")
        raise ConversionError(f"{what} does not fit: " + "; ".join(parts))
    # Only a file that fits is read, one leaf at a time: a streamed state dict
    # (`converters.stream_state_dict`) reads each torch tensor here and frees it with the leaf.
    out = {}
    for path, keys, hook, got in fitting:
        # numpy in, numpy out (see the hooks); one device_put per leaf, nothing compiled.
        out[path] = jnp.asarray(hook(*(np.asarray(sources[k]) for k in keys))) if convert else got
    return traverse_util.unflatten_dict(out, sep="/")
