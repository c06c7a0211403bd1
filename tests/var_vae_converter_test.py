"""VAR VQVAE converter: key coverage of the release manifest and error reports."""

import functools
import json

import jax
import numpy as np
import pytest

from arvg_jax.tokenizers import var_vqvae as vq
from converters import ConversionError, var_vae
from converters.torch_reader import load_state_dict


def _shapes(manifest: dict) -> dict:
    # manifests/*.json: key -> [shape, dtype]
    return {k: tuple(v[0]) for k, v in manifest.items() if k != "__wrapper__"}


@pytest.fixture
def release_manifest(reference):
    return _shapes(json.loads(reference("manifests", "vae_ch160v4096z32.json").read_text()))


@functools.cache
def _state_dict(path):
    return load_state_dict(path)


@pytest.fixture
def fixture_sd(reference):
    return dict(_state_dict(reference("var", "vae.pth")))


def test_release_manifest_maps_completely(release_manifest):
    cfg = vq.VQVAEConfig.release()
    var_vae.check_manifest_keys(release_manifest, cfg)  # raises on any gap
    # Every key is either mapped exactly once or explicitly ignored.
    keys = [key for key, _ in var_vae.param_table(cfg).values()]
    assert len(keys) == len(set(keys)) == 323
    assert set(keys) | var_vae.IGNORED_KEYS == set(release_manifest)


def test_release_manifest_rejects_fixture_config(release_manifest):
    with pytest.raises(ConversionError, match=r"mis-shaped \(308\)") as err:
        var_vae.check_manifest_keys(release_manifest, vq.VQVAEConfig.tiny())
    assert "decoder.conv_in.weight (640, 32, 3, 3)" in str(err.value)
    assert "missing" not in str(err.value) and "unexpected" not in str(err.value)


def test_fixture_converts_to_the_abstract_tree(reference, fixture_sd):
    cfg = var_vae.vae_config_from_fixture(json.loads(reference("var", "config.json").read_text()))
    assert cfg == vq.VQVAEConfig.tiny()
    params = var_vae.convert_vae(fixture_sd, cfg)
    abstract = vq.abstract_params(cfg)
    assert jax.tree.structure(params) == jax.tree.structure(abstract)
    for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(abstract), strict=True):
        assert (got.shape, got.dtype) == (want.shape, want.dtype)
    # OIHW -> HWIO, and the fused qkv keeps its [q | k | v] output order.
    w = fixture_sd["decoder.mid.attn_1.qkv.weight"]  # [3C, C, 1, 1]
    np.testing.assert_array_equal(
        params["decoder"]["mid_attn_1"]["qkv"]["kernel"][0, 0], w[:, :, 0, 0].T
    )
    w = fixture_sd["decoder.up.1.block.0.nin_shortcut.weight"]
    np.testing.assert_array_equal(
        params["decoder"]["up_1_block_0"]["nin_shortcut"]["kernel"], w.transpose(2, 3, 1, 0)
    )
    np.testing.assert_array_equal(
        params["quantize"]["phi_3"]["bias"], fixture_sd["quantize.quant_resi.qresi_ls.3.bias"]
    )
    np.testing.assert_array_equal(
        params["encoder"]["norm_out"]["scale"], fixture_sd["encoder.norm_out.weight"]
    )


def test_bad_state_dict_lists_every_problem(fixture_sd):
    sd = dict(fixture_sd)
    del sd["decoder.conv_in.bias"]
    del sd["quantize.quant_resi.qresi_ls.2.weight"]
    sd["decoder.extra.weight"] = np.zeros((3,), np.float32)
    sd["quant_conv.weight"] = np.zeros((32, 32, 1, 1), np.float32)
    del sd["quantize.ema_vocab_hit_SV"]  # ignored: neither required nor unexpected
    with pytest.raises(ConversionError) as err:
        var_vae.convert_vae(sd, vq.VQVAEConfig.tiny())
    msg = str(err.value)
    assert "missing (2)" in msg and "unexpected (1)" in msg and "mis-shaped (1)" in msg
    for key in (
        "decoder.conv_in.bias",
        "quantize.quant_resi.qresi_ls.2.weight",
        "decoder.extra.weight",
        "quant_conv.weight (32, 32, 1, 1)",
        "quant_conv/kernel is (3, 3, 32, 32)",
    ):
        assert key in msg
    assert "ema_vocab_hit_SV" not in msg


@pytest.mark.parametrize(
    "share,keys",
    [
        (1, ["quantize.quant_resi.qresi.weight"]),
        (0, [f"quantize.quant_resi.{k}.weight" for k in range(10)]),
        (4, [f"quantize.quant_resi.qresi_ls.{k}.weight" for k in range(4)]),
    ],
    ids=["shared", "non_shared", "partially_shared"],
)
def test_phi_keys_follow_share_mode(share, keys):
    # quant.py PhiShared / PhiNonShared / PhiPartiallyShared module paths.
    table = var_vae.param_table(vq.VQVAEConfig.tiny(share_quant_resi=share))
    phi = sorted(
        k for k, _ in table.values() if k.startswith("quantize.quant_resi") and k.endswith("weight")
    )
    assert phi == sorted(keys)


def test_config_from_fixture():
    cfg = var_vae.vae_config_from_fixture(
        {"V": 512, "Cvae": 16, "ch": 64, "share_quant_resi": 0, "patch_nums": [1, 2, 4], "depth": 2}
    )
    assert (cfg.vocab_size, cfg.z_channels, cfg.ch, cfg.share_quant_resi) == (512, 16, 64, 0)
    assert cfg.patch_nums == (1, 2, 4)
    assert var_vae.vae_config_from_fixture({}) == vq.VQVAEConfig.release()  # build_vae_var defaults
    with pytest.raises(ConversionError, match="vae_ch"):
        var_vae.vae_config_from_fixture({"vae_ch": 3})
