"""tpu_export: every registered family's jitted generate lowers for TPU on this (CPU) host.

`arvg_jax.lowering.export_generate` runs `jax.export` with platforms ("tpu",) on the family's
test-size preset (random weights, abstract: only shapes and dtypes enter the lowering): float32,
and W8A8 / W4A8 trees for every family whose `quant_adapter` exists. Checked in the StableHLO:
no GPU-only custom call (Triton / Mosaic GPU / cuDNN / CUDA libraries: `GPU_ONLY_MARKERS`, which
`test_tpu_export_markers_catch_the_gpu_kernels` checks against what the GPU paths really emit),
and the quantized layers' matmuls stay int8 x int8 -> int32. Nothing is compiled and nothing runs
on a TPU (docs/tpu.md).

Cost: lowering only; one abstract model per family, shared by its tests. The bfloat16 programs
and the whole-sampler GPU control are slow-marked.
"""

import dataclasses
import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import quant
from arvg_jax import families, lowering
from arvg_jax.models import resolve_configs
from arvg_jax.options import ExecOptions
from quant import _packed, _tree
from quant._fit import matmul_fits

FAMILIES = sorted(families.all_families())
BITS = {"w8a8": (8, 8), "w4a8": (4, 8)}
# Custom calls a TPU program may hold (sharding annotations); anything else is reported.
PORTABLE_CALLS = {"Sharding", "SPMDFullToShardShape", "SPMDShardToFullShape"}


def _test_preset(fam) -> str:
    names = [p for p in fam.presets() if p.endswith("-test")]
    assert len(names) == 1, f"{fam.name}: one test-size preset expected, got {names}"
    return names[0]


@functools.cache
def _model(name):
    """(family, cfg, tok_cfg, params, tok_params) of the test preset, params abstract."""
    fam = families.get(name)
    _, cfg, tok_cfg = resolve_configs(_test_preset(fam), None)
    params, tok_params = jax.eval_shape(lambda: fam.init_params(cfg, tok_cfg, 0))
    return fam, cfg, tok_cfg, params, tok_params


def _adapter(fam, cfg):
    try:
        return fam.quant_adapter(cfg)
    except NotImplementedError as e:
        pytest.skip(str(e))


@functools.cache
def _quantized(name, w_bits, a_bits):
    """(tree, int8 matmul roles): the RTN recipe's tree (`quant.algorithms.rtn`: the
    per-output-channel weight quantizer, one per-tensor static input quantizer per covered
    layer, the attention-matmul quantizers the adapter declares) with the activation ranges
    fitted on synthetic inputs instead of a calibration forward: the same leaf types, shapes
    and bits; values do not enter a lowering.

    The roles are the quantized layers plus each attention matmul whose two operands are
    uniform (`quant.quantized_matmul` runs those as int8; PAR's log-√2 P·v is not)."""
    fam, cfg, _, params, _ = _model(name)
    adapter = _adapter(fam, cfg)
    layers = adapter.quantized_layers()
    flat = _tree.flatten(params)
    rng = np.random.default_rng(0)
    for layer in layers:
        fan_in, fan_out = flat[f"{layer}/kernel"].shape
        w = rng.standard_normal((fan_in, fan_out)).astype(np.float32) / math.sqrt(fan_in)
        x = rng.standard_normal((1, 8, fan_in)).astype(np.float32)
        flat[f"{layer}/kernel"] = quant.quantize_weight(w, w_bits)
        flat[f"{layer}/input_quant"] = quant.fit_act_quant(x, a_bits)
    matmuls = matmul_fits(adapter, a_bits)
    for path, fit in matmuls.items():
        x = rng.uniform(0.0, 1.0, (1, 8, 8)).astype(np.float32)  # a probability-like operand
        flat[f"{path}/input_quant"] = fit.fit_input(jnp.asarray(x))
    int8_pairs = [
        f"{node}/{a}{b}"
        for node in {p.rpartition("/")[0] for p in matmuls}
        for a, b in ("qk", "pv")
        if matmuls[f"{node}/{a}"].kind == matmuls[f"{node}/{b}"].kind == "tensor"
    ]
    return _tree.unflatten(flat), (*layers, *int8_pairs)


def _export(name, params=None, **options):
    fam, cfg, tok_cfg, float_params, tok_params = _model(name)
    exp = lowering.export_generate(
        fam,
        cfg,
        tok_cfg,
        float_params if params is None else params,
        tok_params,
        platform="tpu",
        options=ExecOptions(**options),
    )
    assert exp.platforms == ("tpu",)
    text = exp.mlir_module()
    assert lowering.gpu_only_calls(text) == []
    targets = {t for t, _ in lowering.custom_calls(text)}
    assert targets <= PORTABLE_CALLS, targets
    return exp, text


def _layer_roles(layers) -> set[str]:
    """Layer names with the block index dropped: stacked blocks run in a lax.scan whose body
    holds each block layer once, so the program has at least one dot per role."""
    return {re.sub(r"blocks_\d+", "blocks", n) for n in layers}


@pytest.mark.parametrize("name", FAMILIES)
def test_tpu_export_float32(name):
    _, text = _export(name)
    assert lowering.int8_dots(text) == 0
    assert "stablehlo.dot_general" in text


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("name", FAMILIES)
def test_tpu_export_quantized_float32(name, bits):
    params, roles = _quantized(name, *BITS[bits])
    _, text = _export(name, params)
    # Every quantized layer and attention matmul the sampler runs is an int8 x int8 -> int32
    # dot (with more dots where one runs at several call sites, e.g. per VAR scale); none fell
    # back to float.
    assert lowering.int8_dots(text) >= len(_layer_roles(roles)), lowering.int8_dots(text)
    attention = [r for r in roles if "/attn_quant/" in r]
    if attention:  # without their quantizers the attention matmuls run in float
        flat = _tree.flatten(params)
        no_attn = _tree.unflatten({k: v for k, v in flat.items() if "/attn_quant/" not in k})
        _, float_attn = _export(name, no_attn)
        more = lowering.int8_dots(text) - lowering.int8_dots(float_attn)
        assert more >= len(attention), (more, attention)


@pytest.mark.slow
@pytest.mark.parametrize("bits", [None, *BITS])
@pytest.mark.parametrize("name", FAMILIES)
def test_tpu_export_bfloat16(name, bits):
    params, layers = (None, ()) if bits is None else _quantized(name, *BITS[bits])
    _, text = _export(name, params, dtype="bfloat16")
    assert lowering.int8_dots(text) >= len(_layer_roles(layers))


@pytest.mark.parametrize("name", FAMILIES)
def test_tpu_export_refuses_gpu_kernels(name):
    """A GPU kernel asked for explicitly is refused for TPU in one line, before any lowering
    (never run in Pallas interpret mode)."""
    for field, value in (
        ("sampling_filter", "pallas"),
        ("attn_prologue", "pallas"),
        ("adaln_kernel", "pallas"),
        ("attention", "cudnn"),
    ):
        with pytest.raises(ValueError, match=f"{field} '{value}' cannot run on platform 'tpu'"):
            _export(name, **{field: value})


def test_tpu_export_refuses_the_int8_pallas_kernel():
    """The forced Mosaic GPU int8 GEMM (`PackedKernel` impl "pallas") is refused for TPU (it
    failed mid-trace with a TypeError on jax 0.10 before)."""
    params, _ = _quantized("var", 8, 8)
    with pytest.raises(ValueError, match="int8 impl 'pallas' cannot run on platform 'tpu'"):
        _export("var", jax.eval_shape(functools.partial(_packed.pack, impl="pallas"), params))


def test_tpu_export_markers_catch_the_gpu_kernels():
    """The positive control of `gpu_only_calls`: the Pallas Triton kernels lowered for CUDA (on
    this host) are found; the same calls lowered for TPU are refused by Pallas or by us."""
    from arvg_jax.kernels import sampling_pallas

    x = jax.ShapeDtypeStruct((4, 64), jnp.float32)
    f = jax.jit(functools.partial(sampling_pallas.top_k_top_p_filter, top_k=5, top_p=0.9))
    text = f.trace(x).lower(lowering_platforms=("cuda",)).as_text()
    found = lowering.gpu_only_calls(text)
    assert found and all("__gpu$xla.gpu.triton" in ln for ln in found), found


@pytest.mark.slow
def test_tpu_export_markers_catch_the_whole_gpu_sampler():
    """VAR generate built for a GPU with every Pallas kernel it has (filter, attention prologue,
    AdaLN) and lowered for CUDA: the markers find them, so an empty result above means none."""
    fam, cfg, tok_cfg, params, tok_params = _model("var")
    cfg = dataclasses.replace(cfg, embed_dim=32, num_heads=2)  # heads of 16, as the kernels take
    params, tok_params = jax.eval_shape(lambda: fam.init_params(cfg, tok_cfg, 0))
    opts = ExecOptions(
        sampling_filter="pallas", attn_prologue="pallas", adaln_kernel="pallas"
    ).resolve("gpu")
    laid_out = jax.eval_shape(fam.inference_layout, params)

    def generate(p, tp, labels, keys):
        return fam.generate(
            p, tp, cfg, tok_cfg, labels, keys, options=opts, **fam.sampling_defaults(cfg)
        )

    args = (
        laid_out,
        tok_params,
        jax.ShapeDtypeStruct((2,), jnp.int32),
        jax.ShapeDtypeStruct((2, 2), jnp.uint32),
    )
    text = jax.jit(generate).trace(*args).lower(lowering_platforms=("cuda",)).as_text()
    found = lowering.gpu_only_calls(text)
    names = {m for ln in found for m in re.findall(r'name = "(\w+)"', ln)}
    assert len(found) >= 3, names
