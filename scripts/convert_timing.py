"""Loading a converted checkpoint vs converting the torch files: wall seconds on this machine.

    python scripts/convert_timing.py --ref ../shared/reference/var --repeat 5

Converts the fixture once (orbax directory and safetensors file, float32), then times, best of
`--repeat` in one warm process (imports and first-call costs excluded): `load_float` from the torch
files (read + map) against `load_float` of the converted directory and file. Host only (CPU):
nothing is compiled.
"""

from __future__ import annotations

import argparse
import pathlib
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ref", default="../shared/reference/var", help="VAR fixture directory")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    from arvg_jax import conversion, models

    ref = pathlib.Path(args.ref)
    files = ref / "var.pth", ref / "vae.pth"
    size = sum(f.stat().st_size for f in files)
    with tempfile.TemporaryDirectory() as tmp:
        d, st = pathlib.Path(tmp) / "var", pathlib.Path(tmp) / "var.safetensors"
        for out, fmt in ((d, "orbax"), (st, "safetensors")):
            conversion.convert(
                "var", *files, config=ref / "config.json", out=out, fmt=fmt, progress=False
            )
        rows = {
            "convert the torch files (load_float)": _best(
                lambda: models.load_float("var", *files, ref / "config.json"), args.repeat
            ),
            "load the converted orbax directory": _best(
                lambda: models.load_float(None, d, None), args.repeat
            ),
            "load the converted safetensors file": _best(
                lambda: models.load_float(None, st, None), args.repeat
            ),
        }
    print(f"reference VAR ({ref}): torch files {size / 1e6:.1f} MB; best of {args.repeat}")
    base = rows["convert the torch files (load_float)"]
    for name, s in rows.items():
        print(f"  {name:<40} {s * 1e3:8.0f} ms  ({base / s:.1f}x)")


if __name__ == "__main__":
    main()
