"""PTQ4ARVG pipeline on the reference VAR: exact folds, deployed leaves, int8 vs oracle, vs RTN,
STWQ group lookup of the cached sampler, summary."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _var_calibration import reference_model, split_batches

import quant
from arvg_jax.families.var.model import VAR, init_kv_caches
from arvg_jax.families.var.quant_adapter import VARAdapter
from arvg_jax.nn.layers import Dense
from quant import _tree, api
from quant.algorithms import ptq4arvg as P
from quant.recipes import Recipe

GROUPS = {"qkv": 10, "fc1": 10, "proj": 2, "fc2": 2, "ada_lin": 1, "head": 1}
FOLD_STAGES = ("A", "C", "E")  # the stages that change float params


@pytest.fixture
def var_dir(reference):
    return str(reference("var"))


def _rel(a, b) -> float:
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


def _logits(cfg, params, batch):
    """Teacher-forced logits with the block-causal mask (the official inference attention)."""
    return VAR(cfg).apply({"params": params}, jnp.asarray(batch["labels"]), batch["x"])


@functools.cache
def _stages(var_dir: str, bits: str) -> dict:
    """The tree after every stage A-G of one run (calibration: 8 sequences of 4 images)."""
    m = reference_model(var_dir)
    cal, _ = split_batches(var_dir)
    ad = VARAdapter(m.cfg)
    recipe = Recipe.parse("ptq4arvg", bits)
    out, params = {}, m.params
    for name, stage in P.STAGES:
        params = stage(ad, params, cal, recipe, progress=False)
        out[name] = params
    return out


@functools.cache
def _float_logits(var_dir: str):
    m = reference_model(var_dir)
    _, ev = split_batches(var_dir)
    return _logits(m.cfg, m.params, ev)


# ---------------------------------------------------------------------------------------------
# Building blocks.


def test_channel_quant_bypasses_sinks_and_quantizes_per_channel():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((3, 7, 5)) * np.arange(1, 6)).astype(np.float32)
    x[:, 0] *= 50  # a sink token far outside the other tokens' range
    q = P.ChannelQuant.fit(x, 4, sink_tokens=1)
    assert q.delta.shape == (5,) and len(set(np.asarray(q.delta).tolist())) == 5
    xq = np.asarray(q.fake_quant(jnp.asarray(x)))
    np.testing.assert_array_equal(xq[:, 0], x[:, 0])
    want = quant.fake_quant_uniform(x[:, 1:], np.asarray(q.delta), np.asarray(q.zero_point), 4)
    np.testing.assert_array_equal(xq[:, 1:], want)
    # Positions (as the model passes them) decide the bypass, not the index.
    xq_pos = np.asarray(q.fake_quant(jnp.asarray(x[:, 1:]), np.arange(1, 7)))
    np.testing.assert_array_equal(xq_pos, want)


def test_probe_fake_quantizes_with_calib_quant_and_stored_tree_runs_float():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((2, 3, 6)), jnp.float32)
    layer = Dense(4)
    params = layer.init(jax.random.PRNGKey(0), x)["params"]
    q = P.ChannelQuant.fit(np.asarray(x), 3)
    plain = layer.apply({"params": params}, x)
    # A stored intermediate tree (float kernel + calib_quant) is the float layer (quant off).
    tagged = {**params, P.CALIB_KEY: q}
    np.testing.assert_array_equal(np.asarray(layer.apply({"params": tagged}, x)), np.asarray(plain))

    class One:  # the adapter surface _probe uses
        def quantized_layers(self):
            return ("d",)

    recipe = Recipe.parse("ptq4arvg", "w8a8")
    probe = P._probe(One(), {"d": tagged}, recipe)["d"]
    assert P.CALIB_KEY not in probe and probe["input_quant"] is q
    y, state = layer.apply({"params": probe}, x, mutable=["intermediates"])
    w_hat = quant.quantize_weight(np.asarray(params["kernel"]), 8).dequantize()
    want = q.fake_quant(x) @ w_hat + params["bias"]
    np.testing.assert_allclose(np.asarray(y), np.asarray(want), rtol=1e-6, atol=1e-6)
    assert np.max(np.abs(np.asarray(y - plain))) > 1e-3  # 3-bit inputs do change the output
    np.testing.assert_array_equal(np.asarray(state["intermediates"]["input"][0]), np.asarray(x))


# ---------------------------------------------------------------------------------------------
# The pipeline on the reference VAR.


@pytest.mark.parametrize(
    "bits", ["w8a8", pytest.param("w6a6", marks=pytest.mark.slow)]
)  # w6a6: same code, other bits
def test_every_fold_preserves_float_logits(var_dir, bits):
    m = reference_model(var_dir)
    _, ev = split_batches(var_dir)
    stages = _stages(var_dir, bits)
    ref = _float_logits(var_dir)
    before = m.params
    for name in "ABCDEF":
        params = stages[name]  # calib_quant leaves are ignored by the float forward
        changed = [
            k
            for k, v in _tree.flatten(params).items()
            if not k.endswith(P.CALIB_KEY)
            and not np.array_equal(np.asarray(v), np.asarray(_tree.flatten(before)[k]))
        ]
        if name in FOLD_STAGES:
            assert _rel(_logits(m.cfg, params, ev), ref) <= 1e-5, name
            # The fold really moved weights (the check above is not vacuous).
            assert any(k.endswith("ada_lin/bias") for k in changed), name
            assert any(k.endswith(("qkv/kernel", "qkv/bias")) for k in changed), name
        else:  # B, D, F only add or drop calib_quant leaves: the float model is unchanged
            assert changed == [], (name, changed[:3])
        before = params
    # B and D attach intermediate quantizers (per channel on GPS layers); F removes them all.
    calib_b = P._calib_quantizers(stages["B"])
    assert set(calib_b) == set(VARAdapter(m.cfg).quantized_layers())
    assert isinstance(calib_b["blocks_0/attn/qkv"], P.ChannelQuant)
    assert calib_b["blocks_0/attn/qkv"].sink_tokens == 1 and calib_b["head"].sink_tokens == 0
    assert P._calib_quantizers(stages["F"]) == {}


@pytest.mark.parametrize("bits", ["w8a8", pytest.param("w6a6", marks=pytest.mark.slow)])
def test_deployed_tree_and_int8_matches_oracle(var_dir, bits):
    m = reference_model(var_dir)
    _, ev = split_batches(var_dir)
    q = _stages(var_dir, bits)["G"]
    recipe = Recipe.parse("ptq4arvg", bits)
    ad = VARAdapter(m.cfg)
    flat = _tree.flatten(q)
    assert not any(k.endswith(P.CALIB_KEY) for k in flat)
    for name in ad.quantized_layers():
        kernel, aq = flat[f"{name}/kernel"], flat[f"{name}/input_quant"]
        assert isinstance(kernel, quant.QArray) and kernel.qvalue.dtype == jnp.int8, name
        assert kernel.bits == recipe.w_bits and aq.bits == recipe.a_bits, name
        kernel.validate()
        aq.validate()
        assert aq.num_groups == GROUPS[ad.layer_kind(name)], name
        if aq.num_groups == 10:
            np.testing.assert_array_equal(np.asarray(aq.group_of_position), m.cfg.levels)
    assert not isinstance(flat["word_embed/kernel"], quant.QArray)  # stays float (official)
    int8 = _logits(m.cfg, q, ev)
    fake = _logits(m.cfg, quant.oracle(q), ev)
    assert _rel(int8, fake) <= 1e-3
    assert 1e-4 < _rel(int8, _float_logits(var_dir)) < 0.2


@pytest.mark.slow  # a second calibration (~45 s); the RAR/PAR/MAR quant tests and the compare tables make the same comparison
def test_ptq4arvg_beats_rtn_at_w6a6_on_calibration_logits(var_dir):
    """Teacher-forced logit error vs float on the calibration sequences, W6A6.

    With only 8 calibration sequences (4 classes + null) the per-channel transforms fit those
    classes' AdaLN offsets: on 8 held-out sequences PTQ4ARVG and RTN are then within noise of each
    other (measured 0.0411 vs 0.0406). With 32 or more calibration sequences PTQ4ARVG wins on
    held-out sequences too (about -14 %, `test_ptq4arvg_beats_rtn_held_out_32_sequences`).
    """
    m = reference_model(var_dir)
    cal, _ = split_batches(var_dir)
    ref = _logits(m.cfg, m.params, cal)
    ptq = _rel(_logits(m.cfg, _stages(var_dir, "w6a6")["G"], cal), ref)
    rtn_q, summary = api.quantize(
        VARAdapter(m.cfg), m.params, cal, Recipe.parse("rtn", "w6a6"), progress=False
    )
    rtn = _rel(_logits(m.cfg, rtn_q, cal), ref)
    print(f"W6A6 calibration-set logit rel error: rtn {rtn:.5f}, ptq4arvg {ptq:.5f}")
    assert summary["recipe"]["method"] == "rtn" and summary["groups_by_kind"]["qkv"] == [1]
    assert ptq < 0.9 * rtn


@pytest.mark.slow  # ~3 min on 2 CPU cores: 20 generated images, two calibrations per width
@pytest.mark.parametrize("bits", ["w8a8", "w6a6"])
def test_ptq4arvg_beats_rtn_held_out_32_sequences(var_dir, bits):
    """Held-out logit error vs float: calibrate on 16 generated images (32 sequences), evaluate on
    4 other images (8 sequences)."""
    from arvg_jax.families.var.calibration import calibration_batch, generate_candidates

    m = reference_model(var_dir)
    c = generate_candidates(
        m.params, m.vae_params, m.cfg, m.vae_cfg, 20, seed=7, gen_batch=20, progress=False
    )
    rows = np.arange(c.labels.shape[0])
    cal = calibration_batch(m.vae_params, m.vae_cfg, c, rows[c.image < 16])
    ev = calibration_batch(m.vae_params, m.vae_cfg, c, rows[c.image >= 16])
    ad, ref = VARAdapter(m.cfg), _logits(m.cfg, m.params, ev)
    err = {}
    for method in ("rtn", "ptq4arvg"):
        q, _ = api.quantize(ad, m.params, cal, Recipe.parse(method, bits), progress=False)
        err[method] = _rel(_logits(m.cfg, q, ev), ref)
    print(f"{bits} held-out logit rel error, 32 calibration sequences: {err}")
    assert err["ptq4arvg"] < err["rtn"]


def _cached_logits(m, params, labels, x_next):
    """Logits of the KV-cached sampling path (the `var_sampler` per-scale calls), teacher-forced:
    scale si >= 1 gets its slice of the teacher-forcing input (= the VQVAE's next-scale input of
    the given tokens) instead of the drawn tokens' one. Each step sees only its static positions."""
    model, variables = VAR(m.cfg), {"params": params}
    x, cond = model.apply(variables, labels, method=VAR.first_scale_input)
    ada = model.apply(variables, cond, method=VAR.condition)
    caches = init_kv_caches(m.cfg, labels.shape[0])
    out = []
    for si, (begin, end) in enumerate(m.cfg.begin_ends):
        if si > 0:
            x = model.apply(
                variables,
                x_next[:, begin - m.cfg.first_l : end - m.cfg.first_l],
                si=si,
                method=VAR.scale_input,
            )
        logits, caches = model.apply(variables, x, ada, cond, caches, si=si, method=VAR.step)
        out.append(logits)
    return jnp.concatenate(out, axis=1)


def _per_token_rel(a, b):
    return np.asarray(jnp.linalg.norm(a - b, axis=-1) / jnp.linalg.norm(b, axis=-1))  # [B, L]


@pytest.mark.slow  # ~85 s; par_quant_test checks cached steps' token groups by default
def test_cached_sampling_uses_the_calibrated_token_groups(var_dir):
    """STWQ at inference: the sampler's per-scale positions pick the groups calibrated at T = L.

    The int8 codes of the cached and the teacher-forced paths agree except where float rounding
    differences (attention over the cache vs the full sequence, ~1e-7) push a value across a
    rounding boundary: a one-step code change that moves a few tokens' logits by ~1e-3 relative.
    So: nearly every token matches to float tolerance, while a lookup that ignores the scale
    changes almost every token.
    """
    m = reference_model(var_dir)
    _, ev = split_batches(var_dir)
    batch = {"labels": ev["labels"][[0, 4]], "x": ev["x"][[0, 4]]}  # one image: cond, uncond
    labels, x_next = jnp.asarray(batch["labels"]), jnp.asarray(batch["x"])
    q = _stages(var_dir, "w6a6")["G"]
    teacher = _logits(m.cfg, q, batch)
    cached_fn = jax.jit(functools.partial(_cached_logits, m))
    cached = cached_fn(q, labels, x_next)
    # Negative control: every token-group table collapsed to group 0 (a scale-blind lookup).
    wrong = _tree.map_named(
        lambda k, v: (
            v.replace(group_of_position=jnp.zeros_like(v.group_of_position))
            if isinstance(v, quant.ActQuant) and v.num_groups > 1
            else v
        ),
        q,
    )
    blind = cached_fn(wrong, labels, x_next)
    ok = np.mean(_per_token_rel(cached, teacher) <= 1e-5)
    ok_blind = np.mean(_per_token_rel(blind, teacher) <= 1e-5)
    err, err_blind = _rel(cached, teacher), _rel(blind, teacher)
    print(
        f"cached vs teacher-forced: rel {err:.2e}, tokens within 1e-5: {ok:.4f}; "
        f"scale-blind lookup: rel {err_blind:.2e}, tokens within 1e-5: {ok_blind:.4f}"
    )
    assert ok >= 0.98 and err <= 1e-3
    assert ok_blind <= 0.05 and err_blind > 10 * err


def test_summary_counts_layers_groups_and_bytes(var_dir):
    m = reference_model(var_dir)
    q = _stages(var_dir, "w8a8")["G"]
    s = api.summarize(VARAdapter(m.cfg), m.params, q)
    d = m.cfg.depth
    assert s["by_kind"] == {"ada_lin": d + 1, "qkv": d, "proj": d, "fc1": d, "fc2": d, "head": 1}
    assert s["groups_by_kind"] == {k: [g] for k, g in GROUPS.items()}
    assert s["float_layers"] == ["word_embed"]
    assert s["layers"]["blocks_0/attn/qkv"]["shape"] == [m.cfg.embed_dim, 3 * m.cfg.embed_dim]
    b = s["bytes"]
    # int8 codes are a quarter of float32; the per-channel scales add a little.
    assert 0.25 < b["packed_kernels"] / b["float_kernels_quantized"] <= 0.27
    assert b["quantized"] < b["float"] - 0.7 * b["float_kernels_quantized"]
