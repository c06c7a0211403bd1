"""Tests for converters.torch_reader: torch-free reading of torch.save and safetensors files.

torch is not available, so the files are written by tests/_torch_writer.py (the same opcodes
as `torch.save`, against fake `torch` modules).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import math
import os
import pickle
import re
import struct
import time
import tracemalloc
import zipfile

import ml_dtypes
import numpy as np
import pytest
from _torch_writer import (
    Storage,
    Tensor,
    tensor,
    torch_pickle,
    write_legacy,
    write_safetensors,
    write_zip,
)

from converters import (
    CheckpointError,
    LazyTensor,
    PickledNamespace,
    load_state_dict,
    open_state_dict,
    read_checkpoint,
)

WRITERS = {
    "zip": lambda p, obj: write_zip(p / "a.pth", obj),
    "legacy": lambda p, obj: write_legacy(p / "a.pth", obj),
}


def sample_arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "f32": rng.standard_normal((3, 5)).astype(np.float32),
        "f16": rng.standard_normal((7,)).astype(np.float16),
        "bf16": rng.standard_normal((2, 3, 4)).astype(ml_dtypes.bfloat16),
        "f64": rng.standard_normal((2, 2)),
        "i64": rng.integers(-(2**40), 2**40, (11,)),
        "i32": rng.integers(-100, 100, (3, 1)).astype(np.int32),
        "i16": rng.integers(-100, 100, (4,)).astype(np.int16),
        "i8": rng.integers(-100, 100, (5,)).astype(np.int8),
        "u8": rng.integers(0, 255, (6,)).astype(np.uint8),
        "bool": rng.random((13,)) > 0.5,
        "scalar": np.array(2.5, np.float32),
        "empty": np.zeros((0, 4), np.float32),
    }


def assert_same(got: dict, want: dict):
    assert list(got) == list(want)
    for k, a in want.items():
        assert got[k].dtype == a.dtype, k
        assert got[k].shape == a.shape, k
        np.testing.assert_array_equal(got[k], a, err_msg=k)


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("fmt", ["zip", "legacy", "safetensors"])
def test_round_trip_dtypes(tmp_path, fmt):
    arrays = sample_arrays()
    if fmt == "safetensors":
        path = write_safetensors(tmp_path / "a.safetensors", arrays)
    else:
        path = WRITERS[fmt](tmp_path, {k: tensor(a) for k, a in arrays.items()})
    got = load_state_dict(path)
    assert type(got) is dict
    assert_same(got, arrays)
    assert got["f32"].flags.writeable and got["f32"].flags.c_contiguous


def strided_cases():
    base = np.arange(60, dtype=np.float32)
    cases = {  # name: (offset, shape, stride)
        "transposed": (0, (5, 4, 3), (1, 5, 20)),
        "rows_offset": (20, (2, 5), (5, 1)),
        "rows_overlap": (25, (5,), (1,)),
        "column": (7, (3,), (20,)),
        "step2": (1, (2, 3), (30, 2)),
        "scalar": (59, (), ()),
        "size1_odd_stride": (3, (1, 4), (999, 1)),
        "empty": (60, (0, 4), (4, 1)),
        "broadcast": (10, (4, 5), (0, 1)),
    }
    return base, cases


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_strides_offsets_and_shared_storage(tmp_path, fmt):
    base, cases = strided_cases()
    storage = Storage(base)  # every tensor shares this one storage
    obj = collections.OrderedDict(
        (name, Tensor(storage, off, shape, stride)) for name, (off, shape, stride) in cases.items()
    )
    got = load_state_dict(WRITERS[fmt](tmp_path, obj))
    for name, (off, shape, stride) in cases.items():
        want = np.lib.stride_tricks.as_strided(base[off:], shape, [4 * s for s in stride])
        assert got[name].shape == shape, name
        np.testing.assert_array_equal(got[name], want, err_msg=name)
    assert got["transposed"].flags.c_contiguous and got["transposed"].flags.writeable
    # The storage is read once; contiguous tensors are views of it, as torch shares it.
    assert np.shares_memory(got["rows_offset"], got["rows_overlap"])
    # Overlapping strides stay a read-only view: no copy as large as the logical shape.
    assert not got["broadcast"].flags.writeable


def test_parameters_and_rebuild_v3(tmp_path):
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    f8 = np.array([0.5, -1.0, 2.0], ml_dtypes.float8_e4m3fn)
    u16 = np.array([[1, 65535]], np.uint16)
    obj = {
        "param": dataclasses.replace(tensor(w), parameter=True),
        "f8": Tensor(
            Storage(f8.view(np.uint8), untyped=True), 0, (3,), (1,), v3_dtype="float8_e4m3fn"
        ),
        "u16": Tensor(
            Storage(u16.view(np.uint8).reshape(-1), untyped=True), 1, (1,), (1,), v3_dtype="uint16"
        ),
    }
    got = load_state_dict(write_zip(tmp_path / "a.pt", obj))
    np.testing.assert_array_equal(got["param"], w)
    assert got["f8"].dtype == np.dtype(ml_dtypes.float8_e4m3fn)
    np.testing.assert_array_equal(got["f8"].astype(np.float32), [0.5, -1.0, 2.0])
    np.testing.assert_array_equal(got["u16"], np.array([65535], np.uint16))


def test_big_endian_and_compressed_zip(tmp_path):
    arrays = {"a": np.arange(5, dtype=np.float32) - 2.5, "b": np.arange(3, dtype=np.int64) << 40}
    obj = {k: tensor(a) for k, a in arrays.items()}
    assert_same(load_state_dict(write_zip(tmp_path / "be.pth", obj, byteorder="big")), arrays)
    assert_same(load_state_dict(write_zip(tmp_path / "z.pth", obj, compress=True)), arrays)


def test_legacy_storage_view(tmp_path):
    root = Storage(np.arange(10, dtype=np.int32))
    view = Storage(root.data[4:9], view_of=(root, 4))
    obj = {"whole": Tensor(root, 0, (10,), (1,)), "view": Tensor(view, 1, (2, 2), (2, 1))}
    got = load_state_dict(write_legacy(tmp_path / "a.pth", obj))
    np.testing.assert_array_equal(got["whole"], np.arange(10))
    np.testing.assert_array_equal(got["view"], [[5, 6], [7, 8]])


def test_lazy_reads_shapes_only(tmp_path):
    arrays = sample_arrays()
    path = write_zip(tmp_path / "a.pth", {k: tensor(a) for k, a in arrays.items()})
    lazy = open_state_dict(path)
    assert all(isinstance(t, LazyTensor) for t in lazy.values())
    assert lazy["bf16"].shape == (2, 3, 4) and lazy["bf16"].dtype == arrays["bf16"].dtype
    assert lazy["bf16"].nbytes == 48 and lazy["scalar"].size == 1
    np.testing.assert_array_equal(lazy["i64"].load(), arrays["i64"])


# --------------------------------------------------------------------------- wrappers


def wrapped_checkpoint():
    rng = np.random.default_rng(1)
    model = {"w": rng.standard_normal((2, 3)).astype(np.float32), "b": np.ones(3, np.float32)}
    ema = {k: v + 1 for k, v in model.items()}
    obj = {
        "model": collections.OrderedDict((k, tensor(v)) for k, v in model.items()),
        "model_ema": {k: tensor(v) for k, v in ema.items()},
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]},
        "steps": 3,
        "args": argparse.Namespace(lr=0.1, model="GPT-XL", dims=(1, 2)),
    }
    return obj, model, ema


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_wrapped_checkpoint_needs_key(tmp_path, fmt):
    obj, model, ema = wrapped_checkpoint()
    path = WRITERS[fmt](tmp_path, obj)
    with pytest.raises(CheckpointError, match=r"pass key='model_ema' or key='model'$") as e:
        load_state_dict(path)
    assert str(e.value).startswith(f"{path}: wrapped checkpoint")
    assert_same(load_state_dict(path, key="model_ema"), ema)
    assert_same(load_state_dict(path, key="model"), model)
    with pytest.raises(
        CheckpointError, match=r"no key 'ema'; top-level keys: 'model', 'model_ema'"
    ):
        load_state_dict(path, key="ema")
    with pytest.raises(CheckpointError, match=r"entry 'steps' is not a state dict \(int\)"):
        load_state_dict(path, key="steps")
    with pytest.raises(CheckpointError, match=r"entry 'optimizer/state' is not a tensor \(dict\)"):
        load_state_dict(path, key="optimizer")


def test_read_checkpoint_returns_whole_tree(tmp_path):
    obj, _, ema = wrapped_checkpoint()
    tree = read_checkpoint(write_zip(tmp_path / "a.pth", obj))
    assert list(tree) == ["model", "model_ema", "optimizer", "steps", "args"]
    assert type(tree["model"]) is dict  # OrderedDict becomes a plain dict, order kept
    assert_same(tree["model_ema"], ema)
    assert tree["optimizer"] == {"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]}
    assert tree["steps"] == 3
    assert isinstance(tree["args"], PickledNamespace)
    assert vars(tree["args"]) == {"lr": 0.1, "model": "GPT-XL", "dims": (1, 2)}


def test_flat_dict_with_non_tensor_names_the_key(tmp_path):
    path = write_zip(tmp_path / "a.pth", {"w": tensor(np.ones(2, np.float32)), "epoch": 7})
    with pytest.raises(CheckpointError, match=r"state dict entry 'epoch' is not a tensor \(int\)"):
        load_state_dict(path)
    with pytest.raises(CheckpointError, match=r"holds a list, not a dict of tensors"):
        load_state_dict(write_zip(tmp_path / "b.pth", [tensor(np.ones(2, np.float32))]))


def test_flat_state_dict_rejects_key(tmp_path):
    path = write_zip(tmp_path / "a.pth", {"w": tensor(np.ones(2, np.float32))})
    with pytest.raises(CheckpointError, match=r"flat state dict of 1 tensors \(pass key=None\)"):
        load_state_dict(path, key="model")


# --------------------------------------------------------------------------- real fixtures

STACKS = re.compile(r"(?:^|\.)((?:\w+_)?(?:blocks|layers))\.(\d+)\.")
FIXTURES = [  # file, key, manifest of the full-size release
    ("var/var.pth", None, "var_d16.json"),
    ("var/vae.pth", None, "vae_ch160v4096z32.json"),
    ("rar/rar.pth", None, "rar_b.json"),
    ("rar/maskgit_vqgan.pth", None, "maskgit_vqgan.json"),
    ("par/par.pth", "model", "par_xl.json"),
    ("par/llamagen_vq16.pth", "model", "llamagen_vq16.json"),
    ("mar/mar.pth", "model_ema", "mar_base.json"),
    ("mar/kl16.ckpt", "model", "kl16_vae.json"),
]


@pytest.mark.parametrize("rel, key, manifest", FIXTURES, ids=[f[0] for f in FIXTURES])
def test_reference_fixture_matches_manifest(reference, rel, key, manifest):
    path = reference(*rel.split("/"))
    man = json.loads(reference("manifests", manifest).read_text())
    wrapper = man.pop("__wrapper__", None)
    assert (wrapper is None) == (key is None)
    if key is not None:  # wrapped like the release: refused without key=, listing the keys
        with pytest.raises(CheckpointError, match=f"pass key='{wrapper['use']}'"):
            load_state_dict(path)
        assert sorted(read_checkpoint(path, lazy=True)) == sorted(wrapper["keys"])
    sd = load_state_dict(path, key=key)
    # The fixtures are small configs of the released architectures: same keys, except that
    # transformer stacks are shallower, and the same ranks and dtypes.
    assert set(sd) <= set(man)
    depth = collections.Counter()
    for k in sd:
        for stack, i in STACKS.findall(k):
            depth[stack] = max(depth[stack], int(i) + 1)
    for k in set(man) - set(sd):
        assert any(int(i) >= depth[s] for s, i in STACKS.findall(k)), k
    for k, a in sd.items():
        shape, dtype = man[k]
        assert (a.ndim, f"torch.{a.dtype}") == (len(shape), dtype), k
    weights = [a for k, a in sd.items() if k.endswith(".weight") and a.ndim >= 2]
    assert weights
    for a in weights:
        assert np.isfinite(a).all() and a.std() > 0


def test_reference_var_buffers_decode_exactly(reference):
    sd = load_state_dict(reference("var", "var.pth"))
    patch_nums = json.loads(reference("var", "config.json").read_text())["patch_nums"]
    lvl = np.repeat(np.arange(len(patch_nums)), [p * p for p in patch_nums])
    np.testing.assert_array_equal(sd["lvl_1L"], lvl[None])
    want_bias = np.where(lvl[:, None] >= lvl[None, :], 0.0, -np.inf).astype(np.float32)
    np.testing.assert_array_equal(sd["attn_bias_for_masking"], want_bias[None, None])


def test_reference_mar_model_and_ema_differ(reference):
    path = reference("mar", "mar.pth")
    model, ema = load_state_dict(path, key="model"), load_state_dict(path, key="model_ema")
    assert list(model) == list(ema)
    assert not np.array_equal(model["fake_latent"], ema["fake_latent"])


# --------------------------------------------------------------------------- hostile pickles


def op_global(module, name):
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def op_str(s):
    raw = s.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def op_call(fn, *args):
    return fn + b"(" + b"".join(args) + b"tR"  # MARK args TUPLE REDUCE


def in_dict(value_ops, proto=2):
    return bytes([0x80, proto]) + b"}" + op_str("w") + value_ops + b"s."


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def hostile_cases(marker):
    touch = op_str(f"touch {marker}")
    return {
        "os.system": (pickle.dumps({"w": Evil(marker)}, protocol=2), r"(os|posix)\.system"),
        "os.system_text": (in_dict(op_call(op_global("os", "system"), touch)), r"os\.system"),
        "eval": (
            in_dict(op_call(op_global("builtins", "eval"), op_str(f"open('{marker}','w')"))),
            r"builtins\.eval",
        ),
        "exec": (in_dict(op_call(op_global("builtins", "exec"), touch)), r"builtins\.exec"),
        "popen": (
            in_dict(
                op_call(
                    op_global("subprocess", "Popen"),
                    b"(" + op_str("touch") + op_str(str(marker)) + b"l",
                )
            ),
            r"subprocess\.Popen",
        ),
        "getattr_chain": (
            in_dict(
                op_call(
                    op_call(
                        op_global("builtins", "getattr"),
                        op_call(op_global("builtins", "__import__"), op_str("os")),
                        op_str("system"),
                    ),
                    touch,
                )
            ),
            r"builtins\.getattr",
        ),
        "stack_global": (
            in_dict(b"\x8c\x02os\x8c\x06system\x93" + b"(" + touch + b"tR", proto=4),
            r"os\.system",
        ),
        "class": (in_dict(op_global("collections", "Counter") + b")\x81"), r"collections\.Counter"),
        "numpy": (
            in_dict(op_call(op_global("numpy.core.multiarray", "_reconstruct"), op_str("x"))),
            r"numpy\.core\.multiarray\._reconstruct",
        ),
        "torch_other": (in_dict(op_call(op_global("torch", "load"), touch)), r"torch\.load"),
        "dotted_name": (
            in_dict(op_global("collections", "OrderedDict.fromkeys")),
            r"OrderedDict\.fromkeys",
        ),
        "persistent_module": (
            in_dict(b"(" + op_str("module") + op_str("x") + b"tQ"),
            r"persistent id kind 'module'",
        ),
    }


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
@pytest.mark.parametrize("case", list(hostile_cases("m")), ids=list(hostile_cases("m")))
def test_hostile_pickle_is_refused(tmp_path, fmt, case):
    marker = tmp_path / "pwned"
    raw, pattern = hostile_cases(marker)[case]
    path = tmp_path / "evil.pth"
    (write_zip if fmt == "zip" else write_legacy)(path, raw_pickle=raw)
    for read in (load_state_dict, read_checkpoint, open_state_dict):
        with pytest.raises(CheckpointError, match=pattern) as e:
            read(path)
        assert "\n" not in str(e.value) and str(e.value).startswith(f"{path}: ")
    assert not marker.exists()


# --------------------------------------------------------------------------- broken files


def good_zip(tmp_path):
    rng = np.random.default_rng(0)
    obj = {f"w{i}": tensor(rng.standard_normal((64, 64)).astype(np.float32)) for i in range(4)}
    return write_zip(tmp_path / "good.pth", obj)


RNG_BYTES = np.random.default_rng(0).bytes(4096)


def raw(path, data: bytes):
    path.write_bytes(data)
    return path


def halve(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def nested_lists(depth):
    return b"\x80\x02" + b"]" * depth + b"a" * (depth - 1) + b"."


def st_header(tmp_path, header: bytes, extra=b""):
    path = tmp_path / "a.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + extra)
    return path


def st_entry(dtype="F32", shape=(2,), offsets=(0, 8)):
    return {"x": {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}}


BROKEN = {  # id: (builder(tmp_path) -> path, expected message fragment)
    "missing": (lambda p: p / "nope.pth", "no such file"),
    "directory": (lambda p: p, "is a directory"),
    "empty": (lambda p: raw(p / "e.pth", b""), "empty file"),
    "text": (lambda p: raw(p / "t.pth", b"hello world\n"), "unrecognised format"),
    "random": (lambda p: raw(p / "r.bin", RNG_BYTES), "unrecognised format"),
    "random_pickle_like": (lambda p: raw(p / "r.pt", b"\x80\x02" + RNG_BYTES), "corrupt pickle"),
    "plain_pickle": (
        lambda p: raw(p / "p.pt", pickle.dumps({"a": 1}, protocol=2)),
        "without torch's magic number",
    ),
    "truncated_zip": (lambda p: halve(good_zip(p)), "corrupt or truncated zip archive"),
    "truncated_legacy": (
        lambda p: halve(write_legacy(p / "l.pth", {"w": tensor(np.ones((64, 64), np.float32))})),
        "truncated",
    ),
    "zip_without_data_pkl": (
        lambda p: _zip_with(p / "z.pth", {"archive/foo.txt": b"x"}),
        "has no archive/data.pkl",
    ),
    "zip_missing_storage": (
        lambda p: _zip_with(
            p / "z.pth", {"archive/data.pkl": torch_pickle({"w": tensor(np.ones(3))}, False)[0]}
        ),
        "storage data/0 is missing",
    ),
    "storage_file_short": (
        lambda p: write_zip(p / "s.pth", {"w": tensor(np.ones(16, np.float32))}, cut=4),
        "holds 60 bytes but the pickle needs 64",
    ),
    "tensor_larger_than_storage": (
        lambda p: write_zip(
            p / "b.pth", {"w": Tensor(Storage(np.ones(10, np.float32)), 0, (4, 4), (4, 1))}
        ),
        "needs 16 elements but storage '0' holds 10",
    ),
    "offset_past_storage": (
        lambda p: write_legacy(
            p / "o.pth", {"w": Tensor(Storage(np.ones(10, np.float32)), 8, (3,), (1,))}
        ),
        "needs 11 elements",
    ),
    "negative_stride": (
        lambda p: write_zip(
            p / "n.pth", {"w": Tensor(Storage(np.ones(4, np.float32)), 3, (4,), (-1,))}
        ),
        "stride (-1,) is not a tuple of non-negative ints",
    ),
    "huge_bytes_length": (
        lambda p: write_zip(
            p / "h.pth", raw_pickle=b"\x80\x04\x8e" + struct.pack("<Q", 2**50) + b"ab."
        ),
        "corrupt archive/data.pkl",
    ),
    "deep_nesting": (
        lambda p: write_zip(p / "d.pth", raw_pickle=nested_lists(150)),
        "nested deeper than 100",
    ),
    "st_header_longer_than_file": (
        lambda p: raw(p / "a.safetensors", struct.pack("<Q", 10**15) + b"{}"),
        "header length 1000000000000000 exceeds the 2 bytes after it",
    ),
    "st_offsets_outside": (
        lambda p: st_header(p, json.dumps(st_entry(offsets=(8, 16))).encode(), b"\0" * 8),
        "outside the data area (8 bytes)",
    ),
    "st_offsets_wrong_size": (
        lambda p: st_header(p, json.dumps(st_entry(shape=(3,))).encode(), b"\0" * 8),
        "spans 8 bytes but shape [3] of F32 needs 12",
    ),
    "st_bad_json": (lambda p: st_header(p, b'{"x": [1, 2'), "header is not valid JSON"),
    "st_not_utf8": (lambda p: st_header(p, b'{"\xff": 1}'), "header is not UTF-8"),
    "st_bad_dtype": (
        lambda p: st_header(p, json.dumps(st_entry(dtype="F4")).encode(), b"\0" * 8),
        "unsupported dtype 'F4'",
    ),
    "st_truncated": (
        lambda p: halve(write_safetensors(p / "t.safetensors", {"w": np.ones(64, np.float32)})),
        "outside the data area",
    ),
}


def _zip_with(path, members):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


@pytest.mark.parametrize("case", list(BROKEN), ids=list(BROKEN))
def test_broken_file_is_refused_quickly(tmp_path, case):
    build, fragment = BROKEN[case]
    path = build(tmp_path)
    start = time.perf_counter()
    for read in (load_state_dict, read_checkpoint):
        with pytest.raises(CheckpointError) as e:
            read(path)
        message = str(e.value)
        assert "\n" not in message and message.startswith(f"{path}: "), message
        assert fragment in message, message
    assert time.perf_counter() - start < 1.0


def test_pickle_cannot_mutate_the_allowlisted_objects(tmp_path):
    from converters import _unpickle

    defaults = _unpickle._rebuild_tensor_v2.__defaults__
    # GLOBAL f; BUILD (None, {"__defaults__": ()}): slot state is applied with setattr.
    slots = b"N}" + op_str("__defaults__") + b")s\x86b"
    pid = b"(" + op_str("storage") + op_global("torch", "FloatStorage") + op_str("0")
    pid += op_str("cpu") + b"K\x02tQ"  # ('storage', FloatStorage, '0', 'cpu', 2) BINPERSID
    cases = {
        "function": (op_global("torch._utils", "_rebuild_tensor_v2") + slots, "_Rebuild (BUILD"),
        "storage_type": (op_global("torch", "FloatStorage") + slots, "_StorageType (BUILD"),
        "storage": (pid + b"N}" + op_str("numel") + b"J\x00\xca\x9a\x3bs\x86b", "_Storage (BUILD"),
        "namespace_class": (
            op_global("argparse", "Namespace") + b"N}" + op_str("__repr__") + b"Ns\x86b",
            "unexpected object <class",
        ),
        "bare_global": (op_global("torch", "FloatStorage"), "unexpected object torch.FloatStorage"),
    }
    for name, (ops, fragment) in cases.items():
        path = _zip_with(
            tmp_path / f"{name}.pth",
            {"archive/data.pkl": in_dict(ops), "archive/data/0": np.ones(2, np.float32).tobytes()},
        )
        with pytest.raises(CheckpointError, match=re.escape(fragment)):
            read_checkpoint(path)
    assert _unpickle._rebuild_tensor_v2.__defaults__ == defaults
    assert "__repr__" in vars(PickledNamespace) and repr(PickledNamespace(a=1)) == "Namespace(a=1)"
    ok = write_zip(tmp_path / "ok.pth", {"w": tensor(np.ones(2, np.float32))})
    np.testing.assert_array_equal(load_state_dict(ok)["w"], [1, 1])


def test_cyclic_and_shared_containers_are_kept(tmp_path):
    # EMPTY_LIST, BINPUT 0, BINGET 0, APPEND: a list holding itself.
    tree = read_checkpoint(write_zip(tmp_path / "c.pth", raw_pickle=b"\x80\x02]q\x00h\x00a."))
    assert tree[0] is tree


# --------------------------------------------------------------------------- memory


@pytest.mark.parametrize("fmt", ["zip", "legacy", "safetensors"])
def test_peak_memory_is_about_the_checkpoint_size(tmp_path, fmt):
    arrays = {f"w{i}": np.full((1024, 1024), i, np.float32) for i in range(4)}  # 16 MiB
    if fmt == "safetensors":
        path = write_safetensors(tmp_path / "m.safetensors", arrays)
    else:
        path = WRITERS[fmt](tmp_path, {k: tensor(a) for k, a in arrays.items()})
    total = sum(a.nbytes for a in arrays.values())
    del arrays
    tracemalloc.start()
    try:
        sd = load_state_dict(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sum(a.nbytes for a in sd.values()) == total
    assert math.isclose(float(sd["w3"][5, 7]), 3.0)
    assert peak < 1.1 * total, (peak, total)
