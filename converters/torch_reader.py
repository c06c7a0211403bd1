"""Reads PyTorch checkpoints (`torch.save` zip and legacy files, `.safetensors`) without torch.

Nothing in a checkpoint is executed. A restricted unpickler resolves only the tensor-rebuild
functions, storage types, dtypes, `collections.OrderedDict` and `argparse.Namespace`, each to a
stand-in defined here, and refuses every other global. Tensors come back first as `LazyTensor`s
(storage location, offset, shape, strides), checked against the storage and file sizes before any
data is read; they are then read one storage at a time straight into the returned arrays.

Formats (torch/serialization.py):
* zip (`_save`, torch >= 1.6): `<prefix>/data.pkl` with persistent ids
  `('storage', storage_type, key, location, numel)`, raw storages in `<prefix>/data/<key>`, byte
  order in `<prefix>/byteorder` (little when absent).
* legacy (`_legacy_save`): pickled magic number, protocol version and sys_info, the main pickle
  with ids `('storage', storage_type, root_key, location, numel, view_metadata)`, a pickled list of
  storage keys, then for each key an int64 element count followed by the raw bytes (both always
  little-endian).
* safetensors: see `converters.safetensors_reader`.

`argparse.Namespace` (the `args` entry of some training checkpoints, e.g. PAR/LlamaGen and MAR)
is allowed as `PickledNamespace`, a plain attribute holder: refusing it would refuse the whole
file, and its fields are themselves restricted to the same allowlist.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import io
import math
import os
import pickle
import pickletools
import reprlib
import struct
import zipfile
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

import ml_dtypes
import numpy as np

from converters import safetensors_reader
from converters._errors import CheckpointError

_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C  # torch/serialization.py MAGIC_NUMBER
_PROTOCOL_VERSION = 1001  # torch/serialization.py PROTOCOL_VERSION
_MAX_LINE = 1 << 16  # longest line a text pickle opcode may read while pre-scanning
_MAX_DEPTH = 100  # deepest container nesting accepted in a checkpoint
_DEFLATE_MAX_RATIO = 1032  # deflate cannot expand data by more than this factor

_STORAGE_DTYPES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
    "ComplexFloatStorage": np.complex64,
    "ComplexDoubleStorage": np.complex128,
    "UntypedStorage": np.uint8,  # bytes; `_rebuild_tensor_v3` reinterprets them with its dtype
}
# `torch.<name>` dtype globals (torch.dtype pickles as its name); `_rebuild_tensor_v3` is used for
# the dtypes that have no typed storage class (float8, uint16/32/64).
_TORCH_DTYPES = {
    "float64": np.float64,
    "float32": np.float32,
    "float16": np.float16,
    "bfloat16": ml_dtypes.bfloat16,
    "float8_e4m3fn": ml_dtypes.float8_e4m3fn,
    "float8_e5m2": ml_dtypes.float8_e5m2,
    "float8_e4m3fnuz": ml_dtypes.float8_e4m3fnuz,
    "float8_e5m2fnuz": ml_dtypes.float8_e5m2fnuz,
    "int64": np.int64,
    "int32": np.int32,
    "int16": np.int16,
    "int8": np.int8,
    "uint64": np.uint64,
    "uint32": np.uint32,
    "uint16": np.uint16,
    "uint8": np.uint8,
    "bool": np.bool_,
    "complex64": np.complex64,
    "complex128": np.complex128,
}


class _Invalid(Exception):
    """A problem found while reading; the public entry points add the path."""


def _show(text: object, limit: int = 200) -> str:
    """Printable, bounded rendering of a name taken from the file."""
    text = str(text)
    if not text.isprintable():
        text = text.encode("unicode_escape").decode("ascii")
    return text if len(text) <= limit else text[:limit] + "..."


# --------------------------------------------------------------------------- stand-ins


def _refuse_setstate(self: object, state: object) -> None:
    """`__setstate__` of every object a pickle can reach: the BUILD opcode calls it, and the
    default a frozen slotted dataclass gets would rewrite its fields (even those of the shared
    allowlist objects, for every later load)."""
    del state
    raise _Invalid(f"refused to set the state of a {type(self).__name__} (BUILD opcode)")


@dataclasses.dataclass(frozen=True, slots=True)
class _StorageType:
    """Stand-in for `torch.FloatStorage` etc.: only names a dtype (not callable)."""

    __setstate__ = _refuse_setstate

    name: str
    dtype: np.dtype

    def __repr__(self) -> str:
        return f"torch.{self.name}"


@dataclasses.dataclass(frozen=True, slots=True)
class _DType:
    """Stand-in for a `torch.<dtype>` global; becomes the numpy dtype in the returned tree."""

    __setstate__ = _refuse_setstate

    name: str
    dtype: np.dtype


class PickledNamespace:
    """Stand-in for `argparse.Namespace`: holds the unpickled attributes, nothing else."""

    def __init__(self, **kwargs: Any):
        self.__dict__.update(kwargs)

    @reprlib.recursive_repr()
    def __repr__(self) -> str:
        return f"Namespace({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"


class _Source:
    """Where each storage's bytes live in one checkpoint file."""

    def __init__(self, path: str, big_endian: bool = False):
        self.path = path
        self.big_endian = big_endian
        self.spans: dict[str, tuple[int, int]] = {}  # key -> (file offset, nbytes)
        self.members: dict[str, tuple[str, int]] = {}  # key -> (compressed zip member, nbytes)

    def read(self, key: str, fh: BinaryIO) -> bytearray:
        if key in self.spans:
            offset, nbytes = self.spans[key]
            buf = bytearray(nbytes)
            fh.seek(offset)
            got = fh.readinto(buf)
            if got != nbytes:
                raise _Invalid(f"file changed or truncated: storage {_show(key)!r} is short")
            return buf
        member, nbytes = self.members[key]
        buf = bytearray(nbytes)
        with zipfile.ZipFile(fh) as zf, zf.open(member) as f:
            got = f.readinto(buf)
        if got != nbytes:
            raise _Invalid(f"zip member {_show(member)} is short")
        return buf


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class _Storage:
    """A typed view of the bytes stored under one key (legacy views start past byte 0)."""

    __setstate__ = _refuse_setstate

    source: _Source
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

    __setstate__ = _refuse_setstate

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
        with _refusals(path), contextlib.closing(_Loader()) as loader:
            return loader(self)

    def __repr__(self) -> str:
        return f"LazyTensor(shape={self.shape}, dtype={self.dtype})"


# --------------------------------------------------------------------------- tensor rebuild


def _int_tuple(value: object, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value
    ):
        raise _Invalid(f"tensor {what} {_show(repr(value))} is not a tuple of non-negative ints")
    return tuple(value)


def _contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= n
    return tuple(reversed(strides))


def _extent(offset: int, shape: tuple[int, ...], strides: tuple[int, ...]) -> int:
    """Storage elements a tensor needs: one past its last element (0 when it is empty)."""
    if 0 in shape:
        return 0
    return offset + 1 + sum((n - 1) * s for n, s in zip(shape, strides))


def _make_tensor(storage: object, offset: object, size: object, stride: object) -> LazyTensor:
    if not isinstance(storage, _Storage):
        raise _Invalid(f"tensor storage is a {type(storage).__name__}, not a storage")
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise _Invalid(f"tensor storage offset {_show(repr(offset))} is not a non-negative int")
    shape, strides = _int_tuple(size, "size"), _int_tuple(stride, "stride")
    if len(shape) != len(strides) or len(shape) > 64:
        raise _Invalid(f"tensor size {shape} and stride {strides} do not match")
    needed = _extent(offset, shape, strides)
    if needed > storage.numel:
        raise _Invalid(
            f"tensor of size {shape}, stride {strides}, offset {offset} needs {needed} elements "
            f"but storage {_show(storage.key)!r} holds {storage.numel}"
        )
    return LazyTensor(storage, offset, shape, strides)


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _make_tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(
    storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None
):
    del requires_grad, backward_hooks, metadata  # autograd state: meaningless for weights
    return _make_tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(
    storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype, metadata=None
):
    del requires_grad, backward_hooks, metadata
    if not isinstance(dtype, _DType) or not isinstance(storage, _Storage):
        raise _Invalid("_rebuild_tensor_v3 needs a storage and a torch dtype")
    # The storage is untyped (bytes); torch views it with the tensor's dtype.
    nbytes = storage.numel * storage.dtype.itemsize
    typed = _Storage(
        storage.source, storage.key, dtype.dtype, nbytes // dtype.dtype.itemsize, storage.start
    )
    return _make_tensor(typed, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad, backward_hooks):
    del requires_grad, backward_hooks
    if not isinstance(data, LazyTensor):
        raise _Invalid(f"parameter data is a {type(data).__name__}, not a tensor")
    return data


def _rebuild_parameter_with_state(data, requires_grad, backward_hooks, state):
    del state  # Python attributes set on the Parameter object; not weights
    return _rebuild_parameter(data, requires_grad, backward_hooks)


@dataclasses.dataclass(frozen=True, slots=True)
class _Rebuild:
    """An allowlisted rebuild function as the pickle sees it: callable, but with no attributes
    a BUILD opcode could set (a bare function has a writable `__dict__` and `__defaults__`)."""

    __setstate__ = _refuse_setstate

    name: str
    fn: Callable[..., Any]

    def __call__(self, *args: Any) -> Any:
        return self.fn(*args)


_GLOBALS: dict[tuple[str, str], object] = {
    ("collections", "OrderedDict"): collections.OrderedDict,  # a built-in type: immutable
    **{
        ("torch._utils", fn.__name__): _Rebuild(fn.__name__, fn)
        for fn in (
            _rebuild_tensor,
            _rebuild_tensor_v2,
            _rebuild_tensor_v3,
            _rebuild_parameter,
            _rebuild_parameter_with_state,
        )
    },
    **{("torch", n): _StorageType(n, np.dtype(d)) for n, d in _STORAGE_DTYPES.items()},
    **{("torch", n): _DType(n, np.dtype(d)) for n, d in _TORCH_DTYPES.items()},
}


# --------------------------------------------------------------------------- pickles


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the `_GLOBALS` allowlist; persistent ids go to the format's handler."""

    def __init__(self, file: BinaryIO, persistent_load: Callable[[Any], Any] | None):
        super().__init__(file, encoding="utf-8")
        self._load_persistent = persistent_load
        # NEWOBJ needs a class, and a pickle may set attributes on what it gets: hand each load
        # a throwaway subclass so that nothing it does reaches PickledNamespace itself.
        self._namespace = type("Namespace", (PickledNamespace,), {})

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("argparse", "Namespace"):
            return self._namespace
        try:
            return _GLOBALS[(module, name)]
        except (KeyError, TypeError):
            raise _Invalid(
                f"refused pickle global {_show(module)}.{_show(name)} (only tensor-rebuild "
                "functions, storage types, dtypes, OrderedDict and argparse.Namespace are allowed)"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        if self._load_persistent is None:
            raise _Invalid("unexpected persistent id outside the main pickle")
        return self._load_persistent(pid)


class _Bounded:
    """File view for `pickletools.genops` that never reads past `end` nor an unbounded line."""

    def __init__(self, fh: BinaryIO, end: int):
        self._fh, self._end = fh, end

    def read(self, n: int = -1) -> bytes:
        left = max(0, self._end - self._fh.tell())
        return self._fh.read(left if n < 0 else min(n, left))

    def readline(self) -> bytes:
        return self._fh.readline(min(_MAX_LINE, max(0, self._end - self._fh.tell())))

    def tell(self) -> int:
        return self._fh.tell()


def _load_pickle(
    fh: BinaryIO, end: int, what: str, persistent_load: Callable[[Any], Any] | None = None
) -> Any:
    """Unpickles the pickle at `fh`'s position, leaving `fh` just past its STOP opcode."""
    start = fh.tell()
    # Pre-scan the opcodes: the C unpickler allocates a counted bytes/str opcode's length before
    # reading it, so a corrupt length could ask for terabytes. genops reads through `_Bounded`.
    try:
        for _ in pickletools.genops(_Bounded(fh, end)):
            pass
    except Exception as e:  # noqa: BLE001 (any corruption must become one line)
        raise _Invalid(f"corrupt {what} ({_show(e)})") from None
    stop = fh.tell()
    fh.seek(start)
    data = fh.read(stop - start)
    fh.seek(stop)
    try:
        return _RestrictedUnpickler(io.BytesIO(data), persistent_load).load()
    except _Invalid:
        raise
    except Exception as e:  # noqa: BLE001 (UnpicklingError, but also TypeError, EOFError...)
        raise _Invalid(f"corrupt {what} ({type(e).__name__}: {_show(e)})") from None


def _parse_pid(pid: Any, length: int) -> tuple[_StorageType, str, int, Any]:
    """Validates a `('storage', storage_type, key, location, numel[, view_metadata])` id."""
    if not isinstance(pid, tuple) or not pid:
        raise _Invalid(f"persistent id {_show(repr(pid))} is not a tuple")
    kind = pid[0].decode("ascii", "replace") if isinstance(pid[0], bytes) else pid[0]
    if kind != "storage":
        raise _Invalid(f"refused persistent id kind {_show(repr(kind))} (only 'storage')")
    if len(pid) != length:
        raise _Invalid(f"storage persistent id has {len(pid)} fields, expected {length}")
    storage_type, key, location, numel = pid[1:5]
    if not isinstance(storage_type, _StorageType):
        raise _Invalid(f"storage type {_show(repr(storage_type))} is not a torch storage class")
    if not isinstance(key, str) or not isinstance(location, (str, bytes)):
        raise _Invalid(f"storage key {_show(repr(key))} or location is not a string")
    if not isinstance(numel, int) or isinstance(numel, bool) or numel < 0:
        raise _Invalid(f"storage {_show(key)!r} size {_show(repr(numel))} is not a count")
    return storage_type, key, numel, pid[5] if length == 6 else None


# --------------------------------------------------------------------------- formats


def _check_member_sizes(info: zipfile.ZipInfo, file_size: int) -> None:
    if info.flag_bits & 0x1:
        raise _Invalid(f"zip member {_show(info.filename)} is encrypted")
    stored = info.compress_type == zipfile.ZIP_STORED
    if info.compress_size > file_size or (stored and info.file_size != info.compress_size):
        raise _Invalid(f"zip member {_show(info.filename)} has impossible sizes")
    if info.file_size > _DEFLATE_MAX_RATIO * info.compress_size + 64:
        raise _Invalid(f"zip member {_show(info.filename)} claims an impossible expansion")


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, file_size: int) -> bytes:
    _check_member_sizes(info, file_size)
    try:
        return zf.read(info)
    except Exception as e:  # noqa: BLE001 (BadZipFile, zlib.error, EOFError, OSError...)
        raise _Invalid(f"cannot read zip member {_show(info.filename)} ({_show(e)})") from None


def _locate_member(
    fh: BinaryIO, info: zipfile.ZipInfo, file_size: int, source: _Source, key: str, nbytes: int
) -> None:
    """Records where storage `key` lives: a plain byte span for stored (uncompressed) members."""
    _check_member_sizes(info, file_size)
    if info.compress_type != zipfile.ZIP_STORED:
        source.members[key] = (info.filename, nbytes)
        return
    # torch writes storages uncompressed; their bytes follow the local file header (ZIP APPNOTE
    # 4.3.7: 30 fixed bytes, then the name and the extra field, whose lengths are at 26 and 28).
    fh.seek(info.header_offset)
    local = fh.read(30)
    if len(local) != 30 or local[:4] != b"PK\x03\x04":
        raise _Invalid(f"zip member {_show(info.filename)} has a corrupt local header")
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    start = info.header_offset + 30 + name_len + extra_len
    if start + nbytes > file_size:
        raise _Invalid(f"zip member {_show(info.filename)} runs past the end of the file")
    source.spans[key] = (start, nbytes)


def _read_zip(fh: BinaryIO, file_size: int, path: str) -> Any:
    try:
        zf = zipfile.ZipFile(fh)
        infos = zf.infolist()
    except Exception as e:  # noqa: BLE001 (BadZipFile, but also OSError, struct.error...)
        raise _Invalid(f"corrupt or truncated zip archive ({_show(e)})") from None
    if not infos:
        raise _Invalid("empty zip archive: not a torch.save checkpoint")
    by_name = {info.filename: info for info in infos}
    prefix, slash, _ = infos[0].filename.partition("/")
    pkl = by_name.get(f"{prefix}/data.pkl") if slash else None
    if pkl is None:
        hint = " (a TorchScript archive?)" if f"{prefix}/constants.pkl" in by_name else ""
        raise _Invalid(
            f"zip archive has no {_show(prefix)}/data.pkl: not a torch.save checkpoint{hint}"
        )
    big_endian = False
    if (order := by_name.get(f"{prefix}/byteorder")) is not None:
        text = _read_member(zf, order, file_size)[:16].decode("ascii", "replace").strip()
        if text not in ("little", "big"):
            raise _Invalid(f"unknown byteorder {_show(text)!r}")
        big_endian = text == "big"
    source = _Source(path, big_endian)
    storages: dict[str, _Storage] = {}

    def persistent_load(pid: Any) -> _Storage:
        storage_type, key, numel, _ = _parse_pid(pid, 5)
        if key in storages:  # shared storage; torch reuses the first one loaded as well
            return storages[key]
        info = by_name.get(f"{prefix}/data/{key}")
        if info is None:
            raise _Invalid(f"storage data/{_show(key)} is missing from the archive")
        nbytes = numel * storage_type.dtype.itemsize
        if info.file_size < nbytes:
            raise _Invalid(
                f"storage data/{_show(key)} holds {info.file_size} bytes but the pickle needs "
                f"{nbytes} ({numel} x {storage_type.dtype})"
            )
        _locate_member(fh, info, file_size, source, key, nbytes)
        storages[key] = _Storage(source, key, storage_type.dtype, numel)
        return storages[key]

    data = _read_member(zf, pkl, file_size)
    return _load_pickle(io.BytesIO(data), len(data), f"{prefix}/data.pkl", persistent_load)


def _read_legacy(fh: BinaryIO, file_size: int, path: str) -> Any:
    magic = _load_pickle(fh, file_size, "pickle")
    if type(magic) is not int or magic != _MAGIC_NUMBER:
        raise _Invalid("a pickle without torch's magic number: not a torch.save checkpoint")
    version = _load_pickle(fh, file_size, "protocol version")
    if version != _PROTOCOL_VERSION:
        raise _Invalid(f"unsupported legacy protocol version {_show(repr(version))}")
    # sys_info records the writer's byte order, but the storages (and their sizes) are always
    # written little-endian (THPStorage_writeFileRaw converts on big-endian hosts).
    _load_pickle(fh, file_size, "sys_info")
    source = _Source(path)
    roots: dict[str, _Storage] = {}

    def persistent_load(pid: Any) -> _Storage:
        storage_type, key, numel, view = _parse_pid(pid, 6)
        root = roots.setdefault(key, _Storage(source, key, storage_type.dtype, numel))
        if view is None:
            return root
        if (
            not isinstance(view, tuple)
            or len(view) != 3
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in view[1:])
        ):
            raise _Invalid(f"storage view metadata {_show(repr(view))} is malformed")
        _, offset, view_numel = view
        if offset < 0 or view_numel < 0 or offset + view_numel > root.numel:
            raise _Invalid(
                f"storage view [{offset}, {offset + view_numel}) exceeds storage {_show(key)!r} "
                f"of {root.numel} elements"
            )
        return _Storage(source, key, root.dtype, view_numel, offset * root.dtype.itemsize)

    obj = _load_pickle(fh, file_size, "main pickle", persistent_load)
    keys = _load_pickle(fh, file_size, "storage key list")
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise _Invalid("storage key list is not a list of strings")
    pos = fh.tell()
    for key in keys:
        root = roots.get(key)
        if root is None or key in source.spans:
            raise _Invalid(f"storage {_show(key)!r} is listed twice or never used")
        header = fh.read(8)
        if len(header) != 8:
            raise _Invalid(f"file is truncated before storage {_show(key)!r}")
        (numel,) = struct.unpack("<q", header)
        if numel != root.numel:
            raise _Invalid(
                f"storage {_show(key)!r} holds {numel} elements, the pickle says {root.numel}"
            )
        start = pos + 8
        pos = start + numel * root.dtype.itemsize
        if pos > file_size:
            raise _Invalid(
                f"file is truncated: storage {_show(key)!r} needs bytes up to {pos} of {file_size}"
            )
        source.spans[key] = (start, numel * root.dtype.itemsize)
        fh.seek(pos)
    if missing := roots.keys() - source.spans.keys():
        raise _Invalid(f"storages {sorted(map(_show, missing))[:5]} have no data in the file")
    return obj


def _read_safetensors(fh: BinaryIO, file_size: int, path: str) -> dict[str, LazyTensor]:
    try:
        entries, _ = safetensors_reader.read_header(fh, file_size)
    except safetensors_reader.SafetensorsFormatError as e:
        raise _Invalid(f"invalid safetensors file: {e}") from None
    source = _Source(path)
    out = {}
    for e in entries:
        source.spans[e.name] = (e.offset, e.nbytes)
        storage = _Storage(source, e.name, e.dtype, math.prod(e.shape))
        out[e.name] = LazyTensor(storage, 0, e.shape, _contiguous_strides(e.shape))
    return out


def _read_lazy(path: str) -> Any:
    """The unpickled object of any supported format, with `LazyTensor` leaves."""
    with open(path, "rb") as fh:
        file_size = os.fstat(fh.fileno()).st_size
        head = fh.read(16)
        fh.seek(0)
        if file_size == 0:
            raise _Invalid("empty file")
        if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
            return _read_zip(fh, file_size, path)
        if head[:1] == b"\x80":  # pickle PROTO opcode: torch's legacy format
            return _read_legacy(fh, file_size, path)
        if head[8:9] == b"{" or path.endswith(".safetensors"):
            return _read_safetensors(fh, file_size, path)
        if file_size > 262:
            fh.seek(257)
            if fh.read(5) == b"ustar":
                raise _Invalid("tar checkpoint of torch < 0.4 is not supported")
        raise _Invalid(
            f"unrecognised format (starts with {head[:8]!r}); expected a torch.save zip, "
            "a legacy torch pickle or .safetensors"
        )


@contextlib.contextmanager
def _refusals(path: str) -> Iterator[None]:
    """Turns every failure while reading `path` into a one-line `CheckpointError`."""
    try:
        yield
    except CheckpointError:
        raise
    except _Invalid as e:
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
        raise CheckpointError(path, f"unreadable ({type(e).__name__}: {_show(e)})") from e


# --------------------------------------------------------------------------- materialising


class _Loader:
    """Reads the tensors of one file; a storage shared by several tensors is read once."""

    def __init__(self):
        self._source: _Source | None = None
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
            raise _Invalid("tensors from two files in one tree")
        buf = self._buffers.get(storage.key)
        if buf is None:
            buf = self._buffers[storage.key] = self._source.read(storage.key, self._fh)
        if storage.start + storage.numel * storage.dtype.itemsize > len(buf):
            raise _Invalid(f"storage {_show(storage.key)!r} is shorter than its tensors")
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
        if _extent(offset, shape, strides) > flat.size:  # re-checked: never read out of bounds
            raise _Invalid(f"tensor exceeds storage {_show(tensor.storage.key)!r}")
        if _is_contiguous(shape, strides):
            return flat[offset : offset + tensor.size].reshape(shape)
        itemsize = tensor.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            flat[offset:], shape, [s * itemsize for s in strides], writeable=False
        )
        # Overlapping strides (e.g. a saved `expand()`) could describe far more elements than
        # the file holds; keep those as a read-only view instead of copying.
        return np.array(view, order="C") if _non_overlapping(shape, strides) else view


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


_PLAIN = (type(None), bool, int, float, complex, str, bytes, bytearray)


def _is_plain(obj: Any) -> bool:
    """Plain data: what a checkpoint may hold besides tensors and containers."""
    if isinstance(obj, (tuple, set, frozenset)):
        return all(map(_is_plain, obj))
    return isinstance(obj, _PLAIN)


def _convert(obj: Any, leaf: Callable[[LazyTensor], Any], memo: dict[int, Any], depth: int = 0):
    """Copies the unpickled tree into plain containers, mapping tensors through `leaf`."""
    if depth > _MAX_DEPTH:
        raise _Invalid(f"containers nested deeper than {_MAX_DEPTH} levels")
    if isinstance(obj, LazyTensor):
        return leaf(obj)
    if isinstance(obj, _Storage):  # a bare storage: a 1-D tensor over all of it
        return leaf(LazyTensor(obj, 0, (obj.numel,), (1,)))
    if isinstance(obj, _DType):
        return obj.dtype
    if not isinstance(obj, (dict, list, tuple, PickledNamespace)):
        if _is_plain(obj):
            return obj
        # E.g. a bare allowlisted global (`torch._utils._rebuild_tensor_v2`, a storage class):
        # the returned tree holds data only.
        raise _Invalid(f"unexpected object {_show(repr(obj), 80)} in the checkpoint")
    if id(obj) in memo:  # shared (or cyclic) containers stay shared
        return memo[id(obj)]
    if isinstance(obj, tuple):
        out = memo[id(obj)] = tuple(_convert(v, leaf, memo, depth + 1) for v in obj)
    elif isinstance(obj, list):
        out = memo[id(obj)] = []
        out.extend(_convert(v, leaf, memo, depth + 1) for v in obj)
    elif isinstance(obj, dict):  # OrderedDict (state dicts) becomes a plain dict; order is kept
        out = memo[id(obj)] = {}
        for k, v in obj.items():
            if not _is_plain(k):
                raise _Invalid(f"unexpected dict key {_show(repr(k), 80)} in the checkpoint")
            out[k] = _convert(v, leaf, memo, depth + 1)
    else:
        out = memo[id(obj)] = PickledNamespace()
        for k, v in vars(obj).items():
            setattr(out, k, _convert(v, leaf, memo, depth + 1))
    return out


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, dict)
        and bool(obj)
        and all(isinstance(k, str) and isinstance(v, LazyTensor) for k, v in obj.items())
    )


def _kind(obj: Any) -> str:
    return "tensor" if isinstance(obj, LazyTensor) else type(obj).__name__


def _select(tree: Any, key: str | None) -> dict[str, LazyTensor]:
    """The state dict in `tree`: the tree itself, or `tree[key]` for wrapped checkpoints."""
    if not isinstance(tree, dict):
        raise _Invalid(f"the checkpoint holds a {_kind(tree)}, not a dict of tensors")
    top = ", ".join(repr(_show(k, 60)) for k in list(tree)[:20])
    if key is not None:
        if key not in tree:
            if _is_state_dict(tree):
                raise _Invalid(
                    f"no key {_show(key)!r}: the checkpoint is a flat state dict of "
                    f"{len(tree)} tensors (pass key=None)"
                )
            raise _Invalid(f"no key {_show(key)!r}; top-level keys: {top}")
        state, where = tree[key], f"{_show(key)}/"
    else:
        if _is_state_dict(tree):
            return tree
        # Prefer EMA weights in the hint: they are the ones to sample with (MAR: model_ema).
        candidates = sorted(
            (k for k, v in tree.items() if _is_state_dict(v)), key=lambda k: "ema" not in str(k)
        )
        if candidates:
            choices = " or ".join(f"key={_show(k)!r}" for k in candidates)
            raise _Invalid(f"wrapped checkpoint (top-level keys: {top}); pass {choices}")
        state, where = tree, ""
    if not isinstance(state, dict):
        raise _Invalid(f"entry {_show(key)!r} is not a state dict ({_kind(state)})")
    if not state:
        raise _Invalid(
            f"state dict {where.rstrip('/')!r} is empty"
            if where
            else "the checkpoint is an empty dict"
        )
    for k, v in state.items():
        if not isinstance(k, str):
            raise _Invalid(f"state dict key {_show(repr(k))} is not a str ({_kind(k)})")
        if not isinstance(v, LazyTensor):
            raise _Invalid(f"state dict entry {where + _show(k)!r} is not a tensor ({_kind(v)})")
    return state


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
    with _refusals(path):
        tree = _read_lazy(path)
        if lazy:
            return _convert(tree, lambda t: t, {})
        with contextlib.closing(_Loader()) as loader:
            return _convert(tree, loader, {})


def open_state_dict(path: str | os.PathLike, *, key: str | None = None) -> dict[str, LazyTensor]:
    """Like `load_state_dict` but reads no tensor data: shapes and dtypes only.

    Raises:
        CheckpointError: As `load_state_dict`.
    """
    path = os.fspath(path)
    with _refusals(path):
        return dict(_select(_convert(_read_lazy(path), lambda t: t, {}), key))


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
    with _refusals(path):
        state = _select(_convert(_read_lazy(path), lambda t: t, {}), key)
        with contextlib.closing(_Loader()) as loader:
            return {k: loader(v) for k, v in state.items()}
