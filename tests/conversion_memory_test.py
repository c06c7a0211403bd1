"""Streaming conversion (issue 22): one tensor at a time, about one copy of the params at peak.

`converters.StreamedStateDict` reads each torch tensor when a converter asks for it and frees it
with the leaf; these tests check that it reads exactly what `load_state_dict` reads (strided,
shared, big-endian and compressed storages), that its folded NaN check refuses as `check_finite`
does, that converting through it is bit-identical, and (in a fresh process, so that the numbers
are the process's own) that converting the VAR fixture peaks at under 1.5x the param bytes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from torch_reader_test import Storage, Tensor, tensor, write_zip

from converters import CheckpointError, check_finite, load_state_dict, stream_state_dict


def _tree(rng):
    big = Storage(rng.standard_normal(60, dtype=np.float32))
    return {
        "plain": tensor(rng.standard_normal((3, 5)).astype(np.float32)),
        "transposed": Tensor(big, 2, (4, 5), (1, 4)),  # a saved .T: strided
        "shared": Tensor(big, 30, (6, 5), (5, 1)),  # second view of the same storage
        "half": tensor(rng.standard_normal(7).astype(np.float16)),
        "ints": tensor(np.arange(6, dtype=np.int64).reshape(2, 3)),
        "empty": tensor(np.zeros((0, 3), np.float32)),
        "scalar": tensor(np.float32(2.5)),
    }


@pytest.mark.parametrize(
    "layout", [{}, {"byteorder": "big"}, {"compress": True}], ids=["stored", "big", "deflate"]
)
def test_streamed_tensors_equal_load_state_dict(tmp_path, layout):
    path = write_zip(tmp_path / "sd.pth", _tree(np.random.default_rng(0)), **layout)
    want = load_state_dict(path)
    sd = stream_state_dict(path)
    assert list(sd) == list(want)
    for k, a in want.items():
        assert sd[k].shape == a.shape and sd[k].dtype == a.dtype
        got = np.asarray(sd[k])
        assert got.dtype == a.dtype and np.array_equal(got, a), k
        assert got.base is None or not np.shares_memory(got, np.asarray(sd[k]))  # owned
    sd.finish()


def test_streamed_nan_check_refuses_as_check_finite(tmp_path):
    bad = np.ones((4, 4), np.float32)
    bad[1, 2] = np.nan
    tree = {"a": tensor(np.ones(3, np.float32)), "w": tensor(bad), "buf": tensor(-bad)}
    path = write_zip(tmp_path / "nan.pth", tree)
    with pytest.raises(CheckpointError) as want:
        check_finite(load_state_dict(path), path)
    sd = stream_state_dict(path)
    np.asarray(sd["a"])
    with pytest.raises(CheckpointError) as got:
        np.asarray(sd["w"])
    assert str(got.value) == str(want.value)  # names both tensors: 2 of 3
    assert "2 of 3" in str(got.value)
    # A tensor the converter never reads (an ignored buffer) is checked by finish().
    sd = stream_state_dict(path)
    np.asarray(sd["a"])
    with pytest.raises(CheckpointError) as late:
        sd.finish()
    assert str(late.value) == str(want.value)
    sd = stream_state_dict(path, allow_nonfinite=True)
    assert np.isnan(np.asarray(sd["w"])).sum() == 1
    sd.finish()


def test_streamed_conversion_is_bit_identical(reference):
    from arvg_jax import families, models
    from converters.var_vae import convert_vae

    ref = reference("var")
    fam, cfg, tok_cfg = models.resolve_configs("var", ref / "config.json")
    want = fam.convert(load_state_dict(ref / "var.pth"), cfg)
    got, n = models.convert_transformer(families.get("var"), ref / "var.pth", cfg, "var")
    assert n == len(load_state_dict(ref / "var.pth"))
    flat_w, flat_g = (dict(_leaves(t)) for t in (want, got))
    assert flat_w.keys() == flat_g.keys()
    for k in flat_w:
        assert np.array_equal(np.asarray(flat_w[k]), np.asarray(flat_g[k])), k
    vae_want = convert_vae(load_state_dict(ref / "vae.pth"), tok_cfg)
    vae_got, _ = models.convert_tokenizer(fam, ref / "vae.pth", tok_cfg, "var")
    for (k, a), (k2, b) in zip(_leaves(vae_want), _leaves(vae_got), strict=True):
        assert k == k2 and np.array_equal(np.asarray(a), np.asarray(b)), k


def _leaves(tree, prefix=""):
    for k, v in sorted(tree.items()):
        if isinstance(v, dict):
            yield from _leaves(v, f"{prefix}{k}/")
        else:
            yield prefix + k, v


# Measured in a fresh process: a warm-up conversion pays jax's tracing and compiles, then the peak
# RSS (VmHWM, reset through /proc/self/clear_refs) of each step above the RSS before it.
# MALLOC_MMAP_THRESHOLD_ keeps glibc from reusing freed warm-up memory unseen.
_CHILD = r"""
import gc, json, os, sys, tempfile
import jax, orbax.checkpoint
from arvg_jax import conversion, models
ref = sys.argv[1]
files, config = (ref + "/var.pth", ref + "/vae.pth"), ref + "/config.json"

def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))

def measure(fn):
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    base = status("VmRSS:")
    out = fn()
    return status("VmHWM:") - base, out

out = tempfile.mkdtemp() + "/var.safetensors"
def convert():
    return conversion.convert("var", *files, config=config, out=out, fmt="safetensors",
                              overwrite=True, progress=False)
m = models.load_float("var", *files, config)  # warm-up: tracing, compiles
convert()
param_bytes = sum(a.nbytes for t in (m.params, m.vae_params) for a in jax.tree.leaves(t))
del m
load_peak, m = measure(lambda: models.load_float("var", *files, config))
del m
convert_peak, _ = measure(convert)
print(json.dumps({"params": param_bytes, "load_float": load_peak, "convert": convert_peak}))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="Linux /proc only")
def test_converting_peaks_under_one_and_a_half_copies_of_the_params(reference):
    ref = reference("var")
    from conftest import REPO

    # The checkout under test, whatever the working directory (-P: not shadowed by it).
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, "MALLOC_MMAP_THRESHOLD_": "65536"}
    env["JAX_PLATFORMS"] = "cpu"
    res = subprocess.run(
        [sys.executable, "-P", "-c", _CHILD, str(ref)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["params"] > 20e6  # tens of MB: large next to the fixed costs measured
    for step in ("load_float", "convert"):
        ratio = got[step] / got["params"]
        assert ratio < 1.5, f"{step}: peak {got[step]:,} bytes = {ratio:.2f}x the params"
