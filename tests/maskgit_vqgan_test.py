"""MaskGIT-VQGAN decoder: fixture decode parity, release manifest, the shortcut quirk."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arvg_jax.tokenizers import maskgit_vqgan
from arvg_jax.tokenizers.maskgit_vqgan import MaskGITVQGANConfig, ResnetBlock
from converters._errors import ConversionError
from converters.maskgit_vqgan import check_manifest, convert_maskgit_vqgan
from converters.torch_reader import load_state_dict

IMG_ATOL = 3e-4  # reference/README.md "RAR tolerances": images <= 3e-4 absolute


def _fixture_cfg(fixture) -> MaskGITVQGANConfig:
    config = json.loads((fixture / "config.json").read_text())
    return MaskGITVQGANConfig.from_official(config["tokenizer"], config["tokenizer_codebook"])


def test_decode_matches_reference(reference):
    fixture = reference("rar")
    cfg = _fixture_cfg(fixture)
    params = convert_maskgit_vqgan(load_state_dict(fixture / "maskgit_vqgan.pth"), cfg)
    io = np.load(fixture / "io.npz")
    decode = jax.jit(lambda p, t: maskgit_vqgan.decode_tokens(p, cfg, t, clamp=False))
    img = np.asarray(decode(params, jnp.asarray(io["dec_tokens"]))).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(img, io["dec_img_preclamp"], rtol=0, atol=IMG_ATOL)
    np.testing.assert_allclose(np.clip(img, 0, 1), io["dec_img"], rtol=0, atol=IMG_ATOL)


def test_release_manifest_accepted(reference):
    manifest = json.loads(reference("manifests", "maskgit_vqgan.json").read_text())
    assert len(manifest) == 168
    abstract = check_manifest(manifest, MaskGITVQGANConfig.release())
    decoder = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract["decoder"]))
    assert decoder == 30_478_339  # models.md §2.6
    assert abstract["quantize"]["embedding"].shape == (1024, 256)


def test_shortcut_applies_to_the_block_output():
    """cin != cout: out = h + nin_shortcut(h), h the conv2 output (not the block input)."""
    x = jax.random.normal(jax.random.key(0), (1, 4, 4, 32))
    block = ResnetBlock(64)
    rng = np.random.default_rng(1)
    params = jax.tree.map(
        lambda a: rng.standard_normal(a.shape).astype(np.float32) * 0.1,
        jax.eval_shape(block.init, jax.random.key(1), x)["params"],
    )
    w = params["nin_shortcut"]["kernel"]  # [1, 1, 64, 64]
    zero = dict(params, nin_shortcut={"kernel": np.zeros_like(w)})
    apply = jax.jit(block.apply)
    h = apply({"params": zero}, x)  # shortcut term 0: the block returns h
    out = apply({"params": params}, x)
    np.testing.assert_allclose(out, h + jnp.einsum("bhwc,cd->bhwd", h, w[0, 0]), atol=1e-5)


def test_tiny_decoder_shapes_and_clamp():
    cfg = MaskGITVQGANConfig.tiny()
    tokens = jnp.arange(2 * cfg.num_tokens).reshape(2, cfg.num_tokens) % cfg.codebook_size
    # numpy noise on the abstract tree: a jitted init spends ~20 s compiling its threefry draws.
    rng = np.random.default_rng(0)
    params = jax.tree.map(
        lambda a: rng.standard_normal(a.shape).astype(np.float32) * 0.3,
        maskgit_vqgan.abstract_params(cfg),
    )
    img = jax.jit(lambda p, t: maskgit_vqgan.decode_tokens(p, cfg, t))(params, tokens)
    assert img.shape == (2, cfg.resolution, cfg.resolution, 3)
    assert float(img.min()) >= 0 and float(img.max()) <= 1


def test_converter_errors_and_ignored_encoder(reference):
    fixture = reference("rar")
    cfg = _fixture_cfg(fixture)
    sd = dict(load_state_dict(fixture / "maskgit_vqgan.pth"))
    assert any(k.startswith("encoder.") for k in sd)  # consumed unread
    del sd["decoder.up.1.block.0.nin_shortcut.weight"]
    sd["decoder.extra.weight"] = np.zeros(1, np.float32)
    with pytest.raises(ConversionError, match="nin_shortcut.*decoder.extra.weight"):
        convert_maskgit_vqgan(sd, cfg)


def test_config_rejects_unknown_keys():
    with pytest.raises(ValueError, match="attn_resolutions"):
        MaskGITVQGANConfig.from_official({"attn_resolutions": [16]})
