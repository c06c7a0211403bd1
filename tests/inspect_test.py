"""Tests for `arvg inspect` (arvg_jax/commands/inspect.py), run through the CLI dispatcher."""

from __future__ import annotations

import argparse
import json
import pickle
import re
import struct
import sys
import types
import zipfile

import numpy as np
import pytest

from arvg_jax import cli


def write_safetensors(path, arrays):
    names = {np.dtype(np.float32): "F32", np.dtype(np.int64): "I64"}
    header, blobs, offset = {}, [], 0
    for name, a in arrays.items():
        header[name] = {
            "dtype": names[a.dtype],
            "shape": list(a.shape),
            "data_offsets": [offset, offset + a.nbytes],
        }
        blobs.append(a.tobytes())
        offset += a.nbytes
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))
    return path


class Evil:
    def __reduce__(self):
        return print, ("pwned",)


def write_hostile(path):
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({"w": Evil()}, protocol=2))
    return path


def run(capsys, *argv):
    code = cli.main(["inspect", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_lists_keys_shapes_dtypes_and_totals(tmp_path, capsys):
    path = write_safetensors(
        tmp_path / "a.safetensors",
        {"blocks.0.weight": np.zeros((3, 5), np.float32), "step": np.zeros((), np.int64)},
    )
    code, out, err = run(capsys, path)
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "blocks.0.weight  [3, 5]  float32",
        "step             []      int64",
        "2 tensors, 16 parameters (0.0 MB)",
    ]


def test_lists_non_tensor_entries(tmp_path, capsys):
    tree = {"cfg": {"depth": 2, "name": "d16"}, "args": argparse.Namespace(lr=0.5), "none": None}
    path = tmp_path / "plain.pth"
    with zipfile.ZipFile(path, "w") as zf:  # a torch.save zip holding no tensors
        zf.writestr("archive/data.pkl", pickle.dumps(tree, protocol=2))
    code, out, err = run(capsys, path)
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "cfg/depth  = 2",
        "cfg/name   = 'd16'",
        "args       = Namespace(lr=0.5)",
        "none       = None",
        "0 tensors, 0 parameters (0.0 MB)",
    ]


def test_reference_flat_checkpoint(reference, capsys):
    code, out, err = run(capsys, reference("var", "var.pth"))
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split() == ["pos_start", "[1,", "1,", "128]", "float32"]
    assert any(line.split()[0] == "blocks.1.attn.mat_qkv.weight" for line in lines)
    assert any(line.split()[-1] == "int64" for line in lines)  # lvl_1L
    assert lines[-1].startswith("38 tensors, ")
    widths = {line.index("[") for line in lines[:-1]}
    assert len(widths) == 1  # shapes are aligned in one column


def test_reference_wrapped_checkpoint_shows_wrapper(reference, capsys):
    path = reference("mar", "mar.pth")
    code, out, _ = run(capsys, path)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("model/fake_latent ")
    assert sum(line.startswith("model_ema/") for line in lines) == 92
    assert lines[-2].startswith("wrapper: model (92 tensors, ")
    assert ", model_ema (92 tensors, " in lines[-2]
    assert lines[-1].startswith("184 tensors, ")

    code, out, _ = run(capsys, path, "--key", "model_ema")
    assert code == 0
    assert out.splitlines()[-1].startswith("92 tensors, ")
    assert not any(line.startswith("model/") for line in out.splitlines())


def test_hostile_file_exits_2_with_one_line(tmp_path, capsys):
    path = write_hostile(tmp_path / "evil.pth")
    code, out, err = run(capsys, path)
    assert (code, out) == (2, "")
    assert err.count("\n") == 1 and err.startswith(f"{path}: refused pickle global ")
    # protocol 2 writes Python 3's builtins under its Python 2 name
    assert re.search(r"global (__builtin__|builtins)\.print ", err)


@pytest.mark.parametrize(
    "content, fragment",
    [
        (b"", "empty file"),
        (b"PK\x03\x04garbage", "corrupt or truncated zip"),
        (None, "no such file"),
    ],
    ids=["empty", "garbage_zip", "missing"],
)
def test_unreadable_file_exits_2(tmp_path, capsys, content, fragment):
    path = tmp_path / "bad.pth"
    if content is not None:
        path.write_bytes(content)
    code, out, err = run(capsys, path)
    assert (code, out) == (2, "")
    assert err.startswith(f"{path}: {fragment}") and err.count("\n") == 1


def test_missing_key_exits_2(tmp_path, capsys):
    path = write_safetensors(tmp_path / "a.safetensors", {"w": np.zeros(2, np.float32)})
    code, _, err = run(capsys, path, "--key", "model")
    assert code == 2 and "no key 'model'" in err and err.count("\n") == 1


def test_directory_uses_quant_checkpoint_describe(tmp_path, capsys, monkeypatch):
    fake = types.ModuleType("quant.checkpoint")
    fake.describe = lambda path: f"quantized checkpoint at {path}"
    monkeypatch.setitem(sys.modules, "quant.checkpoint", fake)
    assert run(capsys, tmp_path) == (0, f"quantized checkpoint at {tmp_path}\n", "")


def test_directory_without_quant_checkpoint_exits_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "quant.checkpoint", None)  # makes the import fail
    code, out, err = run(capsys, tmp_path)
    assert (code, out) == (2, "")
    assert (
        err.startswith(f"{tmp_path}: cannot describe a quantized directory")
        and err.count("\n") == 1
    )
