"""Packaged trained weights: the tiny shapes models of every family and the shapes classifier.

`arvg_jax/assets/tiny/` holds VAR's `var.npz`, `vae.npz`, the shared `classifier.npz` (params
flattened to "/"-joined keys, compressed) and `recipe.json` (configs, training settings, measured
numbers); `scripts/train_tiny.py` writes them. Every other family keeps its tiny model in
`arvg_jax/assets/tiny/<family>/` (`FAMILY_FILES`: `model.npz`, `tokenizer.npz`, `recipe.json`
with "model_config" and "tokenizer_config", and `samples.png`), written by that family's
`families/<name>/train` recipe.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import pathlib
import tempfile
import zipfile
from typing import Any

import numpy as np
from flax import traverse_util

from arvg_jax.options import LEGACY_CONFIG_FIELDS

TINY_DIR = pathlib.Path(__file__).resolve().parent / "tiny"
TINY_FILES = ("var.npz", "vae.npz", "classifier.npz", "recipe.json")
FAMILY_FILES = ("model.npz", "tokenizer.npz", "recipe.json")
# Config fields that are execution choices (compute dtype, kernels: `arvg_jax.options`), not part
# of a trained model: never written, and ignored when read (older files stored them).
_RUNTIME_FIELDS = LEGACY_CONFIG_FIELDS


class AssetsMissingError(FileNotFoundError):
    """The tiny model files are not there (not trained yet, or not installed as package data)."""


def _atomic_write(path: pathlib.Path, data: bytes) -> None:
    """Writes bytes to a temp file in the same directory, then renames it over `path`."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; these are package data files
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_params(path: str | os.PathLike, params: Any, dtype: Any = np.float32) -> int:
    """Saves a nested param dict as a compressed `.npz` with "/"-joined keys, atomically.

    Args:
        path: destination file.
        params: nested dict of arrays (jax or numpy).
        dtype: floating leaves are stored in this dtype (float32, or float16 to halve the size);
            integer leaves keep theirs.

    Returns:
        The file size in bytes.
    """
    flat = traverse_util.flatten_dict(params, sep="/")
    arrays = {}
    for k, v in flat.items():
        a = np.asarray(v)
        arrays[k] = a.astype(dtype) if np.issubdtype(a.dtype, np.floating) else a
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    _atomic_write(pathlib.Path(path), buf.getvalue())
    return len(buf.getvalue())


def load_params(path: str | os.PathLike) -> dict:
    """Loads `save_params` output as a nested dict of numpy arrays (floats as float32)."""
    try:
        with np.load(path) as z:
            flat = {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, ValueError, OSError) as e:
        raise AssetsMissingError(f"{path}: cannot read params ({e})") from e
    flat = {
        k: v.astype(np.float32) if np.issubdtype(v.dtype, np.floating) else v
        for k, v in flat.items()
    }
    return traverse_util.unflatten_dict(flat, sep="/")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomic, indented JSON."""
    _atomic_write(pathlib.Path(path), (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A frozen config dataclass as JSON-able fields (runtime dtype fields left out)."""
    out = {}
    for f in dataclasses.fields(cfg):
        if f.name in _RUNTIME_FIELDS or f.name.startswith("_"):
            continue
        v = getattr(cfg, f.name)
        out[f.name] = list(v) if isinstance(v, tuple) else v
    return out


def config_from_dict(cls: type, d: dict[str, Any]) -> Any:
    """Inverse of `config_to_dict` (lists back to tuples; runtime fields are ignored)."""
    d = {k: v for k, v in d.items() if k not in _RUNTIME_FIELDS}
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown fields {unknown}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def load_tiny(path: str | os.PathLike | None = None):
    """Loads the packaged tiny shapes models.

    Args:
        path: directory holding the four files (default: the package's `assets/tiny`).

    Returns:
        (var_cfg `VARConfig`, var_params, vae_cfg `VQVAEConfig`, vae_params, classifier_params,
        meta): params are nested dicts of float32 numpy arrays; meta is the parsed
        `recipe.json` (its "classifier_config" builds `arvg_jax.eval.ClassifierConfig`, see
        `tiny_classifier_config`).

    Raises:
        AssetsMissingError: when a file is absent or unreadable, naming it and how to make it.
    """
    from arvg_jax import families

    root = pathlib.Path(path) if path is not None else TINY_DIR
    missing = [name for name in TINY_FILES if not (root / name).is_file()]
    if missing:
        raise AssetsMissingError(
            f"{root}: tiny model assets missing ({', '.join(missing)}); train them with "
            "`python scripts/train_tiny.py --out arvg_jax/assets/tiny` (or install a build that "
            "ships them)"
        )
    try:
        meta = json.loads((root / "recipe.json").read_text())
    except json.JSONDecodeError as e:
        raise AssetsMissingError(f"{root / 'recipe.json'}: not valid JSON ({e})") from e
    # The family whose config the recipe holds ("<family>_config", e.g. "var_config").
    fams = [f for f in families.all_families().values() if f"{f.name}_config" in meta]
    if len(fams) != 1:
        raise AssetsMissingError(f"{root / 'recipe.json'}: names no (or several) model families")
    fam = fams[0]
    var_cfg = config_from_dict(fam.config_cls, meta[f"{fam.name}_config"])
    vae_cfg = config_from_dict(fam.tokenizer_config_cls, meta["vae_config"])
    return (
        var_cfg,
        load_params(root / "var.npz"),
        vae_cfg,
        load_params(root / "vae.npz"),
        load_params(root / "classifier.npz"),
        meta,
    )


def read_tiny_meta(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """The packaged tiny models' `recipe.json` (configs, training settings, measured numbers)."""
    root = pathlib.Path(path) if path is not None else TINY_DIR
    try:
        return json.loads((root / "recipe.json").read_text())
    except FileNotFoundError:
        raise AssetsMissingError(
            f"{root}: tiny model assets missing (recipe.json); train them with "
            "`python scripts/train_tiny.py --out arvg_jax/assets/tiny`"
        ) from None


def family_dir(family: str, root: str | os.PathLike | None = None) -> pathlib.Path:
    """Where a family other than VAR keeps its packaged tiny model (`assets/tiny/<family>`)."""
    return (pathlib.Path(root) if root is not None else TINY_DIR) / family


def load_family_tiny(family: Any, path: str | os.PathLike | None = None):
    """Loads a family's packaged tiny model from `family_dir(family.name)` (or `path`).

    Args:
        family: the `arvg_jax.families.Family` (its config classes parse recipe.json).
        path: directory holding `FAMILY_FILES` (default: `family_dir(family.name)`).

    Returns:
        (cfg, params, tok_cfg, tok_params, meta), params as nested float32 numpy dicts.

    Raises:
        AssetsMissingError: a file is absent or unreadable, naming it and the training command.
    """
    root = pathlib.Path(path) if path is not None else family_dir(family.name)
    missing = [n for n in FAMILY_FILES if not (root / n).is_file()]
    if missing:
        raise AssetsMissingError(
            f"{root}: tiny {family.name.upper()} assets missing ({', '.join(missing)}); train "
            f"them with `python scripts/train_tiny.py --family {family.name}`"
        )
    try:
        meta = json.loads((root / "recipe.json").read_text())
        cfg = config_from_dict(family.config_cls, meta["model_config"])
        tok_cfg = config_from_dict(family.tokenizer_config_cls, meta["tokenizer_config"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise AssetsMissingError(f"{root / 'recipe.json'}: unreadable ({e})") from e
    params = load_params(root / "model.npz")
    tok_params = load_params(root / "tokenizer.npz")
    return cfg, params, tok_cfg, tok_params, meta


def load_classifier(path: str | os.PathLike | None = None):
    """The shapes classifier every family's tiny model is scored with: (params, ClassifierConfig).

    It is trained once, with the VAR recipe, and shared (same procedural dataset for all)."""
    root = pathlib.Path(path) if path is not None else TINY_DIR
    return load_params(root / "classifier.npz"), tiny_classifier_config(read_tiny_meta(root))


def tiny_classifier_config(meta: dict[str, Any]):
    """The `arvg_jax.eval.ClassifierConfig` recorded in a tiny recipe's meta."""
    from arvg_jax.eval import ClassifierConfig

    return config_from_dict(ClassifierConfig, meta["classifier_config"])


__all__ = [
    "FAMILY_FILES",
    "TINY_DIR",
    "TINY_FILES",
    "AssetsMissingError",
    "config_from_dict",
    "config_to_dict",
    "family_dir",
    "load_classifier",
    "load_family_tiny",
    "load_params",
    "load_tiny",
    "read_tiny_meta",
    "save_params",
    "tiny_classifier_config",
    "write_json",
]
