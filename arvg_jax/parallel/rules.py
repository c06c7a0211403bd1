"""Shardings of a parameter tree, derived from rules: path regex -> PartitionSpec.

A family lists its tensor-parallel rules as data (`families/<name>/sharding.py`, `RULES`): a regex
fully matching a leaf's path ("blocks_3/ffn/fc1/kernel"; VAR's stacked inference layout:
"blocks/ffn/fc1/kernel") and the `PartitionSpec` of the float leaf's trailing dimensions in Flax
layout (a Dense kernel is ``[in, out]``: ``P(None, "model")`` shards its output columns,
``P("model", None)`` its input rows). The first matching rule wins; a leaf no rule names is
replicated. Leading dimensions the spec does not cover (the stacked depth axis) are replicated,
and so is any dimension the mesh axis does not divide (a tiny test model keeps working).

Quantized leaves shard with their kernel: a `quant.QArray`'s ``qvalue [in, out]`` takes the
kernel's spec and its ``scale`` / ``zero_point [1, out]`` the spec of the output columns only; a
`quant._packed.PackedKernel` (``qvalue_t [out, in]``) takes the transposed spec; `ActQuant` input
quantizers (a few scalars per token group) are replicated. Data parallelism needs no rule: on a
mesh whose model axis has size 1 every leaf is replicated.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from jax.sharding import NamedSharding, PartitionSpec

from arvg_jax.parallel.mesh import MODEL

Rule = tuple[str, PartitionSpec]


def _path_name(path) -> str:
    parts = []
    for k in path:
        key = getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))
        parts.append(str(key))
    return "/".join(parts)


def leaf_spec(name: str, shape: Sequence[int], rules: Sequence[Rule], mesh) -> PartitionSpec:
    """The spec of a float leaf `name` of `shape` on `mesh` (replicated if no rule matches)."""
    for pattern, spec in rules:
        if re.fullmatch(pattern, name):
            break
    else:
        return PartitionSpec()
    return fit_spec(tuple(spec), shape, mesh)


def fit_spec(trailing: tuple, shape: Sequence[int], mesh) -> PartitionSpec:
    """`trailing` padded on the left to len(shape), each axis kept only where it divides the dim."""
    if len(trailing) > len(shape):
        return PartitionSpec()
    full = (None,) * (len(shape) - len(trailing)) + tuple(trailing)
    out = []
    for dim, axis in zip(shape, full, strict=True):
        size = 1 if axis is None else mesh.shape[axis]
        out.append(axis if axis is not None and size > 1 and dim % size == 0 else None)
    while out and out[-1] is None:
        out.pop()
    return PartitionSpec(*out)


def _columns_only(spec: PartitionSpec, ndim: int) -> PartitionSpec:
    """The spec of a per-output-column array [..., 1, out]: only the last axis stays sharded."""
    full = tuple(spec) + (None,) * (ndim - len(spec))
    return PartitionSpec(*((None,) * (ndim - 1)), full[-1]) if ndim else PartitionSpec()


def _transposed(spec: PartitionSpec, ndim: int) -> PartitionSpec:
    full = list(tuple(spec) + (None,) * (ndim - len(spec)))
    full[-2], full[-1] = full[-1], full[-2]
    return PartitionSpec(*full)


def _quant_types():
    from quant._packed import PackedKernel
    from quant._qarray import ActQuant, QArray

    return QArray, PackedKernel, ActQuant


def map_named(fn, tree):
    """`fn(name, leaf)` over `tree`, a quantized container (`QArray`, `PackedKernel`, `ActQuant`)
    being one leaf; `name` is the "/"-joined path."""
    import jax

    quant = _quant_types()
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: fn(_path_name(path), leaf),
        tree,
        is_leaf=lambda x: isinstance(x, quant),
    )


def param_specs(tree, rules: Sequence, mesh):
    """A tree of `PartitionSpec`s with `tree`'s structure (quantized containers keep their type,
    their array fields hold specs). `FusedHeads` entries of `rules` give their layers' rules on
    this mesh (`arvg_jax.parallel.heads`)."""
    from arvg_jax.parallel import heads

    qarray, packed, actquant = _quant_types()
    rules = heads.expand(rules, mesh.shape.get(MODEL, 1))

    def one(name, leaf):
        if isinstance(leaf, actquant):
            return leaf.replace(**{f: PartitionSpec() for f in _array_fields(leaf)})
        if isinstance(leaf, qarray):
            spec = leaf_spec(name, leaf.qvalue.shape, rules, mesh)
            col = fit_spec(tuple(_columns_only(spec, leaf.scale.ndim)), leaf.scale.shape, mesh)
            return leaf.replace(qvalue=spec, scale=col, zero_point=col)
        if isinstance(leaf, packed):
            ndim = leaf.qvalue_t.ndim
            *lead, out, packed_in = leaf.qvalue_t.shape
            kernel_shape = (*lead, packed_in * (2 if leaf.nibbles else 1), out)  # [..., in, out]
            spec = leaf_spec(name, kernel_shape, rules, mesh)
            q = fit_spec(tuple(_transposed(spec, ndim)), leaf.qvalue_t.shape, mesh)
            col = fit_spec(tuple(_columns_only(spec, leaf.scale.ndim)), leaf.scale.shape, mesh)
            return leaf.replace(qvalue_t=q, scale=col, zero_point=col, col_sum=col)
        return leaf_spec(name, getattr(leaf, "shape", ()), rules, mesh)

    return map_named(one, tree)


def _array_fields(leaf) -> list[str]:
    import dataclasses

    return [f.name for f in dataclasses.fields(leaf) if f.metadata.get("pytree_node", True)]


def param_shardings(tree, rules: Sequence[Rule], mesh):
    """`param_specs` as `NamedSharding`s on `mesh` (what `jax.device_put` and orbax take)."""
    import jax

    return jax.tree_util.tree_map(
        lambda s: NamedSharding(mesh, s),
        param_specs(tree, rules, mesh),
        is_leaf=lambda x: isinstance(x, PartitionSpec),
    )


def place(tree, rules: Sequence, mesh):
    """`tree` on `mesh`: every leaf a `jax.Array` with the sharding its rule gives.

    Where `rules` hold `FusedHeads` (`Family.sharding_rules(cfg)`) and the mesh has a model axis
    of size M > 1, the fused qkv layers whose heads M divides are first brought into the
    model-shard-major column order (`arvg_jax.parallel.heads`): attention runs head-parallel, and
    `arvg_jax.parallel.generate` tells the sampler so. Any earlier placement's order is undone
    first, so placing a placed tree again (on this or another mesh) is safe.
    """
    import jax

    from arvg_jax.parallel import heads

    _, fused = heads.split_rules(rules)
    if fused:
        tree = heads.relayout(tree, fused, mesh.shape.get(MODEL, 1))
    return jax.device_put(tree, param_shardings(tree, rules, mesh))


def replicate(tree, mesh):
    """`tree` replicated on every device of `mesh`."""
    return place(tree, (), mesh)
