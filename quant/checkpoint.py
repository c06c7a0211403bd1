"""Save and restore quantized models with orbax: integer leaves stay integer on disk.

Directory layout (written atomically: a sibling temp directory renamed into place):

    DIR/arvg.json   format tag, family, model config, recipe, quant-leaf kinds, summary
    DIR/params/     orbax checkpoint of the model tree (QArray/ActQuant as dicts of arrays)
    DIR/vae/        orbax checkpoint of the float tokenizer params (self-contained generation)
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import tempfile
from typing import Any

import numpy as np

from quant import _tree

FORMAT = "arvg-jax/quantized/1"


def _to_storable(
    tree: dict[str, Any], array=np.asarray
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Replaces quant leaves by plain dicts of arrays; returns (tree, leaf kinds).

    `array` converts each array: numpy by default; the identity keeps sharded `jax.Array`s, which
    orbax writes shard by shard (`arvg_jax.parallel.checkpoint`).
    """
    from quant._qarray import ActQuant, LogSqrt2Quant, QArray

    kinds: dict[str, dict[str, Any]] = {}
    flat = {}
    for name, leaf in _tree.flatten(tree).items():
        if isinstance(leaf, QArray):
            kinds[name] = {"kind": "QArray", "bits": int(leaf.bits)}
            flat[name] = {
                "qvalue": array(leaf.qvalue),
                "scale": array(leaf.scale),
                "zero_point": array(leaf.zero_point),
            }
        elif isinstance(leaf, ActQuant):
            kinds[name] = {"kind": "ActQuant", "bits": int(leaf.bits)}
            flat[name] = {
                "scale": array(leaf.scale),
                "zero_point": array(leaf.zero_point),
                "group_of_position": array(leaf.group_of_position),
            }
        elif isinstance(leaf, LogSqrt2Quant):  # PAR's post-softmax attention quantizer
            kinds[name] = {"kind": "LogSqrt2Quant", "bits": int(leaf.bits)}
            flat[name] = {"delta": array(leaf.delta)}
        else:
            flat[name] = array(leaf)
    return _tree.unflatten(flat), kinds


def _from_storable(
    tree: dict[str, Any], kinds: dict[str, dict[str, Any]], array=np.asarray
) -> dict[str, Any]:
    """The inverse of `_to_storable` (`array` as there)."""
    from quant._qarray import ActQuant, LogSqrt2Quant, QArray

    flat = _tree.flatten(tree)
    for name, info in kinds.items():
        prefix = name + "/"
        fields = {k[len(prefix) :]: flat.pop(k) for k in list(flat) if k.startswith(prefix)}
        if not fields:
            raise ValueError(f"quantized checkpoint: leaf {name!r} listed in arvg.json is missing")
        cls = {"QArray": QArray, "ActQuant": ActQuant, "LogSqrt2Quant": LogSqrt2Quant}[info["kind"]]
        flat[name] = cls(**{k: array(v) for k, v in fields.items()}, bits=info["bits"])
    return _tree.unflatten(
        {k: array(v) if not _tree.is_quant_leaf(v) else v for k, v in flat.items()}
    )


def _save_tree(path: pathlib.Path, tree: dict[str, Any]) -> None:
    import orbax.checkpoint as ocp

    ckptr = ocp.StandardCheckpointer()
    ckptr.save(path.absolute(), tree)
    ckptr.wait_until_finished()


def _restore_tree(path: pathlib.Path) -> dict[str, Any]:
    import orbax.checkpoint as ocp

    return ocp.StandardCheckpointer().restore(path.absolute())


def write(
    directory: str | os.PathLike,
    params: dict[str, Any],
    *,
    family: str,
    model_config: dict[str, Any],
    recipe: dict[str, Any],
    vae_params: dict[str, Any] | None = None,
    vae_config: dict[str, Any] | None = None,
    summary: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Writes a quantized model's files into `directory` (existing and empty), arvg.json last.

    Not atomic by itself: `save` (or the CLI's `arvg_jax.atomic.write_dir`) writes into a
    temporary directory and renames it into place.
    """
    directory = pathlib.Path(directory)
    storable, kinds = _to_storable(params)
    _save_tree(directory / "params", storable)
    meta = {
        "format": FORMAT,
        "family": family,
        "model_config": model_config,
        "recipe": recipe,
        "quant_leaves": kinds,
        "summary": summary or {},
        "vae_config": vae_config,
        **(extra or {}),
    }
    if vae_params is not None:
        _save_tree(
            directory / "vae",
            _tree.unflatten({k: np.asarray(v) for k, v in _tree.flatten(vae_params).items()}),
        )
    (directory / "arvg.json").write_text(json.dumps(meta, indent=1, sort_keys=True))


def _remove(path: pathlib.Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def save(directory: str | os.PathLike, params: dict[str, Any], *, overwrite: bool = False, **meta):
    """Writes a quantized model directory atomically (`write`'s keyword arguments); nothing is
    left half-written on failure, nor beside it after a replacement. Permissions follow the
    umask."""
    directory = pathlib.Path(directory)
    if os.path.lexists(directory) and not overwrite:
        raise FileExistsError(f"{directory}: already exists (pass overwrite=True / --overwrite)")
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.tmp-"))
    try:
        umask = os.umask(0o022)  # mkdtemp makes 0700: give the directory the usual mode
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        write(tmp, params, **meta)
        if os.path.lexists(directory):
            old = tmp.with_name(tmp.name + ".old")
            os.replace(directory, old)
            os.replace(tmp, directory)
            _remove(old)
        else:
            os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def read_metadata(directory: str | os.PathLike) -> dict[str, Any]:
    directory = pathlib.Path(directory)
    meta_path = directory / "arvg.json"
    if not meta_path.is_file():
        raise ValueError(f"{directory}: not a quantized arvg-jax directory (no arvg.json)")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{meta_path}: unknown format {meta.get('format')!r}, want {FORMAT!r}")
    return meta


def load(directory: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any] | None, dict]:
    """Returns (params with QArray/ActQuant leaves, vae params or None, metadata)."""
    directory = pathlib.Path(directory)
    meta = read_metadata(directory)
    params = _from_storable(_restore_tree(directory / "params"), meta["quant_leaves"])
    vae = None
    if (directory / "vae").exists():
        vae = _tree.unflatten(
            {k: np.asarray(v) for k, v in _tree.flatten(_restore_tree(directory / "vae")).items()}
        )
    return params, vae, meta


def _dir_bytes(path: pathlib.Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def describe(directory: str | os.PathLike) -> str:
    """Human-readable listing for `arvg inspect DIR`: integer and float leaves, groups, bytes."""
    directory = pathlib.Path(directory)
    meta = read_metadata(directory)
    params, _, _ = load(directory)
    lines = [
        f"{directory}: quantized {meta['family']} model ({FORMAT})",
        f"recipe: {json.dumps(meta['recipe'], sort_keys=True)}",
    ]
    n_int = n_float = 0
    rows = []
    for name, leaf in _tree.flatten(params).items():
        kind = meta["quant_leaves"].get(name, {}).get("kind")
        if kind == "QArray":
            n_int += 1
            rows.append(
                (
                    name,
                    f"QArray int{leaf.bits}",
                    f"{tuple(leaf.qvalue.shape)} {leaf.qvalue.dtype}",
                    f"scale {tuple(leaf.scale.shape)}",
                )
            )
        elif kind == "ActQuant":
            groups = int(np.asarray(leaf.scale).size)
            rows.append(
                (
                    name,
                    f"ActQuant a{leaf.bits}",
                    f"{groups} group(s)",
                    f"positions {int(np.asarray(leaf.group_of_position).size)}",
                )
            )
        elif kind == "LogSqrt2Quant":
            rows.append((name, f"LogSqrt2 a{leaf.bits}", "per tensor", ""))
        else:
            n_float += 1
            rows.append((name, "float", f"{tuple(leaf.shape)} {leaf.dtype}", ""))
    width = max(len(r[0]) for r in rows)
    lines += [f"  {r[0]:<{width}}  {r[1]:<14} {r[2]:<24} {r[3]}".rstrip() for r in rows]
    lines.append(
        f"{n_int} integer kernels, {n_float} float leaves; "
        f"params on disk {_dir_bytes(directory / 'params'):,} bytes"
    )
    return "\n".join(lines)
