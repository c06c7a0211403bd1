"""arvg_jax.parallel on one process: mesh specs, sharding rules, the multi-host shard split."""

import functools
import re

import numpy as np
import pytest
from jax.sharding import AbstractMesh
from jax.sharding import PartitionSpec as P

from arvg_jax import families
from arvg_jax.parallel import hosts, parse_spec, rules
from quant._packed import PackedKernel
from quant._qarray import ActQuant, QArray


def test_mesh_specs():
    assert parse_spec(None, 8) == {"data": 8, "model": 1}
    assert parse_spec("data=4,model=2", 8) == {"data": 4, "model": 2}
    assert parse_spec("model=2", 8) == {"data": 4, "model": 2}
    assert parse_spec("data=1", 8) == {"data": 1, "model": 1}  # the first device only
    for bad, msg in [
        ("data=8,model=2", "16 devices, but 8"),
        ("model=3", "does not divide 8"),
        ("data=2,foo=4", "expected comma-separated"),
        ("data=x", "not an integer"),
        ("data=0", ">= 1"),
    ]:
        with pytest.raises(ValueError, match=msg):
            parse_spec(bad, 8)


def test_rules_shard_float_and_quantized_leaves_alike():
    mesh = AbstractMesh((2, 2), ("data", "model"))
    rules_ = families.get("var").sharding_rules()
    kernel = np.zeros((26, 104), np.float32)
    q = QArray(
        qvalue=np.zeros((2, 26, 104), np.int8),  # stacked blocks: [depth, in, out]
        scale=np.ones((2, 1, 104), np.float32),
        zero_point=np.zeros((2, 1, 104), np.float32),
    )
    packed = PackedKernel(
        qvalue_t=np.zeros((104, 26), np.int8),
        scale=np.ones((1, 104), np.float32),
        zero_point=np.zeros((1, 104), np.float32),
        col_sum=np.zeros((1, 104), np.int32),
    )
    act = ActQuant(
        scale=np.ones((1,), np.float32),
        zero_point=np.zeros((1,), np.float32),
        group_of_position=np.zeros((14,), np.int32),
    )
    tree = {
        "blocks_0": {"ffn": {"fc1": {"kernel": kernel, "bias": np.zeros(104), "input_quant": act}}},
        "blocks": {"ffn": {"fc1": {"kernel": q}, "fc2": {"kernel": packed}}},
        "head": {"kernel": np.zeros((26, 37), np.float32)},
        "odd": {"ffn": {"fc1": {"kernel": np.zeros((26, 7))}}},
    }
    tree["blocks_1"] = {"ffn": {"fc1": {"kernel": np.zeros((26, 7), np.float32)}}}
    specs = rules.param_specs(tree, rules_, mesh)
    fc1 = specs["blocks_0"]["ffn"]["fc1"]
    assert fc1["kernel"] == P(None, "model") and fc1["bias"] == P("model")
    assert fc1["input_quant"].scale == P()
    sq = specs["blocks"]["ffn"]["fc1"]["kernel"]
    assert (sq.qvalue, sq.scale, sq.zero_point) == (P(None, None, "model"),) * 3
    sp = specs["blocks"]["ffn"]["fc2"]["kernel"]  # fc2 rows: [out, in] codes split on "in"
    assert sp.qvalue_t == P(None, "model") and sp.scale == P() and sp.col_sum == P()
    assert specs["head"]["kernel"] == P()  # no rule: replicated
    assert specs["blocks_1"]["ffn"]["fc1"]["kernel"] == P()  # 7 columns do not split in 2
    # Data parallelism alone replicates everything.
    flat = rules.param_specs(tree, rules_, AbstractMesh((4, 1), ("data", "model")))
    assert flat["blocks_0"]["ffn"]["fc1"]["kernel"] == P()


def test_every_family_rule_names_a_layer():
    import jax

    from arvg_jax.parallel import heads
    from arvg_jax.parallel.rules import _path_name

    for fam in families.all_families().values():
        preset = next(p for p in fam.presets().values() if p.name.endswith("-test"))
        cfg, tok_cfg = preset.config(), preset.tokenizer_config()
        abstract, _ = jax.eval_shape(functools.partial(fam.init_params, cfg, tok_cfg, 0))
        names = [_path_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(abstract)[0]]
        plain, fused = heads.split_rules(fam.sharding_rules(cfg))
        assert plain == fam.sharding_rules() and fused, fam.name  # every family splits heads
        # The test presets' heads divide by 2, so their model=2 runs are head-parallel.
        assert all(layer.shards(2) == 2 for layer in fused), (fam.name, fused)
        kernels = [f"{path}/kernel" for f in fused for path in (f.qkv, f.proj)]
        patterns = [r[0] for r in plain] + kernels
        for pattern in patterns:
            assert any(re.fullmatch(pattern, n) for n in names), (fam.name, pattern)


def test_each_shard_has_one_owner_and_restarts_skip_finished_ones():
    total = 11
    split = [hosts.my_shards(total, set(), p, 3) for p in range(3)]
    assert sorted(s for part in split for s in part) == list(range(total))
    assert split[1] == [1, 4, 7, 10]
    # A restart with another process count regenerates exactly the missing shards.
    done = {0, 1, 2, 3, 5, 8}
    again = [hosts.my_shards(total, done, p, 2) for p in range(2)]
    assert sorted(s for part in again for s in part) == [4, 6, 7, 9, 10]


def test_process_info_from_a_job_array(monkeypatch):
    monkeypatch.setenv(hosts.INDEX_ENV, "2")
    monkeypatch.setenv(hosts.COUNT_ENV, "4")
    assert hosts.process_info() == (2, 4, False)
    monkeypatch.setenv(hosts.INDEX_ENV, "4")
    with pytest.raises(ValueError, match="outside"):
        hosts.process_info()
    monkeypatch.delenv(hosts.INDEX_ENV)
    monkeypatch.delenv(hosts.COUNT_ENV)
    assert hosts.process_info() == (0, 1, False)
