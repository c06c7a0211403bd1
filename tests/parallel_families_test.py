"""Sharded sampling of every family on 8 fake CPU devices, data and tensor parallel at once.

Each case runs `tests/_parallel_cases.py` in a fresh interpreter (`_parallel_run`): a data=4,model=2
mesh splits the batch over 4 devices, and the attention heads and MLP hidden columns over 2 (the
family's `sharding.RULES` and `sharding.heads`), and must give the one-device run's tokens; the
compiled program must read each device's share of every qkv and proj kernel (`check_heads`).
RAR's float run is in the default suite; the others (30-60 s each on 2 cores) are slow-marked, run
by CI after the default suite. Pure data=8 meshes of these families are in
`parallel_devices_test.py` (slow; VAR's by default).
"""

import pytest
from _parallel_run import check_heads, check_sampling, run_case

MESH = "data=4,model=2"


@pytest.mark.parametrize("name", ["rar-test", pytest.param("par-test", marks=pytest.mark.slow)])
def test_data_and_tensor_parallel_give_the_same_tokens(name):
    # proj's (wo's) and fc2's (w2's) partial sums are joined by all-reduces, so logits (and
    # images) equal the one-device run to float rounding, not bit for bit; the discrete tokens of
    # these runs are identical (a near-tie could flip one in general).
    result = run_case("sampling", name, MESH)
    check_sampling(result)
    if name != "par-test":  # PAR's images are uint8 levels / 255: a level may flip
        assert result[MESH]["images_max_abs_diff"] < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("name", ["var-test", "rar-test", "par-test"])
def test_quantized_tree_on_data_and_tensor_parallel_gives_the_same_tokens(name):
    # RTN W8A8: per-column weight codes, scales and zero points move with their qkv columns;
    # activation and attention-matmul quantizers are per tensor and unaffected by the split.
    result = run_case("sampling", name, MESH, "full", "rtn")
    check_sampling(result)


@pytest.mark.slow
@pytest.mark.parametrize("tree", ["float", "rtn"])
def test_mar_data_and_tensor_parallel_equal_one_device_to_float_rounding(tree):
    # MAR's tokens are continuous floats, not ids: XLA:CPU compiles each row count (and the
    # shard_map program, and the all-reduces of the split attention and MLP) with its own
    # rounding of row reductions, so the sharded run equals the one-device run to float rounding
    # only (float tree measured: 8.5e-7 of max |token|, images 3.4e-6). RTN W8A8 amplifies that
    # row-count rounding: an activation an ulp away flips its int8 code, and data=8 alone (no
    # tensor parallelism) differs from the one-device batch of 8 by 1.6e-2 of max |token|
    # (measured; data=4,model=2 by exactly as much). So the quantized tree is compared with
    # one-device calls on each shard's 2 images ("shard"): measured 5.5e-9, images 1.0e-6.
    result = run_case("sampling", "mar-test", MESH, "full" if tree == "float" else "shard", tree)
    check_heads(result)
    r = result[MESH]
    assert r["output_sharding"]["tokens"] == ["data"] and r["distinct_images"] > 1, r
    assert r["tokens_rel_diff"] < 1e-5 and r["images_max_abs_diff"] < 1e-5, r
