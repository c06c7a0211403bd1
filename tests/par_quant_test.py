"""PAR quantization: coverage, RMSNorm folds, int8 vs oracle, cached token groups, PTQ4ARVG vs RTN,
CLI round trip.

A tiny random PAR (C = 40, 2 layers, 4 x 4 grid at 4x, vocabulary 97, 11 classes) with outlier
channels planted in the norms and a loud class embedding, as trained ARVG models have (the
sinks); random tokens stand in for generated ones. The default cases use one calibration pass
(`deployed`); full RTN / SmoothQuant / PTQ4ARVG runs, the compiled sampler and the CLI are slow.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import quant
from arvg_jax.families.par import layout, sampler
from arvg_jax.families.par.config import PARConfig
from arvg_jax.families.par.family import _init_gpt
from arvg_jax.families.par.model import PAR, init_caches
from arvg_jax.families.par.quant_adapter import PARAdapter, par_group_table
from quant import _tree, api
from quant._transforms import fold_into
from quant.algorithms.ptq4arvg import final_calibration
from quant.recipes import Recipe

CFG = PARConfig.tiny(dim=40, n_head=2, multiple_of=8, vocab_size=97, num_classes=11, block_size=16)
CALIB = 16


def _outliers(params, rng):
    """Outlier channels in every norm weight and a loud class embedding (position-0 sink)."""
    flat = {k: np.array(v) for k, v in _tree.flatten(params).items()}
    ch = rng.choice(CFG.dim, 3, replace=False)
    for i in range(CFG.n_layer):
        flat[f"layers_{i}/attention_norm/scale"][ch] = 15.0
        flat[f"layers_{i}/ffn_norm/scale"][ch[::-1]] = 10.0
    flat["norm/scale"][ch[:1]] = 8.0
    flat["cls_embedding/embedding"] *= 30.0
    return _tree.unflatten(flat)


def _batch(rng, n, classes):
    labels = rng.choice(classes, n).astype(np.int32)
    tokens = rng.integers(0, CFG.vocab_size, (n, CFG.block_size)).astype(np.int32)
    return {"labels": labels, "tokens": tokens}  # raster order, as calibration_batch gives


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(0)
    params = _outliers(_init_gpt(CFG, np.random.default_rng(1)), rng)
    calib = _batch(rng, CALIB, np.arange(6))  # classes 0..5
    held_out = _batch(rng, 8, np.arange(6, CFG.num_classes))  # classes calibration never saw
    return params, calib, held_out


_TF = jax.jit(
    lambda p, labels, tokens: PAR(CFG).apply(
        {"params": p}, labels, tokens[:, layout.par_index_to_raster(CFG)]
    )
)


def _logits(params, batch):
    return np.asarray(_TF(params, jnp.asarray(batch["labels"]), jnp.asarray(batch["tokens"])))


def _rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _random_folds(params, adapter, rng):
    """Every GPS fold (x -> x / s - p into the RMSNorms, w3 beside w1) with random s, p."""
    for name in adapter.gps_layers():
        s = np.exp(rng.uniform(-1, 1, CFG.dim)).astype(np.float32).astype(np.float64)
        p = rng.standard_normal(CFG.dim) * 0.3
        params = fold_into(params, name, adapter.fold_target(name), s, p)
    return params


@pytest.fixture(scope="module")
def deployed(setup):
    """A deployed W6A6 tree in one calibration pass (PTQ4ARVG's stage G on random folds: norm
    and Dense biases, six token groups, the attention-matmul quantizers): the cheap stand-in
    for a full PTQ4ARVG run in the default suite."""
    params, calib, _ = setup
    adapter = PARAdapter(CFG)
    folded = _random_folds(params, adapter, np.random.default_rng(2))
    recipe = Recipe.parse("ptq4arvg", "w6a6", calib=CALIB)
    return final_calibration(adapter, folded, calib, recipe, progress=False)


@pytest.fixture(scope="module")
def quantized(setup):
    params, calib, _ = setup
    adapter = PARAdapter(CFG)
    out = {}
    for method in ("rtn", "ptq4arvg"):
        recipe = Recipe.parse(method, "w6a6", calib=CALIB)
        out[method] = api.quantize(adapter, params, calib, recipe, progress=False)[0]
    return out


def test_coverage_resolves_every_dense_and_the_official_groups(setup):
    params, _, _ = setup
    adapter = PARAdapter(CFG)
    flat = _tree.flatten(params)
    dense = sorted(k[: -len("/kernel")] for k in flat if k.endswith("/kernel"))
    assert sorted(adapter.quantized_layers()) == dense  # every Linear is quantized (official)
    assert adapter.gps_layers() == (
        "layers_0/attention/wqkv",
        "layers_0/feed_forward/w1",
        "layers_1/attention/wqkv",
        "layers_1/feed_forward/w1",
        "output",
    )
    w1 = adapter.fold_target("layers_1/feed_forward/w1")
    assert (w1.norm_layer, w1.kind, w1.siblings) == (
        "layers_1/ffn_norm",
        "norm_bias",
        ("layers_1/feed_forward/w3",),
    )
    assert adapter.fold_target("output").norm_layer == "norm"
    assert adapter.sink_tokens == 8 and not adapter.sink_excluded("output")
    # The official six groups [0], [1], [2], [3], [4:8], [8:] at 4x ...
    np.testing.assert_array_equal(
        par_group_table(CFG), [0, 1, 2, 3, 4, 4, 4, 4] + [5] * (CFG.seq_len - 8)
    )
    # ... and the layout they come from at 16x: 16 one-token passes, the bridge pass, the rest.
    t16 = par_group_table(PARConfig.tiny(block_size=64, ar_token_num=16, spe_token_num=15))
    np.testing.assert_array_equal(t16[:16], np.arange(16))
    assert set(t16[16:32]) == {16} and set(t16[32:]) == {17}


def test_dgc_feature_is_the_last_layer_output_at_token_0(setup):
    """token0_features runs the class token alone: under the group mask position 0 attends to
    itself only, so it equals the full calibration forward at position 0."""
    params, calib, _ = setup
    adapter = PARAdapter(CFG)
    x = adapter.start(params, calib)
    for stage in adapter.stages()[:-1]:
        x, _ = adapter.run_stage(params, stage, x, collect=None)
    feats = adapter.token0_features(params, calib)
    np.testing.assert_allclose(feats, np.asarray(x[:, 0]), rtol=1e-5, atol=1e-5)


def test_norm_folds_preserve_float_logits(setup):
    """SmoothQuant + shift + GPS style folds (x -> x / s - p) into every RMSNorm, w3 included:
    the norms gain a bias, the teacher-forced logits stay within float tolerance."""
    params, calib, _ = setup
    folded = _random_folds(params, PARAdapter(CFG), np.random.default_rng(2))
    for norm in ("layers_0/attention_norm", "layers_1/ffn_norm", "norm"):
        assert "bias" in _tree.tree_get(folded, norm) and "bias" not in _tree.tree_get(params, norm)
    assert "bias" in folded["layers_0"]["feed_forward"]["w3"]  # the sibling gained p·W3 too
    ref = _logits(params, calib)
    assert _rel(_logits(folded, calib), ref) <= 1e-5


def test_int8_path_equals_its_fake_quant_oracle(setup, deployed):
    params, _, held_out = setup
    adapter = PARAdapter(CFG)
    q = deployed
    flat = _tree.flatten(q)
    for name in adapter.quantized_layers():
        kernel, aq = flat[f"{name}/kernel"], flat[f"{name}/input_quant"]
        assert isinstance(kernel, quant.QArray) and kernel.bits == 6, name
        kernel.validate()
        aq.validate()
        assert aq.num_groups == (1 if name == "output" else 6), name
    # The attention matmuls: q, k, v uniform per tensor, the probabilities log-√2 (official).
    for i in range(CFG.n_layer):
        aq = {op: flat[f"layers_{i}/attention/attn_quant/{op}/input_quant"] for op in "qkpv"}
        assert isinstance(aq["p"], quant.LogSqrt2Quant) and aq["p"].bits == 6
        assert all(aq[op].per_tensor and aq[op].bits == 6 for op in "qkv")
    int8 = _logits(q, held_out)
    fake = _logits(quant.oracle(q), held_out)
    assert _rel(int8, fake) <= 1e-3
    assert 1e-4 < _rel(int8, _logits(params, held_out)) < 0.3


_DECODE = jax.jit(lambda p, x, c, s: PAR(CFG).apply({"params": p}, x, c, s, method=PAR.decode))


def _cached_logits(params, labels, par_tokens):
    """Sequence positions 0..N-1 through `PAR.decode` pass by pass, as the sampler runs them
    (its schedule, KV cache and traced start offsets), fed with the given PAR-order tokens."""
    model = PAR(CFG)
    a, n = CFG.ar_token_num, CFG.block_size
    decode = _DECODE
    caches = init_caches(CFG, labels.shape[0])
    out = []
    for j in range(a):
        if j == 0:
            x = model.apply({"params": params}, labels, method=PAR.class_input)
        else:
            x = model.apply({"params": params}, par_tokens[:, j - 1 : j], method=PAR.token_input)
        logits, caches = decode(params, x, caches, jnp.int32(j))
        out.append(logits)
    for m in range((n - a) // a):
        if m == 0:
            x = model.apply({"params": params}, par_tokens[:, a - 1], method=PAR.bridge_input)
        else:
            prev = par_tokens[:, a * m : a * (m + 1)]
            x = model.apply({"params": params}, prev, method=PAR.token_input)
        logits, caches = decode(params, x, caches, jnp.int32(a * (m + 1)))
        out.append(logits)
    return np.concatenate([np.asarray(o) for o in out], axis=1)


def test_cached_steps_use_the_right_token_groups(setup, deployed):
    """The sampler's passes (one token, then A per pass at traced offsets) pick each position's
    group: with the group scales pulled apart, cached decoding still equals teacher forcing,
    and a table shifted by one position does not."""
    _, _, held_out = setup
    flat = _tree.flatten(deployed)
    for k, v in list(flat.items()):
        if isinstance(v, quant.ActQuant) and v.num_groups > 1:
            # Each group's scale differs by a large factor: a wrong lookup changes the logits.
            factor = jnp.asarray(1.0 + 1.5 * np.arange(v.num_groups), jnp.float32)
            flat[k] = v.replace(scale=v.scale * factor)
    q = _tree.unflatten(flat)
    labels = jnp.asarray(held_out["labels"][:4])
    raster = jnp.asarray(held_out["tokens"][:4])
    par_tokens = raster[:, layout.par_index_to_raster(CFG)]
    tf = _logits(q, {"labels": labels, "tokens": raster})
    cached = _cached_logits(q, labels, par_tokens)
    assert _rel(cached, tf) <= 1e-4
    # A shifted group table (position p read as p + 1) is caught by the same comparison.
    shifted = {
        k: (
            v.replace(group_of_position=jnp.roll(v.group_of_position, -1))
            if isinstance(v, quant.ActQuant) and v.num_groups > 1
            else v
        )
        for k, v in flat.items()
    }
    assert _rel(_cached_logits(_tree.unflatten(shifted), labels, par_tokens), tf) > 1e-2


@pytest.mark.slow
def test_ptq4arvg_beats_rtn_at_w6a6_on_held_out_logits(setup, quantized):
    params, _, held_out = setup
    ref = _logits(params, held_out)
    err = {m: _rel(_logits(q, held_out), ref) for m, q in quantized.items()}
    print("held-out rel err", err)
    assert err["ptq4arvg"] < 0.8 * err["rtn"], err


@pytest.mark.slow
def test_greedy_sampler_reproduces_its_teacher_forced_argmax(setup, quantized):
    """The compiled sampler (one jit, traced offsets) on the int8 model: each greedy token is
    the argmax of the quantized model's teacher-forced logits (away from near-ties)."""
    _, _, held_out = setup
    q = quantized["ptq4arvg"]
    labels = jnp.asarray(held_out["labels"][:4])
    out = sampler.generate(
        q, labels, jax.random.PRNGKey(0), cfg=CFG, cfg_scale=1.0, greedy=True, return_margin=True
    )
    gen = out["tokens"]
    tf_gen = PAR(CFG).apply({"params": q}, labels, gen)
    bf16 = sampler.generate(q, labels, jax.random.PRNGKey(0), cfg=CFG, dtype="bfloat16")
    assert bf16["tokens"].shape == gen.shape  # the official bf16 execution runs int8 too
    clear = np.asarray(out["top2_margin"]) > 1e-3
    np.testing.assert_array_equal(np.asarray(jnp.argmax(tf_gen, -1))[clear], np.asarray(gen)[clear])


@pytest.mark.slow
@pytest.mark.parametrize("method", ["rtn", "smoothquant", "ptq4arvg"])
@pytest.mark.parametrize("bits", ["w8a8", "w6a6", "w4a8"])
def test_every_method_and_bit_width(setup, method, bits):
    params, calib, held_out = setup
    recipe = Recipe.parse(method, bits, calib=CALIB)
    q, summary = api.quantize(PARAdapter(CFG), params, calib, recipe, progress=False)
    assert summary["by_kind"] == {"wqkv": 2, "wo": 2, "w1": 2, "w3": 2, "w2": 2, "output": 1}
    assert all(v["w_bits"] == recipe.w_bits for v in summary["layers"].values())
    int8 = _logits(q, held_out)
    assert _rel(int8, _logits(quant.oracle(q), held_out)) <= 1e-3
    assert _rel(int8, _logits(params, held_out)) < 0.5


@pytest.mark.slow
def test_cli_quantize_then_generate(tmp_path):
    from arvg_jax import cli

    out = tmp_path / "q"
    argv = ["quantize", "--model", "par-test", "--random-weights", "--method", "ptq4arvg"]
    argv += ["--bits", "w6a6", "--calib", "4", "--out", str(out), "--quiet"]
    assert cli.main(argv) == 0
    meta = json.loads((out / "arvg.json").read_text())
    assert meta["family"] == "par"
    png = tmp_path / "grid.png"
    argv = ["generate", "--quantized", str(out), "--classes", "1,2", "--out", str(png)]
    assert cli.main([*argv, "--save-tokens", str(tmp_path / "t.npz")]) == 0
    assert png.stat().st_size > 0
    assert np.load(tmp_path / "t.npz")["tokens"].shape == (2, 576)
