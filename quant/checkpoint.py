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


def _to_storable(tree: dict[str, Any]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Replaces quant leaves by plain dicts of numpy arrays; returns (tree, leaf kinds)."""
    from quant._qarray import ActQuant, LogSqrt2Quant, QArray

    kinds: dict[str, dict[str, Any]] = {}
    flat = {}
    for name, leaf in _tree.flatten(tree).items():
        if isinstance(leaf, QArray):
            kinds[name] = {"kind": "QArray", "bits": int(leaf.bits)}
            flat[name] = {
                "qvalue": np.asarray(leaf.qvalue),
                "scale": np.asarray(leaf.scale),
                "zero_point": np.asarray(leaf.zero_point),
            }
        elif isinstance(leaf, ActQuant):
            kinds[name] = {"kind": "ActQuant", "bits": int(leaf.bits)}
            flat[name] = {
                "scale": np.asarray(leaf.scale),
                "zero_point": np.asarray(leaf.zero_point),
                "group_of_position": np.asarray(leaf.group_of_position),
            }
        elif isinstance(leaf, LogSqrt2Quant):  # PAR's post-softmax attention quantizer
            kinds[name] = {"kind": "LogSqrt2Quant", "bits": int(leaf.bits)}
            flat[name] = {"delta": np.asarray(leaf.delta)}
        else:
            flat[name] = np.asarray(leaf)
    return _tree.unflatten(flat), kinds


def _from_storable(tree: dict[str, Any], kinds: dict[str, dict[str, Any]]) -> dict[str, Any]:
    from quant._qarray import ActQuant, LogSqrt2Quant, QArray

    flat = _tree.flatten(tree)
    for name, info in kinds.items():
        prefix = name + "/"
        fields = {k[len(prefix) :]: flat.pop(k) for k in list(flat) if k.startswith(prefix)}
        if not fields:
            raise ValueError(f"quantized checkpoint: leaf {name!r} listed in arvg.json is missing")
        cls = {"QArray": QArray, "ActQuant": ActQuant, "LogSqrt2Quant": LogSqrt2Quant}[info["kind"]]
        flat[name] = cls(**{k: np.asarray(v) for k, v in fields.items()}, bits=info["bits"])
    return _tree.unflatten(
        {k: np.asarray(v) if not _tree.is_quant_leaf(v) else v for k, v in flat.items()}
    )


def _save_tree(path: pathlib.Path, tree: dict[str, Any]) -> None:
    import orbax.checkpoint as ocp

    ckptr = ocp.StandardCheckpointer()
    ckptr.save(path.absolute(), tree)
    ckptr.wait_until_finished()


def _restore_tree(path: pathlib.Path) -> dict[str, Any]:
    import orbax.checkpoint as ocp

    return ocp.StandardCheckpointer().restore(path.absolute())


def save(
    directory: str | os.PathLike,
    params: dict[str, Any],
    *,
    family: str,
    model_config: dict[str, Any],
    recipe: dict[str, Any],
    vae_params: dict[str, Any] | None = None,
    vae_config: dict[str, Any] | None = None,
    summary: dict[str, Any] | None = None,
    overwrite: bool = False,
    extra: dict[str, Any] | None = None,
) -> pathlib.Path:
    """Writes a quantized model directory; nothing is left half-written on failure."""
    directory = pathlib.Path(directory)
    if directory.exists() and not overwrite:
        raise FileExistsError(f"{directory}: already exists (pass overwrite=True / --overwrite)")
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.tmp-"))
    try:
        storable, kinds = _to_storable(params)
        _save_tree(tmp / "params", storable)
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
                tmp / "vae",
                _tree.unflatten({k: np.asarray(v) for k, v in _tree.flatten(vae_params).items()}),
            )
        (tmp / "arvg.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
        if directory.exists():
            old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
            os.replace(directory, old)
            os.replace(tmp, directory)
            shutil.rmtree(old, ignore_errors=True)
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
