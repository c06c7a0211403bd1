"""Hostile archives that cost memory or time (converters._zip, converters._unpickle caps).

Each file is built here, small on disk, and declares or unpacks to far more. The reader must refuse
it from the declared sizes (or stop at its caps) within a second and a few MB, with a one-line
message that says what it is, while legitimate large tensor records keep loading.
"""

from __future__ import annotations

import pickle
import struct
import time
import tracemalloc
import zipfile
import zlib

import numpy as np
import pytest

from converters import CheckpointError, _unpickle, load_state_dict, open_state_dict, read_checkpoint

GiB, MiB = 1 << 30, 1 << 20


# --------------------------------------------------------------------------- writers


def op_str(s: str) -> bytes:
    raw = s.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def op_global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def op_int(n: int) -> bytes:
    return b"\x8a\x08" + struct.pack("<q", n)  # LONG1 of 8 bytes


def tensor_ops(key: str, numel: int) -> bytes:
    """`_rebuild_tensor_v2(storage, 0, (numel,), (1,), False, OrderedDict())` as torch.save
    pickles it, the storage a persistent id `('storage', FloatStorage, key, 'cpu', numel)`."""
    pid = b"(" + op_str("storage") + op_global("torch", "FloatStorage") + op_str(key)
    pid += op_str("cpu") + op_int(numel) + b"tQ"  # TUPLE BINPERSID
    args = pid + b"K\x00" + op_int(numel) + b"\x85" + b"K\x01\x85" + b"\x89"
    args += op_global("collections", "OrderedDict") + b")R"
    return op_global("torch._utils", "_rebuild_tensor_v2") + b"(" + args + b"tR"


def state_dict_pickle(tensors: dict[str, tuple[str, int]]) -> bytes:
    """A protocol-2 pickle of `{name: float32 tensor over storage key}`."""
    body = b"".join(op_str(name) + tensor_ops(key, n) for name, (key, n) in tensors.items())
    return b"\x80\x02}(" + body + b"u."


def zero_deflate(nbytes: int, prefix: bytes = b"") -> bytes:
    """A raw deflate stream of `nbytes` (a whole number of MiB): `prefix`, then zeros.

    Each MiB is compressed once and repeated: after a full flush the compressor starts afresh, so
    every further MiB of zeros compresses to the same ~1 KB (ratio ~1011, under deflate's 1032).
    Built in milliseconds.
    """
    assert nbytes % MiB == 0 and len(prefix) <= MiB
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = c.compress(prefix + bytes(MiB - len(prefix))) + c.flush(zlib.Z_FULL_FLUSH)
    block = c.compress(bytes(MiB)) + c.flush(zlib.Z_FULL_FLUSH)
    return first + block * (nbytes // MiB - 1) + c.flush()


def raw_zip(path, members: list[tuple[str, int, bytes, int, int]]):
    """A zip written field by field, so that it can declare any sizes (ZIP APPNOTE 4.3.7,
    4.3.12, 4.5.3). Each member: (name, method, payload as stored, declared size, crc)."""
    local, central = bytearray(), bytearray()
    for name, method, payload, size, crc in members:
        raw_name = name.encode()
        offset = len(local)
        if size >= 0xFFFFFFFF or len(payload) >= 0xFFFFFFFF:  # zip64: sizes in the extra field
            sizes = (0xFFFFFFFF, 0xFFFFFFFF)
            extra = struct.pack("<HHQQ", 1, 16, size, len(payload))
        else:
            sizes, extra = (len(payload), size), b""
        fixed = (45, 0, method, 0, 0x21, crc, *sizes, len(raw_name), len(extra))
        local += struct.pack("<IHHHHHIIIHH", 0x04034B50, *fixed) + raw_name + extra + payload
        central += struct.pack("<IH", 0x02014B50, 45) + struct.pack("<HHHHHIIIHH", *fixed)
        central += struct.pack("<HHHII", 0, 0, 0, 0, offset) + raw_name + extra
    n = len(members)
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, n, n, len(central), len(local), 0)
    path.write_bytes(bytes(local + central + end))
    return path


def refused(path, fragment: str, *, seconds: float = 2.0, peak_mb: float = 8.0) -> str:
    """Asserts that every entry point refuses `path` quickly, in little memory, in one line."""
    for read in (load_state_dict, open_state_dict, read_checkpoint):
        tracemalloc.start()
        start = time.perf_counter()
        try:
            with pytest.raises(CheckpointError) as e:
                read(path)
            took = time.perf_counter() - start
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        message = str(e.value)
        assert message.startswith(f"{path}: ") and "\n" not in message, message
        assert fragment in message, message
        assert took < seconds, (read.__name__, took)
        assert peak < peak_mb * MiB, (read.__name__, peak)
    return message


# --------------------------------------------------------------------------- bombs


def test_pickle_declaring_4gib_is_refused_from_its_header(tmp_path):
    # The case: 4 MB on disk, data.pkl declares 4 GiB. 4 GiB / 4 MB is under deflate's
    # 1032:1, so a ratio check alone passed it and the whole 4 GiB was inflated (31-42 s, 8.6 GB).
    stream = zero_deflate(4 * GiB, prefix=b"\x80\x02}.")
    path = raw_zip(tmp_path / "bomb.pth", [("archive/data.pkl", 8, stream, 4 * GiB, 0)])
    assert path.stat().st_size < 5 * MiB
    message = refused(path, "archive/data.pkl declares 4 GiB uncompressed")
    assert message == (
        f"{path}: archive/data.pkl declares 4 GiB uncompressed, over the 64 MiB cap for a "
        "pickle; refusing (zip bomb?)"
    )


def test_impossible_expansion_names_both_sizes(tmp_path):
    # 100 GiB from a few bytes: beyond what deflate can do, whatever the member is.
    data = state_dict_pickle({"w": ("0", 4)})
    path = raw_zip(
        tmp_path / "ratio.pth",
        [
            ("archive/data.pkl", 0, data, len(data), zlib.crc32(data)),
            ("archive/data/0", 8, b"\x03\x00", 100 * GiB, 0),
        ],
    )
    refused(path, "archive/data/0 declares 100 GiB uncompressed from 2 bytes, an impossible")


def test_byteorder_record_is_capped(tmp_path):
    data = state_dict_pickle({})
    path = raw_zip(
        tmp_path / "order.pth",
        [
            ("archive/data.pkl", 0, data, len(data), zlib.crc32(data)),
            ("archive/byteorder", 8, zero_deflate(64 * MiB), 64 * MiB, 0),
        ],
    )
    refused(path, "archive/byteorder declares 64 MiB uncompressed, over the 1 KiB cap")


def test_pickle_that_inflates_past_its_declared_size_stops_there(tmp_path):
    # Declares 1 KiB but the stream holds 64 MiB: reading stops at 1 KiB and the CRC fails.
    path = raw_zip(
        tmp_path / "liar.pth", [("archive/data.pkl", 8, zero_deflate(64 * MiB), 1024, 0)]
    )
    refused(path, "cannot read zip member archive/data.pkl")


def ops_bomb(tmp_path, fmt: str, ops: int):
    """A pickle of `ops` EMPTY_DICT opcodes: ~70 bytes of dicts per byte of pickle."""
    bomb = b"\x80\x02" + b"}" * ops + b"."
    path = tmp_path / f"ops_{fmt}.pth"
    if fmt == "zip":
        return raw_zip(
            path,
            [("archive/data.pkl", 8, zlib.compress(bomb, 9)[2:-4], len(bomb), zlib.crc32(bomb))],
        )
    headers = [0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}]  # magic, version, sys_info
    path.write_bytes(b"".join(pickle.dumps(h, protocol=2) for h in headers) + bomb)
    return path


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_pickle_with_too_many_opcodes_is_refused_while_scanning(tmp_path, fmt, monkeypatch):
    # At the real cap: 1 MB of pickle (1 KB compressed) that would unpickle to ~80 MB of dicts
    # (and a 64 MiB one to ~5 GB) is refused by the opcode pre-scan, before any is built.
    path = ops_bomb(tmp_path, fmt, 1_000_001)
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match="has over 1,000,000 opcodes"):
        load_state_dict(path)
    # ~0.8 s on an idle core (genops runs ~0.7 us per opcode); the bound leaves room for a
    # loaded machine.
    assert time.perf_counter() - start < 5.0
    # Memory, at a lower cap (tracemalloc slows the pre-scan ~25x): the scan holds no objects.
    monkeypatch.setattr(_unpickle, "MAX_PICKLE_OPS", 20_000)
    refused(ops_bomb(tmp_path, fmt, 200_000), "has over 20,000 opcodes", peak_mb=1.0)


def test_legacy_pickle_longer_than_the_cap(tmp_path, monkeypatch):
    # Legacy pickles are read from the file itself (the storages follow them): the pre-scan stops
    # at the cap instead of reading on.
    monkeypatch.setattr(_unpickle, "MAX_PICKLE_BYTES", 1 << 16)
    headers = [0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}]
    body = b"\x80\x02" + b"X" + struct.pack("<I", 1 << 17) + bytes(1 << 17) + b"."
    path = tmp_path / "long.pth"
    path.write_bytes(b"".join(pickle.dumps(h, protocol=2) for h in headers) + body)
    refused(path, "main pickle runs past 64 KiB, the cap for a pickle")


# --------------------------------------------------------------------------- records


def test_compressed_record_is_read_only_as_far_as_its_storage(tmp_path):
    # The record declares 4 GiB (a ratio deflate allows) but the pickle's storage is 4 floats:
    # only those 16 bytes are inflated.
    want = np.array([1.5, -2.0, 3.25, 0.0], np.float32)
    data = state_dict_pickle({"w": ("0", 4)})
    record = zero_deflate(4 * GiB, prefix=want.tobytes())
    path = raw_zip(
        tmp_path / "record.pth",
        [
            ("archive/data.pkl", 0, data, len(data), zlib.crc32(data)),
            ("archive/data/0", 8, record, 4 * GiB, 0),
        ],
    )
    tracemalloc.start()
    start = time.perf_counter()
    try:
        sd = load_state_dict(path)
        took = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(sd["w"], want)
    assert took < 2.0 and peak < 8 * MiB, (took, peak)


def test_large_compressed_record_loads_streaming(tmp_path):
    # 72 MiB: over the pickle cap, which records are not subject to; inflated a chunk at a time
    # into the returned array (no second full-size copy).
    n = 72 * MiB // 4
    want = np.zeros(n, np.float32)
    want[::4099] = np.arange(len(want[::4099]), dtype=np.float32)
    data = state_dict_pickle({"w": ("0", n)})
    path = tmp_path / "big.pth"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", data)
        zf.writestr("archive/data/0", want.tobytes(), zipfile.ZIP_DEFLATED, 1)
    tracemalloc.start()
    try:
        sd = load_state_dict(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(sd["w"], want)
    assert peak < want.nbytes + 4 * MiB, (peak, want.nbytes)
