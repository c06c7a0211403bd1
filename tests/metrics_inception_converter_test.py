"""Inception weights converter: both FID weight layouts, aliasing storages, key errors.

The .pth files are written torch-free with the torch.save-compatible writer of
tests/_torch_writer.py: the fixture's torch-fidelity layout (conv weights and fc.weight as
overlapping views into one storage, as reference/eval/inception.pth has them) and the pytorch-fid
layout (torchvision module order, conv before bn, plus `bn.num_batches_tracked`; one storage per
tensor, the legacy torch.save format).
"""

import json
import re

import jax
import numpy as np
import pytest
from _torch_writer import Storage, Tensor, strides_of, write_legacy, write_zip
from flax import traverse_util

from converters._errors import ConversionError
from converters.inception import check_manifest, convert_inception, load_inception
from converters.torch_reader import load_state_dict, open_state_dict


@pytest.fixture(scope="module")
def weights(request):
    from conftest import require_reference

    path = require_reference("eval", "inception.pth")
    return path, load_state_dict(path)


def _flat(params) -> dict:
    return traverse_util.flatten_dict(params, sep="/")


def _pytorch_fid_order(keys) -> list[str]:
    """torchvision module order within each BasicConv2d: conv.weight, then the bn entries."""
    rank = {"conv": 0, "bn": 1}
    groups: dict[str, list[str]] = {}
    for k in keys:
        groups.setdefault(k.rsplit(".", 2)[0] if ".bn." in k or ".conv." in k else k, []).append(k)
    out = []
    for members in groups.values():
        out.extend(sorted(members, key=lambda k: rank.get(k.split(".")[-2], 2)))
    return out


def test_manifest_maps_completely(reference):
    manifest = json.loads(reference("eval", "inception_manifest.json").read_text())
    abstract = check_manifest(manifest)
    leaves = jax.tree.leaves(abstract)
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)
    assert len(leaves) == len(manifest)
    assert sum(x.size for x in leaves) == sum(int(np.prod(s)) for s, _ in manifest.values())


def test_pytorch_fid_manifest_maps_completely(reference):
    manifest = json.loads(reference("eval", "inception_manifest.json").read_text())
    fid_layout = {k: manifest[k] for k in _pytorch_fid_order(manifest)}
    for k in [k for k in manifest if k.endswith(".bn.running_var")]:
        fid_layout[k.replace("running_var", "num_batches_tracked")] = [[], "torch.int64"]
    assert list(fid_layout)[:2] == ["Conv2d_1a_3x3.conv.weight", "Conv2d_1a_3x3.bn.weight"]
    want = jax.tree.map(lambda x: (x.shape, x.dtype), check_manifest(manifest))
    assert jax.tree.map(lambda x: (x.shape, x.dtype), check_manifest(fid_layout)) == want


def test_errors_list_missing_unexpected_and_misshaped(reference):
    manifest = json.loads(reference("eval", "inception_manifest.json").read_text())
    bad = dict(manifest)
    del bad["Mixed_6d.branch1x1.bn.running_mean"]
    bad["AuxLogits.fc.weight"] = [[1000, 768], "torch.float32"]
    bad["Mixed_7c.branch_pool.conv.weight"] = [[192, 2048, 3, 3], "torch.float32"]
    bad["fc.bias"] = [[1008], "torch.int64"]
    with pytest.raises(ConversionError) as e:
        check_manifest(bad)
    msg = str(e.value)
    assert "missing keys" in msg and "Mixed_6d.branch1x1.bn.running_mean" in msg
    assert re.search(r"unexpected keys: \['AuxLogits\.fc\.weight'\]", msg)
    assert "Mixed_7c.branch_pool.conv.weight (192, 2048, 3, 3)" in msg
    assert "expected (1, 1, 2048, 192)" in msg
    assert "fc.bias (1008,) int64" in msg


def test_layout_mapping(weights):
    _, sd = weights
    p = _flat(convert_inception(sd))
    w = sd["Mixed_6d.branch1x1.conv.weight"]  # OIHW [192, 768, 1, 1]
    np.testing.assert_array_equal(p["Mixed_6d/branch1x1/kernel"][0, 0], w[:, :, 0, 0].T)
    w = sd["Conv2d_1a_3x3.conv.weight"]  # [32, 3, 3, 3]
    np.testing.assert_array_equal(p["Conv2d_1a_3x3/kernel"][1, 2, 0, 5], w[5, 0, 1, 2])
    np.testing.assert_array_equal(p["fc/kernel"], sd["fc.weight"].T)
    np.testing.assert_array_equal(
        p["Mixed_5b/branch_pool/moving_variance"], sd["Mixed_5b.branch_pool.bn.running_var"]
    )


def test_round_trip_both_layouts(weights, tmp_path):
    path, sd = weights
    want = _flat(convert_inception(sd))

    # torch-fidelity layout with the fixture's aliasing: same storages and offsets, rewritten.
    lazy = open_state_dict(path)
    storages: dict[int, Storage] = {}
    tensors = {}
    for k, t in lazy.items():
        st = storages.get(id(t.storage))
        if st is None:
            st = storages[id(t.storage)] = Storage(np.zeros(t.storage.numel, np.float32))
        st.data[t.offset : t.offset + t.size] = sd[k].reshape(-1)
        tensors[k] = Tensor(st, t.offset, t.shape, t.strides)
    assert len(storages) < len(lazy)  # some tensors share a storage
    fidelity = write_zip(tmp_path / "weights-inception-2015-12-05-6726825d.pth", tensors)

    # pytorch-fid layout: torchvision order, num_batches_tracked buffers, one storage each.
    fid_sd = {}
    for k in _pytorch_fid_order(sd):
        a = np.array(sd[k])
        fid_sd[k] = Tensor(Storage(a.reshape(-1)), 0, a.shape, strides_of(a.shape))
        if k.endswith(".bn.running_var"):
            n = np.array([7], np.int64)
            fid_sd[k.replace("running_var", "num_batches_tracked")] = Tensor(Storage(n), 0, (), ())
    pytorch_fid = write_legacy(tmp_path / "pt_inception-2015-12-05-6726825d.pth", fid_sd)

    for file in (fidelity, pytorch_fid):
        got = _flat(load_inception(file))
        assert got.keys() == want.keys()
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=f"{file.name}: {k}")


def test_params_do_not_alias_the_file_buffers(weights):
    path, _ = weights
    sd = load_state_dict(path)  # writable views into the file's storages
    params = _flat(convert_inception(sd))
    before = np.array(params["Mixed_6d/branch1x1/kernel"])
    for k in ("Mixed_6d.branch1x1.conv.weight", "fc.weight", "Conv2d_1a_3x3.bn.bias"):
        if sd[k].flags.writeable:
            sd[k][...] = 0
    np.testing.assert_array_equal(params["Mixed_6d/branch1x1/kernel"], before)
    assert np.any(np.asarray(params["fc/kernel"]) != 0)
