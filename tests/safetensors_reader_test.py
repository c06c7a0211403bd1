"""converters.safetensors_reader: files it reads that the `safetensors` package's numpy API
refuses (see the module docstring), so that the difference is kept on purpose."""

from __future__ import annotations

import json
import struct

import ml_dtypes
import numpy as np
import pytest

from converters import load_state_dict


def write(path, entries: dict[str, tuple[str, list[int], int, int]], data: bytes):
    header = {
        k: {"dtype": d, "shape": s, "data_offsets": [a, b]} for k, (d, s, a, b) in entries.items()
    }
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return path


@pytest.mark.parametrize(
    "name, dtype", [("F8_E4M3", ml_dtypes.float8_e4m3fn), ("F8_E5M2", ml_dtypes.float8_e5m2)]
)
def test_float8(tmp_path, name, dtype):
    want = np.array([0.5, -1.0, 2.0, 0.0], dtype)
    path = write(tmp_path / "a.safetensors", {"x": (name, [4], 0, 4)}, want.tobytes())
    got = load_state_dict(path)
    assert got["x"].dtype == np.dtype(dtype)
    np.testing.assert_array_equal(got["x"].astype(np.float32), want.astype(np.float32))


def test_shared_bytes_gaps_and_trailing_bytes(tmp_path):
    data = np.arange(5, dtype=np.float32).tobytes() + b"tail"
    entries = {
        "a": ("F32", [2], 0, 8),
        "alias": ("F32", [2], 0, 8),  # the same bytes as "a"
        "after_gap": ("F32", [1], 12, 16),  # bytes 8..12 belong to no tensor
    }
    got = load_state_dict(write(tmp_path / "a.safetensors", entries, data))
    np.testing.assert_array_equal(got["a"], [0, 1])
    np.testing.assert_array_equal(got["alias"], [0, 1])
    np.testing.assert_array_equal(got["after_gap"], [3])
