"""Availability of the Mosaic GPU Pallas API, the kernel's tiling configuration and its
shared-memory budget (`quant._pallas_gpu`; split out of one module unchanged)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

try:  # Mosaic GPU Pallas (jax >= 0.11 for the API used here); absent or different elsewhere.
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import mosaic_gpu as plgpu

    _IMPORT_ERROR: str | None = None
except (ImportError, AttributeError, RuntimeError, TypeError) as e:  # pragma: no cover
    pl = None
    plgpu = None
    _IMPORT_ERROR = f"{type(e).__name__}: {e}"

MIN_JAX = (0, 11, 0)
# The plgpu names this module uses; checked by available() so an API drift fails loudly there.
_NEEDED_API = (
    "ACC",
    "BlockSpec",
    "Barrier",
    "CompilerParams",
    "Layout",
    "LoweringSemantics",
    "SMEM",
    "SwizzleTransform",
    "TilingTransform",
    "barrier_arrive",
    "barrier_wait",
    "commit_smem",
    "copy_gmem_to_smem",
    "copy_smem_to_gmem",
    "emit_pipeline",
    "emit_pipeline_warp_specialized",
    "kernel",
    "layout_cast",
    "load",
    "nd_loop",
    "set_max_registers",
    "wait_smem_to_gmem",
    "wgmma",
    "wgmma_wait",
)
SMEM_LIMIT = 227 * 1024  # opt-in dynamic shared memory per block on H100 (232448 bytes)
VARIANTS = ("ws", "pipeline", "pp")


def _jax_version() -> tuple[int, ...]:
    parts = []
    for p in jax.__version__.split(".")[:3]:
        digits = "".join(ch for ch in p if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def api_unavailable_reason() -> str | None:
    """None if this jax has the Mosaic GPU Pallas API the kernel is written against (so it can
    be traced, lowered for CUDA from any host, or interpreted), else why not."""
    if _IMPORT_ERROR is not None:
        return f"jax.experimental.pallas.mosaic_gpu does not import ({_IMPORT_ERROR})"
    if _jax_version() < MIN_JAX:
        return (
            f"needs jax >= {'.'.join(map(str, MIN_JAX))} (Mosaic GPU API), have {jax.__version__}"
        )
    missing = [name for name in _NEEDED_API if not hasattr(plgpu, name)]
    if missing:
        return f"jax {jax.__version__} plgpu lacks {missing}"
    return None


def unavailable_reason() -> str | None:
    """None if the fused kernel can run here, else why not (for skips and logs)."""
    if (reason := api_unavailable_reason()) is not None:
        return reason
    try:
        gpus = jax.devices("gpu")
    except RuntimeError:
        return f"no GPU backend (default backend: {jax.default_backend()})"
    if not gpus:
        return "no GPU device"
    cc = str(getattr(gpus[0], "compute_capability", ""))
    if not cc.startswith("9."):
        return (
            f"needs a Hopper GPU (sm_90a, wgmma); {gpus[0].device_kind} has compute capability"
            f" {cc or 'unknown'}"
        )
    return None


def available() -> bool:
    """True only on a Hopper (sm_90) GPU with the Mosaic GPU Pallas API this module uses."""
    return unavailable_reason() is None


# ----------------------------------------------------------------------------------------------
# Configuration.


@dataclasses.dataclass(frozen=True)
class FusedConfig:
    """Tiling of the fused kernel (see module doc). All fields are static (part of jit's key)."""

    variant: str = "ws"
    block_m: int = 128  # rows of one consumer warpgroup's accumulator
    block_n: int = 128  # columns of one consumer warpgroup's accumulator
    block_k: int = 128  # K per pipeline step (128 int8 = one 128-byte swizzle span)
    stages: int = 3  # max_concurrent_steps of the K pipeline (SMEM slots; "pp": shared ring)
    split: str = "m"  # ws: the two consumer warpgroups split the CTA tile along "m" or "n"
    cluster: str | None = None  # ws: pair CTAs along "m" (share the weight tile) or "n" (share
    # the activation tile) in a 2-CTA cluster whose TMA loads multicast the shared operand
    semantics: str = "warpgroup"  # Mosaic GPU lowering: "warpgroup" (0.11 default) or "lane"
    num_ctas: int | None = None  # ws: persistent CTAs (default: the device's SM count)
    # Mosaic GPU approximate math: the quantizing epilogue's tanh becomes one `tanh.approx.f32`
    # (MUFU) instead of libdevice's tanhf (dozens of instructions per element, which the
    # epilogue pays with the tensor cores idle). See `int8_dense_fused`.
    approx_math: bool = False

    def cta_tile(self) -> tuple[int, int]:
        """Output tile of one CTA (both consumer warpgroups)."""
        if self.variant == "ws":
            return (
                self.block_m * (2 if self.split == "m" else 1),
                self.block_n * (2 if self.split == "n" else 1),
            )
        return self.block_m, self.block_n  # "pipeline"; "pp": one consumer's tile

    def cluster_tile(self) -> tuple[int, int]:
        """Output tile of one cluster (the persistent loop's unit of work)."""
        cta_m, cta_n = self.cta_tile()
        return cta_m * (2 if self.cluster == "m" else 1), cta_n * (2 if self.cluster == "n" else 1)

    def validate(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.split not in ("m", "n"):
            raise ValueError(f"split must be 'm' or 'n', got {self.split!r}")
        if self.cluster not in (None, "m", "n"):
            raise ValueError(f"cluster must be None, 'm' or 'n', got {self.cluster!r}")
        if self.cluster is not None and self.variant != "ws":
            raise ValueError("cluster is supported by variant 'ws' only")
        if self.variant == "pp" and self.stages < 2:
            raise ValueError("variant 'pp' keeps one wgmma in flight: needs stages >= 2")
        if self.semantics not in ("warpgroup", "lane"):
            raise ValueError(f"semantics must be 'warpgroup' or 'lane', got {self.semantics!r}")
        if self.block_m % 64:
            raise ValueError(f"block_m must be a multiple of 64 (wgmma M), got {self.block_m}")
        if self.block_n % 64 or not 64 <= self.block_n <= 256:
            # 64: the bf16 output tile's 128-byte swizzle span; 256: wgmma's largest N.
            raise ValueError(f"block_n must be a multiple of 64 in [64, 256], got {self.block_n}")
        if self.block_k % 32:
            raise ValueError(
                f"block_k must be a multiple of 32 (one int8 wgmma), got {self.block_k}"
            )
        if self.block_m * self.block_n > 128 * 128:
            raise ValueError(
                f"accumulator {self.block_m}x{self.block_n} int32 needs more than 128 registers per"
                " thread of one warpgroup"
            )
        if max(self.cta_tile()) > 256:
            raise ValueError(f"a TMA box is at most 256 rows, CTA tile is {self.cta_tile()}")
        if self.variant == "pipeline" and self.stages < 2:
            raise ValueError("variant 'pipeline' keeps one wgmma in flight: needs stages >= 2")
        if self.stages < 1:
            raise ValueError(f"stages must be >= 1, got {self.stages}")


def smem_bytes(cfg: FusedConfig, out_quant: bool = False) -> int:
    """Shared memory the kernel allocates per CTA (operand slots, output tile, vectors).

    ``out_quant``: the quantizing epilogue (int8 output tile, two more row vectors and the
    partial row sums) instead of the bf16 one.
    """
    cta_m, cta_n = cfg.cta_tile()
    operands = cfg.stages * (cta_m + cta_n) * cfg.block_k
    out = cta_m * cta_n * (1 if out_quant else 2)
    row_vectors = 3 + (3 if out_quant else 0)  # s_x, z_x, sum_x (+ 1/s_out, z_out, row sums)
    vectors = (row_vectors * cfg.block_m + 4 * cfg.block_n) * 4
    if cfg.variant == "ws":
        vectors *= 2  # per consumer warpgroup
    elif cfg.variant == "pp":  # each consumer has its own output tile and vectors
        out *= 2
        vectors *= 2
    return operands + out + vectors + 4096  # + reduction scratch, barriers, alignment


def _swizzle_for(minor_bytes: int) -> int:
    for swizzle in (128, 64, 32):
        if minor_bytes % swizzle == 0:
            return swizzle
    raise ValueError(f"minor dimension of {minor_bytes} bytes fits no swizzle (need 32 | bytes)")


def _tile_transforms(minor_elems: int, dtype) -> tuple:
    """Tiling + swizzle for an SMEM tile whose minor dimension has ``minor_elems`` elements."""
    itemsize = jnp.dtype(dtype).itemsize
    swizzle = _swizzle_for(minor_elems * itemsize)
    return (
        plgpu.TilingTransform((8, swizzle // itemsize)),
        plgpu.SwizzleTransform(swizzle),
    )


def _semantics(cfg: FusedConfig):
    if cfg.semantics == "lane":
        return plgpu.LoweringSemantics.Lane
    return plgpu.LoweringSemantics.Warpgroup


def _num_sms() -> int:
    try:
        return int(jax.devices()[0].core_count)
    except (IndexError, AttributeError, RuntimeError, TypeError, ValueError):  # pragma: no cover
        return 132  # H100 SXM
