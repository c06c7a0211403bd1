"""Loading a converted checkpoint vs converting the torch files: wall seconds on this machine.

    python scripts/convert_timing.py --ref ../shared/reference/var --repeat 5
    python scripts/convert_timing.py --official-size var-d30 --repeat 3

Converts the checkpoint once (orbax directory and safetensors file, float32), then times, best of
`--repeat` in one warm process (imports and first-call costs excluded): `load_float` from the torch
files (read + map) against `load_float` of the converted directory and file. Host only (CPU):
nothing is compiled.

`--official-size PRESET` times a full-size checkpoint without downloading one: random weights
with every key, shape and dtype of the official manifest (`../shared/reference/manifests`), written
in the torch.save zip layout by the test suite's torch-free writer (tests/_torch_writer.py);
loading cost depends on sizes and layout, not on the values.
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
    """Random official-layout var.pth / vae.pth of a VAR preset, from the key manifests."""
    import importlib.util

    import numpy as np

    repo = pathlib.Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("_writer", repo / "tests" / "_torch_writer.py")
    writer = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = writer  # dataclasses look their module up while it executes
    spec.loader.exec_module(writer)
    rng = np.random.default_rng(0)
    patch_nums = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
    levels = np.concatenate([np.full(p * p, i) for i, p in enumerate(patch_nums)])

    def arrays(manifest):
        out = {}
        for key, (shape, dtype) in json.loads(manifest.read_text()).items():
            if dtype == "torch.int64":  # VAR's lvl_1L buffer: the scale index of each token
                out[key] = levels.reshape(shape).astype(np.int64)
            else:
                out[key] = (rng.standard_normal(shape, np.float32) * 0.02).astype(np.float32)
        return {k: writer.tensor(v) for k, v in out.items()}

    depth = preset.removeprefix("var-d")
    files = tmp / f"var_d{depth}.pth", tmp / "vae_ch160v4096z32.pth"
    writer.write_zip(files[0], arrays(manifests / f"var_d{depth}.json"))
    writer.write_zip(files[1], arrays(manifests / "vae_ch160v4096z32.json"))
    return files


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ref", default="../shared/reference/var", help="VAR fixture directory")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--official-size", metavar="PRESET", help="e.g. var-d30 (see the docstring)")
    ap.add_argument(
        "--manifests", default="../shared/reference/manifests", help="official key manifests"
    )
    ap.add_argument("--tmp", default=None, help="scratch directory (several GB at var-d30)")
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
