"""The three kernel variants of `quant._pallas_gpu`: "pipeline", "ws" (warp-specialized) and
"pp" (ping-pong); see the package docstring."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from quant._pallas_gpu._epilogue import (
    _COL_DTYPES,
    _ROW_DTYPES,
    EPI_N,
    _epilogue,
    _load_tile_vectors,
    _output_spec,
    _store_tile,
    _tile_start,
)
from quant._pallas_gpu._support import (
    FusedConfig,
    _num_sms,
    _semantics,
    _tile_transforms,
    pl,
    plgpu,
)

# ----------------------------------------------------------------------------------------------
# Variant "pipeline": a grid of output tiles, one warpgroup per CTA, emit_pipeline over K.


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
