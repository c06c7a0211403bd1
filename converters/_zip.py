"""The `torch.save` zip format (torch >= 1.6), read without inflating what is not asked for.

`<prefix>/data.pkl` is the pickle, with persistent ids `('storage', storage_type, key, location,
numel)`; `<prefix>/data/<key>` holds each storage's raw bytes and `<prefix>/byteorder` their byte
order (little when absent). torch writes every member uncompressed, so a storage is normally a plain
span of the file; compressed members (other writers) are inflated on demand.

Every member is refused from its declared sizes before anything is inflated, then read a chunk at a
time: the pickle up to `MAX_PICKLE_BYTES` (64 MiB; a state dict needs ~110 bytes per tensor), the
byteorder record up to 1 KiB, and a storage record exactly as far as its storage (the pickle's
numel x itemsize), however much more the member declares. A small archive whose pickle declares
gigabytes (deflate allows 1032:1) is refused at once instead of being inflated.
"""

from __future__ import annotations

import functools
import io
import struct
import zipfile
from typing import Any, BinaryIO

from converters._lazy import Invalid, Source, _Storage, show, size_text
from converters._unpickle import MAX_PICKLE_BYTES, load_pickle, parse_pid

_DEFLATE_MAX_RATIO = 1032  # deflate cannot expand data by more than this factor
_CHUNK = 1 << 20  # bytes inflated per step: memory beyond the result stays this small
_MAX_BYTEORDER = 1 << 10  # the byteorder record holds "little" or "big"


def _check_member(
    info: zipfile.ZipInfo, file_size: int, cap: int | None = None, what: str = ""
) -> None:
    """Refuses a member from its declared sizes alone, before anything is inflated.

    Args:
        info: The member, as the central directory declares it.
        file_size: Size of the whole archive.
        cap: The most bytes this member may declare (None: no cap beyond the sizes' sanity).
        what: What the member is, for the message ("a pickle").
    """
    name = show(info.filename)
    if info.flag_bits & 0x1:
        raise Invalid(f"zip member {name} is encrypted")
    stored = info.compress_type == zipfile.ZIP_STORED
    if info.compress_size > file_size or (stored and info.file_size != info.compress_size):
        raise Invalid(f"zip member {name} has impossible sizes")
    if cap is not None and info.file_size > cap:
        bomb = "" if stored else " (zip bomb?)"
        raise Invalid(
            f"{name} declares {size_text(info.file_size)} uncompressed, over the "
            f"{size_text(cap)} cap for {what}; refusing{bomb}"
        )
    if info.file_size > _DEFLATE_MAX_RATIO * info.compress_size + 64:
        raise Invalid(
            f"{name} declares {size_text(info.file_size)} uncompressed from "
            f"{size_text(info.compress_size)}, an impossible expansion; refusing (zip bomb?)"
        )


def _stream_into(zf: zipfile.ZipFile, info: zipfile.ZipInfo, buf: bytearray) -> None:
    """Fills `buf` with the first `len(buf)` bytes of the member, a chunk at a time.

    `ZipExtFile` never returns more than the member's declared size (and checks its CRC when it
    reaches it), and each step inflates at most `_CHUNK` bytes, so a lying stream cannot make this
    read or allocate more than `buf`.
    """
    view, pos = memoryview(buf), 0
    try:
        with zf.open(info) as f:
            while pos < len(buf):
                chunk = f.read(min(_CHUNK, len(buf) - pos))
                if not chunk:
                    break
                view[pos : pos + len(chunk)] = chunk
                pos += len(chunk)
    except Exception as e:  # noqa: BLE001 (BadZipFile, zlib.error, EOFError, OSError...)
        raise Invalid(f"cannot read zip member {show(info.filename)} ({show(e)})") from None
    if pos != len(buf):
        raise Invalid(f"zip member {show(info.filename)} is short: {pos} of {len(buf)} bytes")


def _read_member(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, file_size: int, cap: int, what: str
) -> bytearray:
    """A whole small member (the pickle, the byteorder record), refused above `cap` bytes."""
    _check_member(info, file_size, cap, what)
    buf = bytearray(info.file_size)
    _stream_into(zf, info, buf)
    return buf


def _inflate(info: zipfile.ZipInfo, nbytes: int, fh: BinaryIO) -> bytearray:
    """The first `nbytes` of a compressed storage record (torch never compresses them)."""
    buf = bytearray(nbytes)
    with zipfile.ZipFile(fh) as zf:
        _stream_into(zf, info, buf)
    return buf


def _locate_member(
    fh: BinaryIO, info: zipfile.ZipInfo, file_size: int, source: Source, key: str, nbytes: int
) -> None:
    """Records where storage `key` lives: a plain byte span for stored (uncompressed) members."""
    _check_member(info, file_size)
    if info.compress_type != zipfile.ZIP_STORED:
        source.readers[key] = functools.partial(_inflate, info, nbytes)
        return
    # torch writes storages uncompressed; their bytes follow the local file header (ZIP APPNOTE
    # 4.3.7: 30 fixed bytes, then the name and the extra field, whose lengths are at 26 and 28).
    fh.seek(info.header_offset)
    local = fh.read(30)
    if len(local) != 30 or local[:4] != b"PK\x03\x04":
        raise Invalid(f"zip member {show(info.filename)} has a corrupt local header")
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    start = info.header_offset + 30 + name_len + extra_len
    if start + nbytes > file_size:
        raise Invalid(f"zip member {show(info.filename)} runs past the end of the file")
    source.spans[key] = (start, nbytes)


def read_zip(fh: BinaryIO, file_size: int, path: str) -> Any:
    try:
        zf = zipfile.ZipFile(fh)
        infos = zf.infolist()
    except Exception as e:  # noqa: BLE001 (BadZipFile, but also OSError, struct.error...)
        raise Invalid(f"corrupt or truncated zip archive ({show(e)})") from None
    if not infos:
        raise Invalid("empty zip archive: not a torch.save checkpoint")
    by_name = {info.filename: info for info in infos}
    prefix, slash, _ = infos[0].filename.partition("/")
    pkl = by_name.get(f"{prefix}/data.pkl") if slash else None
    if pkl is None:
        hint = " (a TorchScript archive?)" if f"{prefix}/constants.pkl" in by_name else ""
        raise Invalid(
            f"zip archive has no {show(prefix)}/data.pkl: not a torch.save checkpoint{hint}"
        )
    big_endian = False
    if (order := by_name.get(f"{prefix}/byteorder")) is not None:
        raw = _read_member(zf, order, file_size, _MAX_BYTEORDER, "a byteorder record")
        text = raw[:16].decode("ascii", "replace").strip()
        if text not in ("little", "big"):
            raise Invalid(f"unknown byteorder {show(text)!r}")
        big_endian = text == "big"
    source = Source(path, big_endian)
    storages: dict[str, _Storage] = {}

    def persistent_load(pid: Any) -> _Storage:
        storage_type, key, numel, _ = parse_pid(pid, 5)
        if key in storages:  # shared storage; torch reuses the first one loaded as well
            return storages[key]
        info = by_name.get(f"{prefix}/data/{key}")
        if info is None:
            raise Invalid(f"storage data/{show(key)} is missing from the archive")
        nbytes = numel * storage_type.dtype.itemsize
        if info.file_size < nbytes:
            raise Invalid(
                f"storage data/{show(key)} holds {info.file_size} bytes but the pickle needs "
                f"{nbytes} ({numel} x {storage_type.dtype})"
            )
        _locate_member(fh, info, file_size, source, key, nbytes)
        storages[key] = _Storage(source, key, storage_type.dtype, numel)
        return storages[key]

    data = _read_member(zf, pkl, file_size, MAX_PICKLE_BYTES, "a pickle")
    return load_pickle(io.BytesIO(data), len(data), f"{prefix}/data.pkl", persistent_load)
