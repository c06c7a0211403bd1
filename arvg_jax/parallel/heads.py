"""Head-parallel attention: the fused q|k|v layers' columns in a model-shard-major order.

A fused qkv Dense layer's output columns are laid out q | k | v ([C, (H + 2G) K]; H query heads,
G kv heads, K head dim; G = H without GQA), so a contiguous split of its columns over a "model"
axis of size M does not follow the heads. On a mesh with M > 1 the placement
(`arvg_jax.parallel.rules.place`) therefore permutes those columns into the model-shard-major
order [M, (H/M q | G/M k | G/M v), K]: the plain column split ``P(None, "model")`` then gives
device m exactly the q, k and v of its heads (q heads [m H/M, (m + 1) H/M), kv heads
[m G/M, (m + 1) G/M), the ones those q heads read). The model reads the fused output in that
order (`arvg_jax.nn.attention.split_qkv`, `ExecOptions.qkv_shards`), attends over its own heads
and the output projection, split by input rows, joins the partial sums with one all-reduce.

A family declares its fused layers as data (`FusedHeads` in `families/<name>/sharding.py`
``heads(cfg)``; `Family.sharding_rules(cfg)` appends them to its rules). The permutation applies to
every column array of the layer alike: the float kernel ``[..., in, out]`` and ``bias [..., out]``,
a `QArray`'s ``qvalue`` / ``scale`` / ``zero_point`` and a `PackedKernel`'s ``qvalue_t
[..., out, in]`` / ``scale`` / ``zero_point`` / ``col_sum``, so per-output-column weight quantizers
move with their columns; the input quantizer (`ActQuant`) and the attention-matmul quantizers (per
tensor) are untouched. Layers whose heads M does not divide keep the official layout and stay
replicated.

The layout is recognised by the placement itself: a column array of a fused layer is in the
shard-major order of M exactly when it is a `jax.Array` split over "model" (size M) along its
columns; nothing else splits those columns. `relayout` brings a tree to any M from any placement
(1 is the official layout, what checkpoints store) and `tree_shards` reads the layout a sampler must
be told.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from arvg_jax.nn.attention import head_shards
from arvg_jax.parallel.mesh import MODEL
from arvg_jax.parallel.rules import _quant_types, map_named


@dataclasses.dataclass(frozen=True)
class FusedHeads:
    """A fused q|k|v Dense layer and the output projection reading its heads.

    Attributes:
      qkv: regex fully matching the fused layer's path ("blocks_3/attn/qkv"; its kernel, bias
        and quantizers lie below it).
      proj: regex fully matching the output projection's path (its input rows are the heads).
      q_heads, kv_heads: H and G (H % G == 0).
      head_dim: K.
    """

    qkv: str
    proj: str
    q_heads: int
    kv_heads: int
    head_dim: int

    def shards(self, model: int) -> int:
        """M where it divides both head counts, else 1 (`arvg_jax.nn.attention.head_shards`)."""
        return head_shards(model, self.q_heads, self.kv_heads)

    @property
    def columns(self) -> int:
        return (self.q_heads + 2 * self.kv_heads) * self.head_dim

    def rules(self, model: int) -> tuple:
        """The (regex, PartitionSpec) rules of this layer on a model axis of size `model`: the
        columns of qkv and the input rows of proj, or none (replicated) where heads do not
        divide."""
        if self.shards(model) == 1:
            return ()
        return (
            (self.qkv + "/kernel", P(None, MODEL)),
            (self.qkv + "/bias", P(MODEL)),
            (self.proj + "/kernel", P(MODEL, None)),
        )


def split_rules(rules) -> tuple[tuple, tuple[FusedHeads, ...]]:
    """(the (regex, PartitionSpec) rules, the `FusedHeads`) of a family's rules."""
    heads = tuple(r for r in rules if isinstance(r, FusedHeads))
    return tuple(r for r in rules if not isinstance(r, FusedHeads)), heads


def expand(rules, model: int) -> tuple:
    """`rules` with every `FusedHeads` replaced by its rules on a model axis of size `model`."""
    plain, heads = split_rules(rules)
    return tuple(r for h in heads for r in h.rules(model)) + plain


def column_order(q_heads: int, kv_heads: int, head_dim: int, shards: int) -> np.ndarray:
    """int [(H + 2G) K]: column j of the shard-major layout is official column order[j]."""
    rows = np.arange(q_heads + 2 * kv_heads)
    q, k, v = rows[:q_heads], rows[q_heads : q_heads + kv_heads], rows[q_heads + kv_heads :]
    parts = [t.reshape(shards, -1) for t in (q, k, v)]
    heads = np.concatenate(parts, axis=1).reshape(-1)  # [M, (H/M | G/M | G/M)] flattened
    return (heads[:, None] * head_dim + np.arange(head_dim)).reshape(-1)


def _column_arrays(leaf):
    """{field: (array, column axis)} of a leaf of a fused layer ("" for a plain array)."""
    qarray, packed, actquant = _quant_types()
    if isinstance(leaf, actquant):
        return {}
    if isinstance(leaf, qarray):
        return {f: (getattr(leaf, f), -1) for f in ("qvalue", "scale", "zero_point")}
    if isinstance(leaf, packed):
        fields = {f: (getattr(leaf, f), -1) for f in ("scale", "zero_point", "col_sum")}
        return {"qvalue_t": (leaf.qvalue_t, -2), **fields}
    return {"": (leaf, -1)}


def placed_shards(x, axis: int) -> int:
    """M if `x` is a `jax.Array` split over "model" (size M) along `axis`, else 1."""
    sharding = getattr(x, "sharding", None)
    if not isinstance(sharding, NamedSharding) or MODEL not in sharding.mesh.shape:
        return 1
    spec = tuple(sharding.spec) + (None,) * (x.ndim - len(sharding.spec))
    entry = spec[axis]
    names = entry if isinstance(entry, tuple) else (entry,)
    return sharding.mesh.shape[MODEL] if MODEL in names else 1


def _take(x, index: np.ndarray, axis: int):
    """x with `index` along `axis`; a jax.Array keeps its sharding (jit moves the columns)."""
    import jax
    import jax.numpy as jnp

    if isinstance(x, jax.Array):
        fn = jax.jit(lambda a: jnp.take(a, index, axis=axis), out_shardings=x.sharding)
        return fn(x)
    return np.take(np.asarray(x), index, axis=axis)


def _relayout_array(x, axis: int, layer: FusedHeads, model: int):
    if x.shape[axis] != layer.columns:  # a per-tensor scale [.., 1] broadcasts: nothing moves
        return x
    have, want = placed_shards(x, axis), layer.shards(model)
    if have == want:
        return x
    official = np.arange(layer.columns)
    if have > 1:  # back to the official order first
        official = np.argsort(column_order(layer.q_heads, layer.kv_heads, layer.head_dim, have))
    index = official
    if want > 1:
        index = official[column_order(layer.q_heads, layer.kv_heads, layer.head_dim, want)]
    return _take(x, index, axis)


def _layer_of(name: str, heads) -> FusedHeads | None:
    for layer in heads:
        if re.fullmatch(layer.qkv + r"/[^/]+", name):
            return layer
    return None


def relayout(tree, heads, model: int):
    """`tree` with every fused layer of `heads` in the column order of a model axis of size
    `model` (1: the official q | k | v order), from whatever order its placement shows."""

    def one(name, leaf):
        layer = _layer_of(name, heads)
        if layer is None:
            return leaf
        fields = _column_arrays(leaf)
        moved = {f: _relayout_array(a, ax, layer, model) for f, (a, ax) in fields.items()}
        if "" in moved:
            return moved[""]
        return leaf.replace(**moved) if moved else leaf

    return map_named(one, tree)


def tree_shards(tree, heads) -> int:
    """The `ExecOptions.qkv_shards` a sampler needs for `tree`: M when its fused layers are
    placed head-parallel on a model axis of size M, else 1.

    Raises:
      ValueError: the fused layers disagree (some in one order, some in another): the tree was
        not placed by `rules.place` with the family's `sharding_rules(cfg)`.
    """
    seen: dict[str, tuple[FusedHeads, int]] = {}

    def visit(name, leaf):
        layer = _layer_of(name, heads)
        if layer is not None:
            for f, (a, ax) in _column_arrays(leaf).items():
                if a.shape[ax] == layer.columns:
                    seen[f"{name}/{f}".rstrip("/")] = (layer, placed_shards(a, ax))
        return leaf

    map_named(visit, tree)
    model = max((m for _, m in seen.values()), default=1)
    wrong = [n for n, (layer, m) in seen.items() if m != layer.shards(model)]
    if wrong:
        raise ValueError(
            f"fused qkv layers in mixed column orders ({', '.join(sorted(wrong)[:3])} not in the "
            f"order of model={model}): place the params with "
            "rules.place(params, family.sharding_rules(cfg), mesh)"
        )
    return model
