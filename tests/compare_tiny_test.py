"""`arvg_jax.eval.compare` on a tiny random VAR, and `arvg_jax.eval.phenomena` on planted activations."""

import functools
import json
import math
import pathlib

import jax
import numpy as np
import pytest

from arvg_jax.eval import compare as C
from arvg_jax.eval import phenomena as P

# ---- compare ------------------------------------------------------------------------------------


def _random_like(abstract, seed: int) -> dict:
    """N(0, 0.02) params of an abstract tree (norm scales 1): no init program to compile."""
    rng = np.random.default_rng(seed)

    def leaf(path, a):
        if path[-1].key == "scale":
            return np.ones(a.shape, a.dtype)
        return (0.02 * rng.standard_normal(a.shape)).astype(a.dtype)

    return jax.tree_util.tree_map_with_path(leaf, abstract)


@functools.cache
def _tiny_random_model():
    """VARConfig.tiny with 4 classes (8 images = 2 per class = the 8 calibration images, so the
    compared and the calibration generations share one compiled batch shape)."""
    from arvg_jax.families.var.model import VAR, VARConfig
    from arvg_jax.models import Model
    from arvg_jax.tokenizers import var_vqvae
    from arvg_jax.tokenizers.var_vqvae import VQVAEConfig

    cfg = VARConfig.tiny(num_classes=4)
    vae_cfg = VQVAEConfig(
        ch=32,
        ch_mult=(1, 1),
        num_res_blocks=1,
        vocab_size=cfg.vocab_size,
        z_channels=cfg.cvae,
        patch_nums=cfg.patch_nums,
    )
    labels = np.zeros((1,), np.int32)
    x = np.zeros((1, cfg.seq_len - cfg.first_l, cfg.cvae), np.float32)
    key = jax.random.PRNGKey(0)
    var_shapes = jax.eval_shape(lambda k: VAR(cfg).init(k, labels, x)["params"], key)
    vae_shapes = jax.eval_shape(lambda k: var_vqvae.init_params(vae_cfg, k), key)
    return Model(
        "var",
        cfg,
        _random_like(var_shapes, 1),
        vae_cfg,
        _random_like(vae_shapes, 2),
        name="tiny-random",
    )


@pytest.fixture(scope="module")
def comparison():
    from arvg_jax.eval import ClassifierConfig, init_classifier

    model = _tiny_random_model()
    size = model.vae_cfg.image_size
    ccfg = ClassifierConfig(num_classes=model.cfg.num_classes, widths=(8,), feature_dim=8, groups=4)
    cparams = jax.jit(lambda k: init_classifier(ccfg, k, size))(jax.random.PRNGKey(0))
    real = np.random.default_rng(0).uniform(-1, 1, (32, size, size, 3)).astype(np.float32)
    settings = C.CompareSettings(
        methods=("rtn",), bits=("w8a8",), per_class=2, calib=8, noise_seed=1
    )
    logs = []
    result = C.compare(model, C.Scorer.from_real(cparams, ccfg, real), settings, log=logs.append)
    return result, logs


@pytest.mark.slow  # generates and calibrates (~60 s, shared with the next test)
def test_compare_rows_and_table(comparison):
    result, logs = comparison
    assert [r.name for r in result.rows] == [C.FLOAT, C.FLOAT_NOISE, "RTN W8A8"]
    assert len(logs) == 4  # three rows and the calibration line
    table = result.markdown_table().splitlines()
    assert len(table) == 2 + 3
    assert all(line.count("|") == len(C.COLUMNS) + 1 for line in table)
    float_cells = [c.strip() for c in table[2].strip("|").split("|")]
    assert float_cells[0] == "float" and float_cells[3:] == ["—"] * 4
    q = result.row("RTN W8A8")
    # W8A8 on a random model stays close to float (same labels and keys).
    assert 0.0 <= q.kl < 0.05 and q.top1 > 0.9 and 0.5 < q.token_agreement <= 1.0
    assert all(0.0 <= r.accuracy <= 1.0 and math.isfinite(r.fid) for r in result.rows)
    assert len(result.calibration["indices"]) == 8
    noise = result.row(C.FLOAT_NOISE)
    assert noise.kl is None and noise.token_agreement < 1.0  # other keys, other tokens


@pytest.mark.slow  # shares the comparison above
def test_compare_outputs(comparison, tmp_path):
    from arvg_jax import imageio

    result, _ = comparison
    paths = C.write_outputs(result, tmp_path, command="test")
    data = json.loads(pathlib.Path(paths["json"]).read_text())
    assert [r["name"] for r in data["rows"]] == [r.name for r in result.rows]
    assert data["settings"]["methods"] == ["rtn"] and data["command"] == "test"
    assert "| RTN W8A8 |" in pathlib.Path(paths["markdown"]).read_text()
    png = imageio.decode_png(pathlib.Path(paths["png"]).read_bytes())
    size = result.images[C.FLOAT].shape[1]
    assert png.shape[0] == 2 * (size + 2) * 2 + 2 * 2  # float and one quantized row, zoom 2
    assert list(result.images) == [C.FLOAT, "RTN W8A8"]  # the noise row is not drawn


def test_markdown_table_cells():
    rows = [
        C.Row("float", "float", None, 0.5, 0.1, [], 1.25),
        C.Row(
            "PTQ4ARVG W4A8",
            "ptq4arvg",
            "w4a8",
            0.25,
            0.05,
            [],
            3.0,
            kl=0.1234,
            top1=0.9,
            token_agreement=1.0,
            psnr=float("inf"),
        ),
    ]
    lines = C.markdown_table(rows).splitlines()
    assert lines[2] == "| float | 50.0 % ± 10.0 | 1.25 | — | — | — | — |"
    assert lines[3] == "| PTQ4ARVG W4A8 | 25.0 % ± 5.0 | 3.00 | 0.1234 | 90.0 % | 100.0 % | ∞ |"


def test_settings_refuse_unknown():
    with pytest.raises(ValueError, match="unknown methods"):
        C.CompareSettings(methods=("gptq",))
    with pytest.raises(ValueError, match="bits"):
        C.CompareSettings(bits=("w8",))


def test_sampling_is_the_family_demo_setting_with_overrides_in_its_own_names():
    from arvg_jax import families

    var, par = families.get("var"), families.get("par")
    assert C.CompareSettings().sampling_for(var) == var.demo_sampling()
    got = C.CompareSettings(sampling=(("cfg", 3.0),)).sampling_for(var)
    assert got == {**var.demo_sampling(), "cfg": 3.0}
    # PAR's top_p keeps that much probability mass (1 = off): VAR's names never leak into it.
    assert C.CompareSettings().sampling_for(par)["top_p"] == par.demo_sampling()["top_p"]
    with pytest.raises(ValueError, match="guidance_scale"):
        C.CompareSettings(sampling=(("guidance_scale", 2.0),)).sampling_for(var)


# ---- phenomena ----------------------------------------------------------------------------------
BEGIN_ENDS = ((0, 1), (1, 5), (5, 14))  # patch nums 1, 2, 3


def _planted(outlier_channel=5, sink=True, n=6, c=16, seed=0):
    x = np.random.default_rng(seed).normal(size=(n, 14, c)).astype(np.float32)
    x[:, :, outlier_channel] *= 20.0
    if sink:
        x[:, 0, :] *= 50.0
    return x


def test_channel_outlier_found():
    st = P.channel_stats(_planted(outlier_channel=5), skip_tokens=1, top=3)
    assert st["top_channels"][0] == 5
    assert st["absmax_top_over_median"] > 8 and st["range_top_over_median"] > 8
    assert st["absmax"].shape == (16,)
    clean = P.channel_stats(_planted(outlier_channel=5) / np.array([1] * 5 + [20] + [1] * 10))
    assert clean["absmax_top_over_median"] < 3  # no planted outlier, no big ratio


def test_channel_stats_skip_the_sink():
    x = _planted(sink=False)
    x[:, 0, 11] = 1e4  # a sink confined to one channel: invisible once token 0 is skipped
    assert P.channel_stats(x, skip_tokens=1)["top_channels"][0] == 5
    assert P.channel_stats(x, skip_tokens=0)["top_channels"][0] == 11


def test_sink_token_found():
    st = P.token_stats(_planted(sink=True))
    assert st["max_norm_position"] == 0 and st["sink_norm_ratio"] > 20
    assert st["norm"].shape == (14,)
    assert P.token_stats(_planted(sink=False))["sink_norm_ratio"] < 2


def test_scale_range_growth():
    x = np.random.default_rng(1).uniform(-1, 1, (4, 14, 8)).astype(np.float32)
    x[:, 5:14] *= 4.0  # the last scale's tokens span 4x the range
    st = P.scale_stats(x, BEGIN_ENDS)
    assert st["range"].shape == (3,)
    np.testing.assert_allclose(st["range_growth"], 4.0, rtol=0.1)
    np.testing.assert_allclose(st["max_over_min_range"], 4.0, rtol=0.1)
    np.testing.assert_allclose(st["max_over_min_p999"], 4.0, rtol=0.1)


def test_analyse_reads_every_block():
    from arvg_jax.models import quant_adapter

    model = _tiny_random_model()
    adapter = quant_adapter(model)
    rng = np.random.default_rng(0)
    batch = {
        "labels": np.arange(3, dtype=np.int32),
        "x": rng.normal(size=(3, model.cfg.seq_len - 1, model.cfg.cvae)).astype(np.float32),
    }
    ph = P.analyse(adapter, model.params, batch, name="t")
    for i in range(model.cfg.depth):
        for k in ("qkv", "fc1", "fc2", P.RESIDUAL):
            st = ph.get(i, k)
            assert st["token"]["norm"].shape == (model.cfg.seq_len,)
            assert st["scale"]["range"].shape == (len(model.cfg.patch_nums),)
    assert ph.get(0, "fc2")["channel"]["absmax"].shape == (4 * model.cfg.embed_dim,)
    table = P.markdown_table(ph).splitlines()
    assert len(table) == 2 + model.cfg.depth + 1
    json.dumps(ph.summary())
    for fig in (P.channel_figure(ph), P.token_figure(ph), P.scale_figure(ph)):
        assert fig.dtype == np.uint8 and fig.ndim == 3 and (fig != 255).any()
