"""Param-tree utilities: '/'-joined names over plain nested dicts with QArray/ActQuant leaves."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from typing import Any


def is_quant_leaf(x: Any) -> bool:
    from quant._qarray import ActQuant, LogSqrt2Quant, QArray

    return isinstance(x, (QArray, ActQuant, LogSqrt2Quant))


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> {"a/b/c": leaf}. QArray and ActQuant stay whole leaves."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        name = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            out.update(flatten(v, name))
        else:
            out[name] = v
    return out


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """{"a/b/c": leaf} -> nested dicts (the inverse of `flatten`)."""
    tree: dict[str, Any] = {}
    for name, v in flat.items():
        node = tree
        *parents, last = name.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = v
    return tree


def tree_get(tree: Mapping[str, Any], name: str) -> Any:
    """Looks up "a/b/c"; raises KeyError with close matches when it is absent."""
    flat = flatten(tree)
    if name in flat:
        return flat[name]
    prefix = name.rstrip("/") + "/"
    sub = {k[len(prefix) :]: v for k, v in flat.items() if k.startswith(prefix)}
    if sub:
        return unflatten(sub)
    close = difflib.get_close_matches(name, list(flat), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise KeyError(f"no parameter {name!r}{hint}")


def map_named(fn: Callable[[str, Any], Any], tree: Mapping[str, Any]) -> dict[str, Any]:
    """Applies fn(name, leaf) to every leaf and returns a new tree (never mutates)."""
    return unflatten({k: fn(k, v) for k, v in flatten(tree).items()})
