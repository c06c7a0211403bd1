"""`arvg bench` on the CPU at the tiny config: well-formed JSON / markdown / PNG; the pieces."""

import json
import pathlib

import numpy as np
import pytest

from arvg_jax import imageio, plot
from arvg_jax.cli import main
from arvg_jax.families.var.bench import build, gemm, profile
from arvg_jax.families.var.model import VARConfig
from arvg_jax.options import ExecOptions


def _png_pixels(path):
    img = imageio.decode_png(pathlib.Path(path).read_bytes())
    assert img.ndim == 3 and img.shape[2] == 3
    return img


@pytest.mark.slow
def test_bench_command_tiny_cpu(tmp_path):
    out = tmp_path / "bench"
    rc = main(
        [
            "bench",
            "--model",
            "var-test",
            "--batches",
            "1,2",
            "--precisions",
            "bfloat16,w8a8",
            "--repeats",
            "2",
            "--min-repeats",
            "1",
            "--gemm",
            "--gemm-batches",
            "1",
            "--gemm-scales",
            "-1",
            "--profile",
            "--profile-batches",
            "2",
            "--hlo",
            "--quiet",
            "--out-dir",
            str(out),
        ]
    )
    assert rc == 0
    doc = json.loads((out / "bench.json").read_text())
    meta = doc["meta"]
    assert meta["backend"] == "cpu" and meta["jax"] and meta["date"]
    assert "--precisions bfloat16,w8a8" in meta["command"]
    rows = doc["rows"]
    assert [(r["variant"], r["batch"]) for r in rows] == [
        ("bfloat16", 1),
        ("bfloat16", 2),
        ("w8a8", 1),
        ("w8a8", 2),
    ]
    for r in rows:
        assert "error" not in r
        assert r["images_per_s"] > 0 and r["latency_ms_median"] > 0
        assert r["latency_ms_min"] <= r["latency_ms_median"] <= r["latency_ms_max"]
        assert r["images_per_s"] == pytest.approx(r["batch"] / (r["latency_ms_median"] / 1e3))
        assert len(r["latencies_ms"]) >= 1 and r["first_call_s"] > 0
        assert r["retraced_on_same_shape"] is False and r["images_finite"] is True
        assert r["program_memory"]["total_bytes"] > 0
        assert r["speedup_vs_bf16"] > 0
        assert ("profile" in r) == (r["batch"] == 2)
    bf16 = {r["batch"]: r for r in rows if r["variant"] == "bfloat16"}
    assert all(r["speedup_vs_bf16"] == 1.0 for r in bf16.values())
    w8 = [r for r in rows if r["variant"] == "w8a8"]
    assert all(r["param_bytes"] < bf16[1]["param_bytes"] for r in w8)
    assert all(
        r["param_bytes_vs_bf16"] == pytest.approx(r["param_bytes"] / bf16[1]["param_bytes"])
        for r in w8
    )
    prof = rows[1]["profile"]
    assert prof["device_time_ms"] > 0 and prof["categories_ms"] and prof["top_kernels"]
    assert 0 < prof["busy_ms"] <= prof["span_ms"] + 1e-9
    assert set(doc["hlo"]) == {f"var-test:{v}:{b}" for v in ("bfloat16", "w8a8") for b in (1, 2)}
    assert doc["hlo"]["var-test:w8a8:1"]["instructions"] > 0
    (g,) = doc["gemm"]
    assert g["model"] == "var-test" and g["batch"] == 1
    assert [r["name"] for r in g["rows"]] == [
        "qkv@3x3",
        "proj@3x3",
        "fc1@3x3",
        "fc2@3x3",
        "ada_lin",
        "head@3x3",
    ]
    for r in g["rows"]:
        assert set(r["us"]) == set(gemm.VARIANTS) and all(t > 0 for t in r["us"].values())
    md = (out / "bench.md").read_text()
    assert "| model | variant | batch | images/s |" in md
    assert md.count("| var-test | w8a8 |") == 2 and "## GEMM micro-benchmark" in md
    img = _png_pixels(out / "bench.png")
    assert img.shape == (440, 720, 3)
    for color in plot.COLORS[:2]:  # one line per variant
        assert np.any(np.all(img == np.array(color, np.uint8), axis=-1))
    assert (out / "hlo.tar.gz").stat().st_size > 0


def test_variant_parsing():
    v = build.Variant.parse("w6a6+int8-qarray+attn-xla+unrolled")
    assert (v.precision, v.int8_impl, v.attention, v.blocks, v.bits) == (
        "w6a6",
        "qarray",
        "xla",
        "unrolled",
        (6, 6),
    )
    assert build.Variant.parse("bfloat16").blocks == "scan"
    assert build.Variant.parse("float32").bits is None
    v = build.Variant.parse("w8a8+kv-prefix+ffn-unfused")
    assert (v.kv, v.ffn_fused, v.int8_impl) == ("prefix", False, "auto")
    assert (build.Variant.parse("w8a8").kv, build.Variant.parse("w8a8").ffn_fused) == ("auto", True)
    assert build.Variant.parse("bfloat16+filter-sort").filter == "sort"
    assert build.Variant.parse("bfloat16+kvpage-128").kv_page == 128
    assert build.Variant.parse("bfloat16+gemm-bf16out").matmul_out == "dtype"
    assert build.Variant.parse("bfloat16+prologue-pallas").prologue == "pallas"
    assert build.Variant.parse("bfloat16").prologue == ""
    assert build.Variant.parse("w8a8+adaln-pallas").adaln == "pallas"
    assert build.Variant.parse("w8a8").filter == "auto"
    for bad in (
        "int4",
        "w8a8+fast",
        "bfloat16+int8-xla",
        "bfloat16+ffn-unfused",
        "w8a8+kv-ring",
        "w8a8+filter-heap",
        "w8a8+kvpage-96",
        "w8a8+kvpage-0",
        "w8a8+prologue-triton",
    ):
        with pytest.raises(ValueError):
            build.Variant.parse(bad)


@pytest.mark.slow  # compiles every sampler variant
def test_variant_sampler_options_reach_the_config():
    from arvg_jax.models import random_model

    model = random_model("var-test", seed=0)
    trees = build.quantize_fast(model, [(8, 8)], calib=2, seed=0)
    _, _, _, cfg = build.variant_params(
        model,
        build.Variant.parse("w8a8+kv-prefix+ffn-unfused+filter-pallas+kvpage-128+prologue-xla"),
        trees,
    )
    assert (cfg.sampler_kv, cfg.fuse_ffn_quant, cfg.sampling_filter) == ("prefix", False, "pallas")
    assert (cfg.kv_page, cfg.attn_prologue) == (128, "xla")
    _, _, _, cfg = build.variant_params(model, build.Variant.parse("w8a8"), trees)
    assert (cfg.sampler_kv, cfg.fuse_ffn_quant) == (ExecOptions().sampler_kv, True)


def test_gemm_shapes_and_roofline():
    shapes = gemm.gemm_shapes(VARConfig.d30(), 64, [-1, 7])
    by = {s["name"]: (s["M"], s["K"], s["N"]) for s in shapes}
    assert by["qkv@16x16"] == (32768, 1920, 5760)
    assert by["fc2@16x16"] == (32768, 7680, 1920)
    assert by["fc1@10x10"] == (12800, 1920, 7680)
    assert by["ada_lin"] == (128, 1920, 11520)
    assert by["head@16x16"] == (32768, 1920, 4096)
    m, k, n = by["qkv@16x16"]
    assert gemm.roofline_s(m, k, n, "int8") == pytest.approx(2 * m * k * n / 1979e12)
    m, k, n = by["ada_lin"]  # weight-bound
    assert gemm.roofline_s(m, k, n, "int8") == pytest.approx((m * k + k * n + 2 * m * n) / 3.35e12)


def test_profile_categories_and_hlo_summary():
    cat = profile._categorize
    cub = (
        "%custom-call.5 = (s32[128,5760]{1,0}, s8[0]{0}) custom-call(s8[128,1920]{1,0} %a, "
        's8[5760,1920]{1,0} %b), custom_call_target="__cublas$lt$matmul"'
    )
    assert cat(cub, "nvjet_tst_128x64") == "GEMM int8 (cuBLAS/library)"
    fcub = cub.replace("s32[128,5760]", "f32[128,5760]")
    assert cat(fcub, "nvjet_tst_128x64") == "GEMM float (cuBLAS/library)"
    assert (
        cat("%f = bf16[4,9]{1,0} fusion(%a), kind=kLoop", "loop_convert_fusion")
        == "elementwise fusions"
    )
    assert cat(None, "cudnn_generated_fort_native_sdpa_sm90") == "attention (cuDNN fused)"
    assert cat(None, "top_k_top_p_filter__9") == "sort / top-k (sampling)"
    tri = (
        "%gemm_fusion_dot.1 = bf16[8,16]{1,0} fusion(bf16[8,4]{1,0} %a, bf16[4,16]{1,0} %b), "
        'kind=kCustom, backend_config={"fusion_backend_config":{"kind":"__triton_gemm"}}'
    )
    assert cat(tri, "gemm_fusion_dot_1") == "GEMM float (Triton)"
    lines = [
        cub,
        tri,
        "  %transpose.3 = s8[5760,1920]{1,0} transpose(s8[1920,5760] %w)",
        "  %opt-barrier.1 = (s8[2]) opt-barrier((s8[2]) %t)",
    ]
    text = "\n".join(lines)
    s = profile.hlo_summary(text)
    assert s["cublas_calls_with_s8"] == 1 and s["triton_gemm_fusions"] == 1
    assert s["s8_transposes"] == 1 and s["opt_barriers"] == 1
    assert s["custom_call_targets"] == {"__cublas$lt$matmul": 1}


def test_plot_draws_each_series():
    img = plot.line_plot({"a": [(1, 1.0), (16, 8.0)], "b": [(1, 2.0), (16, 3.0)]}, title="t")
    assert img.dtype == np.uint8 and img.shape == (440, 720, 3)
    for color in plot.COLORS[:2]:
        assert np.sum(np.all(img == np.array(color, np.uint8), axis=-1)) > 50


@pytest.mark.parametrize("fit", ("fast", "calibrated"))
@pytest.mark.slow  # builds and calibrates bench variants (~45 s)
def test_quantized_variants_have_the_ptq4arvg_layout(fit):
    from quant import QArray
    from quant._packed import PackedKernel

    model = build.fast_random_model("var-test", seed=2)
    quantize = build.quantize_fast if fit == "fast" else build.quantize_calibrated
    trees = quantize(model, [(8, 8), (6, 6)], calib=2, seed=0)
    assert set(trees) == {(8, 8), (6, 6)}
    blk = trees[(6, 6)]["blocks_1"]
    num_scales = len(model.cfg.patch_nums)
    for path, groups in (
        ("attn/qkv", num_scales),
        ("ffn/fc1", num_scales),
        ("attn/proj", 2),
        ("ffn/fc2", 2),
        ("ada_lin", 1),
    ):
        layer = blk
        for part in path.split("/"):
            layer = layer[part]
        assert isinstance(layer["kernel"], QArray) and layer["kernel"].bits == 6
        aq = layer["input_quant"]
        aq.validate()
        assert aq.bits == 6 and aq.num_groups == groups
    assert trees[(8, 8)]["head"]["input_quant"].per_tensor
    assert "input_quant" not in trees[(8, 8)]["word_embed"]
    params, _, _, opts = build.variant_params(model, build.Variant.parse("w8a8"), trees)
    assert isinstance(params["blocks"]["attn"]["qkv"]["kernel"], PackedKernel)
    assert opts.dtype == "bfloat16"
    assert build.param_bytes(params) < build.param_bytes(build.to_bfloat16(model.params))


@pytest.mark.slow  # builds every bench variant's tree (~50 s)
def test_abstract_param_bytes_equal_the_built_trees():
    """The shapes-only byte count (how BENCHMARKS reports VAR-d30's W4A8 storage) equals
    `param_bytes` of the trees the bench builds; W4A8 stores two weight codes per byte."""
    from arvg_jax.models import random_model
    from quant import _packed

    model = random_model("var-test", seed=0)
    specs = ["float32", "bfloat16", "w8a8", "w6a6", "w4a8"]
    got = build.abstract_param_bytes("var-test", specs)
    trees = build.quantize_fast(model, [(8, 8), (6, 6), (4, 8)], calib=2, seed=0)
    built = {
        "float32": build.param_bytes(model.params),
        "bfloat16": build.param_bytes(build.to_bfloat16(model.params)),
        **{
            f"w{w}a{a}": build.param_bytes(_packed.pack(trees[(w, a)]))
            for (w, a) in [(8, 8), (6, 6), (4, 8)]
        },
    }
    assert got == built
    assert got["w8a8"] == got["w6a6"] > got["w4a8"]  # 6-bit codes still take a byte each


def test_out_dir_is_marked_and_a_foreign_directory_refused(tmp_path, capsys):
    """`--out-dir` gets the `.arvg` marker (arvg_jax/atomic.py) like every arvg output, so a
    rerun and `--overwrite` accept it, while a directory arvg did not write is refused."""
    from arvg_jax import atomic

    out = tmp_path / "bench"
    argv = ["bench", "--model", "var-test", "--no-e2e", "--quiet", "--out-dir", str(out)]
    assert main(argv) == 0  # nothing measured: the (empty) report only
    assert (out / atomic.MARKER).is_file() and atomic.is_arvg_dir(out)
    assert (out / "bench.json").is_file()
    assert main(argv) == 0  # its own directory: written into again
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    capsys.readouterr()
    assert main([*argv[:-1], str(foreign)]) == 2
    assert atomic.MARKER in capsys.readouterr().err
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
