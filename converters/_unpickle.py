"""The restricted unpickler: rebuilds tensors and plain containers, refuses everything else.

`RestrictedUnpickler.find_class` resolves only the `GLOBALS` allowlist (torch's tensor-rebuild
functions, storage classes and dtypes, `collections.OrderedDict`) plus `argparse.Namespace`, each to
a stand-in defined here; persistent ids (storages) go to the format's handler. `load_pickle`
pre-scans the opcodes before unpickling, so a corrupt length never becomes a huge allocation.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import pickle
import pickletools
import reprlib
from collections.abc import Callable
from typing import Any, BinaryIO

import ml_dtypes
import numpy as np

from converters._lazy import (
    Invalid,
    LazyTensor,
    _Storage,
    extent,
    refuse_setstate,
    show,
    size_text,
)

_MAX_LINE = 1 << 16  # longest line a text pickle opcode may read while pre-scanning
# A state dict pickles to ~110 bytes and ~31 opcodes per tensor (MAR's two 92-tensor dicts: 20 KB,
# 5.7 k opcodes), so these caps leave room for ~30 k tensors plus their training state. They bound
# what a small hostile file (a compressed member inflates up to 1032x) can cost: the pre-scan reads
# at most MAX_PICKLE_OPS opcodes (~1 s), and the unpickled objects, about 70 bytes per opcode at
# worst, stay under ~100 MB.
MAX_PICKLE_BYTES = 64 << 20
MAX_PICKLE_OPS = 1_000_000

STORAGE_DTYPES = {
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
TORCH_DTYPES = {
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


# --------------------------------------------------------------------------- stand-ins


@dataclasses.dataclass(frozen=True, slots=True)
class _StorageType:
    """Stand-in for `torch.FloatStorage` etc.: only names a dtype (not callable)."""

    __setstate__ = refuse_setstate

    name: str
    dtype: np.dtype

    def __repr__(self) -> str:
        return f"torch.{self.name}"


@dataclasses.dataclass(frozen=True, slots=True)
class _DType:
    """Stand-in for a `torch.<dtype>` global; becomes the numpy dtype in the returned tree."""

    __setstate__ = refuse_setstate

    name: str
    dtype: np.dtype


class PickledNamespace:
    """Stand-in for `argparse.Namespace`: holds the unpickled attributes, nothing else."""

    def __init__(self, **kwargs: Any):
        self.__dict__.update(kwargs)

    @reprlib.recursive_repr()
    def __repr__(self) -> str:
        return f"Namespace({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"


# --------------------------------------------------------------------------- tensor rebuild


def _int_tuple(value: object, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value
    ):
        raise Invalid(f"tensor {what} {show(repr(value))} is not a tuple of non-negative ints")
    return tuple(value)


def _make_tensor(storage: object, offset: object, size: object, stride: object) -> LazyTensor:
    if not isinstance(storage, _Storage):
        raise Invalid(f"tensor storage is a {type(storage).__name__}, not a storage")
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise Invalid(f"tensor storage offset {show(repr(offset))} is not a non-negative int")
    shape, strides = _int_tuple(size, "size"), _int_tuple(stride, "stride")
    if len(shape) != len(strides) or len(shape) > 64:
        raise Invalid(f"tensor size {shape} and stride {strides} do not match")
    needed = extent(offset, shape, strides)
    if needed > storage.numel:
        raise Invalid(
            f"tensor of size {shape}, stride {strides}, offset {offset} needs {needed} elements "
            f"but storage {show(storage.key)!r} holds {storage.numel}"
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
        raise Invalid("_rebuild_tensor_v3 needs a storage and a torch dtype")
    # The storage is untyped (bytes); torch views it with the tensor's dtype.
    nbytes = storage.numel * storage.dtype.itemsize
    typed = _Storage(
        storage.source, storage.key, dtype.dtype, nbytes // dtype.dtype.itemsize, storage.start
    )
    return _make_tensor(typed, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad, backward_hooks):
    del requires_grad, backward_hooks
    if not isinstance(data, LazyTensor):
        raise Invalid(f"parameter data is a {type(data).__name__}, not a tensor")
    return data


def _rebuild_parameter_with_state(data, requires_grad, backward_hooks, state):
    del state  # Python attributes set on the Parameter object; not weights
    return _rebuild_parameter(data, requires_grad, backward_hooks)


@dataclasses.dataclass(frozen=True, slots=True)
class _Rebuild:
    """An allowlisted rebuild function as the pickle sees it: callable, but with no attributes
    a BUILD opcode could set (a bare function has a writable `__dict__` and `__defaults__`)."""

    __setstate__ = refuse_setstate

    name: str
    fn: Callable[..., Any]

    def __call__(self, *args: Any) -> Any:
        return self.fn(*args)


GLOBALS: dict[tuple[str, str], object] = {
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
    **{("torch", n): _StorageType(n, np.dtype(d)) for n, d in STORAGE_DTYPES.items()},
    **{("torch", n): _DType(n, np.dtype(d)) for n, d in TORCH_DTYPES.items()},
}


# --------------------------------------------------------------------------- pickles


class RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the `GLOBALS` allowlist; persistent ids go to the format's handler."""

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
            return GLOBALS[(module, name)]
        except (KeyError, TypeError):
            raise Invalid(
                f"refused pickle global {show(module)}.{show(name)} (only tensor-rebuild "
                "functions, storage types, dtypes, OrderedDict and argparse.Namespace are allowed)"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        if self._load_persistent is None:
            raise Invalid("unexpected persistent id outside the main pickle")
        return self._load_persistent(pid)


class _Bounded:
    """File view for `pickletools.genops` that never reads past `end` nor an unbounded line.

    It keeps the position itself: asking a buffered file for it costs a system call per opcode.
    """

    def __init__(self, fh: BinaryIO, end: int):
        self._fh, self._end, self._pos = fh, end, fh.tell()

    def read(self, n: int = -1) -> bytes:
        left = max(0, self._end - self._pos)
        data = self._fh.read(left if n < 0 else min(n, left))
        self._pos += len(data)
        return data

    def readline(self) -> bytes:
        data = self._fh.readline(min(_MAX_LINE, max(0, self._end - self._pos)))
        self._pos += len(data)
        return data

    def tell(self) -> int:
        return self._pos


def load_pickle(
    fh: BinaryIO, end: int, what: str, persistent_load: Callable[[Any], Any] | None = None
) -> Any:
    """Unpickles the pickle at `fh`'s position, leaving `fh` just past its STOP opcode.

    Raises:
        Invalid: The pickle is corrupt, longer than `MAX_PICKLE_BYTES` or `MAX_PICKLE_OPS`, or
            needs a global outside the allowlist.
    """
    start = fh.tell()
    limit = min(end, start + MAX_PICKLE_BYTES)
    # Pre-scan the opcodes: the C unpickler allocates a counted bytes/str opcode's length before
    # reading it, so a corrupt length could ask for terabytes. genops reads through `_Bounded`.
    ops = 0
    try:
        for ops, _ in enumerate(pickletools.genops(_Bounded(fh, limit)), 1):
            if ops > MAX_PICKLE_OPS:
                raise Invalid(
                    f"{what} has over {MAX_PICKLE_OPS:,} opcodes (a state dict needs ~31 per "
                    "tensor); refusing (pickle bomb?)"
                )
    except Invalid:
        raise
    except Exception as e:  # noqa: BLE001 (any corruption must become one line)
        if limit < end and fh.tell() >= limit:
            raise Invalid(
                f"{what} runs past {size_text(MAX_PICKLE_BYTES)}, the cap for a pickle (or has a "
                f"corrupt length); refusing ({show(e)})"
            ) from None
        raise Invalid(f"corrupt {what} ({show(e)})") from None
    stop = fh.tell()
    fh.seek(start)
    data = fh.read(stop - start)
    fh.seek(stop)
    try:
        return RestrictedUnpickler(io.BytesIO(data), persistent_load).load()
    except Invalid:
        raise
    except Exception as e:  # noqa: BLE001 (UnpicklingError, but also TypeError, EOFError...)
        raise Invalid(f"corrupt {what} ({type(e).__name__}: {show(e)})") from None


def parse_pid(pid: Any, length: int) -> tuple[_StorageType, str, int, Any]:
    """Validates a `('storage', storage_type, key, location, numel[, view_metadata])` id."""
    if not isinstance(pid, tuple) or not pid:
        raise Invalid(f"persistent id {show(repr(pid))} is not a tuple")
    kind = pid[0].decode("ascii", "replace") if isinstance(pid[0], bytes) else pid[0]
    if kind != "storage":
        raise Invalid(f"refused persistent id kind {show(repr(kind))} (only 'storage')")
    if len(pid) != length:
        raise Invalid(f"storage persistent id has {len(pid)} fields, expected {length}")
    storage_type, key, location, numel = pid[1:5]
    if not isinstance(storage_type, _StorageType):
        raise Invalid(f"storage type {show(repr(storage_type))} is not a torch storage class")
    if not isinstance(key, str) or not isinstance(location, (str, bytes)):
        raise Invalid(f"storage key {show(repr(key))} or location is not a string")
    if not isinstance(numel, int) or isinstance(numel, bool) or numel < 0:
        raise Invalid(f"storage {show(key)!r} size {show(repr(numel))} is not a count")
    return storage_type, key, numel, pid[5] if length == 6 else None
