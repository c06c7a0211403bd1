"""The fused kernel's epilogues (`quant._pallas_gpu`): int32 zero-point terms, float32 scales,
bias, then bf16 or the next layer's int8 codes and their row sums; tile loads and stores."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

from quant._pallas_gpu._support import _tile_transforms, pl, plgpu

# The epilogues (shared by both variants): int32 zero-point terms, float32 scales, bias, then
# either bf16 (``_epilogue``) or the next layer's int8 codes and their row sums
# (``_epilogue_quant``).


_ROW_DTYPES = (jnp.float32, jnp.int32, jnp.int32)  # s_x, z_x, sum_x
_QROW_DTYPES = (jnp.float32, jnp.float32)  # 1 / s_out, z_out (integer-valued, as ActQuant)
_COL_DTYPES = (jnp.float32, jnp.int32, jnp.int32, jnp.float32)  # s_w, z_w, c_w, bias
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
