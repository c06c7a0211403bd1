"""Runs a case of `tests/_parallel_cases.py` on 8 fake CPU devices in a fresh interpreter.

XLA_FLAGS=--xla_force_host_platform_device_count=8 must be set before jax starts, so each case is
a subprocess; shared by `parallel_devices_test.py` and `parallel_families_test.py`.
"""

import json
import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def run_case(*args) -> dict:
    """The case's JSON result (`RESULT` line); fails the test with its stderr if it raised."""
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=8"
    env = {**os.environ, "XLA_FLAGS": flags.strip()}  # keeps conftest's optimization level
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env.pop("ARVG_PROCESS_INDEX", None), env.pop("ARVG_PROCESS_COUNT", None)
    proc = subprocess.run(
        [sys.executable, str(REPO / "tests" / "_parallel_cases.py"), *map(str, args)],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT ") :])


def check_sampling(result: dict) -> None:
    """Every mesh: the same tokens as one device, outputs split over "data", distinct images,
    and attention head-parallel where the mesh has a model axis (`check_heads`)."""
    for spec, r in result.items():
        assert r["tokens_equal"], (spec, r)
        assert r["output_sharding"]["tokens"] == ["data"], (spec, r)  # split over data
        assert r["distinct_images"] > 1, (spec, r)
    check_heads(result)


def check_heads(result: dict) -> None:
    """On a mesh with model=M > 1 the sampler ran with qkv_shards=M and the compiled program's
    dots read each device's share of every fused attention layer: qkv kernels of (H + 2G) K / M
    columns, proj kernels of C / M rows, and no whole qkv kernel (not replicated attention)."""
    for spec, r in result.items():
        model = int(dict(a.split("=") for a in spec.split(",")).get("model", 1))
        assert r["qkv_shards"] == model, (spec, r["qkv_shards"])
        if model == 1:
            continue
        assert r["heads"], (spec, r)
        for layer, f in r["heads"].items():
            assert f["shards"] == model, (spec, layer, f)
            assert f["qkv_local"] and f["proj_local"] and not f["qkv_whole"], (spec, layer, f)
