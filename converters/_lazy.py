"""Tensors still in their checkpoint file, and reading them into numpy arrays.

A `LazyTensor` is a torch-style view (offset, shape, strides in elements) of a `_Storage`, a
typed window on the bytes a `Source` keeps under one key. Every format reader (`converters._zip`,
`converters._legacy`, safetensors) only records where each key's bytes are; `Loader` reads them,
one key at a time, straight into the returned arrays.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterator
from typing import BinaryIO

import numpy as np

from converters._errors import CheckpointError


class Invalid(Exception):
    """A problem found while reading; the public entry points add the path."""


def show(text: object, limit: int = 200) -> str:
    """Printable, bounded rendering of a name taken from the file."""
    text = str(text)
    if not text.isprintable():
        text = text.encode("unicode_escape").decode("ascii")
    return text if len(text) <= limit else text[:limit] + "..."


def size_text(n: int) -> str:
    """`n` bytes for a message: "4.0 GiB", "64 MiB", "12 bytes"."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n // scale} {unit}" if n % scale == 0 else f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def refuse_setstate(self: object, state: object) -> None:
    """`__setstate__` of every object a pickle can reach: the BUILD opcode calls it, and the
    default a frozen slotted dataclass gets would rewrite its fields (even those of the shared
    allowlist objects, for every later load)."""
    del state
    raise Invalid(f"refused to set the state of a {type(self).__name__} (BUILD opcode)")


@contextlib.contextmanager
def refusals(path: str) -> Iterator[None]:
    """Turns every failure while reading `path` into a one-line `CheckpointError`."""
    try:
        yield
    except CheckpointError:
        raise
    except Invalid as e:
        raise CheckpointError(path, str(e)) from None
    except FileNotFoundError:
        raise CheckpointError(path, "no such file") from None
    except IsADirectoryError:
        raise CheckpointError(path, "is a directory, not a checkpoint file") from None
    except OSError as e:
        raise CheckpointError(path, f"cannot read ({e.strerror or e})") from e
    except MemoryError:
        raise CheckpointError(path, "out of memory while reading") from None
    except Exception as e:  # any other corruption must still be a one-line refusal
        raise CheckpointError(path, f"unreadable ({type(e).__name__}: {show(e)})") from e


class Source:
    """Where each storage's bytes live in one checkpoint file.

    A key's bytes are either a plain span of the file (`spans`: uncompressed zip members, legacy
    storages, safetensors tensors) or come from a reader (`readers`: compressed zip members), which
    is given the open file and returns exactly the bytes the key needs.
    """

    def __init__(self, path: str, big_endian: bool = False):
        self.path = path
        self.big_endian = big_endian
        self.spans: dict[str, tuple[int, int]] = {}  # key -> (file offset, nbytes)
        self.readers: dict[str, Callable[[BinaryIO], bytearray]] = {}

    def read(self, key: str, fh: BinaryIO) -> bytearray:
        if key not in self.spans:
            return self.readers[key](fh)
        offset, nbytes = self.spans[key]
        buf = bytearray(nbytes)
        fh.seek(offset)
        got = fh.readinto(buf)
        if got != nbytes:
            raise Invalid(f"file changed or truncated: storage {show(key)!r} is short")
        return buf


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class _Storage:
    """A typed view of the bytes stored under one key (legacy views start past byte 0)."""

    __setstate__ = refuse_setstate

    source: Source
    key: str
    dtype: np.dtype
    numel: int
    start: int = 0  # byte offset into the key's bytes


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class LazyTensor:
    """A tensor still in its checkpoint file; `load()` reads it.

    Attributes:
        storage: Where its elements are (private).
        offset: Index of its first element in the storage, in elements.
        shape: Its shape.
        strides: Its strides in elements (torch convention; non-negative).
    """

    __setstate__ = refuse_setstate

    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]

    @property
    def dtype(self) -> np.dtype:
        return self.storage.dtype

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def load(self) -> np.ndarray:
        """Reads the tensor from its file.

        Raises:
            CheckpointError: The file changed or became unreadable since it was opened.
        """
        path = self.storage.source.path
        with refusals(path), contextlib.closing(Loader()) as loader:
            return loader(self)

    def __repr__(self) -> str:
        return f"LazyTensor(shape={self.shape}, dtype={self.dtype})"


# --------------------------------------------------------------------------- strides


def contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= n
    return tuple(reversed(strides))


def extent(offset: int, shape: tuple[int, ...], strides: tuple[int, ...]) -> int:
    """Storage elements a tensor needs: one past its last element (0 when it is empty)."""
    if 0 in shape:
        return 0
    return offset + 1 + sum((n - 1) * s for n, s in zip(shape, strides))


def _is_contiguous(shape: tuple[int, ...], strides: tuple[int, ...]) -> bool:
    step = 1
    for n, s in zip(reversed(shape), reversed(strides)):
        if n != 1 and s != step:  # torch ignores the stride of a size-1 dim
            return False
        step *= n
    return True


def _non_overlapping(shape: tuple[int, ...], strides: tuple[int, ...]) -> bool:
    """True when distinct indices address distinct elements (so a copy is no larger)."""
    reach = 1  # one past the largest offset spanned by the dims visited so far
    for n, s in sorted(((n, s) for n, s in zip(shape, strides) if n > 1), key=lambda d: d[1]):
        if s < reach:
            return False
        reach += (n - 1) * s
    return True


# --------------------------------------------------------------------------- materialising


class Loader:
    """Reads the tensors of one file; a storage shared by several tensors is read once."""

    def __init__(self):
        self._source: Source | None = None
        self._fh: BinaryIO | None = None
        self._buffers: dict[str, bytearray] = {}

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()

    def _flat(self, storage: _Storage) -> np.ndarray:
        if self._source is None:  # opened on first use: a tree without tensors reads nothing
            self._source = storage.source
            self._fh = open(storage.source.path, "rb")  # noqa: SIM115 (closed by close())
        if storage.source is not self._source:
            raise Invalid("tensors from two files in one tree")
        buf = self._buffers.get(storage.key)
        if buf is None:
            buf = self._buffers[storage.key] = self._source.read(storage.key, self._fh)
        if storage.start + storage.numel * storage.dtype.itemsize > len(buf):
            raise Invalid(f"storage {show(storage.key)!r} is shorter than its tensors")
        if not self._source.big_endian:
            return np.frombuffer(buf, storage.dtype, storage.numel, storage.start)
        # Byte-swap a copy: one key's bytes may back storages of several dtypes.
        flat = np.frombuffer(buf, storage.dtype, storage.numel, storage.start).copy()
        return flat.byteswap(inplace=True)

    def __call__(self, tensor: LazyTensor) -> np.ndarray:
        flat = self._flat(tensor.storage)
        shape, strides, offset = tensor.shape, tensor.strides, tensor.offset
        if 0 in shape:
            return np.zeros(shape, tensor.dtype)
        if extent(offset, shape, strides) > flat.size:  # re-checked: never read out of bounds
            raise Invalid(f"tensor exceeds storage {show(tensor.storage.key)!r}")
        if _is_contiguous(shape, strides):
            return flat[offset : offset + tensor.size].reshape(shape)
        itemsize = tensor.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            flat[offset:], shape, [s * itemsize for s in strides], writeable=False
        )
        # Overlapping strides (e.g. a saved `expand()`) could describe far more elements than
        # the file holds; keep those as a read-only view instead of copying.
        return np.array(view, order="C") if _non_overlapping(shape, strides) else view


# --------------------------------------------------------------------------- one tensor at a time

_READ_STEP = 1 << 28  # bytes per read(2): Linux caps a single read near 2 GiB


def _read_exact(fh: BinaryIO, offset: int, out: np.ndarray, key: str) -> None:
    """Fills the C-contiguous `out` with the file's bytes at `offset`, in place (no copies)."""
    raw = out.reshape(-1).view(np.uint8)
    fh.seek(offset)
    pos = 0
    while pos < raw.size:
        got = fh.readinto(raw[pos : pos + _READ_STEP])
        if not got:
            raise Invalid(f"file changed or truncated: storage {show(key)!r} is short")
        pos += got


def read_owned(tensor: LazyTensor, fh: BinaryIO) -> np.ndarray:
    """Reads one tensor into an array of its own, reading only its bytes.

    Unlike `Loader`, nothing is cached and nothing is shared with other tensors, so the array is
    freed as soon as its user drops it: a converter can walk a state dict holding one tensor at a
    time. A contiguous tensor of an uncompressed storage is read straight into the result (no
    intermediate bytes); a strided one reads the span it covers and copies it to C order; a
    compressed storage (never written by torch) is inflated whole, then the tensor copied out.
    Overlapping strides (a saved `expand()`) stay a read-only view, as in `Loader`.
    """
    storage, source = tensor.storage, tensor.storage.source
    shape, strides, offset, dtype = tensor.shape, tensor.strides, tensor.offset, tensor.dtype
    if 0 in shape:
        return np.zeros(shape, dtype)
    needed = extent(offset, shape, strides)
    itemsize = dtype.itemsize
    if needed > storage.numel:  # re-checked: never read out of bounds
        raise Invalid(f"tensor exceeds storage {show(storage.key)!r}")
    contiguous = _is_contiguous(shape, strides)
    if storage.key in source.spans:
        file_offset, nbytes = source.spans[storage.key]
        first = storage.start + offset * itemsize
        if storage.start + storage.numel * itemsize > nbytes:
            raise Invalid(f"storage {show(storage.key)!r} is shorter than its tensors")
        if contiguous:
            out = np.empty(shape, dtype)
            _read_exact(fh, file_offset + first, out, storage.key)
            return out.byteswap(inplace=True) if source.big_endian else out
        flat = np.empty(needed - offset, dtype)
        _read_exact(fh, file_offset + first, flat, storage.key)
    else:
        buf = source.read(storage.key, fh)
        if storage.start + storage.numel * itemsize > len(buf):
            raise Invalid(f"storage {show(storage.key)!r} is shorter than its tensors")
        flat = np.frombuffer(buf, dtype, needed - offset, storage.start + offset * itemsize)
        if contiguous:
            out = flat.reshape(shape).copy()
            return out.byteswap(inplace=True) if source.big_endian else out
        flat = flat.copy()  # owned and writable; `buf` goes with this function
    if source.big_endian:
        flat.byteswap(inplace=True)
    view = np.lib.stride_tricks.as_strided(
        flat, shape, [s * itemsize for s in strides], writeable=False
    )
    return np.array(view, order="C") if _non_overlapping(shape, strides) else view
