"""Wall time and peak host memory of a whole `arvg evaluate --samples` (issue 21 item 6).

Writes two ADM batch files of seeded random uint8 images (default: 50,000 samples and a 10,000-image
reference without cached statistics, so both sides go through Inception), then runs the command
exactly as a user would, in a child process, and reports its wall time and peak resident memory.
Speed does not depend on the weights or the pixels: any Inception file in an accepted layout works
(the tests' random-weight one included).

    PYTHONPATH=. python scripts/bench_evaluate.py --inception inception.pth --dir /tmp/bench_eval
"""

from __future__ import annotations

import argparse
import json
import pathlib
import resource
import subprocess
import sys
import time

import numpy as np


def _batch(path: pathlib.Path, n: int, size: int, seed: int, chunk: int = 2000) -> None:
    """An ADM batch (`arr_0` uint8 [n, size, size, 3]) written chunk by chunk (bounded memory)."""
    from numpy.lib import format as npy

    if path.exists():
        return
    rng = np.random.default_rng(seed)
    tmp = path.with_suffix(".tmp.npy")
    out = npy.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, size, size, 3))
    for i in range(0, n, chunk):
        m = min(chunk, n - i)
        out[i : i + m] = rng.integers(0, 256, (m, size, size, 3), dtype=np.uint8)
    out.flush()
    del out
    import zipfile

    with zipfile.ZipFile(path.with_suffix(".part"), "w", zipfile.ZIP_STORED) as zf:
        zf.write(tmp, "arr_0.npy")
    tmp.unlink()
    path.with_suffix(".part").rename(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--inception", required=True, help="Inception weights file (any layout we read)"
    )
    ap.add_argument("--dir", default="bench_eval", help="where the batch files and report go")
    ap.add_argument("--samples", type=int, default=50_000)
    ap.add_argument("--reference", type=int, default=10_000)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--inception-batch", type=int, default=256)
    args = ap.parse_args()
    d = pathlib.Path(args.dir)
    d.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    _batch(d / "samples.npz", args.samples, args.size, seed=0)
    _batch(d / "reference.npz", args.reference, args.size, seed=1)
    print(f"batch files ready in {time.perf_counter() - t:.1f} s", flush=True)
    cmd = [sys.executable, "-m", "arvg_jax.cli", "evaluate", "--samples", str(d / "samples.npz")]
    cmd += ["--reference", str(d / "reference.npz"), "--inception", args.inception]
    cmd += ["--inception-batch", str(args.inception_batch), "--out", str(d / "eval")]
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - start
    peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KiB on Linux
    result = {
        "command": " ".join(cmd),
        "samples": args.samples,
        "reference": args.reference,
        "wall_s": round(wall, 1),
        "peak_rss_gib": round(peak_gib, 2),
    }
    print(json.dumps(result, indent=1))
    (d / "bench_evaluate.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
