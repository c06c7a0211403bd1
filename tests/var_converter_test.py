"""VAR converter: release manifests map completely (no allocation), errors list bad keys."""

import json

import jax
import numpy as np
import pytest
from flax import traverse_util

from arvg_jax.families.var.model import VARConfig
from converters._errors import ConversionError
from converters.torch_reader import load_state_dict
from converters.var import check_manifest, convert_var, var_config_from_state_dict

RELEASES = {"d16": VARConfig.d16, "d20": VARConfig.d20, "d24": VARConfig.d24, "d30": VARConfig.d30}
IGNORED_BUFFERS = ("lvl_1L", "attn_bias_for_masking")


def _official_manifest(cfg: VARConfig) -> dict:
    """The official state-dict keys and shapes, written from models/var.py + basic_var.py.

    Independent of the converter's table (checked against the release manifests below), so it
    can stand in for the d36 release, which has no manifest in the fixtures.
    """
    c, h, l, f = cfg.embed_dim, cfg.num_heads, cfg.seq_len, cfg.mlp_dim
    f32 = "torch.float32"
    m = {
        "pos_start": [[1, cfg.first_l, c], f32],
        "pos_1LC": [[1, l, c], f32],
        "lvl_1L": [[1, l], "torch.int64"],
        "attn_bias_for_masking": [[1, 1, l, l], f32],
        "word_embed.weight": [[c, cfg.cvae], f32],
        "word_embed.bias": [[c], f32],
        "class_emb.weight": [[cfg.num_classes + 1, c], f32],
        "lvl_embed.weight": [[cfg.num_scales, c], f32],
    }
    if cfg.shared_aln:
        m |= {"shared_ada_lin.1.weight": [[6 * c, c], f32], "shared_ada_lin.1.bias": [[6 * c], f32]}
    for i in range(cfg.depth):
        b = f"blocks.{i}."
        m |= {
            b + "attn.scale_mul_1H11": [[1, h, 1, 1], f32],
            b + "attn.q_bias": [[c], f32],
            b + "attn.v_bias": [[c], f32],
            b + "attn.zero_k_bias": [[c], f32],
            b + "attn.mat_qkv.weight": [[3 * c, c], f32],
            b + "attn.proj.weight": [[c, c], f32],
            b + "attn.proj.bias": [[c], f32],
            b + "ffn.fc1.weight": [[f, c], f32],
            b + "ffn.fc1.bias": [[f], f32],
            b + "ffn.fc2.weight": [[c, f], f32],
            b + "ffn.fc2.bias": [[c], f32],
        }
        if cfg.shared_aln:
            m[b + "ada_gss"] = [[1, 1, 6, c], f32]
        else:
            m |= {b + "ada_lin.1.weight": [[6 * c, c], f32], b + "ada_lin.1.bias": [[6 * c], f32]}
    m |= {
        "head_nm.ada_lin.1.weight": [[2 * c, c], f32],
        "head_nm.ada_lin.1.bias": [[2 * c], f32],
        "head.weight": [[cfg.vocab_size, c], f32],
        "head.bias": [[cfg.vocab_size], f32],
    }
    return m


def _size(shape) -> int:
    return int(np.prod(shape, dtype=np.int64))


@pytest.mark.parametrize("name", sorted(RELEASES))
def test_release_manifest_maps_completely(reference, name):
    with open(reference("manifests", f"var_{name}.json")) as f:
        manifest = json.load(f)
    cfg = RELEASES[name]()
    abstract = check_manifest(manifest, cfg)
    leaves = jax.tree.leaves(abstract)
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)  # nothing allocated
    # Every manifest value lands in the tree except the two recomputed buffers.
    n_src = sum(_size(s) for k, (s, _) in manifest.items() if k not in IGNORED_BUFFERS)
    assert sum(_size(x.shape) for x in leaves) == n_src
    assert _official_manifest(cfg) == manifest


def test_shared_adaln_release_layout_maps():
    cfg = VARConfig.d36()
    flat = traverse_util.flatten_dict(check_manifest(_official_manifest(cfg), cfg), sep="/")
    assert flat["shared_ada_lin/kernel"].shape == (2304, 6 * 2304)
    assert flat["blocks_35/ada_gss"].shape == (6, 2304)
    assert "blocks_0/ada_lin/kernel" not in flat
    assert flat["pos_1LC"].shape == (2240, 2304)


def test_conversion_layout(reference):
    sd = load_state_dict(reference("var", "var.pth"))
    cfg = var_config_from_state_dict(sd)
    with open(reference("var", "config.json")) as f:
        assert cfg == VARConfig.from_official(json.load(f))
    params = convert_var(sd, cfg)
    c = cfg.embed_dim
    qkv = params["blocks_1"]["attn"]["qkv"]
    np.testing.assert_array_equal(qkv["kernel"], sd["blocks.1.attn.mat_qkv.weight"].T)
    np.testing.assert_array_equal(qkv["bias"][:c], sd["blocks.1.attn.q_bias"])
    np.testing.assert_array_equal(qkv["bias"][c : 2 * c], np.zeros(c))
    np.testing.assert_array_equal(qkv["bias"][2 * c :], sd["blocks.1.attn.v_bias"])
    np.testing.assert_array_equal(
        params["blocks_0"]["attn"]["scale_mul"], sd["blocks.0.attn.scale_mul_1H11"].reshape(-1)
    )
    np.testing.assert_array_equal(params["pos_1LC"], sd["pos_1LC"][0])
    np.testing.assert_array_equal(
        params["head_nm"]["ada_lin"]["bias"], sd["head_nm.ada_lin.1.bias"]
    )


def test_corrupted_state_dict_lists_bad_keys(reference):
    sd = dict(load_state_dict(reference("var", "var.pth")))
    cfg = var_config_from_state_dict(sd)
    del sd["blocks.1.attn.v_bias"]
    sd["blocks.1.attn.k_bias"] = np.zeros(cfg.embed_dim, np.float32)
    sd["head.weight"] = sd["head.weight"][:, :-1]
    sd["blocks.0.attn.scale_mul_1H11"] = np.zeros((1, 3, 1, 1), np.float32)
    with pytest.raises(ConversionError) as info:
        convert_var(sd, cfg)
    msg = str(info.value)
    assert "missing keys: ['blocks.1.attn.v_bias (for blocks_1/attn/qkv/bias (384,))']" in msg
    assert "unexpected keys: ['blocks.1.attn.k_bias']" in msg
    assert "head.weight (4096, 127) -> head/kernel: got (127, 4096), expected (128, 4096)" in msg
    assert "blocks.0.attn.scale_mul_1H11 (1, 3, 1, 1) -> blocks_0/attn/scale_mul: got (3,)" in msg


def test_manifest_of_another_size_is_refused(reference):
    with open(reference("manifests", "var_d16.json")) as f:
        manifest = json.load(f)
    with pytest.raises(ConversionError) as info:
        check_manifest(manifest, VARConfig.d20())
    msg = str(info.value)
    assert "'blocks.16.attn.mat_qkv.weight (for blocks_16/attn/qkv/kernel (1280, 3840))'" in msg
    assert "'blocks.19.ffn.fc2.bias (for blocks_19/ffn/fc2/bias (1280,))'" in msg
    assert (
        "class_emb.weight (1001, 1024) -> class_emb/embedding: got (1001, 1024), "
        "expected (1001, 1280)" in msg
    )
