"""Parses and validates the header of a `.safetensors` file; no tensor data is read here.

Layout (https://github.com/huggingface/safetensors, "Format"): an unsigned little-endian 64-bit
header length N, N bytes of UTF-8 JSON `{name: {"dtype", "shape", "data_offsets": [begin, end]},
"__metadata__": {str: str}}`, then the data area; offsets are relative to the data area.

Why not the `safetensors` package's numpy API (checked against safetensors 0.8.0): it refuses
files this reader accepts (F8_E4M3 / F8_E5M2 tensors: numpy has no such dtype; tensors that share
bytes, leave gaps or are followed by trailing bytes, which its writer never produces but other
writers may), it reads the whole file into memory before copying the tensors out (peak ~2x the
file, against ~1x here), and its refusals do not say which numbers are wrong. It refuses the same
hostile headers as this reader does (tests/torch_reader_test.py `BROKEN`), and it would add a
compiled dependency.
"""

from __future__ import annotations

import dataclasses
import json
import math
import struct
from typing import BinaryIO

import ml_dtypes
import numpy as np

# The reference implementation refuses larger headers (safetensors `N_MAX`, 100 MB); the same cap
# keeps a corrupt length from turning into a huge allocation.
MAX_HEADER_BYTES = 100_000_000

DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U64": np.dtype(np.uint64),
    "U32": np.dtype(np.uint32),
    "U16": np.dtype(np.uint16),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}


class SafetensorsFormatError(ValueError):
    """The header is malformed; the message says what (the caller adds the path)."""


@dataclasses.dataclass(frozen=True)
class Entry:
    """One tensor of a safetensors file.

    Attributes:
        name: The tensor name.
        dtype: Its numpy dtype (little-endian; bfloat16/float8 come from ml_dtypes).
        shape: Its shape.
        offset: Absolute file offset of its first byte.
        nbytes: Its size in bytes (always `prod(shape) * itemsize`).
    """

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    offset: int
    nbytes: int


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _entry(name: str, info: object, data_start: int, data_size: int) -> Entry:
    where = f"entry {name!r}"
    if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= info.keys():
        raise SafetensorsFormatError(f"{where} lacks dtype, shape or data_offsets")
    dtype = DTYPES.get(info["dtype"]) if isinstance(info["dtype"], str) else None
    if dtype is None:
        raise SafetensorsFormatError(f"{where} has unsupported dtype {info['dtype']!r}")
    shape = info["shape"]
    if (
        not isinstance(shape, list)
        or len(shape) > 64
        or not all(_is_int(d) and d >= 0 for d in shape)
    ):
        raise SafetensorsFormatError(f"{where} has invalid shape {shape!r}")
    offsets = info["data_offsets"]
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(map(_is_int, offsets)):
        raise SafetensorsFormatError(f"{where} has invalid data_offsets {offsets!r}")
    begin, end = offsets
    if not 0 <= begin <= end <= data_size:
        raise SafetensorsFormatError(
            f"{where} data_offsets [{begin}, {end}] lie outside the data area ({data_size} bytes)"
        )
    nbytes = math.prod(shape) * dtype.itemsize
    if end - begin != nbytes:
        raise SafetensorsFormatError(
            f"{where} spans {end - begin} bytes but shape {shape} of {info['dtype']} needs {nbytes}"
        )
    return Entry(name, dtype, tuple(shape), data_start + begin, nbytes)


def read_header(fh: BinaryIO, file_size: int) -> tuple[list[Entry], dict[str, str]]:
    """Reads and validates a safetensors header against the file size.

    Args:
        fh: The file, opened for binary reading (any position).
        file_size: Its size in bytes.

    Returns:
        The entries in header order and the `__metadata__` dict (empty if absent).

    Raises:
        SafetensorsFormatError: The header is malformed or points outside the file.
    """
    if file_size < 8:
        raise SafetensorsFormatError(f"{file_size} bytes is too short for a safetensors header")
    fh.seek(0)
    (header_len,) = struct.unpack("<Q", fh.read(8))
    if header_len > file_size - 8:
        raise SafetensorsFormatError(
            f"header length {header_len} exceeds the {file_size - 8} bytes after it"
        )
    if header_len > MAX_HEADER_BYTES:
        raise SafetensorsFormatError(
            f"header length {header_len} exceeds the {MAX_HEADER_BYTES}-byte limit"
        )
    raw = fh.read(header_len)
    try:
        header = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise SafetensorsFormatError(
            f"header is not UTF-8 ({e.reason} at byte {e.start})"
        ) from None
    except json.JSONDecodeError as e:
        raise SafetensorsFormatError(f"header is not valid JSON ({e})") from None
    except RecursionError:
        raise SafetensorsFormatError("header JSON is nested too deeply") from None
    if not isinstance(header, dict):
        raise SafetensorsFormatError(f"header is a JSON {type(header).__name__}, not an object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise SafetensorsFormatError("__metadata__ is not a {str: str} object")
    data_start = 8 + header_len
    data_size = file_size - data_start
    entries = [_entry(name, info, data_start, data_size) for name, info in header.items()]
    return entries, metadata
