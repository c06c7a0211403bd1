"""RAR converter: release manifests map completely (no allocation), fixture converts, errors."""

import json

import jax
import numpy as np
import pytest
from flax import traverse_util

from arvg_jax.families.rar import RARConfig
from converters._errors import ConversionError
from converters._table import manifest_sources
from converters.rar import check_manifest, convert_rar, rar_config_from_state_dict
from converters.torch_reader import load_state_dict

# reference/README.md "RAR manifests": tensors and parameters of each release.
RELEASES = {
    "b": (RARConfig.b, 441, 260_923_648),
    "l": (RARConfig.l, 441, 461_668_352),
    "xl": (RARConfig.xl, 585, 955_425_024),
    "xxl": (RARConfig.xxl, 729, 1_498_520_704),
}


def _official_manifest(cfg: RARConfig) -> dict:
    """The official state-dict keys and shapes, written from modeling/rar.py (independent of the
    converter's table; checked against the release manifests below)."""
    c, k, f, v = cfg.hidden_size, cfg.head_dim, cfg.mlp_dim, cfg.codebook_size
    f32 = "torch.float32"
    m = {
        "cls_token": [[1, 1, c], f32],
        "pos_embed": [[1, cfg.image_seq_len + 1024, c], f32],
        "target_aware_pos_embed": [[1, cfg.image_seq_len + 1024, c], f32],
        "timesteps_embeddings": [[1, cfg.image_seq_len + 100, c], f32],
        "embeddings.weight": [[v + 1 + cfg.condition_num_classes + 1, c], f32],
    }
    for i in range(cfg.num_hidden_layers):
        b = f"blocks.{i}."
        for name, shape in (
            ("norm1.weight", [c]),
            ("norm1.bias", [c]),
            ("norm2.weight", [c]),
            ("norm2.bias", [c]),
            ("attn.qkv.weight", [3 * c, c]),
            ("attn.qkv.bias", [3 * c]),
            ("attn.q_norm.weight", [k]),
            ("attn.q_norm.bias", [k]),
            ("attn.k_norm.weight", [k]),
            ("attn.k_norm.bias", [k]),
            ("attn.proj.weight", [c, c]),
            ("attn.proj.bias", [c]),
            ("mlp.fc1.weight", [f, c]),
            ("mlp.fc1.bias", [f]),
            ("mlp.fc2.weight", [c, f]),
            ("mlp.fc2.bias", [c]),
            ("adaLN_modulation.1.weight", [6 * c, c]),
            ("adaLN_modulation.1.bias", [6 * c]),
        ):
            m[b + name] = [shape, f32]
    m |= {
        "adaln_before_head.adaLN_modulation.1.weight": [[2 * c, c], f32],
        "adaln_before_head.adaLN_modulation.1.bias": [[2 * c], f32],
        "lm_head.weight": [[v, c], f32],
        "lm_head.bias": [[v], f32],
    }
    return m


@pytest.mark.parametrize("name", sorted(RELEASES))
def test_release_manifest_accepted(reference, name):
    preset, tensors, params = RELEASES[name]
    manifest = json.loads(reference("manifests", f"rar_{name}.json").read_text())
    assert "__wrapper__" not in manifest and len(manifest) == tensors
    cfg = preset()
    assert manifest == _official_manifest(cfg)
    abstract = check_manifest(manifest, cfg)
    assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract)) == params
    assert rar_config_from_state_dict(manifest_sources(manifest)) == cfg


def test_fixture_converts(reference):
    fixture = reference("rar")
    cfg = RARConfig.from_json(fixture / "config.json")
    sd = load_state_dict(fixture / "rar.pth")
    assert rar_config_from_state_dict(sd) == cfg
    params = convert_rar(sd, cfg)
    np.testing.assert_array_equal(params["cls_token"], sd["cls_token"].reshape(-1))
    np.testing.assert_array_equal(params["pos_embed"], sd["pos_embed"][0])
    np.testing.assert_array_equal(
        params["blocks_1"]["attn"]["qkv"]["kernel"], sd["blocks.1.attn.qkv.weight"].T
    )
    np.testing.assert_array_equal(
        params["blocks_0"]["attn"]["k_norm"]["scale"], sd["blocks.0.attn.k_norm.weight"]
    )
    np.testing.assert_array_equal(
        params["adaln_before_head"]["adaLN_modulation"]["kernel"],
        sd["adaln_before_head.adaLN_modulation.1.weight"].T,
    )


def _tiny_state_dict(cfg):
    rng = np.random.default_rng(0)
    return {
        k: rng.standard_normal(shape).astype(np.float32)
        for k, (shape, _) in _official_manifest(cfg).items()
    }


def test_tiny_roundtrip_and_attn_mask_ignored():
    cfg = RARConfig.tiny()
    sd = _tiny_state_dict(cfg)
    sd["attn_mask"] = np.zeros((cfg.image_seq_len + 1024,) * 2, np.float32)  # a buffer
    params = convert_rar(sd, cfg)
    flat = traverse_util.flatten_dict(params, sep="/")
    assert len(flat) == len(sd) - 1
    np.testing.assert_array_equal(flat["blocks_1/mlp/fc2/kernel"], sd["blocks.1.mlp.fc2.weight"].T)
    np.testing.assert_array_equal(flat["embeddings/embedding"], sd["embeddings.weight"])
    np.testing.assert_array_equal(flat["lm_head/bias"], sd["lm_head.bias"])


def test_errors_list_every_bad_key():
    cfg = RARConfig.tiny()
    sd = _tiny_state_dict(cfg)
    del sd["blocks.0.attn.q_norm.bias"]
    sd["blocks.0.attn.extra"] = np.zeros(3, np.float32)
    sd["lm_head.weight"] = np.zeros((cfg.codebook_size + 1, cfg.hidden_size), np.float32)
    with pytest.raises(ConversionError) as err:
        convert_rar(sd, cfg)
    msg = str(err.value)
    assert "missing keys" in msg and "blocks.0.attn.q_norm.bias" in msg
    assert "unexpected keys" in msg and "blocks.0.attn.extra" in msg
    assert "mis-shaped keys" in msg and "lm_head.weight" in msg


def test_config_from_official_rejects_unknown_keys():
    with pytest.raises(ValueError, match="hidden_sise"):
        RARConfig.from_official({"hidden_sise": 3})
