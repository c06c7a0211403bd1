import numpy as np
import pytest

from arvg_jax import imageio


@pytest.mark.parametrize("shape", [(7, 11, 3), (5, 13), (3, 2, 4)], ids=["rgb", "grey", "rgba"])
def test_png_roundtrip(tmp_path, shape):
    img = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    path = imageio.write_png(tmp_path / "a.png", img)
    np.testing.assert_array_equal(imageio.decode_png(path.read_bytes()), img)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left


def test_grid_layout():
    imgs = np.stack([np.full((2, 3, 3), i, np.uint8) for i in range(5)])
    grid = imageio.make_grid(imgs, ncols=3, pad=1)
    assert grid.shape == (2 * 3 + 1, 3 * 4 + 1, 3)
    assert grid[1, 1, 0] == 0 and grid[4, 5, 0] == 4 and grid[4, 9, 0] == 255


def test_to_uint8_clips_and_rounds():
    x = np.array([[[[-0.5, 0.5, 1.5]]]], np.float32)
    np.testing.assert_array_equal(imageio.to_uint8(x), [[[[0, 128, 255]]]])
