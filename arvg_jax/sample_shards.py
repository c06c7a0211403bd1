"""A resumable sample run on disk: fixed-size shards, then one ADM batch file.

Layout for `--out samples.npz`:

    samples.npz.shards/run.json          what the run is (model, sampling, seed, sizes): a rerun
                                         with other settings is refused instead of mixing images
    samples.npz.shards/shard_00012.npz   images [12 S, 13 S): arr_0 uint8 [n, H, W, 3], arr_1 int64 [n]
    samples.npz                          written last: arr_0 and arr_1 of every image, in order

Every file is written to a temporary name in its folder and renamed (`os.replace`, atomic on
POSIX), so a killed run leaves whole shards or none; a leftover temporary file is deleted by the
next run. The shard size S is a property of the run, not of the batch size.

The final file is the layout of guided-diffusion `scripts/image_sample.py` for class-conditional
models (`np.savez(out_path, arr, label_arr)`: images `arr_0`, labels `arr_1`); the evaluator reads
only `arr_0`. It is streamed shard by shard, so 50,000 256x256 images (9.8 GB) never sit in memory.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np

from arvg_jax import atomic

IMAGES, LABELS = "arr_0", "arr_1"
RUN_FILE = "run.json"
_SHARD = re.compile(r"shard_(\d{5,})\.npz")
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # the earliest date a zip entry can hold


def shard_dir(out: str | os.PathLike) -> pathlib.Path:
    """The folder of `out`'s shards: `<out>.shards` beside it."""
    out = pathlib.Path(out)
    return out.with_name(out.name + ".shards")


def shard_path(directory: pathlib.Path, index: int) -> pathlib.Path:
    return directory / f"shard_{index:05d}.npz"


def num_shards(num_images: int, shard_size: int) -> int:
    return -(-num_images // shard_size)


def shard_range(index: int, num_images: int, shard_size: int) -> tuple[int, int]:
    """[start, stop) image indices of shard `index`."""
    start = index * shard_size
    return start, min(start + shard_size, num_images)


def labels_for(start: int, stop: int, per_class: int, num_classes: int) -> np.ndarray:
    """Labels of images [start, stop): image i has class (i // per_class) % num_classes (the
    class-major order of VAR's and MAR's FID runs: 50 per class, classes 0, 1, ... in turn)."""
    return ((np.arange(start, stop, dtype=np.int64) // per_class) % num_classes).astype(np.int64)


def check_dir(directory: pathlib.Path) -> None:
    """Raises FileExistsError when `directory` is a non-empty folder arvg did not write (runs
    from before the marker are recognised by their run.json)."""
    if not (directory / RUN_FILE).is_file():
        atomic.check_output_dir(directory)


def open_run(directory: pathlib.Path, run: Mapping[str, Any], *, clean: bool = True) -> list[str]:
    """Creates the shard folder or checks it belongs to the same run; deletes stale temporaries
    if `clean` (one process of several: the others' temporaries may be shards being written).

    Returns:
        The fields whose stored value differs from `run` (empty: same run, resume it).

    Raises:
        FileExistsError: `directory` is a non-empty folder arvg did not write.
    """
    check_dir(directory)  # new, empty or arvg's: never fills a user's folder
    if not (directory / RUN_FILE).is_file():
        atomic.output_dir(directory)
    for p in directory.glob(atomic.TMP_PREFIX + "*") if clean else ():
        p.unlink(missing_ok=True)
    path = directory / RUN_FILE
    want = json.loads(json.dumps(dict(run)))  # the JSON view (tuples -> lists)
    if not path.exists():
        atomic.write_text(path, json.dumps(want, indent=1, sort_keys=True) + "\n")
        return []
    have = json.loads(path.read_text())
    return sorted(k for k in set(have) | set(want) if have.get(k) != want.get(k))


def finished(directory: pathlib.Path, total: int) -> set[int]:
    """Indices of the shards on disk (< total)."""
    out = set()
    for p in directory.glob("shard_*.npz"):
        m = _SHARD.fullmatch(p.name)
        if m and int(m.group(1)) < total:
            out.add(int(m.group(1)))
    return out


def write_shard(directory: pathlib.Path, index: int, images: np.ndarray, labels: np.ndarray):
    """Writes one shard atomically: arr_0 uint8 [n, H, W, 3], arr_1 int64 [n]."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be uint8 [N, H, W, 3], got {images.dtype} {images.shape}")
    labels = np.asarray(labels, np.int64)

    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, **{IMAGES: images, LABELS: labels})

    atomic.write(shard_path(directory, index), write)


def _stream_array(zf: zipfile.ZipFile, key: str, shape, dtype, parts) -> None:
    """Writes `key`.npy into `zf` from consecutive row blocks (as np.savez lays it out)."""
    header = {
        "descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
        "fortran_order": False,
        "shape": tuple(shape),
    }
    # A fixed entry date (zipfile would stamp the current time): the same run writes the same
    # bytes whenever it ends, so a resumed run's file is byte-identical to an uninterrupted one.
    info = zipfile.ZipInfo(key + ".npy", date_time=_ZIP_DATE)
    with zf.open(info, "w", force_zip64=True) as f:
        np.lib.format.write_array_header_1_0(f, header)  # a few dozen bytes: 1.0 holds it
        rows = 0
        for part in parts:
            part = np.ascontiguousarray(part, dtype=dtype)
            f.write(part.tobytes())
            rows += len(part)
    if rows != shape[0]:
        raise ValueError(f"{key}: wrote {rows} rows, expected {shape[0]}")


def assemble(directory: pathlib.Path, out: str | os.PathLike, total: int) -> tuple[int, ...]:
    """Joins shards 0..total-1 into `out` atomically (uncompressed npz, read back by np.load).

    Returns:
        The shape of arr_0.
    """
    paths = [shard_path(directory, i) for i in range(total)]
    missing = [p.name for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(f"{directory}: shards missing: {missing[:5]}")
    n, tail = 0, None
    for p in paths:
        with np.load(p) as z:
            shape = z[IMAGES].shape
        if tail is not None and shape[1:] != tail:
            raise ValueError(f"{p}: image shape {shape[1:]} differs from {tail}")
        tail, n = shape[1:], n + shape[0]

    def images():
        for p in paths:
            with np.load(p) as z:
                yield z[IMAGES]

    def labels():
        for p in paths:
            with np.load(p) as z:
                yield z[LABELS]

    def write(tmp):
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            _stream_array(zf, IMAGES, (n, *tail), np.uint8, images())
            _stream_array(zf, LABELS, (n,), np.int64, labels())

    out = pathlib.Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic.write(out, write)
    return (n, *tail)
