"""Fused W8A8 Dense for Hopper: a Pallas Mosaic GPU int8 GEMM with the dequantization epilogue.

Why
---
On H100, XLA runs ``int8 x int8`` only as a cuBLASLt GEMM with an **int32** output (any other
output type is 20x slower or does not compile; ``docs/jax_int8.md`` §8, ``BENCHMARKS.md``). cuBLASLt
offers no epilogue on that s32 GEMM, so ``quant._packed.packed_dense`` writes the int32 accumulator
to HBM and a separate XLA fusion reads it back to apply zero points, scales and bias (4 + 4 bytes
per output against 2 for a bf16 output). At VAR-d30's shapes (M = 32768) that round trip costs
about as much as the GEMM itself: the bare s8 GEMM runs at 1.1-1.4 POP/s, the whole int8 layer only
at 0.9-1.4x bf16. This kernel keeps the accumulator in registers and writes bf16 once.

Algebra
-------
With q_x [M, K] and q_w [N, K] the int8 codes, z_x [M] / z_w [N] their (integer) zero points and
s_x [M] / s_w [N] their scales::

    acc[m, n] = sum_k q_x[m, k] q_w[n, k]                         (wgmma s8 x s8 -> s32)
    y[m, n]   = sum_k (q_x - z_x)(q_w - z_w)
              = acc - z_w[n] sum_x[m] - z_x[m] (colsum_w[n] - K z_w[n])     (exact in int32)
    out[m, n] = bf16(float32(y) * (s_x[m] s_w[n]) + bias[n])

where ``sum_x = sum_k q_x`` and ``colsum_w = sum_k q_w`` (``PackedKernel.col_sum``). The wrapper folds
``c_w = colsum_w - K z_w`` (O(N)); the kernel does the two rank-1 int32 corrections, one int32 ->
float32 conversion, two float multiplies and the bias add on the accumulator registers, then stores
bf16 through shared memory with a TMA copy. It is the same integer algebra as
``quant._dot_general._zero_point_corrected`` (int32 wrap-around cancels as long as the true ``y``
fits, which ``_check_int32_bound`` guarantees for the callers), and the same float32 operations in
the same order as ``packed_dense``'s XLA path (the scale product ``s_x s_w`` first), so both
routes round to the same bf16 values (on GPU, up to how each compiler contracts multiply-adds).

Layout requirements
-------------------
* ``q_x`` int8 ``[M, K]`` row-major and ``q_w`` int8 ``[N, K]`` (``PackedKernel.codes()``): both
  K-major. Hopper's int8 wgmma cannot transpose 8-bit operands in shared memory (only 16-bit types
  can, ``jax/experimental/mosaic/gpu/wgmma.py``), so the weight is read as ``q_w_tile.T`` of a
  K-major ``[block_n, block_k]`` tile, exactly like the int8 wgmma test of jax.
* Operand tiles use the 128-byte swizzle: ``TilingTransform((8, 128))`` + ``SwizzleTransform(128)``
  (128 int8 elements along K), so ``block_k`` must be a multiple of 128 (or 64 / 32 with the
  smaller swizzles); the accumulator is ``plgpu.ACC((block_m, block_n), jnp.int32)`` with
  ``block_m % 64 == 0`` (wgmma M) and ``block_n`` a multiple of 64 up to 256 (the bf16 output's
  128-byte swizzle span; wgmma's largest N), at most 128 x 128 (128 registers per thread of a
  warpgroup).
* Ragged M and N cost no copy of the operands. The tile grid is ``ceil(M / tile)`` and the last
  row tile starts at ``M - tile`` instead of ``m_idx * tile`` (likewise for columns), so it
  overlaps rows that the previous tile also computes. Both CTAs compute the overlap from the same
  inputs with the same instructions, so they store bit-identical values and the order of the two
  stores does not matter. The per-row / per-column vectors use the same clamped slices. (VAR-d30:
  M = 128 x 169 = 21632 rows in 256-row tiles recompute 128 of them, 0.6%, where padding copied
  the whole int8 activation matrix, ~12 ms per batch in an H100 profile.) With a 2-CTA cluster
  each CTA clamps its own tile; the operand the pair multicasts is indexed by the dimension the
  two CTAs share (the weight's columns for ``cluster="m"``, the activation rows for ``"n"``),
  whose start both compute identically, so the multicast stays sound. When less than one CTA
  tile remains past the last full cluster tile, both CTAs of the last cluster clamp to the same
  tile and compute it twice (identical values again).
* What is still padded (``_padded_extents``): Mosaic's tiled TMA views a global array in whole
  SMEM tiles (and checks this when lowering), so M and N must be multiples of the operand tiles'
  8 rows and N of the output tile's ``EPI_N = 64`` columns; a clamped start then stays on a
  whole tile (``pl.multiple_of``). M or N below one CTA tile is padded up to it. K is padded to a
  multiple of ``block_k``. Each of these copies the operand concerned (zero codes add nothing to
  ``acc``; the corrections use the true K and the sums of the real codes; padded rows / columns
  are sliced off the output, another copy). VAR's shapes need none: K = 1920 or 7680, N a
  multiple of 128, M = 2 B h w with B a multiple of 4.

Variants (``variant=``)
-----------------------
* ``"ws"`` (default): persistent warp-specialized kernel. One CTA per SM loops over output tiles
  (``plgpu.nd_loop``, N fastest so the weight stays in L2); a producer warpgroup issues the TMA
  loads of the K pipeline (``plgpu.emit_pipeline_warp_specialized``) while two consumer warpgroups
  each own a ``block_m x block_n`` int32 accumulator (CTA tile ``2 block_m x block_n`` with
  ``split="m"``, or ``block_m x 2 block_n`` with ``split="n"``). The producer runs ahead into the
  next tile while the consumers run the epilogue. The structure follows jax's bf16 example
  ``jax/experimental/pallas/ops/gpu/hopper_matmul_mgpu.py``; the int8 operands, the vectors and
  the epilogue are ours. Each consumer waits for its wgmma group before releasing the SMEM slot
  (no ``delay_release``: in a persistent loop the producer would refill the tile's last slot
  under a still-running wgmma); the other consumer keeps the tensor core busy meanwhile.
* ``"pipeline"``: the simple form: ``plgpu.kernel`` over a (M/block_m, N/block_n) grid (N fastest),
  one warpgroup per CTA, ``plgpu.emit_pipeline`` over K with ``delay_release=1`` and
  ``wgmma_wait(1)`` (one wgmma group in flight). With ``stages=2`` (~103 KiB of SMEM, 234
  registers) two CTAs fit on one SM, which overlaps one CTA's epilogue with the other's main loop.
* ``"pp"``: persistent, one producer and two "ping-pong" consumer warpgroups, each on its own
  ``block_m x block_n`` output tiles (CTA tile ``j`` goes to consumer ``j % 2``), fed from one
  shared ring of ``stages`` SMEM slots in tile order, so the consumers' K loops alternate and one
  consumer's epilogue runs while the other's wgmmas keep the tensor cores busy. Barriers are
  managed by hand (``_pp_call``). On H100 (2026-11-27) it is the faster form for fc1's GELU +
  quantizing epilogue (VAR-d30 last scale 1128 -> 1011 us) and the slower one for bf16 outputs
  (its 128 x 128 tiles: fc2 699 -> 937 us), so ``quant._packed`` runs each where it wins.

In all three, each consumer warpgroup TMA-copies its per-row / per-column vectors into SMEM when its
tile starts (one barrier, seven arrivals), loads them after the K loop in the row / column slices
of the WGMMA register layout (``plgpu.Layout.WGMMA.reduce(1)`` / ``.reduce(0)``), broadcasts them
onto the accumulator 64 columns at a time, and writes each bf16 chunk to a swizzled SMEM buffer
that a TMA store sends to HBM.

Output quantization (``out_quant``, variants "ws" and "pp")
-------------------------------------------------
In VAR's FFN, fc1's bf16 output goes through GELU(tanh) and is quantized per row (token group)
for fc2, which also needs ``sum_x = sum_n q``; unfused, XLA runs that as a separate pass over the
bf16 activations (~35 ms per VAR-d30 batch on H100). With ``out_quant=(s_out, z_out, bits)`` the
epilogue does it on the registers instead and writes int8 codes (1 byte per output instead of 2,
and no second pass)::

    y = float32(bf16(out_f32))                          # fc1's bf16 output
    y = float32(bf16(gelu_tanh(y)))                     # activation="gelu_tanh", in float32
    q = clip(round_half_even(y / s_out[m]) + z_out[m], -2**(bits-1), 2**(bits-1) - 1)

exactly the unfused sequence, both bf16 roundings included, as the official bf16 autocast
forward computes it (``_activation_input``; the XLA paths round with ``round_to_bf16``, which
XLA's excess-precision rewrites cannot drop), except that ``y / s_out`` is computed as
``y * (1 / s_out)`` (``epilogue_divides``: the same code but within an ulp of a tie, and what
XLA:CPU makes of ``ActQuant.quantize`` anyway). On CPU (interpret mode) the codes equal the XLA
path's exactly. On H100 they equal an IEEE float32 reference computed in numpy from the
kernel's own bf16 fc1 output (tests/quant_pallas_gpu_test.py), whereas XLA:GPU's unfused
``ActQuant.quantize`` rounds exact ties ``k + 0.5`` differently (0.115 % of the codes of that
test's tie-rich layer). The float32 tanh (libdevice ``tanhf``, or ``tanh.approx.f32`` with
``approx_math``) could move a code only where GELU lands within an ulp of a bf16 rounding
midpoint.

Besides the codes ``[M, N]``, each consumer warpgroup writes the row sums of its tile,
``partial_sums[t, m] = sum of q[m, t block_n : (t + 1) block_n]`` (int32 ``[N / block_n, M]``):
the tile's ``block_m`` sums are contiguous in that layout, so one bulk copy stores them (16-byte
aligned since M and the row starts are multiples of 8), and the caller's ``partial_sums.sum(0)``
is the next layer's ``sum_x``. The sums accumulate across the epilogue's column chunks in the row
slice of the WGMMA layout (a few registers), in float32, exact for these small integers. N must be
a multiple of ``block_n`` (a padded column would add codes of its own) and at least one CTA tile;
a clamped last column tile then starts on a multiple of ``block_n`` too, so it rewrites exactly
the partial-sum rows of the tiles it overlaps, with the same values. The int8 tile goes through
SMEM in ``EPI_Q = 32``-column chunks (32-byte swizzle): the activation adds live temporaries, and
64-column chunks spilled under the register cap.

Checked without a GPU (jax 0.11.2 on CPU): every variant matches the exact reference in Mosaic
GPU interpret mode (``interpret=plgpu.InterpretGPUParams()``; its race detector flags only the
intended identical writes of overlapping last tiles), and lowers and compiles through ptxas for
sm_90a (cross-platform lowering ``.lower(lowering_platforms=("cuda",))`` plus the CUDA plugin's
Mosaic compiler): 168 registers (the cap of a 384-thread CTA); no spills for "ws" with
``block_k=128`` (bf16 or ``out_quant``) nor for "pipeline", 30-60 bytes with a cluster or
``block_k=64``. Timing and hardware synchronization need the GPU
(``scripts/probe_pallas_int8.py``).

What XLA does instead: ``lax.dot_general(q_x, q_w, preferred_element_type=int32)`` becomes a
``__cublas$lt$matmul`` custom call (kernel ``sm90_xmma_gemm_i8i32_i8i32_i32_tn_*``) writing s32
to HBM, followed by an elementwise fusion reading it back (or, without an optimization barrier, a
Triton GEMM fusion that was measured slower than cuBLASLt at these shapes).

Pinned to the Mosaic GPU Pallas API of jax 0.11.2 (``plgpu.kernel(out_type=...)``,
``plgpu.CompilerParams(lowering_semantics=...)``, ``plgpu.BlockSpec(delay_release=...)``,
``plgpu.emit_pipeline_warp_specialized(..., compute_context=...)``, ``plgpu.Layout.WGMMA.reduce``).
Importing this module never fails: on CPU-only installs or older jax, ``available()`` is False.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

try:  # Mosaic GPU Pallas (jax >= 0.11 for the API used here); absent or different elsewhere.
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import mosaic_gpu as plgpu

    _IMPORT_ERROR: str | None = None
except (ImportError, AttributeError, RuntimeError, TypeError) as e:  # pragma: no cover
    pl = None
    plgpu = None
    _IMPORT_ERROR = f"{type(e).__name__}: {e}"

__all__ = [
    "ACTIVATIONS",
    "FusedConfig",
    "api_unavailable_reason",
    "available",
    "int8_dense_fused",
    "int8_dense_reference",
    "smem_bytes",
    "unavailable_reason",
]

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


# ----------------------------------------------------------------------------------------------
# The epilogues (shared by both variants): int32 zero-point terms, float32 scales, bias, then
# either bf16 (``_epilogue``) or the next layer's int8 codes and their row sums
# (``_epilogue_quant``).


EPI_N = 64  # bf16 epilogue column chunk: one 128-byte swizzle span of the bf16 output tile
# int8 epilogue column chunk: 32 int8 columns, one 32-byte swizzle span of the int8 output tile.
# Half of EPI_N: the activation and the rounding keep more temporaries live than the bf16
# epilogue, and with 64-column chunks the "ws" kernel spilled (32-40 bytes at the 168-register
# cap; ptxas for sm_90a); 32 columns also halve the replicated column vectors (8 registers each)
# and compile without spills.
EPI_Q = 32
ACTIVATIONS = (None, "gelu_tanh")


def _bcast_row(v, chunk):
    """[rows] in ``WGMMA.reduce(1)`` -> ``chunk`` in the accumulator's layout."""
    return plgpu.layout_cast(lax.broadcast_in_dim(v, chunk, (0,)), plgpu.Layout.WGMMA)


def _bcast_col(ref, cs, chunk):
    """Columns ``cs`` of an SMEM column vector, broadcast onto ``chunk`` (accumulator layout)."""
    wgmma = plgpu.Layout.WGMMA
    v = plgpu.load(ref.at[cs], layout=wgmma.reduce(0))
    return plgpu.layout_cast(lax.broadcast_in_dim(v, chunk, (1,)), wgmma)


def _dequant_chunks(acc, row_vals, col_refs, shape, chunk_n):
    """Yields ``(c, f)``: float32 ``(acc - z_w sum_x - z_x c_w) * (s_x s_w) + b`` of column
    chunk ``c`` (``chunk_n`` columns) of the int32 accumulator.

    ``row_vals`` = (s_x f32, z_x i32, sum_x i32) loaded in ``WGMMA.reduce(1)``;
    ``col_refs`` = (s_w f32, z_w i32, c_w i32, bias f32) SMEM refs of length ``shape[1]``.
    The explicit ``layout_cast`` pins each broadcast to the accumulator's layout. Working on
    ``chunk_n`` columns at a time keeps the replicated column vectors at 16 registers each (64
    columns) instead of 32 (the full-width form spilled under the 168-register cap of the
    3-warpgroup kernel).
    """
    tm, tn = shape
    chunk = (tm, chunk_n)
    sx, zx, sumx = row_vals
    sw_ref, zw_ref, cw_ref, b_ref = col_refs
    for c in range(tn // chunk_n):
        cs = slice(c * chunk_n, (c + 1) * chunk_n)
        y = acc[:, cs] - _bcast_col(zw_ref, cs, chunk) * _bcast_row(sumx, chunk)
        y = y - _bcast_row(zx, chunk) * _bcast_col(cw_ref, cs, chunk)
        # (s_x s_w) first, like packed_dense's XLA path (module doc): the same two multiplies.
        scale = _bcast_row(sx, chunk) * _bcast_col(sw_ref, cs, chunk)
        yield c, y.astype(jnp.float32) * scale + _bcast_col(b_ref, cs, chunk)


def _epilogue(acc, row_refs, col_refs, out_chunks, shape):
    """Stores bf16 ``(acc - z_w sum_x - z_x c_w) * (s_x s_w) + b`` of the int32 accumulator.

    ``row_refs`` = (s_x f32, z_x i32, sum_x i32) SMEM refs of length ``shape[0]``;
    ``col_refs`` as in ``_dequant_chunks``; ``out_chunks(c)``: the swizzled SMEM ref
    ``[shape[0], EPI_N]`` receiving column chunk ``c``.
    """
    rows = tuple(plgpu.load(ref, layout=plgpu.Layout.WGMMA.reduce(1)) for ref in row_refs)
    for c, f in _dequant_chunks(acc, rows, col_refs, shape, EPI_N):
        out_chunks(c)[...] = f.astype(jnp.bfloat16)


def round_to_bf16(x):
    """float32 ``x`` rounded to the nearest bfloat16 (ties to even), kept in float32, by integer
    arithmetic on the bit pattern.

    Same value as ``x.astype(bf16).astype(float32)`` for finite inputs, but XLA cannot drop it:
    with ``xla_allow_excess_precision`` (XLA's default) the GPU compiler may elide such a
    convert pair inside a fusion and keep float32, which moved ~0.6 % of the fused epilogue's
    codes by one against an XLA reference on H200 (2026-11-27). The kernel's own converts are
    real ``cvt.rn.bf16.f32`` instructions, so it rounds with ``astype``.
    """
    u = lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
    lsb = (u >> 16) & jnp.uint32(1)
    u = (u + jnp.uint32(0x7FFF) + lsb) & jnp.uint32(0xFFFF0000)
    return lax.bitcast_convert_type(u, jnp.float32)


def _activation_input(f, activation, *, exact_rounding: bool = True):
    """What the next layer quantizes, from the float32 epilogue value ``f`` of this layer.

    The unfused sequence (``packed_dense_act_quant``'s XLA path) materialises this layer's output
    in bf16 and applies the activation in float32 to that, rounding the result to bf16 again;
    both roundings are reproduced so the fused codes equal the unfused ones. ``jax.nn.gelu(approximate=True)`` is the model's own
    function (``arvg_jax.nn.layers.gelu_tanh``), called here so the formula and its operation order
    are shared; inside the kernel it lowers to Mosaic GPU's float32 ``math.tanh``.
    """
    if exact_rounding:  # XLA: rounding it cannot elide (`round_to_bf16`)
        rnd = round_to_bf16
    else:  # inside the kernel: plain converts

        def rnd(v):
            return v.astype(jnp.bfloat16).astype(jnp.float32)

    y = rnd(f)
    if activation == "gelu_tanh":
        y = rnd(jax.nn.gelu(y, approximate=True))
    return y


# Whether the quantizing epilogue divides by the next layer's scale (True) or multiplies by its
# float32 reciprocal (False); see `epilogue_divides`.
EPILOGUE_DIVIDES = False


def epilogue_divides() -> bool:
    """Whether the quantizing epilogue divides by ``s_out`` or multiplies by ``1 / s_out``.

    ``ActQuant.quantize`` (and the official code) divide. Multiplying by the float32 reciprocal
    gives the same code except where ``y / s`` lies within an ulp of a tie ``k + 0.5``; it is
    what XLA:CPU compiles ``ActQuant.quantize`` into anyway (its algebraic simplifier rewrites
    ``x / broadcast(s)`` into ``x * broadcast(1 / s)``), so interpret-mode codes equal the XLA
    path's exactly. On H100 (2026-11-27, jax 0.11.2) the true division cost 14 ms per VAR-d30
    batch-64 generation (Pallas GEMM time 200.9 -> 215.1 ms; one ``div.rn.f32`` per fc1 output)
    and changed no code: on ``tests/quant_pallas_gpu_test.py``'s tie-rich layer (bf16 values,
    scales 0.04 / 0.03) both forms equal an IEEE float32 division with round-half-even in numpy
    on all 460,800 codes, while XLA:GPU's own ``ActQuant.quantize`` differs from it on 0.115 %
    of them, every one an exact tie (`scripts/probe_act_quant_ties.py`; the GPU test
    ``test_packed_dense_act_quant_fused_codes_are_ieee_exact``).
    """
    return EPILOGUE_DIVIDES


def _quantize_codes(y, s, z, bits: int, divide: bool):
    """Float codes ``clip(round(y / s) + z)`` (round half to even, float32 zero point), still
    float32 (integer-valued): ``s`` is the scale (``divide``) or its reciprocal ``1 / s`` as XLA
    computes it (``epilogue_divides``)."""
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return jnp.clip(jnp.round(y / s if divide else y * s) + z, lo, hi)


def _epilogue_quant(acc, row_refs, col_refs, out_chunks, sum_ref, shape, bits, activation, divide):
    """Stores the next layer's int8 codes of this layer's output and their per-row sum.

    ``row_refs`` = (s_x, z_x, sum_x, s_out f32 (or 1 / s_out: ``divide``), z_out f32) SMEM refs
    of length ``shape[0]``;
    ``out_chunks(c)``: the swizzled int8 SMEM ref ``[shape[0], EPI_Q]`` of column chunk ``c``;
    ``sum_ref``: int32 SMEM ``[shape[0]]`` receiving ``sum_n q[m, n]`` over this tile's columns.
    The sum accumulates in the row slice of the WGMMA layout (``WGMMA.reduce(1)``, a few
    registers) across chunks, in float32: the codes are integers with ``|sum| <= 128 * block_n <
    2**24``, so float32 addition is exact and needs no per-element int32 conversion.
    """
    tm, _ = shape
    chunk = (tm, EPI_Q)
    vals = tuple(plgpu.load(ref, layout=plgpu.Layout.WGMMA.reduce(1)) for ref in row_refs)
    s_out, z_out = vals[3:]
    total = None
    for c, f in _dequant_chunks(acc, vals[:3], col_refs, shape, EPI_Q):
        y = _activation_input(f, activation, exact_rounding=False)
        s_c, z_c = _bcast_row(s_out, chunk), _bcast_row(z_out, chunk)
        q = _quantize_codes(y, s_c, z_c, bits, divide)
        out_chunks(c)[...] = q.astype(jnp.int8)
        part = jnp.sum(q, axis=1)
        total = part if total is None else total + part
    sum_ref[...] = total.astype(jnp.int32)


def _load_tile_vectors(row_g, col_g, row_smem, col_smem, vec_bar, wg, rows_ds, cols_ds):
    """Starts the TMA copies of consumer ``wg``'s per-row / per-column vectors of one output
    tile ("ws", "pp"); they travel during the K loop and land on ``vec_bar[wg]``."""
    for g_ref, s in zip(row_g, row_smem):
        plgpu.copy_gmem_to_smem(g_ref.at[rows_ds], s.at[wg], vec_bar.at[wg])
    for g_ref, s in zip(col_g, col_smem):
        plgpu.copy_gmem_to_smem(g_ref.at[cols_ds], s.at[wg], vec_bar.at[wg])


def _output_spec(m: int, n: int, tn: int, quant, n_rows: int):
    """(column chunk, SMEM output dtype and transforms, output types, row-vector dtypes) of the
    persistent variants: bf16 ``[M, N]``, or with ``quant`` int8 codes ``[M, N]`` and int32
    partial row sums ``[N // tn, M]`` (the wrapper checked N % tn == 0)."""
    if quant is None:
        chunk_n, dtype, row_dtypes = EPI_N, jnp.bfloat16, _ROW_DTYPES
        out_type = (jax.ShapeDtypeStruct((m, n), jnp.bfloat16),)
    else:
        chunk_n, dtype, row_dtypes = EPI_Q, jnp.int8, _ROW_DTYPES + _QROW_DTYPES
        codes = jax.ShapeDtypeStruct((m, n), jnp.int8)
        out_type = (codes, jax.ShapeDtypeStruct((n // tn, m), jnp.int32))
    assert len(row_dtypes) == n_rows, (len(row_dtypes), n_rows)
    return chunk_n, dtype, _tile_transforms(chunk_n, dtype), out_type, row_dtypes


def _store_tile(acc, wg, smem, out_g, rows_ds, col0, tile, quant):
    """Consumer ``wg``'s epilogue of one output tile ("ws", "pp"): waits for its vectors, runs
    ``_epilogue`` (bf16) or ``_epilogue_quant`` (``quant`` = (bits, activation, divide)) into
    its SMEM output tile and TMA-stores the result (and the partial row sums).

    ``smem`` = (out_smem, row_smem, col_smem, vec_bar, sum_smem or None), each indexed by
    consumer; ``tile`` = (block_m, block_n, column chunk).
    """
    out_smem, row_smem, col_smem, vec_bar, sum_smem = smem
    tm, tn, chunk_n = tile
    plgpu.barrier_wait(vec_bar.at[wg])
    # This consumer's previous TMA stores must have read out_smem[wg] (and sum_smem[wg]).
    plgpu.wait_smem_to_gmem(0, wait_read_only=True)
    wg_rows = tuple(s.at[wg] for s in row_smem)
    wg_cols = tuple(s.at[wg] for s in col_smem)
    if quant is None:
        _epilogue(acc, wg_rows, wg_cols, lambda c: out_smem.at[wg, c], (tm, tn))
    else:
        bits, activation, divide = quant
        out_chunks = lambda c: out_smem.at[wg, c]
        shape = (tm, tn)
        _epilogue_quant(
            acc, wg_rows, wg_cols, out_chunks, sum_smem.at[wg], shape, bits, activation, divide
        )
    plgpu.commit_smem()
    for c in range(tn // chunk_n):
        out_cols = pl.ds(col0 + c * chunk_n, chunk_n)
        plgpu.copy_smem_to_gmem(out_smem.at[wg, c], out_g[0].at[rows_ds, out_cols])
    if quant is not None:
        # Row t of the partial sums belongs to columns [t tn, (t + 1) tn): col0 is a multiple of
        # tn, also for a clamped last tile, because N is (the wrapper checks).
        t = lax.div(col0, jnp.int32(tn))
        plgpu.copy_smem_to_gmem(sum_smem.at[wg], out_g[1].at[t, rows_ds])


def _tile_start(idx, tile: int, extent: int, exact: bool):
    """First row (column) of tile ``idx``: ``idx * tile``, clamped to ``extent - tile``.

    The clamp makes the last tile of a ragged extent overlap the one before it instead of
    reading and writing past the end (module doc, "Layout requirements"); ``exact`` (the extent
    is a multiple of the (cluster) tile) skips it. Both candidates are multiples of
    ``gcd(extent, tile)`` (8 for rows, 64 for columns: ``_padded_extents``); ``pl.multiple_of``
    tells Mosaic so, since a TMA slice of a tiled SMEM ref must start on a whole tile.
    """
    start = idx * tile
    if exact:
        return start
    return pl.multiple_of(jnp.minimum(start, jnp.int32(extent - tile)), math.gcd(extent, tile))


# ----------------------------------------------------------------------------------------------
# Variant "pipeline": a grid of output tiles, one warpgroup per CTA, emit_pipeline over K.


_ROW_DTYPES = (jnp.float32, jnp.int32, jnp.int32)  # s_x, z_x, sum_x
_QROW_DTYPES = (jnp.float32, jnp.float32)  # 1 / s_out, z_out (integer-valued, as ActQuant)
_COL_DTYPES = (jnp.float32, jnp.int32, jnp.int32, jnp.float32)  # s_w, z_w, c_w, bias


def _round_up(x: int, multiple: int) -> int:
    return -(-x // multiple) * multiple


def _pipeline_call(q_x, q_w, rows, cols, cfg: FusedConfig, interpret):
    m, k = q_x.shape
    n = q_w.shape[0]
    tm, tn, tk = cfg.block_m, cfg.block_n, cfg.block_k
    k_steps = k // tk
    op_tf = _tile_transforms(tk, jnp.int8)
    out_tf = _tile_transforms(EPI_N, jnp.bfloat16)

    def kernel(qx_g, qw_g, sx_g, zx_g, sumx_g, sw_g, zw_g, cw_g, b_g, out_g, **scratch):
        # Scratch refs arrive by name (scratch_types is a dict).
        out_smem, vec_bar = scratch["out_smem"], scratch["vec_bar"]
        row_smem, col_smem = scratch["row_smem"], scratch["col_smem"]
        row0 = _tile_start(lax.axis_index("m"), tm, m, m % tm == 0)
        col0 = _tile_start(lax.axis_index("n"), tn, n, n % tn == 0)
        rows_ds = pl.ds(row0, tm)
        cols_ds = pl.ds(col0, tn)
        # The per-row / per-column vectors travel while the K loop runs.
        for g, s in zip((sx_g, zx_g, sumx_g), row_smem):
            plgpu.copy_gmem_to_smem(g.at[rows_ds], s, vec_bar)
        for g, s in zip((sw_g, zw_g, cw_g, b_g), col_smem):
            plgpu.copy_gmem_to_smem(g.at[cols_ds], s, vec_bar)

        def acc_scope(acc_ref):
            def step(_, a_smem, w_smem):
                # a: [tm, tk] K-major; w: [tn, tk] K-major, read transposed as the [tk, tn] operand.
                plgpu.wgmma(acc_ref, a_smem, w_smem.T)
                plgpu.wgmma_wait(1)  # one wgmma group stays in flight (hence delay_release=1)

            plgpu.emit_pipeline(
                step,
                grid=(k_steps,),
                in_specs=[
                    plgpu.BlockSpec(
                        (tm, tk), lambda kk: (0, kk), transforms=op_tf, delay_release=1
                    ),
                    plgpu.BlockSpec(
                        (tn, tk), lambda kk: (0, kk), transforms=op_tf, delay_release=1
                    ),
                ],
                max_concurrent_steps=cfg.stages,
            )(qx_g.at[rows_ds, :], qw_g.at[cols_ds, :])
            return acc_ref[...]

        acc = pl.run_scoped(acc_scope, plgpu.ACC((tm, tn), jnp.int32))
        plgpu.barrier_wait(vec_bar)
        _epilogue(acc, row_smem, col_smem, lambda c: out_smem.at[c], (tm, tn))
        plgpu.commit_smem()
        for c in range(tn // EPI_N):
            out_cols = pl.ds(col0 + c * EPI_N, EPI_N)
            plgpu.copy_smem_to_gmem(out_smem.at[c], out_g.at[rows_ds, out_cols])
        plgpu.wait_smem_to_gmem(0, wait_read_only=True)

    kw = {} if interpret is False else {"interpret": interpret}
    return plgpu.kernel(
        kernel,
        out_type=jax.ShapeDtypeStruct((m, n), jnp.bfloat16),
        scratch_types={
            "out_smem": plgpu.SMEM((tn // EPI_N, tm, EPI_N), jnp.bfloat16, transforms=out_tf),
            "row_smem": [plgpu.SMEM((tm,), dt) for dt in _ROW_DTYPES],
            "col_smem": [plgpu.SMEM((tn,), dt) for dt in _COL_DTYPES],
            "vec_bar": plgpu.Barrier(num_arrivals=len(_ROW_DTYPES) + len(_COL_DTYPES)),
        },
        # The last grid axis is CUDA's fastest: CTAs walk along N.
        grid=(pl.cdiv(m, tm), pl.cdiv(n, tn)),
        grid_names=("m", "n"),
        compiler_params=plgpu.CompilerParams(
            lowering_semantics=_semantics(cfg), approx_math=cfg.approx_math
        ),
        **kw,
    )(q_x, q_w, *rows, *cols)


# ----------------------------------------------------------------------------------------------
# Variant "ws": persistent, warp-specialized (1 producer + 2 consumer warpgroups).


def _ws_call(q_x, q_w, rows, cols, cfg: FusedConfig, interpret, quant=None):
    """``quant``: None (bf16 ``[M, N]`` output), or ``(bits, activation, divide)`` with ``rows``
    extended by (s_out or 1 / s_out, z_out): outputs int8 codes ``[M, N]`` and int32 partial row sums
    ``[N // block_n, M]``. M and N as ``_padded_extents`` makes them."""
    m, k = q_x.shape
    n = q_w.shape[0]
    tm, tn, tk = cfg.block_m, cfg.block_n, cfg.block_k
    cta_m, cta_n = cfg.cta_tile()
    clu_m, clu_n = cfg.cluster_tile()
    cl_size = 2 if cfg.cluster else 1
    m_iters, n_iters, k_iters = pl.cdiv(m, clu_m), pl.cdiv(n, clu_n), k // tk
    num_tiles = m_iters * n_iters  # cluster tiles
    num_clusters = max(1, min((cfg.num_ctas or _num_sms()) // cl_size, num_tiles))
    split_m = cfg.split == "m"
    # With a cluster along N the two CTAs share the activation tile (multicast), along M the
    # weight tile.
    a_collective = ("cluster",) if cfg.cluster == "n" else None
    w_collective = ("cluster",) if cfg.cluster == "m" else None
    op_tf = _tile_transforms(tk, jnp.int8)
    n_rows = len(rows)
    chunk_n, out_dtype, out_tf, out_type, row_dtypes = _output_spec(m, n, tn, quant, n_rows)

    def get_pipeline(body, compute_context):
        return plgpu.emit_pipeline_warp_specialized(
            body,
            grid=(k_iters,),
            memory_registers=40,
            in_specs=[
                plgpu.BlockSpec(
                    (cta_m, tk),
                    lambda kk: (0, kk),
                    transforms=op_tf,
                    memory_space=plgpu.SMEM,
                    collective_axes=a_collective,
                ),
                plgpu.BlockSpec(
                    (cta_n, tk),
                    lambda kk: (0, kk),
                    transforms=op_tf,
                    memory_space=plgpu.SMEM,
                    collective_axes=w_collective,
                ),
            ],
            wg_axis="wg",
            num_compute_wgs=2,
            max_concurrent_steps=cfg.stages,
            compute_context=compute_context,
        )

    def kernel(qx_g, qw_g, *refs):
        row_g = refs[:n_rows]
        col_g = refs[n_rows : n_rows + len(_COL_DTYPES)]
        out_g = refs[n_rows + len(_COL_DTYPES) :]

        def ignore(*args, **kwargs):
            del args, kwargs

        def scope(pipe_allocs, out_smem, row_smem, col_smem, vec_bar, sum_smem=None):
            wg = lax.axis_index("wg")  # 0, 1: consumers; 2: producer (only inside the pipeline)

            @plgpu.nd_loop((num_tiles,), collective_axes="sm")
            def _tile(loop_info):
                (lin,) = loop_info.index
                m_idx = lax.div(lin, jnp.int32(n_iters))  # N fastest: the weights stay in L2
                n_idx = lax.rem(lin, jnp.int32(n_iters))
                if cfg.cluster == "m":  # from cluster-tile to CTA-tile indices
                    m_idx = m_idx * 2 + lax.axis_index("cluster")
                elif cfg.cluster == "n":
                    n_idx = n_idx * 2 + lax.axis_index("cluster")
                # Each CTA clamps its own tile; the exactness test is on the cluster tile, since
                # with m % clu_m != 0 a cluster's second CTA tile may start past the end.
                row0 = _tile_start(m_idx, cta_m, m, m % clu_m == 0)
                col0 = _tile_start(n_idx, cta_n, n, n % clu_n == 0)
                cta_rows = pl.ds(row0, cta_m)
                cta_cols = pl.ds(col0, cta_n)
                if split_m:
                    row0 = row0 + wg * tm
                else:
                    col0 = col0 + wg * tn
                rows_ds = pl.ds(row0, tm)
                cols_ds = pl.ds(col0, tn)

                def compute_context(eval_pipeline):
                    _load_tile_vectors(
                        row_g, col_g, row_smem, col_smem, vec_bar, wg, rows_ds, cols_ds
                    )

                    @functools.partial(pl.run_scoped, acc_ref=plgpu.ACC((tm, tn), jnp.int32))
                    def _acc_scope(acc_ref):
                        eval_pipeline(acc_ref)
                        smem = (out_smem, row_smem, col_smem, vec_bar, sum_smem)
                        tile = (tm, tn, chunk_n)
                        _store_tile(acc_ref[...], wg, smem, out_g, rows_ds, col0, tile, quant)

                def mma_body(_, a_smem, w_smem, acc_ref):
                    a = a_smem.at[pl.ds(wg * tm, tm)] if split_m else a_smem
                    w = w_smem if split_m else w_smem.at[pl.ds(wg * tn, tn)]
                    plgpu.wgmma(acc_ref, a, w.T)  # int8: both operands K-major
                    # Complete before the slot is released to the producer. (No delay_release:
                    # in this persistent loop the producer starts the next tile's prologue once
                    # the released slots are consumed, and would overwrite the last slot of the
                    # tile under a still-running wgmma.) The other consumer keeps the tensor
                    # core busy meanwhile.
                    plgpu.wgmma_wait(0)
                    return acc_ref

                get_pipeline(mma_body, compute_context)(
                    qx_g.at[cta_rows, :], qw_g.at[cta_cols, :], allocations=pipe_allocs
                )

            plgpu.wait_smem_to_gmem(0, wait_read_only=True)

        scratch = {
            "pipe_allocs": get_pipeline(ignore, ignore).get_allocations(qx_g, qw_g),
            "out_smem": plgpu.SMEM((2, tn // chunk_n, tm, chunk_n), out_dtype, transforms=out_tf),
            "row_smem": [plgpu.SMEM((2, tm), dt) for dt in row_dtypes],
            "col_smem": [plgpu.SMEM((2, tn), dt) for dt in _COL_DTYPES],
            "vec_bar": plgpu.Barrier(num_arrivals=n_rows + len(_COL_DTYPES), num_barriers=2),
        }
        if quant is not None:  # this warpgroup's partial row sums, stored after the codes
            scratch["sum_smem"] = plgpu.SMEM((2, tm), jnp.int32)
        pl.run_scoped(scope, **scratch, collective_axes="wg")

    kw = {"cluster": (2,), "cluster_names": ("cluster",)} if cfg.cluster else {}
    call = _persistent_kernel(kernel, out_type, num_clusters, cfg, interpret, **kw)
    out = call(q_x, q_w, *rows, *cols)
    return out if quant is not None else out[0]


def _persistent_kernel(kernel, out_type, num_ctas: int, cfg: FusedConfig, interpret, **kw):
    """``plgpu.kernel`` of the persistent variants: ``num_ctas`` CTAs (axis "sm") of three
    warpgroups (axis "wg": two consumers and the producer)."""
    if interpret is not False:
        kw["interpret"] = interpret
    return plgpu.kernel(
        kernel,
        out_type=out_type,
        grid=(num_ctas,),
        grid_names=("sm",),
        num_threads=3,
        thread_name="wg",
        compiler_params=plgpu.CompilerParams(
            lowering_semantics=_semantics(cfg), approx_math=cfg.approx_math
        ),
        **kw,
    )


# ----------------------------------------------------------------------------------------------
# Variant "pp": persistent, ping-pong consumers (1 producer + 2 consumer warpgroups, each
# consumer on its own output tiles).

# Registers per thread after `set_max_registers`: the producer keeps 40, the two consumers share
# the rest of the 64K register file (512 - 40) / 2, rounded down to a multiple of 8 (the split
# `emit_pipeline_warp_specialized` makes for "ws").
_PP_PRODUCER_REGISTERS = 40
_PP_CONSUMER_REGISTERS = 232


def _pp_call(q_x, q_w, rows, cols, cfg: FusedConfig, interpret, quant=None):
    """Ping-pong form of ``_ws_call`` (same operands, outputs and epilogues).

    In "ws" both consumers work on halves of one CTA tile, so they finish its K loop together
    and run their epilogues together while the tensor cores idle (for fc1's GELU + quantizing
    epilogue, ~45 % of the GEMM's time at VAR-d30's last scale). Here consumer ``c`` owns the
    CTA's tiles ``j = c, c + 2, ...`` (tile ``j`` of CTA ``sm`` is output tile ``sm + j
    num_ctas``, N fastest) with a ``block_m x block_n`` accumulator each. The producer loads
    the K steps of the CTA's tiles in order, ``g = j k_iters + kk``, into one shared ring of
    ``stages`` SMEM slots (slot ``g % stages``). Because the ring is consumed in that order,
    consumer ``1 - c`` can start tile ``j + 1`` only as consumer ``c`` releases the last slots
    of tile ``j``: the two consumers' K loops alternate, and each one's epilogue runs during
    the other's K loop (CUTLASS calls this schedule "ping-pong").

    Barriers: ``full[c * stages + s]`` (two TMA arrivals: the activation and the weight tile)
    tells consumer ``c`` that slot ``s`` holds its next step. One barrier per (consumer, slot),
    not per slot: Mosaic GPU tracks each barrier's phase per thread, so a waiter must wait on
    every phase of a barrier, and a shared one would complete phases for the other consumer.
    ``consumed[s]`` (one arrival) hands slot ``s`` back to the producer, which waits on every
    phase of it in ring order. A consumer keeps one wgmma group in flight (``wgmma_wait(1)``)
    and releases a slot once the wgmma reading it has completed.
    """
    m, k = q_x.shape
    n = q_w.shape[0]
    tm, tn, tk = cfg.block_m, cfg.block_n, cfg.block_k
    stages = cfg.stages
    m_iters, n_iters, k_iters = pl.cdiv(m, tm), pl.cdiv(n, tn), k // tk
    num_tiles = m_iters * n_iters
    num_ctas = max(1, min(cfg.num_ctas or _num_sms(), num_tiles))
    op_tf = _tile_transforms(tk, jnp.int8)
    n_rows = len(rows)
    chunk_n, out_dtype, out_tf, out_type, row_dtypes = _output_spec(m, n, tn, quant, n_rows)

    def kernel(qx_g, qw_g, *refs):
        row_g = refs[:n_rows]
        col_g = refs[n_rows : n_rows + len(_COL_DTYPES)]
        out_g = refs[n_rows + len(_COL_DTYPES) :]

        def scope(a_smem, w_smem, full, consumed, out_smem, row_smem, col_smem, vec_bar, *sums):
            sum_smem = sums[0] if sums else None
            wg = lax.axis_index("wg")  # 0, 1: consumers; 2: producer
            sm = lax.axis_index("sm")
            # Tiles sm, sm + num_ctas, ... of the num_tiles output tiles (num_ctas <= num_tiles).
            cta_tiles = lax.div(jnp.int32(num_tiles - 1) - sm, jnp.int32(num_ctas)) + 1

            def tile_origin(j):
                lin = sm + j * num_ctas
                m_idx = lax.div(lin, jnp.int32(n_iters))  # N fastest: the weights stay in L2
                n_idx = lax.rem(lin, jnp.int32(n_iters))
                return (
                    _tile_start(m_idx, tm, m, m % tm == 0),
                    _tile_start(n_idx, tn, n, n % tn == 0),
                )

            @pl.when(wg == 2)
            def _producer():
                plgpu.set_max_registers(_PP_PRODUCER_REGISTERS, action="decrease")

                @pl.loop(0, cta_tiles)
                def _tile(j):
                    row0, col0 = tile_origin(j)
                    c = lax.rem(j, jnp.int32(2))

                    @pl.loop(0, k_iters)
                    def _step(kk):
                        g = j * k_iters + kk
                        slot = lax.rem(g, jnp.int32(stages))

                        @pl.when(g >= stages)
                        def _():
                            plgpu.barrier_wait(consumed.at[slot])

                        ks = pl.ds(pl.multiple_of(kk * tk, tk), tk)
                        bar = full.at[c * stages + slot]
                        plgpu.copy_gmem_to_smem(qx_g.at[pl.ds(row0, tm), ks], a_smem.at[slot], bar)
                        plgpu.copy_gmem_to_smem(qw_g.at[pl.ds(col0, tn), ks], w_smem.at[slot], bar)

                # Observe the releases of the last `stages` steps too, so that every phase of
                # `consumed` has been waited on when the barriers go away (interpret mode checks).
                total = cta_tiles * k_iters

                @pl.loop(jnp.maximum(total - stages, 0), total)
                def _drain(g):
                    plgpu.barrier_wait(consumed.at[lax.rem(g, jnp.int32(stages))])

            @pl.when(wg < 2)
            def _consumer():
                plgpu.set_max_registers(_PP_CONSUMER_REGISTERS, action="increase")

                @pl.loop(0, lax.div(cta_tiles - wg + 1, jnp.int32(2)))
                def _tile(t):
                    j = wg + 2 * t
                    row0, col0 = tile_origin(j)
                    rows_ds, cols_ds = pl.ds(row0, tm), pl.ds(col0, tn)
                    _load_tile_vectors(
                        row_g, col_g, row_smem, col_smem, vec_bar, wg, rows_ds, cols_ds
                    )
                    base = j * k_iters

                    def k_loop(acc_ref):
                        @pl.loop(0, k_iters)
                        def _step(kk):
                            g = base + kk
                            slot = lax.rem(g, jnp.int32(stages))
                            plgpu.barrier_wait(full.at[wg * stages + slot])
                            plgpu.wgmma(acc_ref, a_smem.at[slot], w_smem.at[slot].T)
                            plgpu.wgmma_wait(1)  # the previous step's wgmma has completed

                            @pl.when(kk > 0)
                            def _():
                                plgpu.barrier_arrive(consumed.at[lax.rem(g - 1, jnp.int32(stages))])

                        plgpu.wgmma_wait(0)
                        last = lax.rem(base + k_iters - 1, jnp.int32(stages))
                        plgpu.barrier_arrive(consumed.at[last])
                        return acc_ref[...]

                    acc = pl.run_scoped(k_loop, plgpu.ACC((tm, tn), jnp.int32))
                    smem = (out_smem, row_smem, col_smem, vec_bar, sum_smem)
                    _store_tile(acc, wg, smem, out_g, rows_ds, col0, (tm, tn, chunk_n), quant)

                plgpu.wait_smem_to_gmem(0, wait_read_only=True)

        scratch = [
            plgpu.SMEM((stages, tm, tk), jnp.int8, transforms=op_tf),
            plgpu.SMEM((stages, tn, tk), jnp.int8, transforms=op_tf),
            plgpu.Barrier(num_arrivals=2, num_barriers=2 * stages),
            plgpu.Barrier(num_arrivals=1, num_barriers=stages),
            plgpu.SMEM((2, tn // chunk_n, tm, chunk_n), out_dtype, transforms=out_tf),
            [plgpu.SMEM((2, tm), dt) for dt in row_dtypes],
            [plgpu.SMEM((2, tn), dt) for dt in _COL_DTYPES],
            plgpu.Barrier(num_arrivals=n_rows + len(_COL_DTYPES), num_barriers=2),
        ]
        if quant is not None:  # each consumer's partial row sums, stored after the codes
            scratch.append(plgpu.SMEM((2, tm), jnp.int32))
        pl.run_scoped(scope, *scratch, collective_axes="wg")

    out = _persistent_kernel(kernel, out_type, num_ctas, cfg, interpret)(q_x, q_w, *rows, *cols)
    return out if quant is not None else out[0]


# ----------------------------------------------------------------------------------------------
# Public entry points.


def _vector(v, length: int, dtype, name: str):
    """[length] ``dtype`` from a scalar, [L], [L, 1] or [1, L] array (per-tensor broadcasts)."""
    v = jnp.asarray(v)
    if v.size == 1:
        v = jnp.reshape(v, (1,))
    else:
        v = jnp.reshape(v, (-1,))
        if v.shape[0] != length:
            raise ValueError(f"{name}: expected {length} values (or 1), got shape {v.shape}")
    if jnp.issubdtype(dtype, jnp.integer) and not jnp.issubdtype(v.dtype, jnp.integer):
        v = jnp.round(v)  # integer-valued float zero points (QArray stores them as float32)
    return jnp.broadcast_to(v.astype(dtype), (length,))


def _pad_to(x, axis: int, size: int):
    """``x`` zero-padded along ``axis`` to ``size`` (unchanged, no copy, if already that long)."""
    pad = size - x.shape[axis]
    if pad == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, pad)
    return jnp.pad(x, widths)


def _padded_extents(cfg: FusedConfig, m: int, n: int, k: int) -> tuple[int, int, int]:
    """(M, N, K) the kernel runs on; the wrapper zero-pads the operands to them.

    Mosaic's tiled TMA views a global array in whole SMEM tiles, so the row counts of q_x and
    q_w (and of the output) must be multiples of the operand tiles' 8 rows, and the output's
    columns multiples of its SMEM tile width (EPI_N bf16 / EPI_Q int8 columns); K must be a
    multiple of block_k. Beyond that, M and N are padded only when smaller than one CTA tile:
    larger ragged extents clamp their last tile instead (module doc, "Layout requirements").
    """
    cta_m, cta_n = cfg.cta_tile()
    return (
        max(_round_up(m, 8), cta_m),
        max(_round_up(n, EPI_N), cta_n),  # EPI_Q divides EPI_N
        _round_up(k, cfg.block_k),
    )


def _normalize(q_x, q_w, s_x, z_x, sum_x, s_w, z_w, colsum_w, bias):
    if q_x.ndim != 2 or q_w.ndim != 2:
        raise ValueError(f"need q_x [M, K] and q_w [N, K], got {q_x.shape} and {q_w.shape}")
    if q_x.dtype != jnp.int8 or q_w.dtype != jnp.int8:
        raise TypeError(f"need int8 codes, got {q_x.dtype} and {q_w.dtype}")
    m, k = q_x.shape
    n, k2 = q_w.shape
    if k != k2:
        raise ValueError(f"contraction mismatch: q_x {q_x.shape} vs q_w {q_w.shape} ([N, K])")
    z_w = _vector(z_w, n, jnp.int32, "z_w")
    rows = (
        _vector(s_x, m, jnp.float32, "s_x"),
        _vector(z_x, m, jnp.int32, "z_x"),
        _vector(sum_x, m, jnp.int32, "sum_x"),
    )
    c_w = _vector(colsum_w, n, jnp.int32, "colsum_w") - jnp.int32(k) * z_w
    b = jnp.zeros((n,), jnp.float32) if bias is None else _vector(bias, n, jnp.float32, "bias")
    cols = (_vector(s_w, n, jnp.float32, "s_w"), z_w, c_w, b)
    return rows, cols


def _normalize_out_quant(out_quant, activation, m: int, divide: bool):
    """((s_out or 1 / s_out (not ``divide``) f32 [M], z_out f32 [M]), bits) of ``out_quant``;
    checks ``activation``."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    if out_quant is None:
        if activation is not None:
            raise ValueError("activation is applied only with out_quant (the quantized output)")
        return None
    try:
        s_out, z_out, bits = out_quant
    except (TypeError, ValueError):
        raise ValueError("out_quant must be a tuple (s_out, z_out, bits)") from None
    if not isinstance(bits, (int, np.integer)) or not 2 <= int(bits) <= 8:
        raise ValueError(f"out_quant bits must be an int in [2, 8], got {bits!r}")
    # z_out stays float32 (integer-valued), added to the rounded float like ActQuant.quantize.
    # The scale, or its reciprocal as XLA:CPU computes it for ActQuant.quantize (`epilogue_divides`).
    s_out = _vector(s_out, m, jnp.float32, "s_out")
    qrows = (s_out if divide else 1.0 / s_out, _vector(z_out, m, jnp.float32, "z_out"))
    return qrows, int(bits)


def int8_dense_reference(
    q_x,
    q_w,
    s_x,
    z_x,
    sum_x,
    s_w,
    z_w,
    colsum_w,
    bias=None,
    *,
    out_dtype=jnp.bfloat16,
    barrier: bool = False,
    out_quant=None,
    activation: str | None = None,
    block_n: int = 128,
):
    """The XLA path with the fused kernel's exact arithmetic: s32 ``dot_general`` + epilogue.

    ``barrier=True`` wraps the int32 accumulator in ``lax.optimization_barrier`` (cuBLASLt GEMM,
    then a separate fusion: the ``"barrier"`` GPU impl of ``quant._packed``).
    ``out_dtype=jnp.float32`` returns the value before the bf16 rounding (for tolerance checks).
    ``out_quant`` / ``activation``: as ``int8_dense_fused`` (returns ``(q int8 [M, N], partial
    sums int32 [N // block_n, M])``; ``block_n`` is the kernel's column tile of the sums).
    """
    rows, cols = _normalize(q_x, q_w, s_x, z_x, sum_x, s_w, z_w, colsum_w, bias)
    m, n = q_x.shape[0], q_w.shape[0]
    # The reference divides as ActQuant.quantize does and lets XLA lower it likewise.
    oq = _normalize_out_quant(out_quant, activation, m, divide=True)
    sx, zx, sumx = rows
    sw, zw, cw, b = cols
    acc = lax.dot_general(q_x, q_w, (((1,), (1,)), ((), ())), preferred_element_type=jnp.int32)
    if barrier:
        acc = lax.optimization_barrier(acc)
    y = acc - zw[None, :] * sumx[:, None]
    y = y - zx[:, None] * cw[None, :]
    f = y.astype(jnp.float32) * (sx[:, None] * sw[None, :]) + b[None, :]
    if oq is None:
        return f.astype(out_dtype)
    (s_out, z_out), bits = oq
    if n % block_n:
        raise ValueError(f"out_quant needs N % block_n == 0, got N={n}, block_n={block_n}")
    y = _activation_input(f, activation)
    q = _quantize_codes(y, s_out[:, None], z_out[:, None], bits, divide=True).astype(jnp.int8)
    sums = jnp.sum(q.reshape(m, n // block_n, block_n), axis=2, dtype=jnp.int32)
    return q, sums.T


def int8_dense_fused(
    q_x,
    q_w,
    s_x,
    z_x,
    sum_x,
    s_w,
    z_w,
    colsum_w,
    bias=None,
    *,
    out_quant=None,
    activation: str | None = None,
    block_m: int = 128,
    block_n: int = 128,
    block_k: int = 128,
    stages: int | None = None,
    variant: str = "ws",
    split: str = "m",
    cluster: str | None = None,
    semantics: str = "warpgroup",
    num_ctas: int | None = None,
    approx_math: bool = False,
    interpret=False,
):
    """bf16 ``[M, N]`` = ``s_x s_w ((q_x - z_x) . (q_w - z_w)^T) + bias`` in one Hopper kernel.

    Args:
      q_x: int8 ``[M, K]`` activation codes (row-major, K contiguous).
      q_w: int8 ``[N, K]`` weight codes (``PackedKernel.codes()``; K contiguous).
      s_x, z_x, sum_x: per-row scale (float32), zero point (integer-valued) and ``sum_k q_x``
        (int32); each ``[M]``, ``[M, 1]`` or a scalar.
      s_w, z_w, colsum_w, bias: per-column scale, zero point, ``sum_k q_w`` (int32) and bias
        (float32, or None); each ``[N]``, ``[1, N]`` or a scalar.
      out_quant: None, or ``(s_out, z_out, bits)``: quantize the output for the next layer in
        the epilogue (module doc, "Output quantization"): per-row float32 scale and
        integer-valued zero point (``[M]``, ``[M, 1]`` or scalars, as ``ActQuant.for_positions``
        gives them), ``bits`` in [2, 8]. Needs N a multiple of ``block_n`` and at least one CTA
        tile wide; variants "ws" and "pp".
      activation: with ``out_quant``: None or ``"gelu_tanh"`` (``jax.nn.gelu(approximate=True)``
        applied between this layer's bf16 output and the quantization).
      block_m, block_n, block_k: one consumer warpgroup's accumulator tile and the K step.
      stages: SMEM slots of the K pipeline (default 3 for "ws", 4 for "pp", 2 for "pipeline").
      variant: "ws" (persistent warp-specialized), "pp" (persistent, ping-pong consumers) or
        "pipeline" (see module doc).
      split: "ws" only: the two consumers split the CTA tile along "m" or "n".
      cluster: "ws" only: None, or pair CTAs along "m" / "n" in a 2-CTA cluster that multicasts
        the shared operand tile (the weight for "m", the activations for "n").
      semantics: Mosaic GPU lowering semantics, "warpgroup" (jax 0.11's default) or "lane".
      num_ctas: "ws" and "pp": persistent CTAs (default: number of SMs; rounded down to whole
        clusters).
      approx_math: let Mosaic GPU use approximate transcendental instructions (the GELU's
        ``tanh.approx.f32``; relative error ~2^-11, below the bf16 rounding that follows it,
        so a code moves by one only where the value sits at a rounding boundary).
      interpret: passed to Pallas (e.g. ``plgpu.InterpretGPUParams()`` to run on CPU).

    Returns bf16 ``[M, N]``; with ``out_quant``, ``(q int8 [M, N], partial_sums int32
    [N // block_n, M])`` where ``partial_sums[t, m]`` is the sum of ``q[m, t block_n : (t + 1)
    block_n]`` (so ``partial_sums.sum(0)`` is the next layer's ``sum_x``). Callable inside
    ``jax.jit``; shapes and options are static.
    """
    if plgpu is None:
        raise RuntimeError(f"int8_dense_fused: {unavailable_reason()}")
    if stages is None:
        stages = {"ws": 3, "pp": 4}.get(variant, 2)
    cfg = FusedConfig(
        variant=variant,
        block_m=block_m,
        block_n=block_n,
        block_k=block_k,
        stages=stages,
        split=split,
        cluster=cluster,
        semantics=semantics,
        num_ctas=num_ctas,
        approx_math=approx_math,
    )
    cfg.validate()
    if (need := smem_bytes(cfg, out_quant=out_quant is not None)) > SMEM_LIMIT:
        raise ValueError(
            f"int8_dense_fused: {cfg} needs ~{need // 1024} KiB of shared memory per CTA, more than"
            f" {SMEM_LIMIT // 1024} KiB; lower stages or the tile"
        )
    if (reason := api_unavailable_reason()) is not None:  # jax 0.10 would fail mid-trace
        raise ValueError(f"int8_dense_fused: {reason}")
    rows, cols = _normalize(q_x, q_w, s_x, z_x, sum_x, s_w, z_w, colsum_w, bias)
    m, n = q_x.shape[0], q_w.shape[0]
    cta_n = cfg.cta_tile()[1]
    divide = epilogue_divides()
    oq = _normalize_out_quant(out_quant, activation, m, divide)
    quant = None
    if oq is not None:
        if cfg.variant == "pipeline":
            raise NotImplementedError(
                "int8_dense_fused: out_quant (the quantizing epilogue) is implemented for"
                " variants 'ws' and 'pp' only"
            )
        if n % cfg.block_n or n < cta_n:
            # Partial sums are per block_n columns; a padded column would add codes of its own.
            raise ValueError(
                f"int8_dense_fused: out_quant needs N a multiple of block_n={cfg.block_n} and at"
                f" least the CTA tile width {cta_n}, got N={n}"
            )
        qrows, bits = oq
        rows = rows + qrows
        quant = (bits, activation, divide)
    m_k, n_k, k_k = _padded_extents(cfg, m, n, q_x.shape[1])
    q_x = _pad_to(_pad_to(q_x, 0, m_k), 1, k_k)
    q_w = _pad_to(_pad_to(q_w, 0, n_k), 1, k_k)
    rows = tuple(_pad_to(v, 0, m_k) for v in rows)
    cols = tuple(_pad_to(v, 0, n_k) for v in cols)
    if cfg.variant == "ws":
        out = _ws_call(q_x, q_w, rows, cols, cfg, interpret, quant)
    elif cfg.variant == "pp":
        out = _pp_call(q_x, q_w, rows, cols, cfg, interpret, quant)
    else:
        out = _pipeline_call(q_x, q_w, rows, cols, cfg, interpret)
    if quant is None:
        return out if out.shape == (m, n) else out[:m, :n]
    q, sums = out
    if q.shape[0] != m:
        q = q[:m]
    if sums.shape[1] != m:
        sums = sums[:, :m]
    return q, sums
