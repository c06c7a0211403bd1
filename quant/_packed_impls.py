"""Which route an int8 ``PackedKernel`` Dense takes: what impl "auto" stands for, per platform.

A ``PackedKernel`` carries a static ``impl`` (one of ``IMPLS``, or "auto"; ``quant._packed``'s
module doc describes each). "auto" is resolved when the layer is traced, from the runtime backend
(``default_impl``): "pallas" on Hopper GPUs with jax >= 0.11, ``GPU_IMPL`` ("barrier") on other
GPUs, "xla" elsewhere. A program built for another platform than the host's (a TPU program
exported from any host) needs them fixed beforehand: ``resolve_impls(params, platform)``, which
also refuses the Pallas impls (``PALLAS_IMPLS``, a Mosaic GPU kernel) off GPUs.

Why a module of its own: this is the platform policy, decided once per kernel; which calls of a
"pallas" layer actually take the kernel (``_pallas_eligible``, by rows and dtype) is decided per
call in ``quant._packed``, and how the kernel is called is ``quant._packed_pallas``. Import these
names from ``quant._packed``, which re-exports them.
"""

from __future__ import annotations

from typing import Any

import jax

from quant._packed_layout import IMPLS, PackedKernel

# The impls that run the Hopper kernel, and the `int8_dense_fused` variant each pins (None: the
# defaults, `quant._packed_pallas.PALLAS_VARIANT` / `PALLAS_ACT_QUANT_VARIANT`).
PALLAS_IMPLS = {"pallas": None, "pallas_ws": "ws", "pallas_pp": "pp"}
# The GPU fallback when the Pallas kernel is unavailable; chosen by the H100 measurements.
GPU_IMPL = "barrier"


def _runtime_platform() -> str:
    backend = jax.default_backend()
    return "gpu" if backend in ("gpu", "cuda", "rocm") else backend


def default_impl(platform: str | None = None) -> str:
    """What "auto" stands for on `platform` ("cpu", "gpu", "tpu"; default: the runtime backend):
    "pallas" on Hopper GPUs (jax >= 0.11), "barrier" on other GPUs and for a GPU program built on a
    host without one (no GPU to query), "xla" elsewhere (CPU, TPU)."""
    runtime = _runtime_platform()
    if (platform or runtime) != "gpu":
        return "xla"
    if runtime != "gpu":
        return GPU_IMPL
    from quant import _pallas_gpu

    return "pallas" if _pallas_gpu.available() else GPU_IMPL


def resolve_impls(params: dict[str, Any], platform: str) -> dict[str, Any]:
    """``params`` with every ``PackedKernel``'s impl made concrete for the target ``platform``
    (outside tracing, so a program is built for the target, not for the host): "auto" becomes
    ``default_impl(platform)``; an explicit impl is checked.

    Raises:
      ValueError: a Pallas impl (the Mosaic GPU kernel) for a platform other than "gpu".
    """
    auto = default_impl(platform)

    def concrete(v):
        if not isinstance(v, PackedKernel):
            return v
        if v.impl == "auto":
            return v.replace(impl=auto)
        if v.impl in PALLAS_IMPLS:
            _check_pallas_target(v.impl, platform)
        return v

    return jax.tree_util.tree_map(concrete, params, is_leaf=lambda v: isinstance(v, PackedKernel))


def _check_pallas_target(impl: str, platform: str) -> None:
    # On a GPU target the kernel itself refuses a jax without its API (`int8_dense_fused`), and
    # only for calls that take it (`_pallas_eligible`); the other calls run the portable route.
    if platform != "gpu":
        raise ValueError(
            f"int8 impl {impl!r} cannot run on platform {platform!r} (a Mosaic GPU kernel for"
            " Hopper GPUs); use 'xla' or 'auto'"
        )


def _resolve_impl(kernel: PackedKernel, impl: str | None) -> str:
    impl = impl or (kernel.impl if kernel.impl != "auto" else default_impl())
    if impl not in IMPLS:
        raise ValueError(f"packed_dense: impl must be one of {IMPLS}, got {impl!r}")
    return impl
