"""Converted checkpoints: official torch files -> Flax params on disk, and back into a `Model`.

Conversion (`convert`) reads the official transformer and tokenizer checkpoints once (no torch),
maps them with the family's converters and writes them in one of two layouts:

* ``orbax`` (default), a directory written atomically (a sibling temp directory renamed into
  place, as `quant.checkpoint`)::

      DIR/config.json   format tag, family, model/tokenizer configs, sources (file names, sha256),
                        arvg version, storage dtype, and the manifest of every stored array
      DIR/params/       orbax checkpoint of the transformer params
      DIR/tokenizer/    orbax checkpoint of the tokenizer params

* ``safetensors``: one portable file holding the arrays as ``params/<path>`` and
  ``tokenizer/<path>``, with the same `config.json` document as JSON in the header's
  ``__metadata__["config"]`` (written by `write_safetensors`, read back with
  `converters.safetensors_reader`).

`load` restores either into a float `arvg_jax.models.Model` whose params equal the direct
conversion's bit for bit (float32 storage); bfloat16 storage is upcast to float32 on load (the
families run float32 params). A directory or file that is not a complete converted checkpoint is
refused with a one-line `ConvertedCheckpointError` naming what is wrong. The reading side lives in
`arvg_jax.converted` (re-exported here).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import pathlib
import time
from typing import Any

import numpy as np

from arvg_jax import atomic
from arvg_jax.converted import (
    CONFIG,
    FORMAT,
    ConvertedCheckpointError,
    _bf16,
    _flatten,
    _safetensors_meta,
    _unflatten,
    describe,
    is_converted,
    load,
    read_config,
)

DTYPES = ("float32", "bfloat16")
FORMATS = ("orbax", "safetensors")

__all__ = [
    "CONFIG",
    "FORMAT",
    "ConvertedCheckpointError",
    "Report",
    "convert",
    "describe",
    "is_converted",
    "load",
    "read_config",
    "save",
    "write_safetensors",
]


@dataclasses.dataclass(frozen=True)
class Report:
    """What `convert` wrote: for the one-screen summary (`str(report)`)."""

    path: pathlib.Path
    fmt: str
    dtype: str
    name: str
    family: str
    parts: dict[str, dict[str, Any]]  # part -> {source, sha256, source_keys, arrays, bytes}
    bytes_on_disk: int
    seconds: float

    def __str__(self) -> str:
        lines = [
            f"converted {self.name} ({self.family}) -> {self.path}  [{self.fmt}, {self.dtype}]"
        ]
        for part, info in self.parts.items():
            src = info.get("source") or "-"
            sha = info.get("sha256")
            keys = info.get("source_keys")
            mapped = f"{keys} keys -> " if keys is not None else ""
            lines.append(
                f"  {part:<10} {src}{f'  sha256 {sha[:12]}' if sha else ''}\n"
                f"  {'':<10} {mapped}{info['arrays']} arrays, {info['bytes']:,} bytes"
            )
        lines.append(f"  {self.bytes_on_disk:,} bytes on disk, {self.seconds:.1f} s")
        lines.append(f"use it: --ckpt {self.path} (the model and tokenizer are read from it)")
        return "\n".join(lines)


# ---- helpers ------------------------------------------------------------------------------------
def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("arvg-jax")
    except metadata.PackageNotFoundError:
        return "unknown"


def sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _stored_dtype(dtype: np.dtype, storage: str) -> np.dtype:
    """The dtype a leaf is stored in: floating leaves in `storage`; integer and bool keep theirs."""
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.floating) or dtype.name == "bfloat16":
        return np.dtype(storage) if storage == "float32" else _bf16()
    return dtype


class _Stored:
    """A leaf as it will be stored: shape and dtype now, the array (cast) only on `np.asarray`.

    Writers take the leaves one at a time, so a bfloat16 copy of the tree never exists at once and
    a float32 leaf is not copied at all (`astype(copy=False)` of the zero-copy host view)."""

    __slots__ = ("_value", "dtype", "shape")

    def __init__(self, value, storage: str):
        self._value = value
        self.shape = tuple(value.shape)
        self.dtype = _stored_dtype(value.dtype, storage)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        del copy
        a = np.asarray(self._value).astype(self.dtype, copy=False)
        return a if dtype is None else a.astype(dtype, copy=False)

    def for_orbax(self):
        """The leaf as a jax array: orbax stages a host copy of a numpy leaf on top of the one it
        makes for a jax array (measured: 2.0x against 0.9x the tree's bytes), so the converted
        jax arrays go as they are and a bfloat16 cast is made on the jax side."""
        import jax
        import jax.numpy as jnp

        if isinstance(self._value, jax.Array) and self._value.dtype == self.dtype:
            return self._value
        return jnp.asarray(np.asarray(self))


def _dir_bytes(path: pathlib.Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def written_by_arvg(path: str | os.PathLike) -> bool:
    """What `overwrite` may replace: a directory arvg wrote (marker) or a converted safetensors
    file (our format tag in its header)."""
    path = pathlib.Path(path)
    if path.is_file() and not path.is_symlink():
        try:
            return (_safetensors_meta(path) or {}).get("format") == FORMAT
        except ConvertedCheckpointError:
            return False
    return atomic.is_arvg_dir(path)


# ---- writing ------------------------------------------------------------------------------------
def write_safetensors(
    path: str | os.PathLike, arrays: dict[str, np.ndarray], metadata: dict
) -> int:
    """Writes `arrays` as one `.safetensors` file, atomically; returns its size in bytes.

    The header (8-byte little-endian length, JSON, space-padded to a multiple of 8) lists the
    tensors in the given order, contiguous and gap-free; `metadata` must map str to str. The
    header is made from each value's `shape` and `dtype`; the values (arrays, or array-likes that
    make their array on `np.asarray`, as `save`'s cast leaves) are then written one at a time
    from their own buffers, so writing holds no copy of the tree.
    """
    from converters.safetensors_reader import DTYPES as ST_DTYPES

    names = {dt: name for name, dt in ST_DTYPES.items()}
    header: dict[str, Any] = {"__metadata__": dict(metadata)}
    offset = 0
    for key, value in arrays.items():
        dtype = np.dtype(value.dtype)
        dtype = dtype.newbyteorder("<") if dtype.byteorder == ">" else dtype
        tag = names.get(dtype)
        if tag is None:
            raise TypeError(f"{key}: dtype {value.dtype} has no safetensors name")
        nbytes = math.prod(value.shape) * dtype.itemsize
        header[key] = {
            "dtype": tag,
            "shape": list(value.shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)

    def writer(tmp):
        # One leaf at a time, written from its own buffer: no copy of the tree, no bytes copy.
        with open(tmp, "wb") as f:
            f.write(len(raw).to_bytes(8, "little"))
            f.write(raw)
            for key, value in arrays.items():
                a = np.ascontiguousarray(value)
                if a.dtype.byteorder == ">":
                    a = a.astype(a.dtype.newbyteorder("<"))
                if [a.nbytes, list(a.shape)] != [
                    header[key]["data_offsets"][1] - header[key]["data_offsets"][0],
                    header[key]["shape"],
                ]:
                    raise ValueError(f"{key}: changed while being written")
                f.write(a.reshape(-1).view(np.uint8).data)
                del a

    atomic.write(path, writer)
    return 8 + len(raw) + offset


def _save_orbax(path: pathlib.Path, tree: dict) -> None:
    import orbax.checkpoint as ocp

    ckptr = ocp.StandardCheckpointer()
    ckptr.save(path.absolute(), tree)
    ckptr.wait_until_finished()


def save(
    model,
    out: str | os.PathLike,
    *,
    dtype: str = "float32",
    fmt: str = "orbax",
    overwrite: bool = False,
    sources: dict[str, Any] | None = None,
    progress=None,
) -> tuple[pathlib.Path, dict[str, Any]]:
    """Writes a float `Model` as a converted checkpoint; returns (path, its config document).

    Args:
      model: a float `arvg_jax.models.Model` (not quantized: `arvg quantize` writes those).
      out: the directory (orbax) or file (safetensors) to write; replaced only with `overwrite`
        and only if arvg wrote it (`written_by_arvg`).
      dtype: storage dtype of floating leaves ("float32" or "bfloat16").
      fmt: "orbax" or "safetensors".
      sources: where the params came from (file names, sha256), stored in the config.
      progress: an `arvg_jax.progress.Progress` to advance once per part written.
    """
    from arvg_jax.assets import config_to_dict

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    if model.quantized:
        raise ValueError(f"{model.name}: quantized; convert writes float models only")
    out = pathlib.Path(out)
    atomic.check_replaceable(out, overwrite, ours=written_by_arvg)
    trees = {"params": model.params, "tokenizer": model.vae_params}
    stored = {
        part: {k: _Stored(v, dtype) for k, v in _flatten(tree).items()}
        for part, tree in trees.items()
        if tree is not None
    }
    doc = {
        "format": FORMAT,
        "family": model.family,
        "name": model.name,
        "model_config": config_to_dict(model.cfg),
        "tokenizer_config": config_to_dict(model.vae_cfg),
        "dtype": dtype,
        "sources": sources or {},
        "arvg_version": _version(),
        "arrays": {
            part: {k: [list(a.shape), a.dtype.name] for k, a in flat.items()}
            for part, flat in stored.items()
        },
    }
    if fmt == "safetensors":
        arrays = {f"{part}/{k}": a for part, flat in stored.items() for k, a in flat.items()}
        write_safetensors(out, arrays, {"format": FORMAT, "config": json.dumps(doc)})
        if progress is not None:
            progress.update(len(stored), postfix="safetensors")
        return out, doc

    def writer(tmp: pathlib.Path) -> None:
        for part, flat in stored.items():
            _save_orbax(tmp / part, _unflatten({k: a.for_orbax() for k, a in flat.items()}))
            if progress is not None:
                progress.update(postfix=part)
        # Every file orbax wrote, with its size: a truncated copy is named before orbax reads it.
        doc["files"] = {
            f.relative_to(tmp).as_posix(): f.stat().st_size
            for f in sorted(tmp.rglob("*"))
            if f.is_file()
        }
        # config.json last: a directory without it was never finished.
        (tmp / CONFIG).write_text(json.dumps(doc, indent=1) + "\n")

    atomic.write_dir(out, writer, overwrite=overwrite, ours=written_by_arvg)
    return out, doc


def _source(path, key=None) -> dict[str, Any]:
    p = pathlib.Path(path)
    info: dict[str, Any] = {"file": p.name, "sha256": sha256(p), "bytes": p.stat().st_size}
    if key is not None:
        info["key"] = key
    return info


def convert(
    model,
    ckpt: str | os.PathLike | None = None,
    vae: str | os.PathLike | None = None,
    *,
    out: str | os.PathLike,
    config: str | os.PathLike | None = None,
    ckpt_key: str | None = None,
    dtype: str = "float32",
    fmt: str = "orbax",
    overwrite: bool = False,
    random_weights: bool = False,
    seed: int = 0,
    allow_nonfinite: bool = False,
    progress: bool = True,
) -> Report:
    """Converts official checkpoints once into a directory (or file) that loads without them.

    Args:
      model: a preset ("var-d16"), a family name with `config` (official constructor arguments
        as JSON), or an already loaded float `Model` (written as it is; `ckpt`/`vae` unused).
      ckpt: the official transformer checkpoint (none for packaged presets or `random_weights`).
      vae: the official tokenizer checkpoint.
      out: the directory (orbax) or `.safetensors` file to write, atomically.
      ckpt_key: entry of a wrapped checkpoint (e.g. "model_ema").
      dtype: storage dtype of floating leaves: "float32" (bit-exact) or "bfloat16" (half size).
      fmt: "orbax" or "safetensors".
      overwrite: replace an existing `out`.
      random_weights: seeded random weights at the preset's size instead of files.
      progress: a progress bar on stderr.

    Returns:
      A `Report`; `print(report)` gives the one-screen summary.

    Example::

        import arvg_jax
        report = arvg_jax.convert("var-test", random_weights=True, out="converted/var-test")
        model = arvg_jax.load("converted/var-test")
    """
    from arvg_jax import models
    from arvg_jax.progress import Progress

    t0 = time.perf_counter()
    out = pathlib.Path(out)
    atomic.check_replaceable(out, overwrite, ours=written_by_arvg)  # before the work
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    from_files = not isinstance(model, models.Model) and not random_weights and ckpt is not None
    bar = Progress(6 if from_files else 2, "convert", enabled=progress)
    keys: dict[str, int | None] = {"params": None, "tokenizer": None}
    try:
        if isinstance(model, models.Model):
            m, sources = model, dict(model.source)
        elif random_weights:
            m = models.random_model(model, seed=seed, config_path=config)
            sources = {"random_seed": seed}
        elif ckpt is None:
            m = models.packaged_model(model)
            sources = {"packaged": model}
        elif is_converted(ckpt):
            m = models.load_float(model, ckpt, vae, config, key=ckpt_key)
            sources = dict(m.source)
        else:
            m, keys, sources = _from_files(model, ckpt, vae, config, ckpt_key, allow_nonfinite, bar)
        path, doc = save(
            m, out, dtype=dtype, fmt=fmt, overwrite=overwrite, sources=sources, progress=bar
        )
    finally:
        bar.close()
    parts = {}
    for part, arrays in doc["arrays"].items():
        src = sources.get("ckpt" if part == "params" else "vae")
        parts[part] = {
            "source": src["file"] if isinstance(src, dict) else None,
            "sha256": src.get("sha256") if isinstance(src, dict) else None,
            "source_keys": keys.get(part),
            "arrays": len(arrays),
            "bytes": sum(
                int(np.prod(s)) * np.dtype(_bf16() if d == "bfloat16" else d).itemsize
                for s, d in arrays.values()
            ),
        }
    size = path.stat().st_size if path.is_file() else _dir_bytes(path)
    return Report(
        path=path,
        fmt=fmt,
        dtype=dtype,
        name=m.name,
        family=m.family,
        parts=parts,
        bytes_on_disk=size,
        seconds=time.perf_counter() - t0,
    )


def _from_files(model, ckpt, vae, config, ckpt_key, allow_nonfinite, bar):
    """Reads and converts the official files, one progress step each (read, convert, hash)."""
    from arvg_jax import models

    if vae is None:
        raise ValueError(f"--model {model} needs --vae (the official tokenizer checkpoint)")
    fam, cfg, tok_cfg = models.resolve_configs(model, config)
    keys: dict[str, int | None] = {}
    # Streamed: each torch tensor is read, checked finite and freed as its leaf is made, so the
    # peak is about one copy of the params (`models.convert_file`).
    params, keys["params"] = models.convert_transformer(
        fam, ckpt, cfg, model, ckpt_key, allow_nonfinite
    )
    bar.update(2, postfix="convert ckpt")
    if is_converted(vae):
        tok = load(vae)
        if tok.vae_params is None:
            raise ConvertedCheckpointError(f"{vae}: holds no tokenizer params")
        vae_params, keys["tokenizer"] = tok.vae_params, None
        vae_source = tok.source.get("vae")
    else:
        vae_params, keys["tokenizer"] = models.convert_tokenizer(
            fam, vae, tok_cfg, model, allow_nonfinite
        )
        vae_source = _source(vae)
    bar.update(2, postfix="tokenizer")
    sources = {"ckpt": _source(ckpt, ckpt_key), "vae": vae_source}
    bar.update(postfix="sha256")
    m = models.Model(fam.name, cfg, params, tok_cfg, vae_params, name=model, source=sources)
    return m, keys, sources
