"""Which piece makes RAR's GPU calibration differ from the CPU's? (the script run on the H100,
2026-12-07; variants by monkeypatching, not shipped code.) Quantizes rar-tiny (PTQ4ARVG W8A8) on
the CPU's calibration batch (`cpu_rar.npz`, from `scripts/calibration_diff.py save --model
rar-tiny --out cpu_rar.npz` on a CPU) under one variant; prints each block's attn/proj input scale
against the CPU's and how many arrays differ.

    PYTHONPATH=. python bisect.py as_is | fake_matmul | no_pad | pad128 | f32_dot | barrier | check
        | form_merged | form_merged_nt | form_f32codes
"""

import sys

import jax
import numpy as np

import quant
from quant import _dot_general

sys.argv = sys.argv[:2]
variant = sys.argv[1] if len(sys.argv) > 1 else "as_is"
if variant == "fake_matmul":
    quant.quantized_matmul = lambda a, b, qa=None, qb=None: _dot_general.fake_quant_matmul(
        a, b, qa, qb
    )
elif variant == "no_pad":
    _dot_general.pad_contracted = lambda a, x, b, y: (a, b)
elif variant == "barrier":
    _orig_pad = _dot_general.pad_contracted
    _dot_general.pad_contracted = lambda a, x, b, y: jax.lax.optimization_barrier(
        _orig_pad(a, x, b, y)
    )
elif variant == "check":
    _orig_qm = quant.quantized_matmul

    def _checked(a, b, qa=None, qb=None):
        got = _orig_qm(a, b, qa, qb)
        want = _dot_general.fake_quant_matmul(a, b, qa, qb)
        jax.debug.print(
            "shape {s} max|int8-fake| {d} max|fake| {m} nan_in {n}",
            s=str(a.shape) + "x" + str(b.shape),
            d=jax.numpy.max(jax.numpy.abs(got - want)),
            m=jax.numpy.max(jax.numpy.abs(want)),
            n=jax.numpy.isnan(a).any() | jax.numpy.isnan(b).any(),
        )
        return got

    quant.quantized_matmul = _checked
elif variant.startswith("form_"):
    form = variant[5:]
    jnp = jax.numpy
    lax = jax.lax

    def _form_qm(a, b, qa_=None, qb_=None):
        want = _dot_general.fake_quant_matmul(a, b, qa_, qb_)
        if not (isinstance(qa_, quant.ActQuant) and isinstance(qb_, quant.ActQuant)):
            return want
        qa, qb = qa_.quantize(a), qb_.quantize(b)
        *lead, m, k = qa.shape
        n = qb.shape[-1]
        nb = int(np.prod(lead))
        if form == "merged":
            acc = lax.dot_general(
                qa.reshape(nb, m, k),
                qb.reshape(nb, k, n),
                (((2,), (1,)), ((0,), (0,))),
                preferred_element_type=jnp.int32,
            ).reshape(*lead, m, n)
        elif form == "merged_nt":
            bt = jnp.swapaxes(qb, -1, -2).reshape(nb, n, k)
            acc = lax.dot_general(
                qa.reshape(nb, m, k),
                bt,
                (((2,), (2,)), ((0,), (0,))),
                preferred_element_type=jnp.int32,
            ).reshape(*lead, m, n)
        elif form == "f32codes":
            acc = lax.dot_general(
                qa.astype(jnp.float32),
                qb.astype(jnp.float32),
                _dot_general._matmul_dims(a, b),
                precision=lax.Precision.HIGHEST,
            ).astype(jnp.int32)
        sum_a = jnp.sum(qa, axis=-1, keepdims=True, dtype=jnp.int32)
        sum_b = jnp.sum(qb, axis=-2, keepdims=True, dtype=jnp.int32)
        y = _dot_general._zero_point_corrected(
            acc, sum_a, sum_b, qa_.zero_point.reshape(()), qb_.zero_point.reshape(()), k
        )
        got = (y.astype(jnp.float32) * (qa_.scale.reshape(()) * qb_.scale.reshape(()))).astype(
            a.dtype
        )
        jax.debug.print(
            "form {f} max|int8-fake| {d} max|fake| {m}",
            f=form,
            d=jnp.max(jnp.abs(got - want)),
            m=jnp.max(jnp.abs(want)),
        )
        return got

    quant.quantized_matmul = _form_qm
elif variant == "pad128":
    _dot_general.GPU_CONTRACT_MULTIPLE = 128
elif variant == "f32_dot":
    orig = _dot_general.lax.dot_general

    def f32_dot(a, b, dims, preferred_element_type=None, **kw):
        if a.dtype == np.int8:
            return orig(
                a.astype(np.float32), b.astype(np.float32), dims, precision="highest"
            ).astype(np.int32)
        return orig(a, b, dims, preferred_element_type=preferred_element_type, **kw)

    _dot_general.lax.dot_general = (
        f32_dot  # module-level alias of jax.lax: patch only inside module
    )
sys.path.insert(0, "scripts")
import calibration_diff as cd

from arvg_jax.models import packaged_model, quant_adapter
from quant import api
from quant.recipes import Recipe

model = packaged_model("rar-tiny")
adapter = quant_adapter(model)
recipe = Recipe.parse("ptq4arvg", "w8a8", calib=128)
with np.load("cpu_rar.npz") as f:
    cpu = {k: f[k] for k in f.files}
batch = {k[len(cd.BATCH_PREFIX) :]: v for k, v in cpu.items() if k.startswith(cd.BATCH_PREFIX)}
q, _ = api.quantize(adapter, model.params, batch, recipe, progress=False)
got = cd._arrays(q)
rows = []
for k in sorted(got):
    if k.endswith("/proj/input_quant/scale"):
        rows.append(f"{k.split('/')[0]} {np.round(got[k], 4)} cpu {np.round(cpu[k], 4)}")
ndiff = sum(
    1
    for k in got
    if k in cpu
    and got[k].shape == cpu[k].shape
    and np.issubdtype(got[k].dtype, np.number)
    and np.abs(got[k].astype(np.float64) - cpu[k]).max() > 1e-3 * max(np.abs(cpu[k]).max(), 1e-30)
)
print(f"== {variant} ({jax.devices()[0].device_kind}): {ndiff} arrays differ >1e-3 rel")
print("\n".join(rows[:3]), flush=True)
