"""ADM sample / reference batch files (`.npz`), read the way the ADM evaluator reads them.

openai/guided-diffusion evaluations/evaluator.py: images are `arr_0`, uint8 [N, H, W, 3],
streamed in batches straight from the zip member (`open_npz_array`: a stored .npy is read
batch by batch; a Fortran-ordered or object array is loaded whole); the reference batches
(e.g. VIRTUAL_imagenet256_labeled.npz) also cache `mu`, `sigma` (pool_3) and `mu_s`, `sigma_s`
(spatial), which `read_statistics` returns instead of recomputing them.
"""

from __future__ import annotations

import contextlib
import os
import zipfile
from collections.abc import Iterator

import numpy as np

from arvg_jax.metrics.fid import FIDStatistics

IMAGES_KEY = "arr_0"
STATS_KEYS = ("mu", "sigma", "mu_s", "sigma_s")


def _read_header(f) -> tuple[tuple[int, ...], bool, np.dtype] | None:
    """(shape, fortran_order, dtype) of a .npy stream at its start; None for a format version
    without a public header reader (then the array is loaded whole)."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(f)
    return None


@contextlib.contextmanager
def _member(path: str | os.PathLike, key: str) -> Iterator:
    with zipfile.ZipFile(path) as zf:
        name = f"{key}.npy"
        if name not in zf.namelist():
            raise ValueError(f"{os.fspath(path)}: no array {key!r} in the npz file")
        with zf.open(name) as f:
            yield f


def array_shape(path: str | os.PathLike, key: str = IMAGES_KEY) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of one npz array, read from its header only."""
    with _member(path, key) as f:
        header = _read_header(f)
    if header is None:
        with np.load(path, allow_pickle=False) as z:
            return z[key].shape, z[key].dtype
    return tuple(header[0]), header[2]


def iter_batches(
    path: str | os.PathLike, batch_size: int, key: str = IMAGES_KEY
) -> Iterator[np.ndarray]:
    """Yields consecutive [<= batch_size, ...] slices of one npz array without loading it whole.

    Args:
        path: the .npz file.
        batch_size: rows per batch (the evaluator uses 64).
        key: the array (`arr_0`: images).

    Raises:
        ValueError: the array is absent or the member is truncated.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    with _member(path, key) as f:
        header = _read_header(f)
        if header is None or header[1] or header[2].hasobject or not header[0]:
            with np.load(path, allow_pickle=False) as z:
                arr = z[key]
            for i in range(0, len(arr), batch_size):
                yield arr[i : i + batch_size]
            return
        shape, _, dtype = header
        row = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        for i in range(0, shape[0], batch_size):
            n = min(batch_size, shape[0] - i)
            data = f.read(n * row)
            if len(data) != n * row:
                raise ValueError(f"{os.fspath(path)}: {key} is truncated at row {i}")
            yield np.frombuffer(data, dtype).reshape(n, *shape[1:])


def read_statistics(path: str | os.PathLike) -> tuple[FIDStatistics, FIDStatistics] | None:
    """The cached (pool, spatial) statistics of a reference batch, or None when it has none.

    As evaluator.py `read_statistics`: present when the file has `mu`; then `sigma`, `mu_s`
    and `sigma_s` must be there too.
    """
    with np.load(path, allow_pickle=False) as z:
        if "mu" not in z.files:
            return None
        absent = [k for k in STATS_KEYS if k not in z.files]
        if absent:
            raise ValueError(f"{os.fspath(path)}: has mu but not {absent}")
        return FIDStatistics(z["mu"], z["sigma"]), FIDStatistics(z["mu_s"], z["sigma_s"])


def write_batch(path: str | os.PathLike, images: np.ndarray, **stats: np.ndarray) -> None:
    """Writes an ADM-style batch: `arr_0` = images (uint8 [N, H, W, 3]) plus optional arrays
    (e.g. mu, sigma, mu_s, sigma_s)."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be uint8 [N, H, W, 3], got {images.dtype} {images.shape}")
    np.savez(path, arr_0=images, **stats)
