"""RTN and SmoothQuant on the reference VAR: int8 path vs oracle, jit generation, folding."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import quant
from arvg_jax.families.var import sampler as var_sampler
from arvg_jax.families.var.model import VAR
from arvg_jax.families.var.quant_adapter import VARAdapter
from arvg_jax.models import load_float
from quant import _tree, checkpoint
from quant.algorithms.rtn import rtn
from quant.algorithms.smoothquant import smooth, smoothquant
from quant.recipes import Recipe


@pytest.fixture(scope="module")
def fixture():
    from conftest import require_reference

    ref = require_reference("var")
    m = load_float("var", ref / "var.pth", ref / "vae.pth", ref / "config.json")
    io = np.load(ref / "io.npz")
    batch = {"labels": io["tf_labels"], "x": io["tf_x_BLCv_wo_first_l"]}
    return m, batch


def _logits(cfg, params, batch):
    return VAR(cfg).apply({"params": params}, jnp.asarray(batch["labels"]), batch["x"])


def _rel(a, b):
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


def test_smoothquant_fold_preserves_float_logits(fixture):
    m, batch = fixture
    ad = VARAdapter(m.cfg)
    smoothed = smooth(ad, m.params, batch, 0.5, progress=False)
    ref = _logits(m.cfg, m.params, batch)
    assert _rel(_logits(m.cfg, smoothed, batch), ref) <= 1e-5
    # The fold really changed the weights (otherwise the check above is vacuous).
    k0 = np.asarray(m.params["blocks_0"]["attn"]["qkv"]["kernel"])
    k1 = np.asarray(smoothed["blocks_0"]["attn"]["qkv"]["kernel"])
    assert np.max(np.abs(k0 - k1)) > 1e-3


@pytest.mark.parametrize("method", ["rtn", pytest.param("smoothquant", marks=pytest.mark.slow)])
@pytest.mark.slow  # ~75 s; ptq4arvg_test checks the deployed int8 path against its oracle
@pytest.mark.parametrize("bits", ["w8a8", pytest.param("w6a6", marks=pytest.mark.slow)])
def test_int8_path_matches_oracle_and_generates(fixture, method, bits):
    m, batch = fixture
    ad = VARAdapter(m.cfg)
    recipe = Recipe.parse(method, bits)
    fn = rtn if method == "rtn" else smoothquant
    q = fn(ad, m.params, batch, recipe, progress=False)
    flat = _tree.flatten(q)
    for name in ad.quantized_layers():
        assert isinstance(flat[f"{name}/kernel"], quant.QArray), name
        assert flat[f"{name}/kernel"].qvalue.dtype == jnp.int8
        assert flat[f"{name}/kernel"].bits == recipe.w_bits
        assert isinstance(flat[f"{name}/input_quant"], quant.ActQuant), name
    assert not isinstance(flat["word_embed/kernel"], quant.QArray)  # stays float (official)
    apply = jax.jit(lambda p, lab, x: VAR(m.cfg).apply({"params": p}, lab, x))
    int8 = apply(q, jnp.asarray(batch["labels"]), batch["x"])
    fake = apply(quant.oracle(q), jnp.asarray(batch["labels"]), batch["x"])
    assert _rel(int8, fake) <= 1e-3
    # Quantization changes the model measurably but not wildly.
    err = _rel(int8, _logits(m.cfg, m.params, batch))
    assert 1e-4 < err < 0.2
    out = var_sampler.generate(
        q,
        m.vae_params,
        m.cfg,
        m.vae_cfg,
        np.array([3, 980]),
        jax.random.PRNGKey(0),
        cfg=1.5,
        top_k=900,
        top_p=0.96,
    )
    assert out["images"].shape == (2, 256, 256, 3)
    assert bool(jnp.all(jnp.isfinite(out["images"])))


def test_int8_dot_in_jitted_model(fixture):
    m, batch = fixture
    q = rtn(VARAdapter(m.cfg), m.params, batch, Recipe.parse("rtn", "w8a8"), progress=False)
    text = (
        jax.jit(lambda p, lab, x: VAR(m.cfg).apply({"params": p}, lab, x))
        .lower(q, jnp.asarray(batch["labels"]), batch["x"])
        .as_text()
    )
    assert "xi8>" in text and "xi32>" in text


def test_checkpoint_roundtrip_bit_exact(fixture, tmp_path):
    m, batch = fixture
    from arvg_jax.models import config_to_dict, load_quantized

    recipe = Recipe.parse("rtn", "w8a8")
    q = rtn(VARAdapter(m.cfg), m.params, batch, recipe, progress=False)
    d = checkpoint.save(
        tmp_path / "q",
        q,
        family="var",
        model_config=config_to_dict(m.cfg),
        recipe=recipe.to_dict(),
        vae_params=m.vae_params,
        vae_config=config_to_dict(m.vae_cfg),
    )
    restored = load_quantized(d)
    a, b = _tree.flatten(q), _tree.flatten(restored.params)
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], quant.QArray):
            assert isinstance(b[k], quant.QArray) and b[k].bits == a[k].bits
            assert np.asarray(b[k].qvalue).dtype == np.int8
            for f in ("qvalue", "scale", "zero_point"):
                np.testing.assert_array_equal(
                    np.asarray(getattr(a[k], f)), np.asarray(getattr(b[k], f)), err_msg=k
                )
        elif isinstance(a[k], quant.ActQuant):
            for f in ("scale", "zero_point", "group_of_position"):
                np.testing.assert_array_equal(
                    np.asarray(getattr(a[k], f)), np.asarray(getattr(b[k], f)), err_msg=k
                )
        else:
            np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=k)
    assert restored.cfg == m.cfg and restored.vae_cfg == m.vae_cfg
    # On disk an int8 kernel takes one byte per weight: the directory is about the size of the
    # float leaves at 4 bytes plus the integer kernels at 1 (for full-size VAR, where kernels are
    # 97 % of the weights, that is about 0.27 of float32).
    expected = sum(
        np.asarray(v.qvalue).size if isinstance(v, quant.QArray) else np.asarray(v).nbytes
        for v in a.values()
        if not isinstance(v, quant.ActQuant)
    )
    disk = sum(p.stat().st_size for p in (d / "params").rglob("*") if p.is_file())
    f32 = sum(np.asarray(v).size * 4 for v in _tree.flatten(m.params).values())
    assert disk <= 1.15 * expected < 0.5 * f32
    text = checkpoint.describe(d)
    assert "QArray int8" in text and "blocks_0/attn/qkv/kernel" in text
    meta = json.loads((d / "arvg.json").read_text())
    assert meta["recipe"]["method"] == "rtn"


def test_checkpoint_config_pins_no_runtime_choice(fixture, tmp_path):
    """Checkpoints store architecture fields only (execution options are not config fields):
    an older file's runtime fields (compute dtype,
    the sampler's KV mode) are ignored on load, so it samples with today's defaults; a field the
    config does not have is an error naming the checkpoint."""
    from arvg_jax.models import config_to_dict, load_quantized

    m, batch = fixture
    recipe = Recipe.parse("rtn", "w8a8")
    q = rtn(VARAdapter(m.cfg), m.params, batch, recipe, progress=False)
    stored = config_to_dict(m.cfg)
    assert "sampler_kv" not in stored and "dtype" not in stored and "depth" in stored
    old_style = dict(stored, dtype="bfloat16", sampler_kv="prefix", scan_unroll=3)
    kw = {"family": "var", "recipe": recipe.to_dict(), "vae_params": m.vae_params}
    vae_config = config_to_dict(m.vae_cfg)
    d = checkpoint.save(tmp_path / "old", q, model_config=old_style, vae_config=vae_config, **kw)
    restored = load_quantized(d)
    assert restored.cfg == m.cfg  # defaults: float32, sampler_kv "stacked", no unroll
    bad = dict(stored, n_layers=4)
    d = checkpoint.save(tmp_path / "bad", q, model_config=bad, vae_config=vae_config, **kw)
    with pytest.raises(ValueError, match=r"bad.*unknown fields \['n_layers'\]"):
        load_quantized(d)
