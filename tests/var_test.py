"""VAR transformer: reference parity, cached steps, masks, the piecewise (calibration) API."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

import quant
from arvg_jax.families.var.model import VAR, VARBlock, VARConfig, attention_mask, init_kv_caches
from arvg_jax.nn.layers import Dense
from arvg_jax.options import ExecOptions
from converters.torch_reader import load_state_dict
from converters.var import abstract_params, convert_var


def _rel(ours, ref) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(ours - ref) / np.linalg.norm(ref))


@functools.cache
def _reference_model(var_dir: str):
    with open(f"{var_dir}/config.json") as f:
        cfg = VARConfig.from_official(json.load(f))
    return cfg, convert_var(load_state_dict(f"{var_dir}/var.pth"), cfg)


@functools.cache
def _random_params(cfg: VARConfig, seed: int = 0) -> dict:
    """Random params of the init layout, every leaf noise so AdaLN and every branch matter."""
    flat = traverse_util.flatten_dict(abstract_params(cfg), sep="/")
    rng = np.random.default_rng(seed)
    out = {}
    for path, leaf in sorted(flat.items()):
        noise = rng.standard_normal(leaf.shape).astype(np.float32)
        if path.endswith("scale_mul"):  # the fixture's attention temperature: log(8) ± 0.3
            out[path] = np.log(8.0, dtype=np.float32) + 0.3 * noise
        elif path.endswith("kernel"):
            out[path] = noise * np.float32(0.5 / np.sqrt(leaf.shape[0]))
        else:
            out[path] = 0.3 * noise
    return traverse_util.unflatten_dict(out, sep="/")


def _tiny_inputs(cfg: VARConfig, batch: int = 3, seed: int = 2):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, cfg.num_classes + 1, batch).astype(np.int32)  # incl. the null class
    x = rng.standard_normal((batch, cfg.seq_len - cfg.first_l, cfg.cvae)).astype(np.float32)
    return labels, x


def _cached_logits(cfg: VARConfig, params, labels, x_in):
    """Logits of every scale through the KV-cached sampling steps, fed the teacher inputs."""
    model = VAR(cfg)

    @jax.jit
    def run(params):
        variables = {"params": params}
        x, cond = model.apply(variables, labels, method=VAR.first_scale_input)
        ada = model.apply(variables, cond, method=VAR.condition)
        caches, out = init_kv_caches(cfg, labels.shape[0]), []
        for si, (begin, end) in enumerate(cfg.begin_ends):
            if si > 0:
                xs = x_in[:, begin - cfg.first_l : end - cfg.first_l]
                x = model.apply(variables, xs, si=si, method=VAR.scale_input)
            logits, caches = model.apply(variables, x, ada, cond, caches, si=si, method=VAR.step)
            out.append(logits)
        return jnp.concatenate(out, axis=1)

    return run(params)


def test_teacher_forced_logits_match_reference(reference):
    var_dir = reference("var")
    cfg, params = _reference_model(str(var_dir))
    io = np.load(reference("var", "io.npz"))
    logits = jax.jit(lambda p, y, x: VAR(cfg).apply({"params": p}, y, x))(
        params, io["tf_labels"], io["tf_x_BLCv_wo_first_l"]
    )
    assert logits.dtype == jnp.float32
    assert logits.shape == (2, cfg.seq_len, cfg.vocab_size)
    err = _rel(np.asarray(logits)[:, :, ::8], io["tf_logits_every8"])
    assert err <= 1e-5, err


@pytest.mark.parametrize("shared_aln", [False, True], ids=["adaln", "shared_adaln"])
def test_cached_steps_equal_teacher_forcing(shared_aln):
    cfg = VARConfig.tiny(shared_aln=shared_aln)
    params = _random_params(cfg)
    labels, x_in = _tiny_inputs(cfg)
    full = VAR(cfg).apply({"params": params}, labels, x_in, attn_mask="block_causal")

    step_logits = _cached_logits(cfg, params, labels, x_in)
    assert step_logits.shape == full.shape
    assert _rel(step_logits, full) <= 1e-6
    np.testing.assert_allclose(step_logits, full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("depth", [1, 2])
def test_block_causal_and_unmasked_differ(depth):
    cfg = VARConfig.tiny(depth=depth)
    params = _random_params(cfg)
    labels, x_in = _tiny_inputs(cfg)
    causal = VAR(cfg).apply({"params": params}, labels, x_in, attn_mask="block_causal")
    none = VAR(cfg).apply({"params": params}, labels, x_in, attn_mask="none")
    last_begin = cfg.begin_ends[-1][0]
    # Earlier scales see future scales without the mask.
    assert _rel(none[:, :last_begin], causal[:, :last_begin]) > 1e-2
    if depth == 1:
        # The last scale attends to every key under both masks; with one block its keys agree.
        np.testing.assert_allclose(
            none[:, last_begin:], causal[:, last_begin:], rtol=1e-6, atol=1e-6
        )
    else:
        # From block 2 on, the keys of earlier scales carry the difference to the last scale too.
        assert _rel(none[:, last_begin:], causal[:, last_begin:]) > 1e-3


def test_attention_mask_is_the_official_block_causal_bias():
    cfg = VARConfig.tiny()  # patch_nums (1, 2, 3): levels 0 | 1 1 1 1 | 2 × 9
    mask = attention_mask(cfg, "block_causal")
    assert mask.shape == (14, 14)
    assert mask[0].sum() == 1 and mask[1].sum() == 5 and mask[4].sum() == 5 and mask[5:].all()
    assert attention_mask(cfg, "none") is None
    with pytest.raises(ValueError, match="attn_mask"):
        attention_mask(cfg, "causal")


def test_piecewise_calibration_path_equals_forward():
    cfg = VARConfig.tiny()
    params = _random_params(cfg)
    labels, x_in = _tiny_inputs(cfg)
    model, variables = VAR(cfg), {"params": params}
    expected = model.apply(variables, labels, x_in, attn_mask="none")

    x, cond = model.apply(variables, labels, x_in, method=VAR.embed)
    ada = model.apply(variables, cond, method=VAR.condition)
    positions = np.arange(cfg.seq_len)
    for i in range(cfg.depth):
        if i % 2 == 0:  # the block module alone, on its own sub-tree
            x = VARBlock(cfg).apply({"params": params[f"blocks_{i}"]}, x, ada, positions=positions)
        else:  # through the model, collecting every Dense input of this block
            x, state = model.apply(
                variables, x, ada, i=i, method=VAR.apply_block, mutable=["intermediates"]
            )
            sown = traverse_util.flatten_dict(state["intermediates"], sep="/")
            assert sorted(sown) == [
                f"blocks_{i}/{p}/input"
                for p in ("ada_lin", "attn/proj", "attn/qkv", "ffn/fc1", "ffn/fc2")
            ]
            (qkv_in,) = sown[f"blocks_{i}/attn/qkv/input"]
            (fc2_in,) = sown[f"blocks_{i}/ffn/fc2/input"]
            assert qkv_in.shape == (3, cfg.seq_len, cfg.embed_dim)
            assert fc2_in.shape == (3, cfg.seq_len, cfg.mlp_dim)
    logits = model.apply(variables, x, cond, method=VAR.head_logits)
    np.testing.assert_array_equal(logits, expected)


def test_param_tree_layout():
    cfg = VARConfig.tiny()
    flat = traverse_util.flatten_dict(_random_params(cfg), sep="/")
    c, h, v, e = cfg.embed_dim, cfg.num_heads, cfg.vocab_size, cfg.cvae
    expected = {
        "class_emb/embedding": (cfg.num_classes + 1, c),
        "pos_start": (1, c),
        "pos_1LC": (cfg.seq_len, c),
        "lvl_embed/embedding": (3, c),
        "word_embed/kernel": (e, c),
        "word_embed/bias": (c,),
        "head_nm/ada_lin/kernel": (c, 2 * c),
        "head_nm/ada_lin/bias": (2 * c,),
        "head/kernel": (c, v),
        "head/bias": (v,),
    }
    for i in range(cfg.depth):
        expected |= {
            f"blocks_{i}/attn/qkv/kernel": (c, 3 * c),
            f"blocks_{i}/attn/qkv/bias": (3 * c,),
            f"blocks_{i}/attn/scale_mul": (h,),
            f"blocks_{i}/attn/proj/kernel": (c, c),
            f"blocks_{i}/attn/proj/bias": (c,),
            f"blocks_{i}/ffn/fc1/kernel": (c, 4 * c),
            f"blocks_{i}/ffn/fc1/bias": (4 * c,),
            f"blocks_{i}/ffn/fc2/kernel": (4 * c, c),
            f"blocks_{i}/ffn/fc2/bias": (c,),
            f"blocks_{i}/ada_lin/kernel": (c, 6 * c),
            f"blocks_{i}/ada_lin/bias": (6 * c,),
        }
    assert {k: tuple(a.shape) for k, a in flat.items()} == expected


def test_bfloat16_compute_stays_close_and_returns_float32_logits():
    cfg = VARConfig.tiny()
    params = _random_params(cfg)
    labels, x_in = _tiny_inputs(cfg)
    f32 = VAR(cfg).apply({"params": params}, labels, x_in)
    bf16 = VAR(cfg, ExecOptions(dtype="bfloat16")).apply({"params": params}, labels, x_in)
    assert bf16.dtype == jnp.float32
    # bfloat16 has an 8-bit mantissa (relative rounding 2^-9 ≈ 2e-3 per op).
    assert 0 < _rel(bf16, f32) < 3e-2


def test_dense_float_path_and_sow():
    dense = Dense(5)
    x = jax.random.normal(jax.random.key(0), (2, 3, 7))
    params = dense.init(jax.random.key(1), x)["params"]
    assert params["kernel"].shape == (7, 5) and params["bias"].shape == (5,)
    y, state = dense.apply({"params": params}, x, np.arange(3), mutable=["intermediates"])
    np.testing.assert_allclose(y, x @ params["kernel"] + params["bias"], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(state["intermediates"]["input"][0], x)


def test_dense_matmul_out_dtype():
    """matmul_out="dtype" (bf16 matmul output, bias in bf16) stays within bf16 rounding of the
    default float32 matmul + bias rounded once; bad values are rejected."""
    x = jax.random.normal(jax.random.key(2), (2, 3, 11))
    params = Dense(13).init(jax.random.key(3), x)["params"]
    params = {**params, "bias": jax.random.normal(jax.random.key(4), (13,))}
    ref = Dense(13, dtype=jnp.bfloat16).apply({"params": params}, x)
    out = Dense(13, dtype=jnp.bfloat16, matmul_out="dtype").apply({"params": params}, x)
    assert out.dtype == ref.dtype == jnp.bfloat16
    ref32, out32 = np.asarray(ref, np.float32), np.asarray(out, np.float32)
    np.testing.assert_allclose(out32, ref32, rtol=2**-7, atol=2**-7 * np.abs(ref32).max())
    with pytest.raises(ValueError, match="matmul_out"):
        Dense(13, matmul_out="float16").apply({"params": params}, x)
    with pytest.raises(ValueError, match="matmul_out"):
        ExecOptions(matmul_out="half")


def test_config_presets_and_official_kwargs(reference):
    assert (VARConfig.d16().embed_dim, VARConfig.d16().num_heads) == (1024, 16)
    assert (VARConfig.d30().embed_dim, VARConfig.d30().mlp_dim) == (1920, 7680)
    d36 = VARConfig.d36()
    assert d36.shared_aln and d36.seq_len == 2240 and d36.head_dim == 64
    assert VARConfig.d20().seq_len == 680 and VARConfig.d24().begin_ends[-1] == (424, 680)

    with open(reference("var", "config.json")) as f:
        official = json.load(f)
    cfg = VARConfig.from_official(official)
    assert cfg == VARConfig(
        depth=official["depth"],
        patch_nums=tuple(official["patch_nums"]),
        vocab_size=official["V"],
        cvae=official["Cvae"],
        num_classes=official["num_classes"],
        shared_aln=official["shared_aln"],
        attn_l2_norm=official["attn_l2_norm"],
    )
    assert cfg.embed_dim == 64 * official["depth"] and cfg.num_heads == official["depth"]
    with pytest.raises(ValueError, match="unknown VAR constructor arguments: \\['rope'\\]"):
        VARConfig.from_official({**official, "rope": True})


def test_quantized_dense_layers_run_in_the_forward_and_the_cached_steps():
    cfg = VARConfig.tiny()
    params = _random_params(cfg)
    labels, x_in = _tiny_inputs(cfg)
    model = VAR(cfg)
    # Mini-calibration: every Dense input of the blocks through `sow`.
    _, state = model.apply(
        {"params": params}, labels, x_in, attn_mask="none", mutable=["intermediates"]
    )
    sown = traverse_util.flatten_dict(state["intermediates"], sep="/")
    flat = traverse_util.flatten_dict(params, sep="/")
    scale_sizes = [p * p for p in cfg.patch_nums]
    for name, (x,) in sown.items():
        layer = name.removesuffix("/input")
        if not layer.startswith("blocks_") or layer.endswith("ada_lin"):
            continue
        flat[f"{layer}/kernel"] = quant.quantize_weight(flat[f"{layer}/kernel"], 8)
        # Token-group (per scale) quantizers need the absolute positions passed to Dense.
        flat[f"{layer}/input_quant"] = quant.fit_act_quant(np.asarray(x), 8, scale_sizes)
    qparams = traverse_util.unflatten_dict(flat, sep="/")
    assert isinstance(qparams["blocks_1"]["ffn"]["fc2"]["kernel"], quant.QArray)

    full = jax.jit(lambda p: model.apply({"params": p}, labels, x_in))(qparams)
    float_full = model.apply({"params": params}, labels, x_in)
    assert 0 < _rel(full, float_full) < 0.1  # 8-bit weights and activations: close, not equal

    np.testing.assert_allclose(
        _cached_logits(cfg, qparams, labels, x_in), full, rtol=1e-5, atol=1e-5
    )
