"""MAR converter: release manifests map completely (no allocation), weights chosen explicitly."""

import json

import jax
import numpy as np
import pytest
from flax import traverse_util

from arvg_jax.families.mar.config import MARConfig
from converters._errors import CheckpointError, ConversionError
from converters.mar import check_manifest, convert_mar, load_mar
from converters.torch_reader import load_state_dict

RELEASES = {"base": MARConfig.base, "large": MARConfig.large, "huge": MARConfig.huge}
PARAMS = {"base": 207_924_768, "large": 478_326_304, "huge": 942_403_104}  # reference/README


def _size(shape) -> int:
    return int(np.prod(shape, dtype=np.int64))


@pytest.mark.parametrize("name", sorted(RELEASES))
def test_release_manifest_maps_completely(reference, name):
    with open(reference("manifests", f"mar_{name}.json")) as f:
        manifest = json.load(f)
    assert manifest["__wrapper__"]["use"] == "model_ema"
    cfg = RELEASES[name]()
    abstract = check_manifest(manifest, cfg)
    leaves = jax.tree.leaves(abstract)
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)  # nothing allocated
    n_src = sum(_size(v[0]) for k, v in manifest.items() if k != "__wrapper__")
    assert sum(_size(x.shape) for x in leaves) == n_src == PARAMS[name]


def test_manifest_of_another_size_is_refused(reference):
    with open(reference("manifests", "mar_base.json")) as f:
        manifest = json.load(f)
    with pytest.raises(ConversionError) as info:
        check_manifest(manifest, MARConfig.large())
    msg = str(info.value)
    assert "missing (" in msg and "encoder_blocks.15.attn.qkv.weight" in msg
    assert "class_emb.weight (1000, 768) --copy--> (1000, 768)" in msg


def test_fixture_config_and_layout(reference):
    with open(reference("mar", "config.json")) as f:
        cfg = MARConfig.from_fixture(json.load(f)["mar"])
    assert cfg == MARConfig.tiny()
    sd = load_state_dict(reference("mar", "mar.pth"), key="model_ema")
    params = convert_mar(sd, cfg)
    t, h = params["transformer"], params["diffloss"]
    np.testing.assert_array_equal(
        t["encoder_blocks_1"]["attn"]["qkv"]["kernel"], sd["encoder_blocks.1.attn.qkv.weight"].T
    )
    np.testing.assert_array_equal(t["mask_token"], sd["mask_token"].reshape(-1))
    np.testing.assert_array_equal(
        t["encoder_pos_embed_learned"], sd["encoder_pos_embed_learned"][0]
    )
    np.testing.assert_array_equal(t["fake_latent"], sd["fake_latent"][0])
    np.testing.assert_array_equal(
        h["res_blocks_1"]["adaLN_modulation_1"]["bias"],
        sd["diffloss.net.res_blocks.1.adaLN_modulation.1.bias"],
    )
    assert "scale" not in traverse_util.flatten_dict(h).get(("final_layer_norm_final",), {})


def test_weights_are_chosen_explicitly(reference):
    path = reference("mar", "mar.pth")
    cfg = MARConfig.tiny()
    ema = load_mar(path, cfg, weights="model_ema")
    raw = load_mar(path, cfg, weights="model")
    a = ema["transformer"]["z_proj"]["kernel"]
    assert not np.array_equal(a, raw["transformer"]["z_proj"]["kernel"])
    with pytest.raises(ValueError, match="weights must be one of"):
        load_mar(path, cfg, weights="ema")
    with pytest.raises(CheckpointError):
        load_mar(path, cfg, weights="flat")  # the file is wrapped


def test_bad_state_dict_lists_every_problem(reference):
    sd = dict(load_state_dict(reference("mar", "mar.pth"), key="model_ema"))
    cfg = MARConfig.tiny()
    del sd["decoder_blocks.1.mlp.fc2.bias"]
    sd["diffloss.net.extra.weight"] = np.zeros((3,), np.float32)
    sd["z_proj.weight"] = sd["z_proj.weight"][:, :-1]
    with pytest.raises(ConversionError) as info:
        convert_mar(sd, cfg)
    msg = str(info.value)
    assert "missing (1):" in msg and "decoder_blocks.1.mlp.fc2.bias" in msg
    assert "unexpected (1):" in msg and "diffloss.net.extra.weight" in msg
    assert (
        "z_proj.weight (64, 15) --linear_transpose--> (15, 64), but transformer/z_proj/kernel"
        in msg
    )
