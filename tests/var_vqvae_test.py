"""VAR multi-scale VQVAE against the official PyTorch outputs (reference/var/io.npz)."""

import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arvg_jax import resample
from arvg_jax.tokenizers import var_vqvae as vq
from converters import var_vae
from converters.torch_reader import load_state_dict

_idx_to_img = jax.jit(vq.idx_to_img, static_argnums=1)
_idx_to_fhat = jax.jit(vq.idx_to_fhat, static_argnums=1)
_idx_to_var_input = jax.jit(vq.idx_to_var_input, static_argnums=1)
_next_scale_input = jax.jit(vq.next_scale_input, static_argnums=(1, 4))
_encode = jax.jit(vq.encode, static_argnums=1)
_latent_to_idx = jax.jit(vq.latent_to_idx, static_argnums=1)
_fhat_to_img = jax.jit(vq.fhat_to_img, static_argnums=1)
_img_to_idx = jax.jit(vq.img_to_idx, static_argnums=1)


@functools.cache
def _load(vae_path, config_path):
    cfg = var_vae.vae_config_from_fixture(json.loads(config_path.read_text()))
    return cfg, var_vae.convert_vae(load_state_dict(vae_path), cfg)


@functools.cache
def _io(path):
    return dict(np.load(path))


@pytest.fixture
def vae(reference):
    return _load(reference("var", "vae.pth"), reference("var", "config.json"))


@pytest.fixture
def io(reference):
    return _io(reference("var", "io.npz"))


def _nchw(x):
    return np.asarray(x).transpose(0, 3, 1, 2)


def _rel(a, b):
    return float(np.linalg.norm(np.asarray(a) - b) / np.linalg.norm(b))


def test_phi_table():
    # models.md 1.4: the official tick rule for 10 scales and 4 partially shared φ.
    assert vq.VQVAEConfig.release().phi_table == (0, 0, 1, 1, 1, 2, 2, 3, 3, 3)
    assert vq.phi_index_table(10, 1) == (0,) * 10  # PhiShared
    # PhiNonShared with K = 3 scales: ticks (1/6, 1/2, 5/6) against si / 2 = (0, 1/2, 1).
    assert vq.phi_index_table(3, 0) == (0, 1, 2)
    # 2 partially shared φ: ticks (1/4, 3/4) against (0, 1/3, 2/3, 1).
    assert vq.phi_index_table(4, 2) == (0, 0, 1, 1)


def test_teacher_forcing_input_matches_reference(vae, io):
    cfg, params = vae
    x = _idx_to_var_input(params, cfg, vq.split_idx(cfg, io["tf_idx"]))
    ref = io["tf_x_BLCv_wo_first_l"]
    assert x.shape == ref.shape == (2, cfg.seq_len - 1, cfg.z_channels)
    assert x.dtype == jnp.float32
    assert _rel(x, ref) <= 1e-5


def test_next_scale_input_steps_match_reference(vae, io):
    # The sampler's path: one jitted call per scale with a static si.
    cfg, params = vae
    idx = vq.split_idx(cfg, io["tf_idx"])
    f_hat = jnp.zeros((2, cfg.latent_size, cfg.latent_size, cfg.z_channels), jnp.float32)
    xs = []
    for si in range(cfg.num_scales):
        f_hat, x_next = _next_scale_input(params, cfg, f_hat, idx[si], si)
        if si == cfg.num_scales - 1:
            assert x_next is None
        else:
            pn = cfg.patch_nums[si + 1]
            assert x_next.shape == (2, pn * pn, cfg.z_channels)
            xs.append(x_next)
    assert _rel(jnp.concatenate(xs, axis=1), io["tf_x_BLCv_wo_first_l"]) <= 1e-5
    np.testing.assert_allclose(f_hat, _idx_to_fhat(params, cfg, idx), rtol=0, atol=1e-6)


def test_decode_matches_reference(vae, io):
    # One batch: the teacher-forcing tokens (idxBl_to_img) and both greedy generations, whose
    # images the official sampler returns as fhat_to_img(f̂) * 0.5 + 0.5.
    cfg, params = vae
    names = ["tf_idx", "gen_cfg1p5_idx", "gen_cfg0p0_idx"]
    idx = np.concatenate([io[n] for n in names])
    img = _nchw(_idx_to_img(params, cfg, vq.split_idx(cfg, idx)))
    assert img.shape == (6, 3, cfg.image_size, cfg.image_size)
    assert img.min() >= -1.0 and img.max() <= 1.0
    assert np.abs(img[0:2] - io["dec_img"]).max() <= 1e-4
    assert np.abs(img[2:4] * 0.5 + 0.5 - io["gen_cfg1p5_img"]).max() <= 1e-4
    assert np.abs(img[4:6] * 0.5 + 0.5 - io["gen_cfg0p0_img"]).max() <= 1e-4


def _np_conv3x3(x, kernel, bias):
    """Naive float64 'same' 3x3 conv on NHWC with an HWIO kernel."""
    h, w = x.shape[1:3]
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = np.broadcast_to(bias, x.shape[:3] + bias.shape).astype(np.float64)
    for dy in range(3):
        for dx in range(3):
            out = out + xp[:, dy : dy + h, dx : dx + w] @ kernel[dy, dx]
    return out


def _np_latent_to_idx(qparams, cfg, f):
    """float64 numpy oracle of quant.py `f_to_idxBl_or_fhat`; also returns each argmin's margin."""
    emb = np.asarray(qparams["embedding"], np.float64)
    phis = [
        (
            np.asarray(qparams[f"phi_{k}"]["kernel"], np.float64),
            np.asarray(qparams[f"phi_{k}"]["bias"]),
        )
        for k in range(cfg.num_phi)
    ]
    n = cfg.latent_size
    f_rest = np.asarray(f, np.float64)
    idx_list, margins = [], []
    for si, pn in enumerate(cfg.patch_nums):
        last = si == cfg.num_scales - 1
        a = resample.area_matrix(n, pn).astype(np.float64)
        z = f_rest if last else np.einsum("ph,bhwc,qw->bpqc", a, f_rest, a)
        z = z.reshape(-1, cfg.z_channels)
        dist = (z**2).sum(1, keepdims=True) + (emb**2).sum(1) - 2 * z @ emb.T
        idx = dist.argmin(1)
        top2 = np.sort(dist, axis=1)[:, :2]
        margins.append(float((top2[:, 1] - top2[:, 0]).min()))
        h = emb[idx].reshape(f.shape[0], pn, pn, cfg.z_channels)
        if not last:
            u = resample.bicubic_matrix(pn, n).astype(np.float64)
            h = np.einsum("ph,bhwc,qw->bpqc", u, h, u)
        kernel, bias = phis[cfg.phi_table[si]]
        h = 0.5 * h + 0.5 * _np_conv3x3(h, kernel, bias)  # quant_resi = 0.5
        f_rest = f_rest - h
        idx_list.append(idx.reshape(f.shape[0], pn * pn))
    return idx_list, margins


def test_quantizer_matches_numpy_oracle(vae, io):
    # No official encoder output exists; the quantizer is checked on the fixture encoder's latent of
    # the reference images against an independent float64 loop of the official algorithm.
    cfg, params = vae
    img = jnp.asarray(io["dec_img"].transpose(0, 2, 3, 1))
    f = _encode(params, cfg, img)
    assert f.shape == (2, cfg.latent_size, cfg.latent_size, cfg.z_channels)
    idx, f_hat = _latent_to_idx(params, cfg, f)
    want, margins = _np_latent_to_idx(params["quantize"], cfg, f)
    for si, pn in enumerate(cfg.patch_nums):
        assert idx[si].shape == (2, pn * pn) and idx[si].dtype == jnp.int32
        np.testing.assert_array_equal(idx[si], want[si], err_msg=f"scale {si}, {margins[si]=}")
    # The quantizer's own f̂ is the f̂ that decoding its tokens rebuilds.
    np.testing.assert_allclose(f_hat, _idx_to_fhat(params, cfg, idx), rtol=0, atol=1e-5)


def test_img_to_idx_round_trip(vae, io):
    # Encode -> tokens -> decode -> encode again: shapes, ranges, and determinism of the whole
    # chain (random weights: no reconstruction quality to test).
    cfg, params = vae
    img = jnp.asarray(io["dec_img"].transpose(0, 2, 3, 1))
    idx = _img_to_idx(params, cfg, img)
    assert [i.shape for i in idx] == [(2, pn * pn) for pn in cfg.patch_nums]
    # img_to_idx is the oracle-checked quantizer on the encoder's latent.
    for a, b in zip(idx, _latent_to_idx(params, cfg, _encode(params, cfg, img))[0], strict=True):
        np.testing.assert_array_equal(a, b)
    assert all(int(i.min()) >= 0 and int(i.max()) < cfg.vocab_size for i in idx)
    rec = _fhat_to_img(params, cfg, _idx_to_fhat(params, cfg, idx))
    assert rec.shape == img.shape and float(jnp.abs(rec).max()) <= 1.0
    again = _img_to_idx(params, cfg, rec)
    again2 = _img_to_idx(params, cfg, rec)
    for a, b in zip(again, again2, strict=True):
        np.testing.assert_array_equal(a, b)


def test_downsample_pads_right_and_bottom():
    # basic_vae.py Downsample2x: F.pad(x, (0, 1, 0, 1)) then a 3x3 stride-2 conv with no padding.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 6, 8, 2)).astype(np.float32)
    mod = vq.Downsample()
    params = mod.init(jax.random.key(0), x)["params"]
    kernel = np.asarray(params["conv"]["kernel"], np.float64)
    bias = np.asarray(params["conv"]["bias"], np.float64)
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 1), (0, 1), (0, 0)))
    want = np.zeros((1, 3, 4, 2))
    for oy in range(3):
        for ox in range(4):
            patch = xp[0, 2 * oy : 2 * oy + 3, 2 * ox : 2 * ox + 3]  # [3, 3, I]
            want[0, oy, ox] = np.einsum("hwi,hwio->o", patch, kernel) + bias
    np.testing.assert_allclose(mod.apply({"params": params}, x), want, rtol=0, atol=1e-5)


def test_params_layout_and_release_size():
    # models.md 1.1: the release VQVAE has 108,948,355 params; decode path 64,653,923 + 9,248
    # (post_quant_conv) + 168,064 (codebook + 4 φ). Counted on the abstract tree (no allocation).
    tree = vq.abstract_params(vq.VQVAEConfig.release())
    assert set(tree) == {"encoder", "decoder", "quant_conv", "post_quant_conv", "quantize"}

    def count(t):
        return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(t))

    assert count(tree) == 108_948_355
    assert count(tree["decoder"]) == 64_653_923
    assert count(tree["post_quant_conv"]) == 9_248
    assert count(tree["quantize"]) == 168_064


def test_bfloat16_decode_tracks_float32(vae, io):
    # A smoke check of the dtype plumbing, not parity: bfloat16 keeps ~3 significant digits and the
    # random fixture decoder amplifies them (measured mean |Δ| 0.016 on images of mean |x| 0.45); a
    # lost cast or a wrong path gives differences of order 0.5.
    cfg, params = vae
    idx = vq.split_idx(cfg, io["tf_idx"][:1])
    f_hat = _idx_to_fhat(params, cfg, idx)
    ref = _fhat_to_img(params, cfg, f_hat)
    img = jax.jit(vq.fhat_to_img, static_argnums=1, static_argnames="dtype")(
        params, cfg, f_hat, dtype=jnp.bfloat16
    )
    assert img.dtype == jnp.float32 and img.shape == ref.shape
    err = jnp.abs(img - ref)
    assert float(err.max()) > 0  # the compute really ran in bfloat16
    assert float(err.mean()) <= 0.03


def test_config_holds_architecture_only():
    # Execution choices (compute dtype) live in ExecOptions, not in the checkpoint's config; an old
    # stored config that still carries them loads (assets.config_from_dict drops them).
    from arvg_jax import assets

    names = {f.name for f in dataclasses.fields(vq.VQVAEConfig)}
    assert not names & {"dtype", "param_dtype"}
    old = {
        **assets.config_to_dict(vq.VQVAEConfig.tiny()),
        "dtype": "bfloat16",
        "param_dtype": "float32",
    }
    assert assets.config_from_dict(vq.VQVAEConfig, old) == vq.VQVAEConfig.tiny()
