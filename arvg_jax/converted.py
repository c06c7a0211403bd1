"""Reading converted checkpoints (`arvg convert`): detection, config checks, restore, listing.

The layouts are described in `arvg_jax.conversion`. Everything that can be wrong with a path given
as a converted checkpoint (foreign, truncated, corrupt, another model) is a one-line
`ConvertedCheckpointError` naming what is wrong.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import numpy as np

FORMAT = "arvg-jax/converted/1"
CONFIG = "config.json"
PARTS = ("params", "tokenizer")

__all__ = [
    "CONFIG",
    "FORMAT",
    "ConvertedCheckpointError",
    "describe",
    "is_converted",
    "load",
    "read_config",
]


class ConvertedCheckpointError(ValueError):
    """A path given as a converted checkpoint is not one (foreign, truncated, corrupt)."""


def _flatten(tree) -> dict[str, Any]:
    from flax import traverse_util

    return traverse_util.flatten_dict(tree, sep="/")


def _unflatten(flat: dict[str, Any]) -> dict:
    from flax import traverse_util

    return traverse_util.unflatten_dict(flat, sep="/")


def _bf16() -> np.dtype:
    import ml_dtypes

    return np.dtype(ml_dtypes.bfloat16)


def _one_line(e: BaseException, limit: int = 200) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[:limit] + " …"


# ---- reading ------------------------------------------------------------------------------------
def _safetensors_meta(path: pathlib.Path) -> dict[str, str] | None:
    """The header metadata of a safetensors file, or None when the file is not one."""
    from converters.safetensors_reader import SafetensorsFormatError, read_header

    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(9)
            if len(head) < 9 or head[8:9] != b"{":
                return None
            _, meta = read_header(f, size)
    except SafetensorsFormatError as e:
        if path.suffix == ".safetensors":
            raise ConvertedCheckpointError(f"{path}: invalid safetensors file: {e}") from None
        return None
    return meta


def is_converted(path: str | os.PathLike | None) -> bool:
    """True for a directory (any: it is then checked by `load`) or a safetensors file written by
    `convert`. Official torch / safetensors checkpoints are files without our format tag."""
    if path is None:
        return False
    p = pathlib.Path(path)
    if p.is_dir():
        return True
    if not p.is_file():
        return False
    try:
        meta = _safetensors_meta(p)
    except ConvertedCheckpointError:
        return p.suffix == ".safetensors"
    return bool(meta) and meta.get("format") == FORMAT


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """The config document of a converted directory or safetensors file (checked)."""
    p = pathlib.Path(path)
    if p.is_dir():
        if (p / "arvg.json").is_file():
            raise ConvertedCheckpointError(
                f"{p}: a quantized directory (arvg.json), not a converted one: pass --quantized {p}"
            )
        cfg_path = p / CONFIG
        if not cfg_path.is_file():
            raise ConvertedCheckpointError(
                f"{p}: not a converted arvg-jax directory (no {CONFIG}; write one with arvg convert)"
            )
        try:
            doc = json.loads(cfg_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConvertedCheckpointError(f"{cfg_path}: not valid JSON ({_one_line(e)})") from None
        where = cfg_path
    elif p.is_file():
        meta = _safetensors_meta(p)
        if meta is None or meta.get("format") != FORMAT or "config" not in meta:
            raise ConvertedCheckpointError(
                f"{p}: not a converted arvg-jax safetensors file (no {FORMAT!r} metadata)"
            )
        try:
            doc = json.loads(meta["config"])
        except json.JSONDecodeError as e:
            raise ConvertedCheckpointError(
                f"{p}: metadata config is not JSON ({_one_line(e)})"
            ) from None
        where = p
    else:
        raise FileNotFoundError(f"{p}: no such file or directory")
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        got = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise ConvertedCheckpointError(
            f"{where}: not an arvg-jax converted checkpoint (format {got!r}, want {FORMAT!r})"
        )
    missing = [
        k for k in ("family", "model_config", "tokenizer_config", "dtype", "arrays") if k not in doc
    ]
    if missing:
        raise ConvertedCheckpointError(f"{where}: lacks {', '.join(missing)}")
    return doc


def _restore_orbax(path: pathlib.Path) -> dict[str, Any]:
    import orbax.checkpoint as ocp

    return ocp.StandardCheckpointer().restore(path.absolute())


def _check_arrays(where, part: str, flat: dict[str, np.ndarray], manifest: dict[str, Any]) -> None:
    missing = [k for k in manifest if k not in flat]
    if missing:
        raise ConvertedCheckpointError(
            f"{where}: truncated: {part} lacks {len(missing)} of {len(manifest)} arrays "
            f"listed in its config (first: {missing[0]})"
        )
    extra = [k for k in flat if k not in manifest]
    if extra:
        raise ConvertedCheckpointError(
            f"{where}: {part} holds {len(extra)} arrays its config does not list (first: {extra[0]})"
        )
    for k, (shape, dtype) in manifest.items():
        a = flat[k]
        if list(a.shape) != list(shape) or a.dtype.name != dtype:
            raise ConvertedCheckpointError(
                f"{where}: {part}/{k} is {list(a.shape)} {a.dtype.name}, its config says {shape} {dtype}"
            )


def _read_parts(p: pathlib.Path, doc: dict[str, Any]) -> dict[str, dict[str, np.ndarray]]:
    parts: dict[str, dict[str, np.ndarray]] = {}
    if p.is_dir():
        for rel, size in doc.get("files", {}).items():
            f = p / rel
            if not f.is_file():
                raise ConvertedCheckpointError(f"{p}: truncated: {rel} is missing")
            if f.stat().st_size != size:
                raise ConvertedCheckpointError(
                    f"{p}: truncated: {rel} has {f.stat().st_size:,} of its {size:,} bytes"
                )
        for part in doc["arrays"]:
            if part not in PARTS:
                raise ConvertedCheckpointError(f"{p}: unknown part {part!r} in its config")
            sub = p / part
            if not sub.is_dir():
                raise ConvertedCheckpointError(f"{p}: truncated: {part}/ is missing")
            try:
                tree = _restore_orbax(sub)
            except Exception as e:  # noqa: BLE001 (orbax/tensorstore raise many types; one line)
                raise ConvertedCheckpointError(
                    f"{p}: truncated or corrupt {part}/ (orbax: {_one_line(e)})"
                ) from None
            parts[part] = {k: np.asarray(v) for k, v in _flatten(tree).items()}
    else:
        from converters import CheckpointError, load_state_dict

        try:
            flat = load_state_dict(p)
        except CheckpointError as e:
            raise ConvertedCheckpointError(_one_line(e, 300)) from None
        for name, a in flat.items():
            part, _, key = name.partition("/")
            if part not in doc["arrays"]:
                raise ConvertedCheckpointError(
                    f"{p}: tensor {name!r} outside {list(doc['arrays'])}"
                )
            parts.setdefault(part, {})[key] = a
    for part, manifest in doc["arrays"].items():
        _check_arrays(p, part, parts.get(part, {}), manifest)
    return parts


def _as_float32(a: np.ndarray) -> np.ndarray:
    if a.dtype.name == "bfloat16" or a.dtype == np.float16:
        return a.astype(np.float32)
    return a


def load(path: str | os.PathLike):
    """Restores a converted directory or safetensors file into a float `Model`.

    Floating leaves come back as float32 (bit-identical to the direct conversion when stored as
    float32). `Model.vae_params` is None when the checkpoint holds no tokenizer.

    Raises:
      ConvertedCheckpointError: a foreign, truncated or corrupt checkpoint (one line).
    """
    from arvg_jax import families
    from arvg_jax.assets import config_from_dict
    from arvg_jax.models import Model

    p = pathlib.Path(path)
    doc = read_config(p)
    try:
        fam = families.get(doc["family"])
    except ValueError as e:
        raise ConvertedCheckpointError(f"{p}: {e}") from None
    try:
        cfg = config_from_dict(fam.config_cls, doc["model_config"])
        tok_cfg = config_from_dict(fam.tokenizer_config_cls, doc["tokenizer_config"])
    except (TypeError, ValueError) as e:
        raise ConvertedCheckpointError(f"{p}: model/tokenizer config: {_one_line(e)}") from None
    if "params" not in doc["arrays"]:
        raise ConvertedCheckpointError(f"{p}: holds no transformer params")
    parts = _read_parts(p, doc)
    trees = {
        part: _unflatten({k: _as_float32(v) for k, v in flat.items()})
        for part, flat in parts.items()
    }
    return Model(
        fam.name,
        cfg,
        trees["params"],
        tok_cfg,
        trees.get("tokenizer"),
        name=doc.get("name") or fam.name,
        source={"converted": str(p), "dtype": doc["dtype"], **doc.get("sources", {})},
    )


def describe(path: str | os.PathLike) -> str:
    """`arvg inspect DIR` of a converted directory: its config and array manifest (no data read)."""
    doc = read_config(path)
    lines = [
        (
            f"{path}: converted {doc['family']} model {doc.get('name', '')!r} ({FORMAT}), "
            f"stored {doc['dtype']}, arvg {doc.get('arvg_version', '?')}"
        )
    ]
    for what, src in doc.get("sources", {}).items():
        if isinstance(src, dict):
            lines.append(f"source {what}: {src.get('file')} sha256 {src.get('sha256')}")
        else:
            lines.append(f"source {what}: {src}")
    rows = [
        (f"{part}/{k}", "[" + ", ".join(map(str, shape)) + "]", dtype)
        for part, arrays in doc["arrays"].items()
        for k, (shape, dtype) in arrays.items()
    ]
    kw = max((len(r[0]) for r in rows), default=0)
    sw = max((len(r[1]) for r in rows), default=0)
    lines += [f"  {k:<{kw}}  {s:<{sw}}  {d}" for k, s, d in rows]
    n = sum(int(np.prod(s)) for arrays in doc["arrays"].values() for s, _ in arrays.values())
    lines.append(f"{len(rows)} arrays, {n:,} parameters")
    return "\n".join(lines)
