"""PNG writing and image grids, with numpy and zlib only (no Pillow dependency).

Letters: B batch, H height, W width.
"""

from __future__ import annotations

import os
import pathlib
import struct
import tempfile
import zlib

import numpy as np


def to_uint8(images: np.ndarray) -> np.ndarray:
    """[B, H, W, 3] floats in [0, 1] -> uint8, rounding like `(x * 255).round()` after clipping."""
    images = np.asarray(images, dtype=np.float32)
    return np.clip(np.round(images * 255.0), 0, 255).astype(np.uint8)


def make_grid(images: np.ndarray, ncols: int | None = None, pad: int = 2) -> np.ndarray:
    """Tiles [B, H, W, C] uint8 images into one [rows*H', cols*W', C] image with white padding."""
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"make_grid expects [B, H, W, C], got shape {images.shape}")
    b, h, w, c = images.shape
    ncols = ncols or int(np.ceil(np.sqrt(b)))
    nrows = int(np.ceil(b / ncols))
    grid = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), 255, images.dtype)
    for i in range(b):
        r, q = divmod(i, ncols)
        y, x = pad + r * (h + pad), pad + q * (w + pad)
        grid[y : y + h, x : x + w] = images[i]
    return grid


def encode_png(image: np.ndarray) -> bytes:
    """Encodes an [H, W, 3] or [H, W] uint8 array as PNG bytes (8-bit RGB or grey)."""
    image = np.ascontiguousarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"encode_png expects uint8, got {image.dtype}")
    if image.ndim == 2:
        color_type, channels = 0, 1
    elif image.ndim == 3 and image.shape[2] in (3, 4):
        channels = image.shape[2]
        color_type = 2 if channels == 3 else 6
    else:
        raise ValueError(f"encode_png expects [H, W], [H, W, 3] or [H, W, 4], got {image.shape}")
    h, w = image.shape[:2]
    raw = np.zeros((h, 1 + w * channels), np.uint8)  # filter byte 0 (None) on every row
    raw[:, 1:] = image.reshape(h, w * channels)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + tag
            + data
            + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", w, h, 8, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw.tobytes(), 6))
        + chunk(b"IEND", b"")
    )


def decode_png(data: bytes) -> np.ndarray:
    """Decodes PNGs written by `encode_png` (8-bit, filter 0, non-interlaced). For tests."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG file")
    pos, idat, shape = 8, b"", None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        tag, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if tag == b"IHDR":
            w, h, depth, color_type = struct.unpack(">IIBB", body[:10])
            channels = {0: 1, 2: 3, 6: 4}[color_type]
            shape = (h, w, channels)
        elif tag == b"IDAT":
            idat += body
    h, w, c = shape
    raw = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(h, 1 + w * c)
    if np.any(raw[:, 0] != 0):
        raise ValueError("decode_png only reads filter type 0")
    out = raw[:, 1:].reshape(h, w, c)
    return out[:, :, 0] if c == 1 else out


def write_png(path: str | os.PathLike, image: np.ndarray) -> pathlib.Path:
    """Writes atomically (temp file + rename), so a failure never leaves a half-written PNG."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = encode_png(image)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
