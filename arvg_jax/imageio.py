"""Image writing (PNG, JPEG, WebP, ... via Pillow) and image grids.

Letters: B batch, H height, W width, C channels (1, 3 or 4).
"""

from __future__ import annotations

import io
import os
import pathlib

import numpy as np
from PIL import Image

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Lossy formats are written near-lossless: these files are for looking at samples side by side.
_SAVE_OPTIONS = {"JPEG": {"quality": 95}, "WEBP": {"quality": 95}}


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


def _to_pil(image: np.ndarray, what: str) -> Image.Image:
    """[H, W] (grey), [H, W, 3] (RGB) or [H, W, 4] (RGBA) uint8 -> a Pillow image."""
    image = np.ascontiguousarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"{what} expects uint8, got {image.dtype}")
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (3, 4))):
        raise ValueError(f"{what} expects [H, W], [H, W, 3] or [H, W, 4], got {image.shape}")
    return Image.fromarray(image)  # mode L, RGB or RGBA from the shape


def encode_png(image: np.ndarray) -> bytes:
    """Encodes an [H, W], [H, W, 3] or [H, W, 4] uint8 array as PNG bytes (8-bit grey/RGB/RGBA)."""
    buf = io.BytesIO()
    _to_pil(image, "encode_png").save(buf, format="PNG")
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """Decodes PNG bytes to uint8 [H, W] (grey), [H, W, 3] (RGB) or [H, W, 4] (RGBA).

    Palette images come back as RGB (RGBA when the palette has transparency); other pixel layouts
    are returned as Pillow reads them.
    """
    if data[:8] != _PNG_SIGNATURE:
        raise ValueError("not a PNG file")
    with Image.open(io.BytesIO(data), formats=["PNG"]) as img:
        if img.mode == "P":
            img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        return np.array(img)


def supported_extensions() -> dict[str, str]:
    """Lower-case file extension (with the dot) -> Pillow format name, for formats Pillow writes."""
    Image.init()  # registers every plugin, so the tables below are complete
    return {
        ext.lower(): fmt for ext, fmt in Image.registered_extensions().items() if fmt in Image.SAVE
    }


def _write_atomic(path: pathlib.Path, data: bytes) -> pathlib.Path:
    """Writes `data` to a temp file beside `path`, then renames it over `path` (`arvg_jax.atomic`:
    never half-written, permissions follow the umask, rolled back on Ctrl-C)."""
    from arvg_jax import atomic

    return atomic.write_bytes(path, data)


def write_png(path: str | os.PathLike, image: np.ndarray) -> pathlib.Path:
    """Writes PNG bytes to `path` (whatever its extension) atomically; returns the path."""
    path = pathlib.Path(path)
    return _write_atomic(path, encode_png(image))


def image_format(path: str | os.PathLike) -> str:
    """The Pillow format `write_image` uses for `path` (from its extension, any case).

    Raises:
      ValueError: an extension Pillow cannot write, naming the supported ones.
    """
    path = pathlib.Path(path)
    formats = supported_extensions()
    fmt = formats.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(
            f"cannot tell the image format of {str(path)!r} from its extension "
            f"{path.suffix!r}; supported: {' '.join(sorted(formats))}"
        )
    return fmt


def write_image(path: str | os.PathLike, image: np.ndarray) -> pathlib.Path:
    """Writes an image atomically in the format its extension names (.png, .jpg, .webp, .bmp, ...).

    Args:
      path: destination; its extension (any case) picks the Pillow format.
      image: uint8 [H, W], [H, W, 3] or [H, W, 4].

    Returns:
      The path written.

    Raises:
      ValueError: unknown extension, or an image the format cannot hold (e.g. RGBA as JPEG).
    """
    path = pathlib.Path(path)
    try:
        fmt = image_format(path)
    except ValueError as e:
        raise ValueError(f"write_image: {e}") from None
    img = _to_pil(image, "write_image")
    buf = io.BytesIO()
    try:
        img.save(buf, format=fmt, **_SAVE_OPTIONS.get(fmt, {}))
    except (OSError, KeyError, ValueError) as e:
        raise ValueError(f"write_image: {str(path)!r} as {fmt}, mode {img.mode}: {e}") from e
    return _write_atomic(path, buf.getvalue())
