"""Recomputes the official reference fixtures' output arrays with the port (see docs/design).

Used by `scripts/reference_check.py` and by the parity tests. Every output is computed from the
fixture's checkpoints and input arrays; nothing is copied from the reference outputs.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
import tempfile

import numpy as np


def load_inputs(fixture: pathlib.Path, npz_name: str) -> dict[str, np.ndarray]:
    names = json.loads((fixture / "inputs.json").read_text())
    data = np.load(fixture / npz_name)
    missing = [n for n in names if n not in data.files]
    if missing:
        raise ValueError(f"{fixture / npz_name}: missing input arrays {missing}")
    return {n: data[n] for n in names}


def _write_npz(path: pathlib.Path, arrays: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz")
    os.close(fd)
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def compare(ours: dict[str, np.ndarray], ref_path: pathlib.Path) -> list[str]:
    """Informational comparison lines (relative L2 error, or exact match for integers)."""
    if not ref_path.exists():
        return []
    ref = np.load(ref_path)
    lines = []
    for name, a in ours.items():
        if name not in ref.files:
            continue
        r = ref[name]
        if a.shape != r.shape:
            lines.append(f"{name:28s} SHAPE {a.shape} vs reference {r.shape}")
        elif a.dtype.kind in "iub":
            lines.append(f"{name:28s} int   {int(np.sum(a != r))} of {a.size} differ")
        else:
            err = np.linalg.norm(a - r) / max(np.linalg.norm(r), 1e-30)
            lines.append(f"{name:28s} float rel err {err:.2e}, max abs {np.max(np.abs(a - r)):.2e}")
    return lines


def run_family_reference(
    family: str, fixture: str | os.PathLike, out_path: str | os.PathLike
) -> None:
    """Writes every output array of a family's fixture, computed by the port, to `out_path`."""
    from arvg_jax import families

    write_outputs(families.get(family).reference_outputs(pathlib.Path(fixture)), fixture, out_path)


def write_outputs(
    outputs: dict[str, np.ndarray], fixture: str | os.PathLike, out_path: str | os.PathLike
) -> None:
    """Writes computed fixture outputs atomically and prints the informational comparison."""
    fixture, out_path = pathlib.Path(fixture), pathlib.Path(out_path)
    _write_npz(out_path, outputs)
    for line in compare(outputs, fixture / "io.npz"):
        print(line, file=sys.stderr)
    print(f"wrote {out_path} ({len(outputs)} arrays)", file=sys.stderr)
