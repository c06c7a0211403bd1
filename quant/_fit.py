"""Quantizer fitting inside a traced program: the official percentile-MSE search under ``jit``.

Why. PTQ4ARVG calibrates every layer on the output of the already-quantized layers before it
(``docs/ptq4arvg.md`` §2.2). Done from the outside, that means re-running a block once per layer
and moving each layer input to the search (``quant._calibrate.run_calibration``). Here the search
is a traced function, so a ``FitInput`` placeholder in the param tree lets ``Dense`` fit its
input quantizer on its very input, inside one jitted forward of the block: each layer still sees
the quantized layers before it (they were fitted earlier in the same forward), and a block runs
once per stage. ``quantize_weight_jit`` does the per-output-row weight search on device.

Exactness against the host search (``quant._quantizers``):
  * order statistics: exact (a sort of the monotone uint32 image of the float32 bit pattern; a
    plain unsigned sort, which XLA hands to CUB on GPU);
  * candidate ranges (Δ, z) from them: exact, computed by the same host code
    (``_quantizers._candidates``, float64 lerp) through ``jax.pure_callback`` on a few values;
  * the MSE of each candidate: summed in float32 on device (the host sums in float64), so a
    choice between two candidates whose MSEs agree to ~1e-6 relative can differ. The tests
    measure how often (``tests/quant_fit_test.py``).

Dims: ``R`` independent quantizers, ``n`` values per quantizer, ``N`` sequences, ``T`` tokens,
``C`` channels, ``I``/``O`` kernel input/output features.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax import lax

from quant._qarray import ActQuant, LogSqrt2Quant, QArray, offset_for_bits
from quant._quantizers import (
    PERCENTILES,
    _candidates,
    _lerp,
    _method_for,
    _plan,
    fake_quant_log2,
    fake_quant_uniform,
    fit_uniform_per_channel,
    group_table,
)

__all__ = [
    "ChannelQuant",
    "FitInput",
    "matmul_fits",
    "quantize_weight_jit",
    "search_log2",
    "search_rows",
]

_F32 = np.float32
_SIGN = np.uint32(0x80000000)


# ----------------------------------------------------------------------------------------------
# Order statistics and the search.


def _sortable(x):
    """float32 -> uint32 with the same order (negatives reversed, then offset above them)."""
    bits = lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
    return jnp.where(bits >= _SIGN, ~bits, bits | _SIGN)


def _unsortable(k):
    bits = jnp.where(k >= _SIGN, k & ~_SIGN, ~k)
    return lax.bitcast_convert_type(bits, jnp.float32)


def _rank_plan(n: int, percentiles: Sequence[float]) -> tuple[str, tuple[int, ...]]:
    method = _method_for(n)
    ks = set()
    for p in percentiles:
        for upper in (True, False):
            k0, k1, _ = _plan(n, p, upper, method)
            ks.update((k0, k1))
    return method, tuple(sorted(ks))


def order_stats_rows(x2, ks: Sequence[int]):
    """The k-th smallest value of each row of ``x2`` [R, n] for every k: float32 [R, len(ks)]."""
    s = lax.sort(_sortable(x2), dimension=1)
    return _unsortable(s[:, np.asarray(ks)])


def _host_candidates(picked, *, n, ks, bits, include_zero, percentiles, method):
    """[P, 4, R]: per candidate (Δ, z) and the fallback (Δ, z) used if it wins degenerate."""
    picked = np.asarray(picked, _F32)
    stats = {k: picked[:, i] for i, k in enumerate(ks)}
    out = []
    for delta, zp, lo, hi in _candidates(stats, n, bits, include_zero, percentiles, method):
        # As `_quantizers._search_2d`: a constant quantizer (hi == lo) would divide by zero in
        # the official code; keep the value representable: Δ = max(|lo|, |hi|)/(2**b - 1) or 1.
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            span = np.maximum(np.abs(lo), np.abs(hi)) / _F32(2**bits - 1)
            span = np.where(np.isfinite(span) & (span > 0), span, _F32(1)).astype(_F32)
            fb_zp = np.round(-lo / span).astype(_F32)
        out.append(np.stack([delta, zp, span, fb_zp]))
    return np.stack(out).astype(_F32)


def search_rows(x2, bits: int, *, include_zero: bool = False, percentiles=PERCENTILES):
    """Official percentile-MSE ``(Δ, z)`` of each row of ``x2`` [R, n]; traceable.

    Same candidates and tie rule as ``_quantizers._search_2d`` (strictly smaller MSE wins, ties
    keep the lower percentile; degenerate ranges get the same representable fallback).

    Returns:
      ``(delta, zero_point)`` float32 [R] (the official unsigned z).
    """
    offset_for_bits(bits)
    x2 = x2.astype(jnp.float32)
    r, n = x2.shape
    if n == 0:
        raise ValueError("cannot calibrate a quantizer on zero values")
    percentiles = tuple(float(p) for p in percentiles)
    method, ks = _rank_plan(n, percentiles)
    picked = order_stats_rows(x2, ks)
    cands = jax.pure_callback(
        functools.partial(
            _host_candidates,
            n=n,
            ks=ks,
            bits=bits,
            include_zero=include_zero,
            percentiles=percentiles,
            method=method,
        ),
        jax.ShapeDtypeStruct((len(percentiles), 4, r), jnp.float32),
        picked,
    )
    best = None
    for i in range(len(percentiles)):
        delta, zp, fb_delta, fb_zp = (cands[i, j] for j in range(4))
        e = x2 - fake_quant_uniform(x2, delta[:, None], zp[:, None], bits)
        sse = jnp.sum(e * e, axis=1)
        sse = jnp.where(jnp.isnan(sse), jnp.inf, sse)
        cur = (sse, delta, zp, fb_delta, fb_zp)
        if best is None:
            best = cur
            continue
        take = sse < best[0]  # strictly smaller: ties keep the lower percentile
        best = tuple(jnp.where(take, a, b) for a, b in zip(cur, best))
    _, delta, zp, fb_delta, fb_zp = best
    bad = ~(jnp.isfinite(delta) & (delta > 0))
    return jnp.where(bad, fb_delta, delta), jnp.where(bad, fb_zp, zp)


def _host_log2_candidates(picked, *, ks, plans, method):
    """[P]: the upper quantile of each percentile from the order statistics (host lerp)."""
    stats = {k: np.asarray(picked, _F32)[:, i] for i, k in enumerate(ks)}
    return np.stack([_lerp(stats[k0], stats[k1], t, method)[0] for k0, k1, t in plans]).astype(_F32)


def search_log2(x, bits: int, *, percentiles=PERCENTILES):
    """``quant._quantizers.fit_log2`` (the official log-√2 Δ) as a traceable function.

    Candidates are the upper quantiles of all of ``x``; the smallest float32 MSE wins (strictly
    smaller, ties keep the lower percentile); none finite falls back to ``max(x)``.

    Returns:
      float32 scalar Δ.
    """
    offset_for_bits(bits)
    x2 = x.reshape(1, -1).astype(jnp.float32)
    n = x2.shape[1]
    if n == 0:
        raise ValueError("cannot calibrate a quantizer on zero values")
    method = _method_for(n)
    plans = tuple(_plan(n, float(p), True, method) for p in percentiles)
    ks = tuple(sorted({k for k0, k1, _ in plans for k in (k0, k1)}))
    cands = jax.pure_callback(
        functools.partial(_host_log2_candidates, ks=ks, plans=plans, method=method),
        jax.ShapeDtypeStruct((len(plans),), jnp.float32),
        order_stats_rows(x2, ks),
    )
    best_sse, best = jnp.float32(jnp.inf), jnp.max(x2)
    for i in range(len(plans)):
        e = x2 - fake_quant_log2(x2, cands[i], bits)
        sse = jnp.sum(e * e)
        take = sse < best_sse  # NaN never wins
        best_sse = jnp.where(take, sse, best_sse)
        best = jnp.where(take, cands[i], best)
    return best


# ----------------------------------------------------------------------------------------------
# Weights.


@functools.partial(jax.jit, static_argnames=("bits", "symmetric", "include_zero"))
def quantize_weight_jit(
    kernel, bits: int, symmetric: bool = False, include_zero: bool = False
) -> QArray:
    """``quant._quantizers.quantize_weight`` on device: per output channel of a ``[I, O]`` kernel.

    Codes equal the host function's whenever the search picks the same candidate (module doc).
    """
    w = kernel.astype(jnp.float32)
    if w.ndim != 2:
        raise ValueError(f"quantize_weight needs a 2-D [in, out] kernel, got {w.shape}")
    off = offset_for_bits(bits)
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        amax = jnp.max(jnp.abs(w), axis=0, keepdims=True)
        # A barrier keeps XLA from turning the division by a constant into a multiplication by
        # its rounded reciprocal (not the same float32 result as numpy's division).
        levels = lax.optimization_barrier(jnp.full_like(amax, _F32(qmax)))
        scale = jnp.where(amax > 0, amax / levels, _F32(1))
        q = jnp.clip(jnp.round(w / scale), -qmax, qmax).astype(jnp.int8)
        return QArray(qvalue=q, scale=scale, zero_point=jnp.zeros_like(scale), bits=bits)
    delta, zp = search_rows(w.T, bits, include_zero=include_zero)
    delta, zp = delta[None, :], zp[None, :]
    q = jnp.clip(jnp.round(w / delta) + zp, 0, 2**bits - 1) - _F32(off)
    return QArray(qvalue=q.astype(jnp.int8), scale=delta, zero_point=zp - _F32(off), bits=bits)


# ----------------------------------------------------------------------------------------------
# Activations: the calibration-time per-channel quantizer and the in-forward placeholder.


@struct.dataclass
class ChannelQuant:
    """Per-input-channel asymmetric fake-quantizer of a GPS layer's input (PTQ4ARVG B-E only).

    The official ``UniformQuantizer(channel_wise=True)`` on ``[N, T, C]`` activations with
    ``sink_aware``: the first ``sink_tokens`` positions pass through unquantized
    (``VAR/quant/quant_modules.py:66-69``). Never deployed (``docs/ptq4arvg.md`` §7.3).
    """

    delta: jax.Array  # float32 [C]
    zero_point: jax.Array  # float32 [C], the official unsigned z
    bits: int = struct.field(pytree_node=False, default=8)
    sink_tokens: int = struct.field(pytree_node=False, default=0)

    @classmethod
    def fit(cls, x, bits: int, sink_tokens: int = 0) -> ChannelQuant:
        """Official percentile-MSE search per channel of ``x[:, sink_tokens:]`` ([N, T, C]), on
        the host (numpy) or, for a jax array, on its device; not traceable (see ``fit_traced``)."""
        xs = x[:, sink_tokens:, :] if sink_tokens else x
        delta, zp = fit_uniform_per_channel(xs, bits)
        return cls(
            delta=jnp.asarray(np.asarray(delta, np.float32).reshape(-1)),
            zero_point=jnp.asarray(np.asarray(zp, np.float32).reshape(-1)),
            bits=int(bits),
            sink_tokens=int(sink_tokens),
        )

    @classmethod
    def fit_traced(cls, x, bits: int, sink_tokens: int = 0) -> ChannelQuant:
        """``fit`` as a traceable function (``search_rows`` over ``[C, N·(T - sinks)]``)."""
        xs = x[:, sink_tokens:, :] if sink_tokens else x
        rows = xs.reshape(-1, xs.shape[-1]).T
        delta, zp = search_rows(rows, bits)
        return cls(delta=delta, zero_point=zp, bits=int(bits), sink_tokens=int(sink_tokens))

    def fake_quant(self, x, positions=None) -> jax.Array:
        """``(clamp(round(x/Δ_c) + z_c, 0, 2^b - 1) - z_c)·Δ_c``; sink positions unchanged."""
        x = x.astype(jnp.float32)
        xq = fake_quant_uniform(x, self.delta, self.zero_point, self.bits)
        if self.sink_tokens:
            pos = jnp.arange(x.shape[-2]) if positions is None else jnp.asarray(positions)
            xq = jnp.where((pos < self.sink_tokens)[:, None], x, xq)
        return xq


def _act_quant_traced(delta, zp, bits: int, table: np.ndarray | None) -> ActQuant:
    """``ActQuant.from_official`` for traced Δ/z."""
    off = _F32(offset_for_bits(bits))
    gop = np.zeros((1,), np.int32) if table is None else np.asarray(table, np.int32)
    return ActQuant(
        scale=delta.reshape(-1).astype(jnp.float32),
        zero_point=(zp.reshape(-1) - off).astype(jnp.float32),
        group_of_position=jnp.asarray(gop),
        bits=int(bits),
    )


@struct.dataclass
class FitInput:
    """An input quantizer still to be fitted: ``Dense`` fits it on its own input, in the forward.

    Put under a layer's ``input_quant`` key for calibration (see ``quant._calibrate.fit_stages``);
    the fitted quantizer is sown in the ``calibration`` collection and used at once, so the
    layers after it see a quantized upstream. For token groups the input must cover
    positions 0..T'-1 from the start of the sequence, T' <= T (a prefix of the table holding
    every group).

    Attributes:
      kind: "channel" (``ChannelQuant``, sinks bypassed), "tensor" or "groups" (``ActQuant``),
        "log2" (``LogSqrt2Quant``, post-softmax probabilities).
      bits: 2..8.
      sink_tokens: "channel": leading positions excluded from the statistics and not quantized.
      table: "groups": the position -> group table (a tuple, static).
      include_zero: RAR/MAR range clamp.
    """

    kind: str = struct.field(pytree_node=False)
    bits: int = struct.field(pytree_node=False)
    sink_tokens: int = struct.field(pytree_node=False, default=0)
    table: tuple[int, ...] | None = struct.field(pytree_node=False, default=None)
    include_zero: bool = struct.field(pytree_node=False, default=False)
    # Set by `restrict`: int32 indices into the flattened [N·T] rows of the input that the
    # statistics see (one array; for "groups" one [G_s, M_s] array per class of equal-count
    # groups), the group ids of each class, and the [N, T] shape they index.
    rows: tuple[Any, ...] | None = None
    row_groups: tuple[tuple[int, ...], ...] | None = struct.field(pytree_node=False, default=None)
    row_shape: tuple[int, int] | None = struct.field(pytree_node=False, default=None)

    @classmethod
    def groups(cls, bits: int, group_of_position, include_zero: bool = False) -> FitInput:
        t = np.asarray(group_of_position, np.int32).reshape(-1)
        if t.size == 1:
            return cls("tensor", int(bits), include_zero=include_zero)
        group_table(group_of_position=t)  # validates
        return cls("groups", int(bits), table=tuple(int(v) for v in t), include_zero=include_zero)

    def restrict(self, valid) -> FitInput:
        """This placeholder fitted on the valid rows of its input only.

        Under fixed shapes a model may run rows that the official code never computes (MAR's
        encoder keeps its masked tokens); their values must not reach any statistic. The indices
        are concrete (numpy), so every search keeps a static size.

        Args:
          valid: bool [N, T], True where row (sequence n, position t) is real.
        """
        v = np.asarray(valid, bool)
        if v.ndim != 2:
            raise ValueError(f"valid rows must be [N, T], got {v.shape}")
        n, t = v.shape
        if self.kind == "channel":
            v = v.copy()
            v[:, : self.sink_tokens] = False  # sinks bypass the per-channel quantizer
        flat = v.reshape(-1)
        if self.kind in ("channel", "tensor"):
            idx = np.nonzero(flat)[0].astype(np.int32)
            if idx.size == 0:
                raise ValueError("cannot calibrate a quantizer on zero valid rows")
            return self.replace(rows=(jnp.asarray(idx),), row_groups=None, row_shape=(n, t))
        if self.kind != "groups":
            raise ValueError(f"unknown FitInput kind {self.kind!r}")
        table = np.asarray(self.table, np.int32)
        if table.size != t:
            raise ValueError(f"valid rows span {t} positions, the group table {table.size}")
        group = np.broadcast_to(table, (n, t)).reshape(-1)
        per_group = [np.nonzero(flat & (group == g))[0] for g in range(int(table.max()) + 1)]
        counts = np.asarray([len(i) for i in per_group])
        if np.any(counts == 0):
            raise ValueError(f"token groups {np.nonzero(counts == 0)[0][:4]} have no valid row")
        classes = [tuple(int(g) for g in np.nonzero(counts == c)[0]) for c in np.unique(counts)]
        rows = tuple(
            jnp.asarray(np.stack([per_group[g] for g in ids]), jnp.int32) for ids in classes
        )
        return self.replace(rows=rows, row_groups=tuple(classes), row_shape=(n, t))

    def _fit_rows(self, x):
        """`fit_input` on the rows chosen by `restrict` (the same searches, fewer values)."""
        if x.ndim != 3 or tuple(x.shape[:2]) != self.row_shape:
            raise ValueError(f"restricted to rows of [{self.row_shape}, C], got {x.shape}")
        x2 = x.reshape(-1, x.shape[-1])  # [N·T, C]
        if self.kind == "channel":
            if self.include_zero:
                raise NotImplementedError("per-channel fits with include_zero")
            delta, zp = search_rows(x2[self.rows[0]].T, self.bits)
            return ChannelQuant(delta, zp, bits=self.bits, sink_tokens=self.sink_tokens)
        if self.kind == "tensor":
            d, z = search_rows(
                x2[self.rows[0]].reshape(1, -1), self.bits, include_zero=self.include_zero
            )
            return _act_quant_traced(d, z, self.bits, None)
        num = sum(len(ids) for ids in self.row_groups)
        deltas, zps = [None] * num, [None] * num
        for ids, idx in zip(self.row_groups, self.rows, strict=True):
            d, z = search_rows(
                x2[idx].reshape(len(ids), -1), self.bits, include_zero=self.include_zero
            )
            for j, g in enumerate(ids):
                deltas[g], zps[g] = d[j], z[j]
        table = np.asarray(self.table, np.int32)
        return _act_quant_traced(jnp.stack(deltas), jnp.stack(zps), self.bits, table)

    def fit_input(self, x, positions=None):
        """Fits on ``x`` [N, T, C] (traceable); returns the quantizer the layer then applies.

        ``positions``: concrete int [T] absolute positions of ``x``'s tokens, needed only by
        "groups" when ``x`` does not span the whole table (e.g. RAR's head, which calibrates
        positions 1..T without the cls token). A placeholder `restrict`ed to valid rows fits on
        those rows only (they span the whole table)."""
        if self.rows is not None:
            return self._fit_rows(x)
        if self.kind == "channel":
            if self.include_zero:
                raise NotImplementedError("per-channel fits with include_zero")
            return ChannelQuant.fit_traced(x, self.bits, self.sink_tokens)
        if self.kind == "tensor":
            d, z = search_rows(x.reshape(1, -1), self.bits, include_zero=self.include_zero)
            return _act_quant_traced(d, z, self.bits, None)
        if self.kind == "groups":
            return self._fit_groups(x, positions)
        if self.kind == "log2":
            return LogSqrt2Quant(delta=search_log2(x, self.bits), bits=int(self.bits))
        raise ValueError(f"unknown FitInput kind {self.kind!r}")

    def _fit_groups(self, x, positions=None) -> ActQuant:
        full = np.asarray(self.table, np.int32)
        # The calibration input may cover part of the table's positions, as long as every group
        # occurs in it: the given `positions` (RAR's head calibrates positions 1..T without the
        # cls token), else a prefix (PAR calibrates the first N positions; its teacher-forced
        # forward also runs the E bridge positions after them).
        if x.ndim != 3 or x.shape[1] > full.size:
            raise ValueError(
                f"token-group calibration needs [N, <= {full.size}, C] inputs, got {x.shape}"
            )
        if positions is not None and x.shape[1] != full.size:
            table = full[np.asarray(positions, np.int64).reshape(-1)]
            if table.size != x.shape[1]:
                raise ValueError(f"{table.size} positions for {x.shape[1]} calibration tokens")
        else:
            table = full[: x.shape[1]]
        num = int(full.max()) + 1
        sizes = np.bincount(table, minlength=num)
        if np.any(sizes == 0):
            raise ValueError(
                f"token groups {np.nonzero(sizes == 0)[0].tolist()} have no position among the "
                f"{x.shape[1]} calibration positions"
            )
        deltas, zps = [None] * num, [None] * num
        for s in np.unique(sizes):  # equal-size groups searched together, as the host search
            ids = np.nonzero(sizes == s)[0]
            idx = np.stack([np.nonzero(table == g)[0] for g in ids])  # [G_s, s]
            rows = jnp.transpose(x[:, idx, :], (1, 0, 2, 3)).reshape(len(ids), -1)
            d, z = search_rows(rows, self.bits, include_zero=self.include_zero)
            for j, g in enumerate(ids):
                deltas[g], zps[g] = d[j], z[j]
        return _act_quant_traced(jnp.stack(deltas), jnp.stack(zps), self.bits, full)


def matmul_fits(adapter, bits: int) -> dict[str, FitInput]:
    """The static quantizers of a model's activation x activation matmuls, still to be fitted.

    An adapter may declare them as ``matmul_quantizers(bits) -> {path: FitInput}``: each path
    names a params node whose ``input_quant`` the model reads (PAR's
    ``layers_i/attention/attn_quant/{q,k,p,v}``) and sows, once fitted, under that path in the
    ``calibration`` collection. Adapters without the method (float attention) give ``{}``.
    """
    fn = getattr(adapter, "matmul_quantizers", None)
    return {} if fn is None else dict(fn(bits))
