"""A family's generation program built for another platform than this host's, and checks of it.

`export_generate` lowers a family's jitted `generate` with `jax.export` for a target platform
(default "tpu") from any host: the execution options are resolved for the target
(`ExecOptions.resolve`), not for the host, so a CPU or GPU machine builds the program a TPU would
run. Nothing is compiled: lowering stops at StableHLO, which XLA:TPU compiles on the TPU.

`gpu_only_calls` and `int8_dots` read the StableHLO text: the first finds what only a GPU can
run (the Pallas Triton and Mosaic GPU kernels, cuDNN and CUDA library custom calls), the second
counts the int8 x int8 -> int32 matmuls of the quantized layers.
"""

from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp

from arvg_jax.options import ExecOptions

__all__ = ["GPU_ONLY_MARKERS", "custom_calls", "export_generate", "gpu_only_calls", "int8_dots"]

# Substrings of StableHLO that only a GPU backend accepts, from what the GPU paths of this
# project emit when lowered for CUDA (tests/tpu_export_test.py lowers them to check this list):
GPU_ONLY_MARKERS = (
    "__gpu$",  # XLA:GPU custom calls: the Pallas Triton kernels (`__gpu$xla.gpu.triton`)
    "triton",  # Triton kernel IR (tt. dialect) carried by those calls
    "tt.",
    "mosaic_gpu",  # Pallas Mosaic GPU kernels (quant._pallas_gpu: `mosaic_gpu_v2`)
    "__cudnn$",  # cuDNN fused attention (`jax.nn.dot_product_attention(implementation="cudnn")`)
    "cudnn",
    "cu_threefry",  # jax's CUDA PRNG kernel
    "cublas",
    "cusolver",
    "hipblas",
    "hipsolver",
)

# An int8 x int8 -> int32 dot: `(tensor<...xi8>, tensor<...xi8>) -> tensor<...xi32>`.
_INT8_DOT = re.compile(
    r"stablehlo\.dot_general .*: \(tensor<[0-9x]*xi8>, tensor<[0-9x]*xi8>\) -> tensor<[0-9x]*xi32>"
)
_CUSTOM_CALL = re.compile(r"stablehlo\.custom_call @([\w$.\-]+)")
_LOC = re.compile(r"\s*loc\(.*\)\s*$")
_JAX_PLATFORM = {"gpu": "cuda", "cpu": "cpu", "tpu": "tpu"}


def _abstract(tree: Any) -> Any:
    return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x), x.dtype), tree)


def export_generate(
    family,
    cfg,
    tok_cfg,
    params,
    tok_params,
    *,
    platform: str = "tpu",
    options: ExecOptions | None = None,
    batch: int = 2,
    **sampling,
) -> jax.export.Exported:
    """`jax.export` of `family.generate` for `platform` ("tpu", "gpu" or "cpu").

    Args:
      family: an `arvg_jax.families.Family`.
      cfg, tok_cfg: the model's and tokenizer's configs.
      params, tok_params: float or quantized trees, concrete or abstract (`jax.ShapeDtypeStruct`
        leaves; only shapes and dtypes are used); the family's `inference_layout` is applied.
      platform: the target; the options are resolved for it (`ExecOptions.resolve`), so a
        GPU kernel requested for "tpu" raises ValueError here.
      options: execution options (default `ExecOptions()`).
      batch: images per call (the labels [batch] int32 and keys [batch, 2] uint32 arguments).
      sampling: the family's sampling settings (default: the official ones).

    Returns:
      The `jax.export.Exported`; `.mlir_module()` is its StableHLO text, `.serialize()` bytes a
      TPU host can `jax.export.deserialize` and call.
    """
    opts = (options or ExecOptions()).resolve(platform)
    laid_out = jax.eval_shape(family.inference_layout, _abstract(params))
    settings = {**family.sampling_defaults(cfg), **sampling}

    def generate(params, tok_params, labels, keys):
        return family.generate(
            params, tok_params, cfg, tok_cfg, labels, keys, options=opts, **settings
        )

    return jax.export.export(jax.jit(generate), platforms=(_JAX_PLATFORM[platform],))(
        laid_out,
        _abstract(tok_params),
        jax.ShapeDtypeStruct((batch,), jnp.int32),
        jax.ShapeDtypeStruct((batch, 2), jnp.uint32),
    )


def custom_calls(stablehlo: str) -> list[tuple[str, str]]:
    """(target, line without its source location) of every `stablehlo.custom_call`."""
    out = []
    for ln in stablehlo.splitlines():
        if (m := _CUSTOM_CALL.search(ln)) is not None:
            out.append((m.group(1), _LOC.sub("", ln).strip()))
    return out


def gpu_only_calls(stablehlo: str) -> list[str]:
    """The custom calls of `stablehlo` that only a GPU runs (a `GPU_ONLY_MARKERS` substring in
    the target or its configuration, which carries a Pallas kernel's IR); empty: none. Kernels
    and library calls enter StableHLO only as custom calls; source locations are not read."""
    return [ln for _, ln in custom_calls(stablehlo) if any(m in ln for m in GPU_ONLY_MARKERS)]


def int8_dots(stablehlo: str) -> int:
    """Number of `stablehlo.dot_general` ops with int8 operands and an int32 result."""
    return sum(1 for ln in stablehlo.splitlines() if _INT8_DOT.search(ln))
