"""The legacy `torch.save` format (`_use_new_zipfile_serialization=False`, torch < 1.6).

A pickled magic number, protocol version and sys_info, the main pickle with persistent ids
`('storage', storage_type, root_key, location, numel, view_metadata)`, a pickled list of storage
keys, then for each key an int64 element count followed by the raw bytes (both always
little-endian). See torch/serialization.py `_legacy_save` / `_legacy_load`.
"""

from __future__ import annotations

import struct
from typing import Any, BinaryIO

from converters._lazy import Invalid, Source, _Storage, show
from converters._unpickle import load_pickle, parse_pid

_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C  # torch/serialization.py MAGIC_NUMBER
_PROTOCOL_VERSION = 1001  # torch/serialization.py PROTOCOL_VERSION


def read_legacy(fh: BinaryIO, file_size: int, path: str) -> Any:
    magic = load_pickle(fh, file_size, "pickle")
    if type(magic) is not int or magic != _MAGIC_NUMBER:
        raise Invalid("a pickle without torch's magic number: not a torch.save checkpoint")
    version = load_pickle(fh, file_size, "protocol version")
    if version != _PROTOCOL_VERSION:
        raise Invalid(f"unsupported legacy protocol version {show(repr(version))}")
    # sys_info records the writer's byte order, but the storages (and their sizes) are always
    # written little-endian (THPStorage_writeFileRaw converts on big-endian hosts).
    load_pickle(fh, file_size, "sys_info")
    source = Source(path)
    roots: dict[str, _Storage] = {}

    def persistent_load(pid: Any) -> _Storage:
        storage_type, key, numel, view = parse_pid(pid, 6)
        root = roots.setdefault(key, _Storage(source, key, storage_type.dtype, numel))
        if view is None:
            return root
        if (
            not isinstance(view, tuple)
            or len(view) != 3
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in view[1:])
        ):
            raise Invalid(f"storage view metadata {show(repr(view))} is malformed")
        _, offset, view_numel = view
        if offset < 0 or view_numel < 0 or offset + view_numel > root.numel:
            raise Invalid(
                f"storage view [{offset}, {offset + view_numel}) exceeds storage {show(key)!r} "
                f"of {root.numel} elements"
            )
        return _Storage(source, key, root.dtype, view_numel, offset * root.dtype.itemsize)

    obj = load_pickle(fh, file_size, "main pickle", persistent_load)
    keys = load_pickle(fh, file_size, "storage key list")
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise Invalid("storage key list is not a list of strings")
    pos = fh.tell()
    for key in keys:
        root = roots.get(key)
        if root is None or key in source.spans:
            raise Invalid(f"storage {show(key)!r} is listed twice or never used")
        header = fh.read(8)
        if len(header) != 8:
            raise Invalid(f"file is truncated before storage {show(key)!r}")
        (numel,) = struct.unpack("<q", header)
        if numel != root.numel:
            raise Invalid(
                f"storage {show(key)!r} holds {numel} elements, the pickle says {root.numel}"
            )
        start = pos + 8
        pos = start + numel * root.dtype.itemsize
        if pos > file_size:
            raise Invalid(
                f"file is truncated: storage {show(key)!r} needs bytes up to {pos} of {file_size}"
            )
        source.spans[key] = (start, numel * root.dtype.itemsize)
        fh.seek(pos)
    if missing := roots.keys() - source.spans.keys():
        raise Invalid(f"storages {sorted(map(show, missing))[:5]} have no data in the file")
    return obj
