"""Reads PyTorch checkpoints (`torch.save` zip and legacy files, `.safetensors`) without torch.

Nothing in a checkpoint is executed. A restricted unpickler (`converters._unpickle`) resolves only
the tensor-rebuild functions, storage types, dtypes, `collections.OrderedDict` and
`argparse.Namespace`, each to a stand-in, and refuses every other global. Tensors come back first
as `LazyTensor`s (storage location, offset, shape, strides), checked against the storage and file
sizes before any data is read; they are then read one storage at a time straight into the returned
arrays (`converters._lazy`).

Formats (torch/serialization.py):
* zip (`_save`, torch >= 1.6): `converters._zip`; every member is read streaming, with caps.
* legacy (`_legacy_save`): `converters._legacy`.
* safetensors: `converters.safetensors_reader`.

`argparse.Namespace` (the `args` entry of some training checkpoints, e.g. PAR/LlamaGen and MAR)
is allowed as `PickledNamespace`, a plain attribute holder: refusing it would refuse the whole
file, and its fields are themselves restricted to the same allowlist.
"""

from __future__ import annotations

import contextlib
import math
import os
from typing import Any, BinaryIO

import numpy as np

from converters import safetensors_reader
from converters._lazy import (
    Invalid,
    LazyTensor,
    Loader,
    Source,
    _Storage,
    contiguous_strides,
    refusals,
)
from converters._legacy import read_legacy
from converters._stream import StreamedStateDict
from converters._tree import convert, select
from converters._unpickle import PickledNamespace
from converters._zip import read_zip

__all__ = [
    "LazyTensor",
    "PickledNamespace",
    "load_state_dict",
    "open_state_dict",
    "read_checkpoint",
    "stream_state_dict",
]


def _read_safetensors(fh: BinaryIO, file_size: int, path: str) -> dict[str, LazyTensor]:
    try:
        entries, _ = safetensors_reader.read_header(fh, file_size)
    except safetensors_reader.SafetensorsFormatError as e:
        raise Invalid(f"invalid safetensors file: {e}") from None
    source = Source(path)
    out = {}
    for e in entries:
        source.spans[e.name] = (e.offset, e.nbytes)
        storage = _Storage(source, e.name, e.dtype, math.prod(e.shape))
        out[e.name] = LazyTensor(storage, 0, e.shape, contiguous_strides(e.shape))
    return out


def _read_lazy(path: str) -> Any:
    """The unpickled object of any supported format, with `LazyTensor` leaves."""
    with open(path, "rb") as fh:
        file_size = os.fstat(fh.fileno()).st_size
        head = fh.read(16)
        fh.seek(0)
        if file_size == 0:
            raise Invalid("empty file")
        if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
            return read_zip(fh, file_size, path)
        if head[:1] == b"\x80":  # pickle PROTO opcode: torch's legacy format
            return read_legacy(fh, file_size, path)
        if head[8:9] == b"{" or path.endswith(".safetensors"):
            return _read_safetensors(fh, file_size, path)
        if file_size > 262:
            fh.seek(257)
            if fh.read(5) == b"ustar":
                raise Invalid("tar checkpoint of torch < 0.4 is not supported")
        raise Invalid(
            f"unrecognised format (starts with {head[:8]!r}); expected a torch.save zip, "
            "a legacy torch pickle or .safetensors"
        )


# --------------------------------------------------------------------------- public API


def read_checkpoint(path: str | os.PathLike, *, lazy: bool = False) -> Any:
    """Reads a whole checkpoint: the unpickled object, wrapper dicts and all.

    Args:
        path: A `torch.save` file (zip or legacy) or a `.safetensors` file.
        lazy: Return `LazyTensor` leaves (shape and dtype only; nothing read) instead of arrays.

    Returns:
        Nested dicts/lists/tuples (`OrderedDict` becomes `dict`) with `np.ndarray` (or
        `LazyTensor`) leaves; torch dtypes become numpy dtypes, `argparse.Namespace` a
        `PickledNamespace`, other leaves (int, float, str, None, ...) are kept.

    Raises:
        CheckpointError: The file is unreadable, corrupt, not a checkpoint, or needs any global
            outside the allowlist.
    """
    path = os.fspath(path)
    with refusals(path):
        tree = _read_lazy(path)
        if lazy:
            return convert(tree, lambda t: t, {})
        with contextlib.closing(Loader()) as loader:
            return convert(tree, loader, {})


def open_state_dict(path: str | os.PathLike, *, key: str | None = None) -> dict[str, LazyTensor]:
    """Like `load_state_dict` but reads no tensor data: shapes and dtypes only.

    Raises:
        CheckpointError: As `load_state_dict`.
    """
    path = os.fspath(path)
    with refusals(path):
        return dict(select(convert(_read_lazy(path), lambda t: t, {}), key))


def load_state_dict(path: str | os.PathLike, *, key: str | None = None) -> dict[str, np.ndarray]:
    """Reads a flat `{name: array}` state dict without torch.

    Args:
        path: A `torch.save` file (zip or legacy: `.pth`, `.pt`, `.bin`, `.ckpt`) or a
            `.safetensors` file.
        key: For a wrapped checkpoint (`{"model": sd, "model_ema": sd, ...}`), the entry to
            return. None accepts only a flat dict of tensors.

    Returns:
        The state dict in file order. bfloat16 tensors are `ml_dtypes.bfloat16` arrays.
        Non-contiguous tensors are copied to C order; contiguous ones are views of their storage,
        so tensors sharing a storage in the file share memory here too (as in torch). Tensors
        saved with overlapping strides (`expand()`) come back as read-only strided views.

    Raises:
        CheckpointError: The file is refused (see `read_checkpoint`), is wrapped and `key` is None
            (the message lists the candidate keys), `key` is absent, or the state dict holds a
            non-tensor entry (named in the message).
    """
    path = os.fspath(path)
    with refusals(path):
        state = select(convert(_read_lazy(path), lambda t: t, {}), key)
        with contextlib.closing(Loader()) as loader:
            return {k: loader(v) for k, v in state.items()}


def stream_state_dict(
    path: str | os.PathLike, *, key: str | None = None, allow_nonfinite: bool = False
) -> StreamedStateDict:
    """Like `load_state_dict`, but each tensor is read only when a converter asks for it.

    `np.asarray(sd[name])` reads that one tensor into an array of its own and checks it for
    NaN / Inf (unless `allow_nonfinite`); nothing is kept, so converting a file this way holds one
    torch tensor at a time. Call `sd.finish()` after converting to check the tensors never read.

    Raises:
        CheckpointError: As `load_state_dict` (on opening); on a read, an unreadable file or
            non-finite values (the message of `check_finite`).
    """
    return StreamedStateDict(open_state_dict(path, key=key), path, allow_nonfinite=allow_nonfinite)
