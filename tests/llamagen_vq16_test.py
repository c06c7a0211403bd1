"""LlamaGen VQ-16 decoder vs the PAR fixture; release manifest; converter errors; post-processing."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arvg_jax import resample
from arvg_jax.tokenizers import llamagen_vq16 as vq16
from converters._errors import ConversionError
from converters.llamagen_vq16 import check_manifest, convert_vq16, load_vq16
from converters.torch_reader import load_state_dict


def _fixture_cfg(reference):
    with open(reference("par", "config.json")) as f:
        return vq16.VQ16Config.from_fixture(json.load(f)["vq"])


def test_decode_code_matches_reference(reference):
    cfg = _fixture_cfg(reference)
    assert cfg == vq16.VQ16Config.tiny()
    params = load_vq16(reference("par", "llamagen_vq16.pth"), cfg)
    io = np.load(reference("par", "io.npz"))
    tokens = io["dec_tokens"]
    g = int(np.sqrt(tokens.shape[1]))
    img = jax.jit(lambda p, t: vq16.decode_code(p, cfg, t, (g, g)))(params, tokens)
    ref = io["dec_img"].transpose(0, 2, 3, 1)  # NCHW -> NHWC
    assert img.shape == ref.shape and img.dtype == jnp.float32
    rel = np.linalg.norm(np.asarray(img) - ref) / np.linalg.norm(ref)
    assert rel <= 1e-3, rel  # image tolerance (measured 9.6e-6)


def test_release_manifest_maps(reference):
    with open(reference("manifests", "llamagen_vq16.json")) as f:
        manifest = json.load(f)
    assert manifest["__wrapper__"]["use"] == "model"
    check_manifest(manifest, vq16.VQ16Config.release())
    with pytest.raises(ConversionError, match="decoder.conv_in.weight"):
        check_manifest(manifest, vq16.VQ16Config.tiny())


def test_corrupted_state_dict_lists_bad_keys(reference):
    cfg = _fixture_cfg(reference)
    sd = dict(load_state_dict(reference("par", "llamagen_vq16.pth"), key="model"))
    del sd["decoder.conv_blocks.0.attn.2.q.bias"]
    sd["decoder.conv_blocks.0.attn.2.qkv.weight"] = np.zeros((1,), np.float32)
    sd["post_quant_conv.weight"] = sd["post_quant_conv.weight"][:, :-1]
    with pytest.raises(ConversionError) as info:
        convert_vq16(sd, cfg)
    msg = str(info.value)
    assert "missing (1): decoder.conv_blocks.0.attn.2.q.bias" in msg
    assert "unexpected (1): decoder.conv_blocks.0.attn.2.qkv.weight" in msg
    assert "post_quant_conv.weight (64, 7, 1, 1) --conv_oihw_to_hwio--> (1, 1, 7, 64)" in msg


def test_eval_resize_and_uint8():
    x = jnp.asarray(np.random.default_rng(0).uniform(-1.1, 1.1, (1, 12, 12, 3)), jnp.float32)
    small = vq16.resize_for_eval(x, 8)
    w = resample.bicubic_matrix(12, 8)
    want = np.einsum("ph,bhwc,qw->bpqc", w, np.asarray(x), w)
    np.testing.assert_allclose(small, want, rtol=0, atol=1e-5)
    assert vq16.resize_for_eval(x, 12) is x
    u8 = np.asarray(vq16.to_uint8(jnp.array([-2.0, -1.0, 0.0, 0.999, 1.0, 3.0])))
    np.testing.assert_array_equal(u8, [0, 0, 128, 255, 255, 255])  # clamp, then truncate
