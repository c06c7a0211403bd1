"""The unpickled tree as the public API returns it, and the state dict inside it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from converters._lazy import Invalid, LazyTensor, _Storage, show
from converters._unpickle import PickledNamespace, _DType

_MAX_DEPTH = 100  # deepest container nesting accepted in a checkpoint

_PLAIN = (type(None), bool, int, float, complex, str, bytes, bytearray)


def _is_plain(obj: Any) -> bool:
    """Plain data: what a checkpoint may hold besides tensors and containers."""
    if isinstance(obj, (tuple, set, frozenset)):
        return all(map(_is_plain, obj))
    return isinstance(obj, _PLAIN)


def convert(obj: Any, leaf: Callable[[LazyTensor], Any], memo: dict[int, Any], depth: int = 0):
    """Copies the unpickled tree into plain containers, mapping tensors through `leaf`."""
    if depth > _MAX_DEPTH:
        raise Invalid(f"containers nested deeper than {_MAX_DEPTH} levels")
    if isinstance(obj, LazyTensor):
        return leaf(obj)
    if isinstance(obj, _Storage):  # a bare storage: a 1-D tensor over all of it
        return leaf(LazyTensor(obj, 0, (obj.numel,), (1,)))
    if isinstance(obj, _DType):
        return obj.dtype
    if not isinstance(obj, (dict, list, tuple, PickledNamespace)):
        if _is_plain(obj):
            return obj
        # E.g. a bare allowlisted global (`torch._utils._rebuild_tensor_v2`, a storage class):
        # the returned tree holds data only.
        raise Invalid(f"unexpected object {show(repr(obj), 80)} in the checkpoint")
    if id(obj) in memo:  # shared (or cyclic) containers stay shared
        return memo[id(obj)]
    if isinstance(obj, tuple):
        out = memo[id(obj)] = tuple(convert(v, leaf, memo, depth + 1) for v in obj)
    elif isinstance(obj, list):
        out = memo[id(obj)] = []
        out.extend(convert(v, leaf, memo, depth + 1) for v in obj)
    elif isinstance(obj, dict):  # OrderedDict (state dicts) becomes a plain dict; order is kept
        out = memo[id(obj)] = {}
        for k, v in obj.items():
            if not _is_plain(k):
                raise Invalid(f"unexpected dict key {show(repr(k), 80)} in the checkpoint")
            out[k] = convert(v, leaf, memo, depth + 1)
    else:
        out = memo[id(obj)] = PickledNamespace()
        for k, v in vars(obj).items():
            setattr(out, k, convert(v, leaf, memo, depth + 1))
    return out


def is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, dict)
        and bool(obj)
        and all(isinstance(k, str) and isinstance(v, LazyTensor) for k, v in obj.items())
    )


def _kind(obj: Any) -> str:
    return "tensor" if isinstance(obj, LazyTensor) else type(obj).__name__


def select(tree: Any, key: str | None) -> dict[str, LazyTensor]:
    """The state dict in `tree`: the tree itself, or `tree[key]` for wrapped checkpoints."""
    if not isinstance(tree, dict):
        raise Invalid(f"the checkpoint holds a {_kind(tree)}, not a dict of tensors")
    top = ", ".join(repr(show(k, 60)) for k in list(tree)[:20])
    if key is not None:
        if key not in tree:
            if is_state_dict(tree):
                raise Invalid(
                    f"no key {show(key)!r}: the checkpoint is a flat state dict of "
                    f"{len(tree)} tensors (pass key=None)"
                )
            raise Invalid(f"no key {show(key)!r}; top-level keys: {top}")
        state, where = tree[key], f"{show(key)}/"
    else:
        if is_state_dict(tree):
            return tree
        # Prefer EMA weights in the hint: they are the ones to sample with (MAR: model_ema).
        candidates = sorted(
            (k for k, v in tree.items() if is_state_dict(v)), key=lambda k: "ema" not in str(k)
        )
        if candidates:
            choices = " or ".join(f"key={show(k)!r}" for k in candidates)
            raise Invalid(f"wrapped checkpoint (top-level keys: {top}); pass {choices}")
        state, where = tree, ""
    if not isinstance(state, dict):
        raise Invalid(f"entry {show(key)!r} is not a state dict ({_kind(state)})")
    if not state:
        raise Invalid(
            f"state dict {where.rstrip('/')!r} is empty"
            if where
            else "the checkpoint is an empty dict"
        )
    for k, v in state.items():
        if not isinstance(k, str):
            raise Invalid(f"state dict key {show(repr(k))} is not a str ({_kind(k)})")
        if not isinstance(v, LazyTensor):
            raise Invalid(f"state dict entry {where + show(k)!r} is not a tensor ({_kind(v)})")
    return state
