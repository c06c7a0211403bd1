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


def test_filter_auto_resolves_per_platform():
    assert ExecOptions().resolve_filter("cpu").sampling_filter == "sort"
    assert ExecOptions().resolve_filter("tpu").sampling_filter == "sort"
    pinned = ExecOptions(sampling_filter="bisect:3")
    assert pinned.resolve_filter("cpu") is pinned


def test_legacy_config_fields_split_off():
    arch, execution = options.from_legacy_config(
        {"depth": 2, "dtype": "bfloat16", "sampler_kv": "prefix", "param_dtype": "float32"}
    )
    assert arch == {"depth": 2} and execution == {"dtype": "bfloat16", "sampler_kv": "prefix"}
