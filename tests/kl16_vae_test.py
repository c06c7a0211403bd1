"""KL-16 VAE decoder (MAR's tokenizer) and its converter."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arvg_jax.tokenizers import kl16_vae
from converters._errors import ConversionError
from converters.kl16_vae import check_manifest, convert_kl16
from converters.torch_reader import load_state_dict


def _size(shape) -> int:
    return int(np.prod(shape, dtype=np.int64))


def test_release_manifest_maps(reference):
    with open(reference("manifests", "kl16_vae.json")) as f:
        manifest = json.load(f)
    leaves = jax.tree.leaves(check_manifest(manifest, kl16_vae.KL16Config.release()))
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)
    decode_path = [
        v[0] for k, v in manifest.items() if k.startswith(("decoder.", "post_quant_conv."))
    ]
    assert sum(_size(x.shape) for x in leaves) == sum(_size(s) for s in decode_path)
    assert sum(_size(s) for s in decode_path) == 38_188_931 + 16 * 16 + 16  # + post_quant_conv


def test_bad_state_dict_is_refused(reference):
    sd = dict(load_state_dict(reference("mar", "kl16.ckpt"), key="model"))
    cfg = kl16_vae.KL16Config.tiny()
    convert_kl16({k: v for k, v in sd.items() if not k.startswith("encoder.")}, cfg)
    del sd["decoder.mid.attn_1.q.bias"]
    sd["decoder.up.0.attn.0.q.weight"] = np.zeros((32, 32, 1, 1), np.float32)
    with pytest.raises(ConversionError) as info:
        convert_kl16(sd, cfg)
    msg = str(info.value)
    assert "missing (1):" in msg and "decoder.mid.attn_1.q.bias" in msg
    assert "unexpected (1):" in msg and "decoder.up.0.attn.0.q.weight" in msg


@functools.lru_cache(maxsize=1)
def _decoded(fixture):
    config = json.loads((fixture / "config.json").read_text())
    cfg = kl16_vae.KL16Config.from_fixture(config["vae"])
    assert cfg == kl16_vae.KL16Config.tiny()
    params = convert_kl16(load_state_dict(fixture / "kl16.ckpt", key="model"), cfg)
    io = np.load(fixture / "io.npz")
    # vae.decode(tokens / 0.2325): the decoder input is MAR tokens divided by the token scale.
    z = jnp.transpose(io["vae_tokens"], (0, 2, 3, 1)) / config["token_scale"]
    img, mid = kl16_vae.decode_with_mid(params, z, cfg=cfg)
    return np.asarray(img), np.asarray(mid), io["vae_img"], io["vae_mid"]


def test_decoder_matches_fixture(reference):
    img, mid, ref_img, ref_mid = _decoded(reference("mar"))
    mid = np.transpose(mid, (0, 3, 1, 2))
    img = np.transpose(img, (0, 3, 1, 2))
    assert np.abs(mid - ref_mid).max() <= 1e-5 * np.abs(ref_mid).max()
    assert np.abs(img - ref_img).max() <= 3e-5 * np.abs(ref_img).max()
