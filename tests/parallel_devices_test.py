"""Sharded sampling, calibration and checkpoints on 8 fake CPU devices (docs/scale_out.md).

Every case runs `tests/_parallel_cases.py` in a fresh interpreter (`_parallel_run`). The default
suite runs var-test's data=8 sampling and the checkpoint round trip here (and rar-test's
data=4,model=2 in `parallel_families_test.py`); the rest (pure data=8 of the other families, VAR's
tensor parallelism, the sharded calibrations) is marked slow, each compiling the samplers or the
calibration stages twice; CI runs it after the default suite.
"""

import pytest
from _parallel_run import check_sampling as _check_sampling
from _parallel_run import run_case as _run


def test_var_data_parallel_equals_one_device():
    result = _run("sampling", "var-test", "data=8")
    _check_sampling(result)
    assert result["data=8"]["images_max_abs_diff"] < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("name", ["rar-test", "par-test"])
def test_data_parallel_equals_one_device(name):
    _check_sampling(_run("sampling", name, "data=8"))


@pytest.mark.slow
def test_mar_data_parallel_equals_one_device_to_float_rounding():
    # MAR's tokens are continuous floats, not ids: XLA:CPU compiles each row count (and the
    # shard_map program) with its own rounding of row reductions (LayerNorm means), so a data=8
    # run equals the one-device run to float rounding only, as one-device runs at batch 1 and 8
    # differ from each other (measured: 0.13 on tokens of magnitude 1.8e5 in both cases).
    result = _run("sampling", "mar-test", "data=8")
    r = result["data=8"]
    assert r["output_sharding"]["tokens"] == ["data"] and r["distinct_images"] > 1, r
    assert r["tokens_rel_diff"] < 1e-5 and r["images_max_abs_diff"] < 1e-5, r


@pytest.mark.slow
def test_var_tensor_parallel_gives_the_same_tokens():
    # model=2 splits the attention heads and the FFN hidden columns: proj's and fc2's partial
    # sums are joined by all-reduces, so logits and images equal the one-device run to float
    # rounding; the tokens are identical, and the compiled program is head-parallel (the stacked
    # inference layout's qkv [D, C, 3C] read as [C, 3C / 2] per device).
    result = _run("sampling", "var-test", "data=4,model=2")
    _check_sampling(result)
    assert result["data=4,model=2"]["images_max_abs_diff"] < 1e-5


@pytest.mark.slow
def test_sharded_calibration_gives_the_same_quantized_tree():
    # Row sums round differently with 2 rows per device than with 16 (see the MAR test in
    # parallel_families_test.py), so the calibration activations move by an ulp: RTN's activation
    # scales move by at most an ulp and every integer leaf (weight codes) is equal.
    r = _run("calibration", "rtn")["rtn"]
    assert r["same_structure"] and r["integer_leaves_equal"], r
    assert r["float_leaves_max_rel_diff"] <= 1e-6, r


@pytest.mark.slow
def test_sharded_ptq4arvg_calibration_equals_one_device_up_to_rounding_boundaries():
    # The calibration activations move by an ulp with 2 rows per device (see the RTN test), and
    # PTQ4ARVG's searches amplify that: a neighbouring candidate can win for a few activation
    # scales (about 1 % on those scales on one CPU, 6e-4 on another, measured), and the weight
    # scales folded from them move by as little, so a weight code lying on a rounding boundary
    # can flip by one step (0 of 26,766 codes on one CPU, 1 in blocks_1/ffn/fc1 on an AVX512-BF16
    # EPYC, measured 2026-12-08). Exact equality is not reachable without batch-invariant
    # kernels (docs/scale_out.md); what holds is this: same structure, codes equal but for a few
    # one-step flips, float leaves within 2 %.
    r = _run("calibration", "ptq4arvg")["ptq4arvg"]
    assert r["same_structure"], r
    assert r["integer_max_step"] <= 1, r
    assert r["integer_codes_moved"] <= r["integer_codes"] // 1000, r
    assert r["float_leaves_max_rel_diff"] <= 2e-2, r


def test_checkpoint_restores_onto_another_mesh(tmp_path):
    # Trees saved from data=4,model=2 hold their qkv columns in the head-parallel order on the
    # devices (reordered leaves); the checkpoint stores the official order, so restoring onto
    # data=2, data=8 or one device gives the original leaves (hence the same outputs), and onto
    # model=2 the head-parallel order again (compared once brought back to the official one).
    for case, r in _run("checkpoint", tmp_path).items():
        assert r["equal"] and r["same_structure"] and r["placed_by_rules"], (case, r)
        src, dst = case.split(" ", 1)[1].split(" -> ")
        if "model=2" in src:
            assert r["saved_model_sharded_leaves"] > 0, (case, r)
            assert r["saved_reordered_leaves"] > 0, (case, r)  # qkv kernels (and biases)
        else:
            assert r["saved_reordered_leaves"] == 0, (case, r)
        assert r["restored_qkv_shards"] == (2 if "model=2" in dst else 1), (case, r)
