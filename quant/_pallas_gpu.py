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
    out[m, n] = bf16(float32(y) * s_x[m] * s_w[n] + bias[n])

where ``sum_x = sum_k q_x`` and ``colsum_w = sum_k q_w`` (``PackedKernel.col_sum``). The wrapper folds
``c_w = colsum_w - K z_w`` (O(N)); the kernel does the two rank-1 int32 corrections, one int32 ->
float32 conversion, two float multiplies and the bias add on the accumulator registers, then stores
bf16 through shared memory with a TMA copy. It is the same integer algebra as
``quant._dot_general._zero_point_corrected`` (int32 wrap-around cancels as long as the true ``y``
fits, which ``_check_int32_bound`` guarantees for the callers).

Layout requirements
-------------------
* ``q_x`` int8 ``[M, K]`` row-major and ``q_w`` int8 ``[N, K]`` (``PackedKernel.qvalue_t``): both
  K-major. Hopper's int8 wgmma cannot transpose 8-bit operands in shared memory (only 16-bit types
  can, ``jax/experimental/mosaic/gpu/wgmma.py``), so the weight is read as ``q_w_tile.T`` of a
  K-major ``[block_n, block_k]`` tile, exactly like the int8 wgmma test of jax.
* Operand tiles use the 128-byte swizzle: ``TilingTransform((8, 128))`` + ``SwizzleTransform(128)``
  (128 int8 elements along K), so ``block_k`` must be a multiple of 128 (or 64 / 32 with the
  smaller swizzles); the accumulator is ``plgpu.ACC((block_m, block_n), jnp.int32)`` with
  ``block_m % 64 == 0`` (wgmma M) and ``block_n`` a multiple of 64 up to 256 (the bf16 output's
  128-byte swizzle span; wgmma's largest N), at most 128 x 128 (128 registers per thread of a
  warpgroup).
* M, N, K that are not multiples of the CTA tile are zero-padded by the wrapper (zero codes add
  nothing to ``acc``; the corrections use the true K and the sums of the real codes). Padding
  ``q_x`` costs a copy of the activations: keep K a multiple of ``block_k`` and M, N multiples of
  the CTA tile (VAR: 1920 = 15 x 128, 7680 = 60 x 128, M = 2 B h w) to avoid it.

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

In both, each consumer warpgroup TMA-copies its per-row / per-column vectors into SMEM when its
tile starts (one barrier, seven arrivals), loads them after the K loop in the row / column slices
of the WGMMA register layout (``plgpu.Layout.WGMMA.reduce(1)`` / ``.reduce(0)``), broadcasts them
onto the accumulator 64 columns at a time, and writes each bf16 chunk to a swizzled SMEM buffer
that a TMA store sends to HBM.

Checked without a GPU (jax 0.11.2 on CPU): every variant matches the exact reference in Mosaic
GPU interpret mode (``interpret=plgpu.InterpretGPUParams()``), and lowers and compiles through
ptxas for sm_90a (cross-platform lowering ``.lower(lowering_platforms=("cuda",))`` plus the CUDA
plugin's Mosaic compiler): 168 registers (the cap of a 384-thread CTA), no spills without a
cluster, a few dozen bytes with one. Timing and hardware synchronization need the GPU
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

import jax
import jax.numpy as jnp
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
    "FusedConfig",
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
    "wait_smem_to_gmem",
    "wgmma",
    "wgmma_wait",
)
SMEM_LIMIT = 227 * 1024  # opt-in dynamic shared memory per block on H100 (232448 bytes)
VARIANTS = ("ws", "pipeline")


def _jax_version() -> tuple[int, ...]:
    parts = []
    for p in jax.__version__.split(".")[:3]:
        digits = "".join(ch for ch in p if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def unavailable_reason() -> str | None:
    """None if the fused kernel can run here, else why not (for skips and logs)."""
    if _IMPORT_ERROR is not None:
        return f"jax.experimental.pallas.mosaic_gpu does not import ({_IMPORT_ERROR})"
    if _jax_version() < MIN_JAX:
        return (
            f"needs jax >= {'.'.join(map(str, MIN_JAX))} (Mosaic GPU API), have {jax.__version__}"
        )
    missing = [name for name in _NEEDED_API if not hasattr(plgpu, name)]
    if missing:
        return f"jax {jax.__version__} plgpu lacks {missing}"
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
    stages: int = 3  # max_concurrent_steps of the K pipeline (SMEM slots)
    split: str = "m"  # ws: the two consumer warpgroups split the CTA tile along "m" or "n"
    cluster: str | None = None  # ws: pair CTAs along "m" (share the weight tile) or "n" (share
    # the activation tile) in a 2-CTA cluster whose TMA loads multicast the shared operand
    semantics: str = "warpgroup"  # Mosaic GPU lowering: "warpgroup" (0.11 default) or "lane"
    num_ctas: int | None = None  # ws: persistent CTAs (default: the device's SM count)

    def cta_tile(self) -> tuple[int, int]:
        """Output tile of one CTA (both consumer warpgroups)."""
        if self.variant == "ws":
            return (
                self.block_m * (2 if self.split == "m" else 1),
                self.block_n * (2 if self.split == "n" else 1),
            )
        return self.block_m, self.block_n

    def cluster_tile(self) -> tuple[int, int]:
        """Output tile of one cluster: M and N must be (and are padded to) multiples of it."""
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


def smem_bytes(cfg: FusedConfig) -> int:
    """Shared memory the kernel allocates per CTA (operand slots, bf16 output tile, vectors)."""
    cta_m, cta_n = cfg.cta_tile()
    operands = cfg.stages * (cta_m + cta_n) * cfg.block_k
    out = cta_m * cta_n * 2
    if cfg.variant == "ws":
        vectors = 2 * (3 * cfg.block_m + 4 * cfg.block_n) * 4  # per consumer warpgroup
    else:
        vectors = (3 * cfg.block_m + 4 * cfg.block_n) * 4
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
# The epilogue (shared by both variants): int32 zero-point terms, float32 scales, bias, bf16.


EPI_N = 64  # epilogue column chunk: one 128-byte swizzle span of the bf16 output tile


def _epilogue(acc, row_refs, col_refs, out_chunks, shape):
    """Stores bf16 ``(acc - z_w sum_x - z_x c_w) * s_x * s_w + b`` of the int32 accumulator.

    ``row_refs`` = (s_x f32, z_x i32, sum_x i32) SMEM refs of length ``shape[0]``;
    ``col_refs`` = (s_w f32, z_w i32, c_w i32, bias f32) SMEM refs of length ``shape[1]``;
    ``out_chunks(c)``: the swizzled SMEM ref ``[shape[0], EPI_N]`` receiving column chunk ``c``.
    Vectors are loaded in the row / column slices of the WGMMA layout and broadcast (the explicit
    ``layout_cast`` pins each broadcast to the accumulator's layout). Working on EPI_N columns at a
    time keeps the replicated column vectors at 16 registers each instead of 32 (the full-width
    form spilled under the 168-register cap of the 3-warpgroup kernel).
    """
    tm, tn = shape
    wgmma = plgpu.Layout.WGMMA
    chunk = (tm, EPI_N)

    def bcast_row(v):
        return plgpu.layout_cast(lax.broadcast_in_dim(v, chunk, (0,)), wgmma)

    def col(ref, cs):
        v = plgpu.load(ref.at[cs], layout=wgmma.reduce(0))
        return plgpu.layout_cast(lax.broadcast_in_dim(v, chunk, (1,)), wgmma)

    sx, zx, sumx = (plgpu.load(ref, layout=wgmma.reduce(1)) for ref in row_refs)
    sw_ref, zw_ref, cw_ref, b_ref = col_refs
    for c in range(tn // EPI_N):
        cs = slice(c * EPI_N, (c + 1) * EPI_N)
        y = acc[:, cs] - col(zw_ref, cs) * bcast_row(sumx)
        y = y - bcast_row(zx) * col(cw_ref, cs)
        f = y.astype(jnp.float32) * bcast_row(sx)
        f = f * col(sw_ref, cs) + col(b_ref, cs)
        out_chunks(c)[...] = f.astype(jnp.bfloat16)


# ----------------------------------------------------------------------------------------------
# Variant "pipeline": a grid of output tiles, one warpgroup per CTA, emit_pipeline over K.


_ROW_DTYPES = (jnp.float32, jnp.int32, jnp.int32)  # s_x, z_x, sum_x
_COL_DTYPES = (jnp.float32, jnp.int32, jnp.int32, jnp.float32)  # s_w, z_w, c_w, bias


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
        pid_m = lax.axis_index("m")
        pid_n = lax.axis_index("n")
        rows_ds = pl.ds(pid_m * tm, tm)
        cols_ds = pl.ds(pid_n * tn, tn)
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
            out_cols = pl.ds(pid_n * tn + c * EPI_N, EPI_N)
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
        grid=(m // tm, n // tn),  # the last grid axis is CUDA's fastest: CTAs walk along N
        grid_names=("m", "n"),
        compiler_params=plgpu.CompilerParams(lowering_semantics=_semantics(cfg)),
        **kw,
    )(q_x, q_w, *rows, *cols)


# ----------------------------------------------------------------------------------------------
# Variant "ws": persistent, warp-specialized (1 producer + 2 consumer warpgroups).


def _ws_call(q_x, q_w, rows, cols, cfg: FusedConfig, interpret):
    m, k = q_x.shape
    n = q_w.shape[0]
    tm, tn, tk = cfg.block_m, cfg.block_n, cfg.block_k
    cta_m, cta_n = cfg.cta_tile()
    clu_m, clu_n = cfg.cluster_tile()
    cl_size = 2 if cfg.cluster else 1
    m_iters, n_iters, k_iters = m // clu_m, n // clu_n, k // tk
    num_tiles = m_iters * n_iters  # cluster tiles
    num_clusters = max(1, min((cfg.num_ctas or _num_sms()) // cl_size, num_tiles))
    split_m = cfg.split == "m"
    # With a cluster along N the two CTAs share the activation tile (multicast), along M the
    # weight tile.
    a_collective = ("cluster",) if cfg.cluster == "n" else None
    w_collective = ("cluster",) if cfg.cluster == "m" else None
    op_tf = _tile_transforms(tk, jnp.int8)
    out_tf = _tile_transforms(EPI_N, jnp.bfloat16)

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

    def kernel(qx_g, qw_g, sx_g, zx_g, sumx_g, sw_g, zw_g, cw_g, b_g, out_g):
        row_g = (sx_g, zx_g, sumx_g)
        col_g = (sw_g, zw_g, cw_g, b_g)

        def ignore(*args, **kwargs):
            del args, kwargs

        def scope(pipe_allocs, out_smem, row_smem, col_smem, vec_bar):
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
                cta_rows = pl.ds(m_idx * cta_m, cta_m)
                cta_cols = pl.ds(n_idx * cta_n, cta_n)
                if split_m:
                    rows_ds = pl.ds(m_idx * cta_m + wg * tm, tm)
                    col0 = n_idx * cta_n
                else:
                    rows_ds = pl.ds(m_idx * cta_m, tm)
                    col0 = n_idx * cta_n + wg * tn
                cols_ds = pl.ds(col0, tn)

                def compute_context(eval_pipeline):
                    # This warpgroup's per-row / per-column vectors, in flight during the K loop.
                    for g, s in zip(row_g, row_smem):
                        plgpu.copy_gmem_to_smem(g.at[rows_ds], s.at[wg], vec_bar.at[wg])
                    for g, s in zip(col_g, col_smem):
                        plgpu.copy_gmem_to_smem(g.at[cols_ds], s.at[wg], vec_bar.at[wg])

                    @functools.partial(pl.run_scoped, acc_ref=plgpu.ACC((tm, tn), jnp.int32))
                    def _acc_scope(acc_ref):
                        eval_pipeline(acc_ref)
                        acc = acc_ref[...]
                        plgpu.barrier_wait(vec_bar.at[wg])
                        # The previous tile's TMA stores must have read out_smem[wg].
                        plgpu.wait_smem_to_gmem(0, wait_read_only=True)
                        _epilogue(
                            acc,
                            tuple(s.at[wg] for s in row_smem),
                            tuple(s.at[wg] for s in col_smem),
                            lambda c: out_smem.at[wg, c],
                            (tm, tn),
                        )
                        plgpu.commit_smem()
                        for c in range(tn // EPI_N):
                            out_cols = pl.ds(col0 + c * EPI_N, EPI_N)
                            plgpu.copy_smem_to_gmem(out_smem.at[wg, c], out_g.at[rows_ds, out_cols])

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

        pl.run_scoped(
            scope,
            pipe_allocs=get_pipeline(ignore, ignore).get_allocations(qx_g, qw_g),
            out_smem=plgpu.SMEM((2, tn // EPI_N, tm, EPI_N), jnp.bfloat16, transforms=out_tf),
            row_smem=[plgpu.SMEM((2, tm), dt) for dt in _ROW_DTYPES],
            col_smem=[plgpu.SMEM((2, tn), dt) for dt in _COL_DTYPES],
            vec_bar=plgpu.Barrier(num_arrivals=len(_ROW_DTYPES) + len(_COL_DTYPES), num_barriers=2),
            collective_axes="wg",
        )

    kw = {} if interpret is False else {"interpret": interpret}
    if cfg.cluster:
        kw.update(cluster=(2,), cluster_names=("cluster",))
    return plgpu.kernel(
        kernel,
        out_type=jax.ShapeDtypeStruct((m, n), jnp.bfloat16),
        grid=(num_clusters,),
        grid_names=("sm",),
        num_threads=3,
        thread_name="wg",
        compiler_params=plgpu.CompilerParams(lowering_semantics=_semantics(cfg)),
        **kw,
    )(q_x, q_w, *rows, *cols)


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


def _pad_to(x, axis: int, multiple: int):
    size = x.shape[axis]
    pad = -size % multiple
    if pad == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, pad)
    return jnp.pad(x, widths)


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
):
    """The XLA path with the fused kernel's exact arithmetic: s32 ``dot_general`` + epilogue.

    ``barrier=True`` wraps the int32 accumulator in ``lax.optimization_barrier`` (cuBLASLt GEMM,
    then a separate fusion: the ``"barrier"`` GPU impl of ``quant._packed``).
    ``out_dtype=jnp.float32`` returns the value before the bf16 rounding (for tolerance checks).
    """
    rows, cols = _normalize(q_x, q_w, s_x, z_x, sum_x, s_w, z_w, colsum_w, bias)
    sx, zx, sumx = rows
    sw, zw, cw, b = cols
    acc = lax.dot_general(q_x, q_w, (((1,), (1,)), ((), ())), preferred_element_type=jnp.int32)
    if barrier:
        acc = lax.optimization_barrier(acc)
    y = acc - zw[None, :] * sumx[:, None]
    y = y - zx[:, None] * cw[None, :]
    f = y.astype(jnp.float32) * sx[:, None]
    f = f * sw[None, :] + b[None, :]
    return f.astype(out_dtype)


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
    block_m: int = 128,
    block_n: int = 128,
    block_k: int = 128,
    stages: int | None = None,
    variant: str = "ws",
    split: str = "m",
    cluster: str | None = None,
    semantics: str = "warpgroup",
    num_ctas: int | None = None,
    interpret=False,
):
    """bf16 ``[M, N]`` = ``s_x s_w ((q_x - z_x) . (q_w - z_w)^T) + bias`` in one Hopper kernel.

    Args:
      q_x: int8 ``[M, K]`` activation codes (row-major, K contiguous).
      q_w: int8 ``[N, K]`` weight codes (``PackedKernel.qvalue_t``; K contiguous).
      s_x, z_x, sum_x: per-row scale (float32), zero point (integer-valued) and ``sum_k q_x``
        (int32); each ``[M]``, ``[M, 1]`` or a scalar.
      s_w, z_w, colsum_w, bias: per-column scale, zero point, ``sum_k q_w`` (int32) and bias
        (float32, or None); each ``[N]``, ``[1, N]`` or a scalar.
      block_m, block_n, block_k: one consumer warpgroup's accumulator tile and the K step.
      stages: SMEM slots of the K pipeline (default 3 for "ws", 2 for "pipeline").
      variant: "ws" (persistent warp-specialized) or "pipeline" (see module doc).
      split: "ws" only: the two consumers split the CTA tile along "m" or "n".
      cluster: "ws" only: None, or pair CTAs along "m" / "n" in a 2-CTA cluster that multicasts
        the shared operand tile (the weight for "m", the activations for "n").
      semantics: Mosaic GPU lowering semantics, "warpgroup" (jax 0.11's default) or "lane".
      num_ctas: "ws" only: persistent CTAs (default: number of SMs; rounded down to whole
        clusters).
      interpret: passed to Pallas (e.g. ``plgpu.InterpretGPUParams()`` to run on CPU).

    Returns bf16 ``[M, N]``. Callable inside ``jax.jit``; shapes and options are static.
    """
    if plgpu is None:
        raise RuntimeError(f"int8_dense_fused: {unavailable_reason()}")
    if stages is None:
        stages = 3 if variant == "ws" else 2
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
    )
    cfg.validate()
    if (need := smem_bytes(cfg)) > SMEM_LIMIT:
        raise ValueError(
            f"int8_dense_fused: {cfg} needs ~{need // 1024} KiB of shared memory per CTA, more than"
            f" {SMEM_LIMIT // 1024} KiB; lower stages or the tile"
        )
    rows, cols = _normalize(q_x, q_w, s_x, z_x, sum_x, s_w, z_w, colsum_w, bias)
    m, n = q_x.shape[0], q_w.shape[0]
    cta_m, cta_n = cfg.cluster_tile()
    q_x = _pad_to(_pad_to(q_x, 0, cta_m), 1, cfg.block_k)
    q_w = _pad_to(_pad_to(q_w, 0, cta_n), 1, cfg.block_k)
    rows = tuple(_pad_to(v, 0, cta_m) for v in rows)
    cols = tuple(_pad_to(v, 0, cta_n) for v in cols)
    call = _ws_call if cfg.variant == "ws" else _pipeline_call
    out = call(q_x, q_w, rows, cols, cfg, interpret)
    if out.shape != (m, n):
        out = out[:m, :n]
    return out
