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

Layout: ``_support`` (API availability, ``FusedConfig``, shared-memory budget), ``_epilogue``
(the epilogues, tile loads and stores), ``_calls`` (the three variants' kernels); this module holds
the entry points and the operand normalization.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax import lax

from quant._pallas_gpu._calls import _pipeline_call, _pp_call, _round_up, _ws_call
from quant._pallas_gpu._epilogue import (  # noqa: F401  (re-exported)
    ACTIVATIONS,
    EPI_N,
    EPI_Q,
    _activation_input,
    _quantize_codes,
    _tile_start,
    round_to_bf16,
)
from quant._pallas_gpu._support import (  # noqa: F401  (re-exported: tests, scripts, quant._packed)
    MIN_JAX,
    SMEM_LIMIT,
    VARIANTS,
    FusedConfig,
    _jax_version,
    api_unavailable_reason,
    available,
    pl,
    plgpu,
    smem_bytes,
    unavailable_reason,
)

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
