"""Loading a converted checkpoint vs converting the torch files: wall seconds on this machine.

    python scripts/convert_timing.py --ref ../shared/reference/var --repeat 5
    python scripts/convert_timing.py --official-size var-d30 --repeat 3
    python scripts/convert_timing.py --official-size var-d30 --isolated --repeat 1 --tmp /tmp

Converts the checkpoint once (orbax directory and safetensors file, float32), then times, best of
`--repeat` in one warm process (imports and first-call costs excluded): `load_float` from the torch
files (read + map) against `load_float` of the converted directory and file. Host only (CPU):
nothing is compiled.

`--official-size PRESET` times a full-size checkpoint without downloading one: random weights
with every key, shape and dtype of the official manifest (`../shared/reference/manifests`), written
in the torch.save zip layout by the test suite's torch-free writer (tests/_torch_writer.py);
loading cost depends on sizes and layout, not on the values.

`--isolated` runs each step (convert on the fly, `arvg convert` to orbax and to safetensors, load
each) in its own process and reports its peak RSS next to the file size: what a 24 GB machine
needs. Run it with `PYTHONPATH` at another checkout to measure that checkout's code (the steps
run with `python -P`, so the working directory does not shadow it).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile
import time


def _best(fn, repeat: int) -> float:
    fn()  # warm: imports, orbax set-up
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def _official_size_files(preset: str, manifests: pathlib.Path, tmp: pathlib.Path):
    """Random official-layout var.pth / vae.pth of a VAR preset, from the key manifests.

    Written one storage at a time (the pickle needs only shapes and dtypes), so synthesising a
    VAR-d30 file holds one tensor, not the 8 GB of them.
    """
    import importlib.util
    import zipfile

    import numpy as np

    repo = pathlib.Path(__file__).resolve().parents[1]
    path = repo / "tests" / "_torch_writer.py"  # the test suite's torch.save writer
    if not path.exists():  # older checkouts kept it in the test module
        path = repo / "tests" / "torch_reader_test.py"
    spec = importlib.util.spec_from_file_location("_writer", path)
    writer = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = writer  # dataclasses look their module up while it executes
    spec.loader.exec_module(writer)
    rng = np.random.default_rng(0)
    patch_nums = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
    levels = np.concatenate([np.full(p * p, i) for i, p in enumerate(patch_nums)])

    def value(shape, dtype):
        if dtype == "torch.int64":  # VAR's lvl_1L buffer: the scale index of each token
            return levels.reshape(shape).astype(np.int64)
        return rng.standard_normal(shape, np.float32) * np.float32(0.02)

    def write(path, manifest):
        entries = json.loads(manifest.read_text())
        # Storages whose data is a zero-stride stand-in: the pickle reads only dtype and size.
        tensors = {}
        for key, (shape, dtype) in entries.items():
            dt = np.dtype(np.int64 if dtype == "torch.int64" else np.float32)
            n = int(np.prod(shape))
            data = np.lib.stride_tricks.as_strided(np.zeros(1, dt), (n,), (0,))
            st = writer.Storage(data)
            tensors[key] = writer.Tensor(st, 0, tuple(shape), writer.strides_of(tuple(shape)))
        pkl, storages = writer.torch_pickle(tensors, legacy=False)
        by_storage = {id(t.storage): (k, entries[k]) for k, t in tensors.items()}
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
            zf.writestr("archive/data.pkl", pkl)
            zf.writestr("archive/byteorder", "little")
            for skey, st in storages:
                _, (shape, dtype) = by_storage[id(st)]
                a = np.ascontiguousarray(value(shape, dtype))
                with zf.open(f"archive/data/{skey}", "w", force_zip64=a.nbytes > 2**31) as f:
                    f.write(a.reshape(-1).view(np.uint8).data)
            zf.writestr("archive/version", "3\n")
        return path

    depth = preset.removeprefix("var-d")
    return (
        write(tmp / f"var_d{depth}.pth", manifests / f"var_d{depth}.json"),
        write(tmp / "vae_ch160v4096z32.pth", manifests / "vae_ch160v4096z32.json"),
    )


# One operation in a fresh process: wall seconds and peak RSS (ru_maxrss), after the imports.
_CHILD = r"""
import json, resource, sys, time
op, a = sys.argv[1], json.loads(sys.argv[2])
import jax, orbax.checkpoint  # imports (and their memory) before the baseline
from arvg_jax import conversion, models
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
if op == "convert":
    conversion.convert(a["model"], *a["files"], config=a["config"], out=a["out"], fmt=a["fmt"],
                       overwrite=True, progress=False)
elif op == "load_float":
    models.load_float(a["model"], *a["files"], a["config"])
else:
    models.load_float(None, a["out"], None)
seconds = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": seconds, "peak": peak * 1024, "base": base * 1024}))
"""


def _isolated(op: str, repeat: int, **args) -> dict | None:
    """Best wall time and largest peak RSS of `op` over `repeat` fresh processes (None: failed,
    e.g. killed for memory)."""
    import subprocess

    runs = []
    for _ in range(repeat):
        res = subprocess.run(
            [sys.executable, "-P", "-c", _CHILD, op, json.dumps(args)],
            capture_output=True,
            text=True,
            check=False,
        )
        if res.returncode != 0:
            print(f"{op} failed (rc {res.returncode}): {res.stderr[-1000:]}", file=sys.stderr)
            return None
        runs.append(json.loads(res.stdout.strip().splitlines()[-1]))
    return {
        "seconds": min(r["seconds"] for r in runs),
        "peak": max(r["peak"] for r in runs),
        "base": min(r["base"] for r in runs),
    }


def _main_isolated(model, files, config, tmp: pathlib.Path, what: str, repeat: int) -> None:
    """Each step in its own process: time and peak host memory (RSS) against the file size."""
    size = sum(f.stat().st_size for f in files)
    common = {"model": model, "files": [str(f) for f in files], "config": config}
    d, st = str(tmp / "var"), str(tmp / "var.safetensors")
    steps = {
        "convert the torch files (load_float)": ("load_float", common),
        "arvg convert -> safetensors file": (
            "convert",
            {**common, "out": st, "fmt": "safetensors"},
        ),
        "load the converted safetensors file": ("load", {"out": st}),
        "arvg convert -> orbax directory": ("convert", {**common, "out": d, "fmt": "orbax"}),
        "load the converted orbax directory": ("load", {"out": d}),
    }
    print(f"{what}: torch files {size / 1e9:.2f} GB; best of {repeat}, one process per run")
    print(f"  {'':<40} {'wall s':>8} {'peak RSS GB':>12} {'(peak-imports)/file':>20}")
    for name, (op, args) in steps.items():
        r = _isolated(op, repeat, **args)
        if r is None:
            print(f"  {name:<40} failed", flush=True)
            continue
        ratio = (r["peak"] - r["base"]) / size
        print(
            f"  {name:<40} {r['seconds']:8.1f} {r['peak'] / 1e9:12.2f} {ratio:19.2f}x",
            flush=True,
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ref", default="../shared/reference/var", help="VAR fixture directory")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--official-size", metavar="PRESET", help="e.g. var-d30 (see the docstring)")
    ap.add_argument(
        "--manifests", default="../shared/reference/manifests", help="official key manifests"
    )
    ap.add_argument("--tmp", default=None, help="scratch directory (several GB at var-d30)")
    ap.add_argument(
        "--isolated",
        action="store_true",
        help="run every step in a fresh process and report its peak RSS as well",
    )
    args = ap.parse_args()
    from arvg_jax import conversion, models

    ref = pathlib.Path(args.ref)
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        if args.official_size:
            files = _official_size_files(
                args.official_size, pathlib.Path(args.manifests), pathlib.Path(tmp)
            )
            model, config, what = args.official_size, None, args.official_size
        else:
            files = ref / "var.pth", ref / "vae.pth"
            model, config, what = "var", ref / "config.json", f"reference VAR ({ref})"
        if args.isolated:
            config = config and str(config)
            _main_isolated(model, files, config, pathlib.Path(tmp), what, args.repeat)
            return
        size = sum(f.stat().st_size for f in files)
        d, st = pathlib.Path(tmp) / "var", pathlib.Path(tmp) / "var.safetensors"
        for out, fmt in ((d, "orbax"), (st, "safetensors")):
            conversion.convert(model, *files, config=config, out=out, fmt=fmt, progress=False)
        rows = {
            "convert the torch files (load_float)": _best(
                lambda: models.load_float(model, *files, config), args.repeat
            ),
            "load the converted orbax directory": _best(
                lambda: models.load_float(None, d, None), args.repeat
            ),
            "load the converted safetensors file": _best(
                lambda: models.load_float(None, st, None), args.repeat
            ),
        }
    print(f"{what}: torch files {size / 1e6:.1f} MB; best of {args.repeat}")
    base = rows["convert the torch files (load_float)"]
    for name, s in rows.items():
        print(f"  {name:<40} {s * 1e3:8.0f} ms  ({base / s:.1f}x)")


if __name__ == "__main__":
    main()
