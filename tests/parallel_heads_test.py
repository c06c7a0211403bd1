"""Head-parallel attention on one device (`arvg_jax.parallel.heads`): the model-shard-major qkv
column order, its permutation of float and quantized leaves, and the models reading it.

The multi-device runs (the order placed on data=4,model=2, the compiled program's per-device
shapes, checkpoints) are in `parallel_families_test.py` / `parallel_devices_test.py`.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arvg_jax import families
from arvg_jax.options import ExecOptions
from arvg_jax.parallel import heads
from quant import _packed
from quant._qarray import ActQuant, QArray


def test_column_order_puts_each_shards_heads_together():
    # GQA: H = 4 q heads, G = 2 kv heads, K = 1, M = 2. Shard m holds q heads 2m, 2m + 1 and kv
    # head m (the one they read: h // (H / G)); official rows q0..q3 | k0 k1 | v0 v1.
    assert heads.column_order(4, 2, 1, 2).tolist() == [0, 1, 4, 6, 2, 3, 5, 7]
    # K = 2: each head's columns stay together, in order.
    assert heads.column_order(2, 2, 2, 2).tolist() == [0, 1, 4, 5, 8, 9, 2, 3, 6, 7, 10, 11]
    assert heads.column_order(3, 3, 1, 1).tolist() == list(range(9))  # M = 1: official


def test_relayout_moves_every_column_array_of_a_fused_layer_alike():
    layer = heads.FusedHeads(r"blocks(_\d+)?/attn/qkv", r"blocks(_\d+)?/attn/proj", 2, 2, 3)
    rng = np.random.default_rng(0)
    kernel = rng.standard_normal((6, 18)).astype(np.float32)
    lo, hi = kernel.min(0, keepdims=True), kernel.max(0, keepdims=True)
    scale = (hi - lo) / 255
    q = QArray.quantize(kernel, scale, np.round(-lo / scale), 8)
    act = ActQuant.from_official(np.float32([0.1]), np.float32([3.0]), 8)
    tree = {
        "blocks_0": {
            "attn": {"qkv": {"kernel": kernel, "bias": np.arange(18.0), "input_quant": act}}
        },
        "blocks_1": {"attn": {"qkv": {"kernel": q}}},
        "blocks": {"attn": {"qkv": {"kernel": _packed.pack_kernel(q)}}},  # inference layout
        "blocks_2": {"ffn": {"fc1": {"kernel": kernel}}},  # not a fused layer: untouched
    }
    order = heads.column_order(2, 2, 3, 2)
    out = heads.relayout(tree, (layer,), 2)
    np.testing.assert_array_equal(out["blocks_0"]["attn"]["qkv"]["kernel"], kernel[:, order])
    np.testing.assert_array_equal(out["blocks_0"]["attn"]["qkv"]["bias"], np.arange(18.0)[order])
    assert out["blocks_0"]["attn"]["qkv"]["input_quant"] is act  # per input: unaffected
    moved_q = out["blocks_1"]["attn"]["qkv"]["kernel"]
    # Per-column codes, scales and zero points moved together: the same dequantized columns.
    np.testing.assert_array_equal(moved_q.dequantize(), q.dequantize()[:, order])
    moved_p = out["blocks"]["attn"]["qkv"]["kernel"]
    want_p = _packed.pack_kernel(moved_q)
    for f in ("qvalue_t", "scale", "zero_point", "col_sum"):
        np.testing.assert_array_equal(getattr(moved_p, f), getattr(want_p, f), err_msg=f)
    np.testing.assert_array_equal(out["blocks_2"]["ffn"]["fc1"]["kernel"], kernel)
    # Three heads on two shards do not split: the official order stays.
    odd = dataclasses.replace(layer, q_heads=3, kv_heads=3, head_dim=2)
    np.testing.assert_array_equal(
        heads.relayout(tree, (odd,), 2)["blocks_0"]["attn"]["qkv"]["kernel"], kernel
    )


def _logits(name: str, params, cfg, shards: int, rng):
    """The family's transformer output on random inputs, qkv read in the order of `shards`."""
    if name == "var":
        from arvg_jax.families.var.model import VAR

        x = rng.standard_normal((2, cfg.seq_len - cfg.first_l, cfg.cvae)).astype(np.float32)
        model = VAR(cfg, ExecOptions(qkv_shards=shards))
        return model.apply({"params": params}, jnp.arange(2), x)
    if name == "rar":
        from arvg_jax.families.rar.model import RAR

        tokens = rng.integers(0, cfg.codebook_size, (2, cfg.image_seq_len), np.int32)
        cond = cfg.condition_id(jnp.arange(2))
        return RAR(cfg, jnp.float32, shards).apply({"params": params}, tokens, cond)
    if name == "par":
        from arvg_jax.families.par.model import PAR

        tokens = rng.integers(0, cfg.vocab_size, (2, cfg.block_size), np.int32)
        return PAR(cfg, qkv_shards=shards).apply({"params": params}, jnp.arange(2), tokens)
    from arvg_jax.families.mar.model import MAR

    tokens = rng.standard_normal((2, cfg.seq_len, cfg.token_embed_dim)).astype(np.float32)
    mask = rng.integers(0, 2, (2, cfg.seq_len)).astype(np.float32)
    model = MAR(cfg, qkv_shards=shards)
    return model.apply(
        {"params": params["transformer"]}, tokens, mask, jnp.arange(2), mask[:, 0] > 0
    )


def _gqa_par_config():
    # par-test has as many kv heads as heads (2); 4 heads reading 2 kv heads check the GQA
    # grouping (query head h reads kv head h // 2), with head dim 16 (2-D RoPE takes K % 4 == 0).
    cfg = families.get("par").presets()["par-test"].config()
    return dataclasses.replace(cfg, n_head=4, n_kv_head=2)


# GQA PAR runs by default (the grouping is the subtle case); the others, 3-5 s each, are slow.
@pytest.mark.parametrize(
    "name",
    [*(pytest.param(n, marks=pytest.mark.slow) for n in ("var", "rar", "par", "mar")), "par-gqa"],
)
def test_models_read_the_shard_major_order_as_the_official_one(name):
    # The permuted tree read with qkv_shards=2 on one device: the same heads meet the same keys,
    # so the outputs equal the official tree's (tested exactly: only the qkv matmul's columns
    # move, each column's dot product is unchanged).
    family = families.get(name.split("-")[0])
    if name == "par-gqa":
        cfg = _gqa_par_config()
    else:
        cfg = next(p for p in family.presets().values() if p.name.endswith("-test")).config()
    abstract = jax.eval_shape(lambda: family.init_params(cfg, _tok_cfg(family), 0))[0]
    rng = np.random.default_rng(0)
    params = jax.tree_util.tree_map(
        lambda x: np.float32(0.3) * rng.standard_normal(x.shape, np.float32), abstract
    )
    _, fused = heads.split_rules(family.sharding_rules(cfg))
    assert fused and all(layer.shards(2) == 2 for layer in fused), fused
    permuted = heads.relayout(params, fused, 2)
    qkv = [k for k, _ in jax.tree_util.tree_flatten_with_path(params)[0] if "qkv" in str(k)]
    assert qkv  # the family's fused layers were found and moved
    want = _logits(family.name, params, cfg, 1, np.random.default_rng(1))
    got = _logits(family.name, permuted, cfg, 2, np.random.default_rng(1))
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    # Read in the official order, the permuted tree is another model: the layout matters.
    wrong = _logits(family.name, permuted, cfg, 1, np.random.default_rng(1))
    assert not np.allclose(np.asarray(wrong), np.asarray(want))


def _tok_cfg(family):
    return next(p for p in family.presets().values() if p.name.endswith("-test")).tokenizer_config()


def test_var_attn_prologue_kernel_refuses_the_shard_major_order():
    from arvg_jax.families.var.attention import attn_prologue_impl

    cfg = families.get("var").presets()["var-test"].config()
    opts = ExecOptions(qkv_shards=2, attn_prologue="pallas", interpret=True)
    with pytest.raises(ValueError, match="qkv_shards=2"):
        attn_prologue_impl(cfg, opts)
    assert attn_prologue_impl(cfg, opts.replace(attn_prologue="auto")) == "xla"
    with pytest.raises(ValueError, match="qkv_shards"):
        ExecOptions(qkv_shards=0)
