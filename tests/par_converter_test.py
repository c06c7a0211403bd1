"""PAR converter: every release manifest maps onto its preset (shapes only), errors list keys."""

import json

import jax
import numpy as np
import pytest
from flax import traverse_util

from arvg_jax.families.par.config import PARConfig
from converters._errors import ConversionError
from converters.par import check_manifest, convert_par, load_par, wrapper_key
from converters.torch_reader import load_state_dict

# manifest name -> (preset, parameter count from reference/README.md "PAR manifests")
RELEASES = {
    "par_xl": (PARConfig.xl_4x, 774_703_360),
    "par_xxl": (PARConfig.xxl_4x, 1_410_977_280),
    "par_3b": (PARConfig.gpt3b_4x, 3_096_668_800),
    "par_3b_16x": (PARConfig.gpt3b_16x, 3_096_707_200),
}


def _manifest(reference, name):
    with open(reference("manifests", f"{name}.json")) as f:
        return json.load(f)


@pytest.mark.parametrize("name", sorted(RELEASES))
def test_release_manifest_maps_completely(reference, name):
    preset, n_params = RELEASES[name]
    manifest = _manifest(reference, name)
    assert manifest["__wrapper__"]["use"] == "model"
    abstract = check_manifest(manifest, preset())
    leaves = jax.tree.leaves(abstract)
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)  # nothing allocated
    assert len(leaves) == len(manifest) - 1
    assert sum(int(np.prod(x.shape)) for x in leaves) == n_params


def test_release_names():
    assert PARConfig.release("PAR-XXL-4x") == PARConfig.xxl_4x()
    assert PARConfig.release("PAR-3B-16x").spe_token_num == 15
    with pytest.raises(ValueError, match="unknown PAR release"):
        PARConfig.release("PAR-B-4x")


def test_manifest_of_another_release_is_refused(reference):
    with pytest.raises(ConversionError) as info:
        check_manifest(_manifest(reference, "par_3b"), PARConfig.gpt3b_16x())
    msg = str(info.value)
    assert "spe_tok_embeddings.special_embeddings.weight (3, 3200)" in msg
    assert "but spe_tok_embeddings/embedding is (15, 3200)" in msg
    with pytest.raises(ConversionError) as info:
        check_manifest(_manifest(reference, "par_xl"), PARConfig.xxl_4x())
    msg = str(info.value)
    assert (
        "missing (84)" in msg and "layers.47.ffn_norm.weight (for layers_47/ffn_norm/scale" in msg
    )


def test_fixture_conversion_layout(reference):
    path = reference("par", "par.pth")
    assert wrapper_key(path) == "model"
    with open(reference("par", "config.json")) as f:
        cfg = PARConfig.from_fixture(json.load(f))
    sd = load_state_dict(path, key="model")
    params = load_par(path, cfg)
    flat = traverse_util.flatten_dict(params, sep="/")
    assert len(flat) == len(sd)
    np.testing.assert_array_equal(
        params["layers_1"]["attention"]["wqkv"]["kernel"], sd["layers.1.attention.wqkv.weight"].T
    )
    np.testing.assert_array_equal(
        params["cls_embedding"]["embedding"], sd["cls_embedding.embedding_table.weight"]
    )
    np.testing.assert_array_equal(params["norm"]["scale"], sd["norm.weight"])


def test_corrupted_state_dict_lists_bad_keys(reference):
    cfg = PARConfig.tiny()
    sd = dict(load_state_dict(reference("par", "par.pth"), key="model"))
    del sd["layers.1.feed_forward.w3.weight"]
    sd["layers.0.attention.q_norm.weight"] = np.ones(cfg.dim, np.float32)
    sd["output.weight"] = sd["output.weight"][:-1]
    with pytest.raises(ConversionError) as info:
        convert_par(sd, cfg)
    msg = str(info.value)
    assert (
        "missing (1): layers.1.feed_forward.w3.weight (for layers_1/feed_forward/w3/kernel" in msg
    )
    assert "unexpected (1): layers.0.attention.q_norm.weight" in msg
    assert "output.weight (16383, 64) --linear_kernel--> (64, 16383), but output/kernel is" in msg


def test_official_arguments():
    kw = {"dim": 64, "n_layer": 2, "n_head": 2, "drop_path_rate": 0.1, "token_dropout_p": 0.1}
    assert PARConfig.from_official(kw) == PARConfig.tiny()
    with pytest.raises(ValueError, match="unknown PAR ModelArgs"):
        PARConfig.from_official({**kw, "qk_norm": True})
    with pytest.raises(ValueError, match="ar_token_num - 1"):
        PARConfig.tiny(spe_token_num=2)
    assert PARConfig.xl_4x().ffn_dim == 3584 and PARConfig.gpt3b_4x().ffn_dim == 8704
    assert PARConfig.gpt3b_4x().head_dim == 100
