"""MAR quantization (PTQ4ARVG on the family-generic core): coverage, exact folds, int8 vs its
fake-quant oracle, token groups in the jit sampler, valid rows, PTQ4ARVG vs RTN, CLI round trip.

Model: the tiny MAR (`mar-test`: width 64, 2 + 2 blocks, 64 buffer + 256 image positions) with
random weights whose LayerNorms get random affine params and a few outlier channels (real MAR
checkpoints have them; with unit norms SmoothQuant/GPS would have nothing to do).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

import quant
from arvg_jax import families
from arvg_jax.families import image_keys
from arvg_jax.families.mar import sampler
from arvg_jax.families.mar.calibration import last_step_mask
from arvg_jax.families.mar.config import MARConfig
from arvg_jax.families.mar.model import MAR
from arvg_jax.families.mar.quant_adapter import MARAdapter
from arvg_jax.nn.layers import Dense
from quant import _tree, api
from quant._fit import quantize_weight_jit
from quant._transforms import fold_into
from quant.recipes import Recipe

CFG = MARConfig.tiny()
BUF = CFG.buffer_size
P = BUF + CFG.seq_len
FAM = families.get("mar")


def _params(seed=0):
    params, tok = FAM.init_params(CFG, FAM.presets()["mar-test"].tokenizer_config(), seed)
    rng = np.random.default_rng(seed + 1)
    flat = _tree.flatten(params)
    for k in list(flat):
        if "_blocks_" in k and ("/norm1/" in k or "/norm2/" in k):
            c = flat[k].shape[0]
            if k.endswith("/scale"):
                g = 1 + 0.2 * rng.standard_normal(c)
                g[rng.choice(c, 3, replace=False)] *= 8.0  # outlier channels
                flat[k] = jnp.asarray(g, jnp.float32)
            else:
                flat[k] = jnp.asarray(0.1 * rng.standard_normal(c), jnp.float32)
    return _tree.unflatten(flat), tok


@pytest.fixture(scope="module")
def model():
    return _params()


def make_batch(n: int, seed: int, num_iter: int = 64) -> dict[str, np.ndarray]:
    """n rows (half conditional, half CFG-null) in the recorded last-AR-step state."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CFG.class_num, n).astype(np.int32)
    labels[n // 2 :] = CFG.class_num
    tokens = rng.standard_normal((n, CFG.seq_len, CFG.token_embed_dim)).astype(np.float32)
    mask = last_step_mask(image_keys(seed, 0, n), CFG.seq_len, num_iter)
    return {"labels": labels, "tokens": tokens, "mask": mask}


@jax.jit
def _z(params, tokens, mask, labels):
    return MAR(CFG).apply(
        {"params": params["transformer"]}, tokens, mask, labels, labels >= CFG.class_num
    )


def z_of(params, batch):
    return np.asarray(_z(params, batch["tokens"], batch["mask"], jnp.asarray(batch["labels"])))


def _rel(a, b):
    return float(np.linalg.norm(np.asarray(a) - b) / np.linalg.norm(b))


# ---- coverage -----------------------------------------------------------------------------------
def test_coverage_resolves_every_dense():
    ad = MARAdapter(CFG)
    blocks = [f"transformer/{k}_blocks_{i}" for k in ("encoder", "decoder") for i in range(2)]
    want = {f"{b}/{n}" for b in blocks for n in ("attn/qkv", "attn/proj", "mlp/fc1", "mlp/fc2")}
    assert set(ad.quantized_layers()) == want
    floats = set(ad.coverage.layers()) - want
    assert {"transformer/z_proj", "transformer/decoder_embed"} <= floats
    assert all(
        n.startswith("diffloss/")
        for n in floats - {"transformer/z_proj", "transformer/decoder_embed"}
    )
    assert len(floats) == 2 + 4 + 3 * CFG.diffloss_d + 2  # z_proj, decoder_embed; the head
    assert set(ad.gps_layers()) == {n for n in want if n.endswith(("qkv", "fc1"))}
    for name in ad.gps_layers():
        t = ad.fold_target(name)
        norm = "norm1" if name.endswith("qkv") else "norm2"
        assert t.kind == "norm_bias" and t.norm_layer == name.rsplit("/", 2)[0] + "/" + norm
        assert ad.sink_excluded(name)
    assert all(ad.stwq_granularity(n) == "buffer" for n in want)
    table = ad.group_table("buffer")
    np.testing.assert_array_equal(table, np.r_[np.arange(BUF), np.full(CFG.seq_len, BUF)])
    names = [s.name for s in ad.stages()]
    assert names == [
        "encoder_blocks_0",
        "encoder_blocks_1",
        "decoder_embed",
        "decoder_blocks_0",
        "decoder_blocks_1",
    ]
    head = MARAdapter(CFG, quantize_head=True)
    assert set(head.quantized_layers()) == want | (
        floats - {"transformer/z_proj", "transformer/decoder_embed"}
    )
    assert head.stages()[-1].name == "diffloss"
    # Encoder rows: the buffer and the known tokens; decoder rows: all real.
    b = make_batch(2, 0)
    v = ad.valid_rows("transformer/encoder_blocks_1/mlp/fc2", b)
    assert v.shape == (2, P) and v[:, :BUF].all()
    np.testing.assert_array_equal(v[:, BUF:], b["mask"] == 0)
    assert ad.valid_rows("transformer/decoder_blocks_0/attn/qkv", b) is None


# ---- folds --------------------------------------------------------------------------------------
def test_norm_bias_folds_preserve_float_outputs(model):
    params, _ = model
    ad = MARAdapter(CFG)
    batch = make_batch(2, 3)
    ref = z_of(params, batch)
    rng = np.random.default_rng(0)
    folded = params
    for name in ad.gps_layers():
        c = CFG.encoder_embed_dim
        s = np.exp(rng.uniform(-1, 1, c)).astype(np.float32).astype(np.float64)
        p = rng.standard_normal(c) * 0.5
        folded = fold_into(folded, name, ad.fold_target(name), s, p)
    flat_a, flat_b = _tree.flatten(params), _tree.flatten(folded)
    assert set(flat_a) == set(flat_b)
    changed = [k for k in flat_a if not np.array_equal(flat_a[k], flat_b[k])]
    assert len(changed) == 8 * 4  # norm scale, norm bias, kernel, bias of each GPS layer
    assert _rel(z_of(folded, batch), ref) <= 1e-5


# ---- int8 path, its oracle and the token groups in the jit sampler -------------------------------
def _hand_quantized(params, batch, bits=6):
    """Every covered layer quantized without a calibration search: per-row weights, and input
    quantizers spanning each token group's max |x| on `batch` (float forward), buffer group g
    widened by (1 + g/64) so that a wrong group shows."""
    ad = MARAdapter(CFG)
    labels = jnp.asarray(batch["labels"])
    _, state = MAR(CFG).apply(
        {"params": params["transformer"]},
        batch["tokens"],
        batch["mask"],
        labels,
        labels >= CFG.class_num,
        mutable=["intermediates"],
    )
    inputs = _tree.flatten(state["intermediates"])
    table = ad.group_table("buffer")
    flat = _tree.flatten(params)
    for name in ad.quantized_layers():
        x = np.abs(np.asarray(inputs[name.removeprefix("transformer/") + "/input"][0]))
        amax = x.max(axis=(0, 2))  # [P]
        amax = np.r_[amax[:BUF] * (1 + np.arange(BUF) / BUF), amax[BUF:].max()]
        delta = 2 * amax / (2**bits - 1)
        flat[f"{name}/kernel"] = quantize_weight_jit(flat[f"{name}/kernel"], bits)
        flat[f"{name}/input_quant"] = quant.ActQuant.from_official(
            delta, np.round(amax / delta), bits, table
        )
    return _tree.unflatten(flat)


def _rowwise(group_of_row):
    """An interceptor evaluating each Dense with an input quantizer without `positions`: row r of
    the input (its absolute position in MAR's fixed-shape sequence) uses `group_of_row(r)`."""

    def intercept(next_fun, args, kwargs, context):
        mod = context.module
        if not (
            isinstance(mod, Dense)
            and context.method_name == "__call__"
            and mod.has_variable("params", "input_quant")
        ):
            return next_fun(*args, **kwargs)
        x = args[0].astype(jnp.float32)
        aq = mod.get_variable("params", "input_quant")
        group = group_of_row(np.arange(x.shape[-2]))
        s, z = aq.scale[group][:, None], aq.zero_point[group][:, None]
        lo, hi = -(2 ** (aq.bits - 1)), 2 ** (aq.bits - 1) - 1
        xq = (jnp.clip(jnp.round(x / s) + z, lo, hi) - z) * s
        w = mod.get_variable("params", "kernel").dequantize()
        y = jnp.dot(xq, w, precision=jax.lax.Precision.HIGHEST)
        return y + mod.get_variable("params", "bias")

    return intercept


def _reference_z(q, tokens, mask, labels, group_of_row):
    with nn.intercept_methods(_rowwise(group_of_row)):
        drop = jnp.zeros(labels.shape, bool)
        return np.asarray(MAR(CFG).apply({"params": q["transformer"]}, tokens, mask, labels, drop))


def test_int8_matches_oracle(model):
    params, _ = model
    batch = make_batch(2, 5)
    q = _hand_quantized(params, batch)
    int8 = z_of(q, batch)
    assert _rel(int8, z_of(quant.oracle(q), batch)) <= 1e-3
    assert 1e-4 < _rel(int8, z_of(params, batch)) < 0.5


@pytest.mark.slow  # compiles the whole sampler (transformer + diffusion loop): ~25 s CPU
def test_jit_sampler_uses_buffer_groups(model):
    """The jit sampler's transformer output at its last step equals a reference that quantizes
    row r of every layer input with group min(r, 64), whatever `positions` say."""
    params, _ = model
    q = _hand_quantized(params, make_batch(2, 5))
    labels = jnp.asarray([7, 11], jnp.int32)
    _, rec = sampler.sample_tokens(
        q, labels, image_keys(0, 0, 2), cfg=CFG, num_iter=2, num_sampling_steps="2", record=True
    )
    tokens_in, mask = rec["tokens"][0], rec["mask"][1]
    pos = np.asarray(rec["positions"][1])
    real = pos < CFG.seq_len
    got = np.asarray(rec["z"][1]).reshape(*pos.shape, -1)[real]

    def at_pred(z):
        return np.take_along_axis(z, np.minimum(pos, CFG.seq_len - 1)[..., None], 1)[real]

    buffer_groups = _reference_z(q, tokens_in, mask, labels, lambda r: np.minimum(r, BUF))
    assert _rel(got, at_pred(buffer_groups)) <= 1e-3
    # The check has teeth: one shared group for every row gives a measurably different output.
    shared = _reference_z(q, tokens_in, mask, labels, lambda r: np.full_like(r, BUF))
    assert _rel(at_pred(shared), at_pred(buffer_groups)) > 1e-2


# ---- calibration (slow: each method compiles its stage programs) ---------------------------------
def _quantize(method, bits, params, batch, adapter=None):
    ad = adapter or MARAdapter(CFG)
    q, _ = api.quantize(ad, params, batch, Recipe.parse(method, bits), progress=False)
    return q


class _NoValidRows(MARAdapter):
    def valid_rows(self, name, batch):
        return None


@pytest.mark.slow
def test_masked_rows_do_not_affect_calibration(model):
    params, _ = model
    batch = make_batch(8, 11)
    noisy = dict(batch)
    m = batch["mask"].astype(bool)
    noisy["tokens"] = np.where(m[..., None], 1e3, batch["tokens"]).astype(np.float32)
    a = _tree.flatten(_quantize("ptq4arvg", "w6a6", params, batch))
    b = _tree.flatten(_quantize("ptq4arvg", "w6a6", params, noisy))
    for k in a:
        for x, y in zip(jax.tree_util.tree_leaves(a[k]), jax.tree_util.tree_leaves(b[k])):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=k)
    # Without the valid rows the masked encoder rows do reach the quantizers.
    loose_a = _quantize("rtn", "w6a6", params, batch, _NoValidRows(CFG))
    loose_b = _quantize("rtn", "w6a6", params, noisy, _NoValidRows(CFG))
    leaves = zip(jax.tree_util.tree_leaves(loose_a), jax.tree_util.tree_leaves(loose_b))
    assert any(not np.array_equal(np.asarray(x), np.asarray(y)) for x, y in leaves)


@pytest.mark.slow
def test_ptq4arvg_beats_rtn_at_w6a6_held_out(model):
    params, _ = model
    cal, held = make_batch(16, 21), make_batch(8, 99)  # other labels, tokens and orders
    ref = z_of(params, held)
    err = {
        m: _rel(z_of(_quantize(m, "w6a6", params, cal), held), ref)
        for m in ("rtn", "smoothquant", "ptq4arvg")
    }
    print("held-out z error W6A6", err)
    assert err["ptq4arvg"] < err["rtn"]


def test_diffusion_head_is_a_named_coverage_option():
    from arvg_jax import families
    from quant.recipes import Recipe

    fam = families.get("mar")
    assert not fam.quant_adapter(CFG).quantize_head  # official coverage by default
    assert fam.quant_adapter(CFG, coverage=("diffusion_head",)).quantize_head
    with pytest.raises(ValueError, match="not an option of mar .offered: diffusion_head"):
        fam.quant_adapter(CFG, coverage=("head",))
    with pytest.raises(ValueError, match="not an option of var .offered: none"):
        families.get("var").quant_adapter(None, coverage=("diffusion_head",))
    r = Recipe.parse("ptq4arvg", "w8a8", coverage=("diffusion_head",))
    assert r.to_dict()["coverage"] == ["diffusion_head"]
    assert Recipe.from_dict(r.to_dict()) == r
    assert "coverage" not in Recipe.parse("rtn", "w8a8").to_dict()  # old layout when unused


@pytest.mark.slow
@pytest.mark.parametrize("coverage", [(), ("diffusion_head",)])
def test_cli_quantize_and_generate_round_trip(tmp_path, coverage):
    from arvg_jax.cli import main
    from arvg_jax.models import load_quantized
    from quant import QArray

    out = tmp_path / "q"
    argv = ["quantize", "--model", "mar-test", "--random-weights", "--method", "ptq4arvg"]
    argv += ["--bits", "w8a8", "--calib", "2", "--out", str(out), "--quiet"]
    rc = main(argv + [a for c in coverage for a in ("--coverage", c)])
    assert rc == 0
    q = load_quantized(out)
    assert tuple(q.recipe.get("coverage", ())) == coverage
    head = [
        leaf
        for path, leaf in jax.tree_util.tree_leaves_with_path(
            q.params, is_leaf=lambda x: isinstance(x, QArray)
        )
        if "diffloss" in jax.tree_util.keystr(path) and isinstance(leaf, QArray)
    ]
    assert bool(head) == bool(coverage)
    png = tmp_path / "g.png"
    rc = main(
        [
            "generate",
            "--quantized",
            str(out),
            "--classes",
            "1,2",
            "--seed",
            "0",
            "--out",
            str(png),
            "--num-iter",
            "2",
            "--num-sampling-steps",
            "2",
        ]
    )
    assert rc == 0 and png.stat().st_size > 0
