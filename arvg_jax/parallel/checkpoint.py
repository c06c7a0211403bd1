"""Sharded orbax checkpoints of float and quantized param trees, restorable onto any mesh.

`save` hands orbax the `jax.Array`s as they lie on the devices (each shard written by its owner;
nothing is gathered on one host); `restore` reads the stored shapes and dtypes, derives the target
shardings on the new mesh from the family's rules (`arvg_jax.parallel.rules`) and lets orbax read
each device's slice. A tree saved on data=8 restores onto model=2, data=2 or one device alike.

Head-parallel trees (`arvg_jax.parallel.heads`: the fused qkv columns in model-shard-major order)
are stored in the official q | k | v order: `save` undoes the order of the placement when given
the rules the tree was placed with, and `restore` onto a mesh with a model axis places the fused
layers again in that mesh's order, so a checkpoint never depends on the mesh it came from.

Layout: the same as a quantized directory's ``params/`` (`quant.checkpoint`): `QArray` and
`ActQuant` leaves stored as dicts of their arrays, their kinds in ``arvg_tree.json`` beside
(a float tree has none).
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Sequence

KINDS_FILE = "arvg_tree.json"


def _identity(x):
    return x


def save(path: str | os.PathLike, tree, rules: Sequence = ()) -> pathlib.Path:
    """Writes `tree` (float, `QArray` / `ActQuant` leaves; sharded or not) to the new folder
    `path`.

    `rules`: the rules the tree was placed with (`Family.sharding_rules(cfg)`); its fused qkv
    layers, if head-parallel, are written in the official column order. A tree placed
    head-parallel and saved without them would store the placement's order.
    """
    import orbax.checkpoint as ocp

    from arvg_jax.parallel import heads
    from quant import checkpoint as qckpt

    path = pathlib.Path(path).absolute()
    _, fused = heads.split_rules(rules)
    if fused:
        tree = heads.relayout(tree, fused, 1)  # the official q | k | v order
    storable, kinds = qckpt._to_storable(tree, array=_identity)
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(path / "tree", storable)
    ckptr.wait_until_finished()
    (path / KINDS_FILE).write_text(json.dumps(kinds, indent=1, sort_keys=True))
    return path


def abstract_tree(tree_dir: str | os.PathLike):
    """The stored tree as `jax.ShapeDtypeStruct`s (no data read)."""
    import jax
    import orbax.checkpoint as ocp

    meta = ocp.StandardCheckpointer().metadata(pathlib.Path(tree_dir).absolute()).item_metadata
    return jax.tree_util.tree_map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), dict(meta))


def restore_tree(tree_dir, kinds: dict, mesh, rules: Sequence = ()):
    """Restores an orbax tree of quant leaves stored as dicts (`kinds` as `quant.checkpoint`
    records them) onto `mesh`, each leaf with the sharding `rules` give it (fused qkv layers of
    `FusedHeads` rules in the mesh's head-parallel order, as `rules.place` gives)."""
    import jax
    import orbax.checkpoint as ocp

    from arvg_jax.parallel import heads
    from arvg_jax.parallel import rules as sharding_rules
    from quant import checkpoint as qckpt

    abstract = abstract_tree(tree_dir)
    shaped = qckpt._from_storable(abstract, kinds, array=_identity)  # quant containers
    # Read in the stored (official) order, the fused layers replicated; `place` then reorders
    # and splits them (orbax reads contiguous slices only).
    plain, fused = heads.split_rules(rules)
    shardings = sharding_rules.param_shardings(shaped, plain, mesh)
    target = jax.tree_util.tree_map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), shaped, shardings
    )
    storable, _ = qckpt._to_storable(target, array=_identity)
    restored = ocp.StandardCheckpointer().restore(pathlib.Path(tree_dir).absolute(), storable)
    tree = qckpt._from_storable(restored, kinds, array=_identity)
    return sharding_rules.place(tree, rules, mesh) if fused else tree


def restore(path: str | os.PathLike, mesh, rules: Sequence = ()):
    """The tree `save` wrote, placed on `mesh` by `rules` (any mesh shape)."""
    path = pathlib.Path(path)
    kinds = json.loads((path / KINDS_FILE).read_text())
    return restore_tree(path / "tree", kinds, mesh, rules)


def restore_quantized(directory: str | os.PathLike, mesh, rules: Sequence = ()):
    """The params of a quantized directory (`arvg quantize`, `quant.checkpoint`) on `mesh`."""
    from quant import checkpoint as qckpt

    meta = qckpt.read_metadata(directory)
    return restore_tree(pathlib.Path(directory) / "params", meta["quant_leaves"], mesh, rules)
