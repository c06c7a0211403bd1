"""A torch-free writer of `torch.save` files, for tests (torch is never installed here).

A `pickle.Pickler` whose persistent ids and reducers emit the same opcodes as `torch.save`
(GLOBAL torch._utils._rebuild_tensor_v2, GLOBAL torch.FloatStorage, ...), resolved against fake
`torch` modules that exist in `sys.modules` only while pickling. Layouts: the zip format
(`archive/data.pkl` with persistent ids ("storage", <class>, key, "cpu", numel) naming the
`archive/data/<key>` members), the legacy non-zip pickle, and safetensors. A `Tensor` is a view
(offset, shape, stride in elements) of a `Storage`, so several tensors may share one storage at
their own offsets, as `torch.save` writes views.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import json
import pickle
import struct
import sys
import types
import zipfile
from unittest import mock

import ml_dtypes
import numpy as np

MAGIC = 0x1950A86A20F9469CFC6C
STORAGE_NAMES = {
    np.dtype(np.float64): "DoubleStorage",
    np.dtype(np.float32): "FloatStorage",
    np.dtype(np.float16): "HalfStorage",
    np.dtype(ml_dtypes.bfloat16): "BFloat16Storage",
    np.dtype(np.int64): "LongStorage",
    np.dtype(np.int32): "IntStorage",
    np.dtype(np.int16): "ShortStorage",
    np.dtype(np.int8): "CharStorage",
    np.dtype(np.uint8): "ByteStorage",
    np.dtype(np.bool_): "BoolStorage",
}
SAFETENSORS_NAMES = {
    np.dtype(np.float64): "F64",
    np.dtype(np.float32): "F32",
    np.dtype(np.float16): "F16",
    np.dtype(ml_dtypes.bfloat16): "BF16",
    np.dtype(np.int64): "I64",
    np.dtype(np.int32): "I32",
    np.dtype(np.int16): "I16",
    np.dtype(np.int8): "I8",
    np.dtype(np.uint8): "U8",
    np.dtype(np.bool_): "BOOL",
}


@dataclasses.dataclass(eq=False)
class Storage:
    """A torch storage to write: its elements (1-D). `untyped` writes a torch.UntypedStorage."""

    data: np.ndarray
    untyped: bool = False
    view_of: tuple[Storage, int] | None = None  # legacy storage view: (root, element offset)


@dataclasses.dataclass(eq=False)
class Tensor:
    """A torch tensor to write: storage, offset, size and stride in elements."""

    storage: Storage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    parameter: bool = False
    v3_dtype: str | None = None  # write with _rebuild_tensor_v3 and this torch dtype name


def strides_of(shape):
    out, step = [], 1
    for n in reversed(shape):
        out.append(step)
        step *= n
    return tuple(reversed(out))


def tensor(a) -> Tensor:
    a = np.array(a, order="C")  # (np.ascontiguousarray would turn a 0-d array into 1-d)
    return Tensor(Storage(a.reshape(-1)), 0, a.shape, strides_of(a.shape))


class _FakeDType:
    __module__ = "torch"

    def __init__(self, name):
        self.name = name

    def __reduce__(self):
        return self.name  # torch.dtype pickles as the global torch.<name>


def _fake_torch() -> dict[str, types.ModuleType]:
    torch, utils = types.ModuleType("torch"), types.ModuleType("torch._utils")
    torch._utils = utils
    for name in [*STORAGE_NAMES.values(), "UntypedStorage"]:
        setattr(torch, name, type(name, (), {"__module__": "torch"}))
    for name in ["float8_e4m3fn", "uint16", "float32"]:
        setattr(torch, name, _FakeDType(name))
    for name in ["_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter"]:
        fn = types.FunctionType((lambda: None).__code__, {}, name)
        fn.__module__, fn.__qualname__ = "torch._utils", name
        setattr(utils, name, fn)
    return {"torch": torch, "torch._utils": utils}


FAKE = _fake_torch()


class TorchPickler(pickle.Pickler):
    """Pickles `Tensor`/`Storage` the way torch.save does (protocol 2)."""

    def __init__(self, file, legacy: bool):
        super().__init__(file, protocol=2)
        self.legacy = legacy
        self.storages: dict[int, tuple[str, Storage]] = {}

    def key(self, storage: Storage) -> str:
        entry = self.storages.setdefault(id(storage), (str(len(self.storages)), storage))
        return entry[0]

    def persistent_id(self, obj):
        if not isinstance(obj, Storage):
            return None
        torch = FAKE["torch"]
        root, offset = obj.view_of or (obj, 0)
        kind = "UntypedStorage" if root.untyped else STORAGE_NAMES[root.data.dtype]
        numel = root.data.nbytes if root.untyped else root.data.size
        pid = ("storage", getattr(torch, kind), self.key(root), "cpu", numel)
        if not self.legacy:
            return pid
        view = None if obj.view_of is None else (f"v{id(obj)}", offset, obj.data.size)
        return (*pid, view)

    def reducer_override(self, obj):
        if not isinstance(obj, Tensor):
            return NotImplemented
        utils = FAKE["torch._utils"]
        if obj.parameter:
            inner = dataclasses.replace(obj, parameter=False)
            return utils._rebuild_parameter, (inner, False, collections.OrderedDict())
        args = (obj.storage, obj.offset, obj.shape, obj.stride, False, collections.OrderedDict())
        if obj.v3_dtype:
            return utils._rebuild_tensor_v3, (*args, getattr(FAKE["torch"], obj.v3_dtype))
        return utils._rebuild_tensor_v2, args


def torch_pickle(obj, legacy: bool) -> tuple[bytes, list[tuple[str, Storage]]]:
    buf = io.BytesIO()
    pickler = TorchPickler(buf, legacy)
    with mock.patch.dict(sys.modules, FAKE):
        pickler.dump(obj)
    return buf.getvalue(), sorted(pickler.storages.values(), key=lambda e: e[0])


def storage_bytes(storage: Storage, byteorder: str = "little") -> bytes:
    data = storage.data
    if byteorder == "big":
        data = data.astype(data.dtype.newbyteorder(">"))
    return data.tobytes()


def write_zip(path, obj=None, *, raw_pickle=None, byteorder="little", compress=False, cut=0):
    """torch.save zip layout; `cut` drops that many bytes from the end of every storage."""
    data, storages = torch_pickle(obj, legacy=False) if raw_pickle is None else (raw_pickle, [])
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", method) as zf:
        zf.writestr("archive/data.pkl", data)
        zf.writestr("archive/byteorder", byteorder)
        for key, st in storages:
            raw = storage_bytes(st, byteorder)
            zf.writestr(f"archive/data/{key}", raw[: len(raw) - cut])
        zf.writestr("archive/version", "3\n")
    return path


def write_legacy(path, obj=None, *, raw_pickle=None):
    """torch.save(_use_new_zipfile_serialization=False) layout."""
    data, storages = torch_pickle(obj, legacy=True) if raw_pickle is None else (raw_pickle, [])
    sys_info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"int": 4}}
    with open(path, "wb") as f:
        for header in (MAGIC, 1001, sys_info):
            pickle.dump(header, f, protocol=2)
        f.write(data)
        pickle.dump([key for key, _ in storages], f, protocol=2)
        for _, st in storages:
            f.write(struct.pack("<q", st.data.size))
            f.write(st.data.tobytes())
    return path


def write_safetensors(path, arrays: dict[str, np.ndarray], header=None):
    meta, blobs, offset = {}, [], 0
    for name, a in arrays.items():
        raw = np.ascontiguousarray(a).tobytes()
        meta[name] = {
            "dtype": SAFETENSORS_NAMES[a.dtype],
            "shape": list(a.shape),
            "data_offsets": [offset, offset + len(raw)],
        }
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header if header is not None else meta).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))
    return path
