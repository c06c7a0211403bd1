"""arvg_jax.options: execution options are validated, hashable, and resolved outside tracing."""

import jax.numpy as jnp
import pytest

from arvg_jax import options
from arvg_jax.options import ExecOptions


def test_dtype_spellings_normalise_and_hash():
    a, b = ExecOptions(dtype=jnp.bfloat16), ExecOptions(dtype="bfloat16")
    assert a == b and hash(a) == hash(b) and a.dtype == "bfloat16"
    assert jnp.dtype(a.compute_dtype) == jnp.bfloat16 and a.half and not ExecOptions().half
    with pytest.raises(ValueError, match="dtype must be one of"):
        ExecOptions(dtype="int8")


@pytest.mark.parametrize(
    "field,bad",
    [("attention", "flash"), ("matmul_out", "half"), ("adaln_kernel", "cuda"), ("kv_page", 100)],
    ids=["attention", "matmul_out", "adaln_kernel", "kv_page"],
)
def test_bad_values_name_the_field(field, bad):
    with pytest.raises(ValueError, match=field):
        ExecOptions(**{field: bad})


@pytest.mark.parametrize("platform", ["cpu", "tpu"])
def test_auto_resolves_to_portable_choices_off_gpu(platform):
    opts = ExecOptions(dtype="bfloat16", attn_prologue="auto", adaln_kernel="auto")
    got = opts.resolve(platform)
    assert got.platform == platform and got.target == platform
    assert (got.sampling_filter, got.attention, got.attn_prologue, got.adaln_kernel) == (
        "sort",
        "xla",
        "xla",
        "xla",
    )
    assert got.resolve() == got  # idempotent: the platform set sticks
    pinned = ExecOptions(sampling_filter="bisect:3", platform=platform)
    assert pinned.resolve().sampling_filter == "bisect:3"
    with pytest.raises(ValueError, match="platform must be one of"):
        ExecOptions(platform="cuda")


@pytest.mark.parametrize(
    "field,value",
    [
        ("attention", "cudnn"),
        ("sampling_filter", "pallas"),
        ("attn_prologue", "pallas"),
        ("adaln_kernel", "pallas"),
    ],
)
def test_gpu_kernels_are_refused_off_gpu_in_one_line(field, value):
    opts = ExecOptions(**{field: value})
    for platform in ("cpu", "tpu"):
        with pytest.raises(ValueError, match=f"{field} '{value}' cannot run on platform") as e:
            opts.resolve(platform)
        assert platform in str(e.value) and "\n" not in str(e.value)
    assert opts.resolve("gpu").platform == "gpu"  # a GPU program may be built anywhere
    if value == "pallas":  # the testing switch: Pallas interpret mode, asked for by name
        assert opts.replace(interpret=True).resolve("cpu").pallas_interpret
        assert not opts.replace(interpret=True).resolve("gpu").pallas_interpret


def test_legacy_config_fields_split_off():
    arch, execution = options.from_legacy_config(
        {"depth": 2, "dtype": "bfloat16", "sampler_kv": "prefix", "param_dtype": "float32"}
    )
    assert arch == {"depth": 2} and execution == {"dtype": "bfloat16", "sampler_kv": "prefix"}
