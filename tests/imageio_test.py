import io
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, features

from arvg_jax import imageio

SHAPES = pytest.mark.parametrize(
    "shape", [(7, 11, 3), (5, 13), (3, 2, 4)], ids=["rgb", "grey", "rgba"]
)


def _img(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _zlib_png(image: np.ndarray) -> bytes:
    """The numpy + zlib encoder imageio used before Pillow (filter 0 on every row): the oracle
    that PNGs written by earlier versions still decode to the same pixels."""
    channels = 1 if image.ndim == 2 else image.shape[2]
    color_type = {1: 0, 3: 2, 4: 6}[channels]
    h, w = image.shape[:2]
    raw = np.zeros((h, 1 + w * channels), np.uint8)
    raw[:, 1:] = image.reshape(h, w * channels)

    def chunk(tag, data):
        crc = struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
        return struct.pack(">I", len(data)) + tag + data + crc

    header = struct.pack(">IIBBBBB", w, h, 8, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw.tobytes(), 6))
        + chunk(b"IEND", b"")
    )


def _no_temp_left(d):
    return not [p for p in d.iterdir() if p.name.startswith(".")]


@SHAPES
def test_png_roundtrip(tmp_path, shape):
    img = _img(shape)
    path = imageio.write_png(tmp_path / "a.png", img)
    got = imageio.decode_png(path.read_bytes())
    assert got.dtype == np.uint8 and got.shape == img.shape
    np.testing.assert_array_equal(got, img)
    assert _no_temp_left(tmp_path)


@SHAPES
def test_decode_matches_previous_encoder(shape):
    img = _img(shape, seed=1)
    np.testing.assert_array_equal(imageio.decode_png(_zlib_png(img)), img)


@SHAPES
def test_encode_png_is_read_by_pillow_as_written(shape):
    img = _img(shape, seed=2)
    data = imageio.encode_png(img)
    with Image.open(io.BytesIO(data)) as im:
        want_mode = "L" if img.ndim == 2 else {3: "RGB", 4: "RGBA"}[img.shape[2]]
        assert im.format == "PNG" and im.mode == want_mode
        np.testing.assert_array_equal(np.asarray(im), img)


def test_encode_png_rejects_bad_input():
    with pytest.raises(ValueError, match="uint8"):
        imageio.encode_png(np.zeros((2, 3, 3), np.float32))
    with pytest.raises(ValueError, match=r"\[H, W\]"):
        imageio.encode_png(np.zeros((2, 3, 2), np.uint8))
    with pytest.raises(ValueError, match="not a PNG"):
        imageio.decode_png(b"GIF89a....")


def test_decode_palette_png_as_rgb():
    img = _img((5, 7, 3), seed=3)
    buf = io.BytesIO()
    Image.fromarray(img).quantize(colors=256).save(buf, format="PNG")
    got = imageio.decode_png(buf.getvalue())
    assert got.shape == img.shape and got.dtype == np.uint8


@pytest.mark.parametrize("name", ["a.png", "a.PNG", "a.bmp", "a.tiff"])
def test_write_image_lossless_formats(tmp_path, name):
    img = _img((7, 11, 3), seed=4)
    path = imageio.write_image(tmp_path / name, img)
    with Image.open(path) as im:
        assert im.format == imageio.supported_extensions()[path.suffix.lower()]
        np.testing.assert_array_equal(np.asarray(im), img)
    assert _no_temp_left(tmp_path)


@pytest.mark.parametrize("name", ["a.jpg", "a.jpeg", "a.webp"])
def test_write_image_lossy_formats(tmp_path, name):
    if name.endswith(".webp") and not features.check("webp"):
        pytest.skip("Pillow built without WebP")
    # a smooth image, so a quality-95 lossy codec stays close to it
    y, x = np.mgrid[0:16, 0:24]
    img = np.stack([x * 10, y * 15, (x + y) * 6], -1).astype(np.uint8)
    path = imageio.write_image(tmp_path / name, img)
    with Image.open(path) as im:
        assert im.format == {".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}[path.suffix]
        got = np.asarray(im.convert("RGB")).astype(np.int32)
    assert got.shape == img.shape
    assert np.abs(got - img).mean() < 4


def test_write_image_unknown_extension(tmp_path):
    path = tmp_path / "samples.xyz"
    with pytest.raises(ValueError) as e:
        imageio.write_image(path, _img((3, 5, 3)))
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and ".png" in msg and ".jpg" in msg
    with pytest.raises(ValueError, match="samples'"):  # no extension at all
        imageio.write_image(tmp_path / "samples", _img((3, 5, 3)))
    assert list(tmp_path.iterdir()) == []


def test_write_image_mode_the_format_cannot_hold(tmp_path):
    with pytest.raises(ValueError, match="JPEG"):
        imageio.write_image(tmp_path / "a.jpg", _img((3, 5, 4)))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077])
def test_written_files_follow_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        a = imageio.write_png(tmp_path / "a.png", _img((3, 5, 3)))
        b = imageio.write_image(tmp_path / "b.jpg", _img((3, 5, 3)))
        plain = tmp_path / "plain"
        plain.write_bytes(b"")
    finally:
        os.umask(old)
    want = plain.stat().st_mode & 0o777
    assert want == 0o666 & ~mask
    assert a.stat().st_mode & 0o777 == want and b.stat().st_mode & 0o777 == want


def test_write_replaces_existing_file(tmp_path):
    path = tmp_path / "a.png"
    imageio.write_png(path, _img((3, 5, 3), seed=5))
    img = _img((4, 6, 3), seed=6)
    imageio.write_image(path, img)
    np.testing.assert_array_equal(imageio.decode_png(path.read_bytes()), img)
    assert _no_temp_left(tmp_path)


def test_grid_layout():
    imgs = np.stack([np.full((2, 3, 3), i, np.uint8) for i in range(5)])
    grid = imageio.make_grid(imgs, ncols=3, pad=1)
    assert grid.shape == (2 * 3 + 1, 3 * 4 + 1, 3)
    assert grid[1, 1, 0] == 0 and grid[4, 5, 0] == 4 and grid[4, 9, 0] == 255


def test_to_uint8_clips_and_rounds():
    x = np.array([[[[-0.5, 0.5, 1.5]]]], np.float32)
    np.testing.assert_array_equal(imageio.to_uint8(x), [[[[0, 128, 255]]]])
