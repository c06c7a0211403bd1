"""Vectorised PTQ4ARVG quantizer calibration: percentile-MSE uniform search and log-√2.

Equal to the official ``UniformQuantizer.init_quantization_scale`` / ``LogSqrt2Quantizer``
(BienLuky/PTQ4ARVG f249fe9, ``VAR/quant/quantizer.py:16-136``, ``PAR/.../quantizer.py:140-206``)
without the Python loops over channels and rows.

Dims: ``R`` independent quantizers (rows, channels, token groups), ``n`` values reduced by one
quantizer, ``N`` batch, ``T`` tokens, ``C`` channels, ``G`` token groups.

Official search, per quantizer: for ``p in (0.999, 0.9999, 0.99999)``: ``hi = quantile(x, p)``,
``lo = quantile(x, 1 - p)`` (RAR/MAR: ``hi >= -1e-8``, ``lo <= 1e-8``), ``Δ = (hi - lo)/(2**b - 1)``,
``z = round(-lo/Δ)``, ``x̂ = (clamp(round(x/Δ) + z, 0, 2**b - 1) - z)·Δ``; keep the candidate with a
strictly smaller ``mean((x - x̂)**2)`` (ties keep the lower p). All arithmetic is float32 like the
official code, except where noted.

Quantiles. The official code calls ``torch.quantile`` and, when it raises (more than 2**24
values), ``np.percentile(x, 100*p)``. Both are reproduced bit for bit from the order statistics
they interpolate (selected with an O(n) ``np.partition``, or a sort on device):
  * ``torch`` (n <= 2**24): rank ``r = float32(p) * (n - 1)`` held exactly (not rounded to
    float32), weight ``w = float32(r - floor(r))``, then torch's lerp
    ``a + w*(b - a)`` (w < 0.5) or ``b - (b - a)*(1 - w)`` with one rounding (fused multiply-add).
    This rule was fixed empirically against ``quant/cases.npz``: it reproduces all 144 weight rows,
    288 channels and 36 token groups exactly, while a float32-rounded rank (the formula in
    ``Sorting.cpp``) or a plain float64 rank misses most of them.
  * ``numpy`` (n > 2**24): ``q = (100p)/100``, rank ``(n-1)*q`` in float64 and numpy's float32
    ``_lerp`` (checked against the installed ``np.percentile``; numpy < 2 may differ by an ulp).
MSE: float32 errors, squared in float32, summed in float64 (torch sums in float32; a flip needs
two candidates within ~1e-7 relative MSE). The device (jax) path sums in float32.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from quant._qarray import ActQuant, LogSqrt2Quant, QArray, offset_for_bits

__all__ = [
    "PERCENTILES",
    "TORCH_QUANTILE_MAX_ELEMENTS",
    "ema_update",
    "fake_quant_log2",
    "fake_quant_uniform",
    "fit_act_quant",
    "fit_log2",
    "fit_log_sqrt2_quant",
    "fit_uniform_per_channel",
    "fit_uniform_per_row",
    "fit_uniform_per_tensor",
    "fit_uniform_token_groups",
    "group_table",
    "official_quantile",
    "quantize_weight",
    "search_uniform_params",
]

PERCENTILES = (0.999, 0.9999, 0.99999)
# torch.quantile raises above this many values; the official code then uses np.percentile.
TORCH_QUANTILE_MAX_ELEMENTS = 2**24
_F32 = np.float32
_CHUNK = 1 << 22  # values per chunk of the host-side MSE (bounds temporaries)


# ----------------------------------------------------------------------------------------------
# Quantile plans: which order statistics, and how to interpolate them.


def _plan(n: int, p: float, upper: bool, method: str) -> tuple[int, int, float]:
    """(k_below, k_above, fractional rank) of the official quantile p (upper) or 1 - p."""
    if method == "torch":
        q = float(_F32(p if upper else 1.0 - p))  # at::scalar_tensor(q, float32)
        r = q * (n - 1)  # exact in float64: 24-bit q times an int < 2**24
        k = math.floor(r)
        return k, math.ceil(r), r - k
    if method == "numpy":
        q = (p * 100 if upper else (1 - p) * 100) / 100  # np.percentile(x, 100*p) -> q/100
        r = (n - 1) * q
        k = min(max(math.floor(r), 0), n - 1)
        return k, min(k + 1, n - 1), r - k
    raise ValueError(f"unknown quantile method {method!r}")


def _method_for(n: int) -> str:
    return "torch" if n <= TORCH_QUANTILE_MAX_ELEMENTS else "numpy"


def _lerp(a: np.ndarray, b: np.ndarray, t: float, method: str) -> np.ndarray:
    """Interpolates float32 order statistics exactly as torch (fused) / numpy (float32) do."""
    a = np.asarray(a, _F32)
    b = np.asarray(b, _F32)
    d = (b - a).astype(_F32)
    if method == "torch":
        w = _F32(t)
        # One rounding of a + w*d: w*d is exact in float64 (24+24 bits); the float64 sum then
        # rounds once more, which differs from a true FMA only at exact float32 midpoints.
        if abs(w) < 0.5:
            return (a.astype(np.float64) + np.float64(w) * d.astype(np.float64)).astype(_F32)
        return (b.astype(np.float64) - d.astype(np.float64) * np.float64(_F32(1) - w)).astype(_F32)
    if t < 0.5:  # numpy: add(a, diff * t) with t cast to float32 (weak Python float)
        return (a + (d * _F32(t)).astype(_F32)).astype(_F32)
    return (b - (d * _F32(1 - t)).astype(_F32)).astype(_F32)


def _order_stats(x2, axis: int, ks: Sequence[int]) -> dict[int, np.ndarray]:
    """The k-th smallest values along ``axis`` of a 2-D array, for each k (float32 numpy [R])."""
    ks = sorted({int(k) for k in ks})
    if isinstance(x2, jax.Array):
        s = jnp.sort(x2, axis=axis)
        picked = np.asarray(jnp.take(s, jnp.asarray(ks), axis=axis))
    else:
        part = np.partition(x2, ks, axis=axis)  # O(n); same values as a full sort
        picked = np.take(part, ks, axis=axis)
    picked = np.moveaxis(picked, axis, 0)
    return {k: np.asarray(picked[i], _F32) for i, k in enumerate(ks)}


def official_quantile(x, p: float, *, upper: bool = True, method: str | None = None):
    """The official quantile ``quantile(x, p)`` (upper) or ``quantile(x, 1 - p)`` of all of x.

    ``method`` defaults to what the official code ends up using for ``x.size`` values.
    """
    flat = x.reshape(1, -1)
    n = flat.shape[1]
    method = method or _method_for(n)
    k0, k1, t = _plan(n, p, upper, method)
    st = _order_stats(flat, 1, (k0, k1))
    return _lerp(st[k0], st[k1], t, method)[0]


# ----------------------------------------------------------------------------------------------
# Uniform asymmetric quantizer.


def fake_quant_uniform(x, delta, zero_point, bits: int):
    """Official ``(clamp(round(x/Δ) + z, 0, 2**b - 1) - z)·Δ`` in float32 (numpy or jax)."""
    xp = jnp if isinstance(x, jax.Array) else np
    x = xp.asarray(x, dtype=_F32)
    q = xp.clip(xp.round(x / delta) + zero_point, 0, 2**bits - 1)
    return ((q - zero_point) * delta).astype(_F32)


def _candidates(stats, n, bits, include_zero, percentiles, method):
    """Per-candidate (delta, zp) float32 [R] arrays, in percentile order."""
    out = []
    levels = _F32(2**bits - 1)
    for p in percentiles:
        k0, k1, t = _plan(n, p, True, method)
        hi = _lerp(stats[k0], stats[k1], t, method)
        k0, k1, t = _plan(n, p, False, method)
        lo = _lerp(stats[k0], stats[k1], t, method)
        if include_zero:  # RAR/MAR: .clamp(min=-1e-8) / .clamp(max=1e-8)
            hi = np.maximum(hi, _F32(-1e-8))
            lo = np.minimum(lo, _F32(1e-8))
        with np.errstate(divide="ignore", invalid="ignore"):
            delta = ((hi - lo) / levels).astype(_F32)
            zp = np.round(-lo / delta).astype(_F32)
        out.append((delta, zp, lo, hi))
    return out


def _sse_host(x2: np.ndarray, axis: int, delta, zp, bits: int) -> np.ndarray:
    """Sum over ``axis`` of float32 (x - x̂)**2, accumulated in float64, in bounded chunks."""
    n, r = x2.shape[axis], x2.shape[1 - axis]
    bshape = (r, 1) if axis == 1 else (1, r)
    d = np.asarray(delta, _F32).reshape(bshape)
    z = np.asarray(zp, _F32).reshape(bshape)
    step = max(1, _CHUNK // max(r, 1))
    sse = np.zeros((r,), np.float64)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for s in range(0, n, step):
            xc = x2[:, s : s + step] if axis == 1 else x2[s : s + step]
            e = xc - fake_quant_uniform(xc, d, z, bits)
            sse += np.sum(e * e, axis=axis, dtype=np.float64)
    return sse


def _sse_device(x2, axis: int, delta, zp, bits: int) -> np.ndarray:
    bshape = (-1, 1) if axis == 1 else (1, -1)
    d = jnp.asarray(np.asarray(delta, _F32).reshape(bshape))
    z = jnp.asarray(np.asarray(zp, _F32).reshape(bshape))
    return np.asarray(_sse_device_jit(x2, d, z, bits, axis), np.float64)


@functools.partial(jax.jit, static_argnums=(3, 4))
def _sse_device_jit(x2, d, z, bits, axis):
    e = x2.astype(jnp.float32) - fake_quant_uniform(x2, d, z, bits)
    return jnp.sum(e * e, axis=axis)


def _search_2d(x2, axis: int, bits: int, include_zero: bool, percentiles):
    """Percentile-MSE search of independent quantizers along ``axis`` of 2-D x2 -> [R] each."""
    if x2.ndim != 2 or axis not in (0, 1):
        raise ValueError(f"internal: need a 2-D array and axis 0/1, got {x2.shape}, {axis}")
    n = x2.shape[axis]
    if n == 0:
        raise ValueError("cannot calibrate a quantizer on zero values")
    method = _method_for(n)
    ks = []
    for p in percentiles:
        for upper in (True, False):
            k0, k1, _ = _plan(n, p, upper, method)
            ks += [k0, k1]
    stats = _order_stats(x2, axis, ks)
    cands = _candidates(stats, n, bits, include_zero, percentiles, method)
    on_device = isinstance(x2, jax.Array)
    best = None
    for delta, zp, lo, hi in cands:
        sse = (_sse_device if on_device else _sse_host)(x2, axis, delta, zp, bits)
        sse = np.where(np.isnan(sse), np.inf, sse)
        if best is None:
            best = [sse, delta, zp, lo, hi]
            continue
        take = sse < best[0]  # strictly smaller: ties keep the lower percentile
        best = [np.where(take, a, b) for a, b in zip((sse, delta, zp, lo, hi), best)]
    _, delta, zp, lo, hi = best
    bad = ~(np.isfinite(delta) & (delta > 0))
    if np.any(bad):
        # A constant quantizer (hi == lo) makes the official code divide by zero and crash.
        # Keep the value representable instead: Δ = max(|lo|,|hi|)/(2**b - 1), or 1 for zeros.
        span = np.maximum(np.abs(lo), np.abs(hi)) / _F32(2**bits - 1)
        span = np.where(np.isfinite(span) & (span > 0), span, _F32(1)).astype(_F32)
        delta = np.where(bad, span, delta).astype(_F32)
        zp = np.where(bad, np.round(-lo / delta), zp).astype(_F32)
    return delta.astype(_F32), zp.astype(_F32)


def _as_array(x):
    if isinstance(x, jax.Array):
        return x.astype(jnp.float32)
    return np.asarray(x, _F32)


def search_uniform_params(
    x,
    bits: int,
    *,
    reduce_axes: Sequence[int] | None = None,
    include_zero: bool = False,
    percentiles: Sequence[float] = PERCENTILES,
):
    """Official percentile-MSE (Δ, z) with a quantizer per index of the non-reduced axes.

    Args:
      x: float array (numpy, or jax: order statistics and MSE then run on its device).
      bits: 2..8.
      reduce_axes: axes reduced by each quantizer; None = all (per tensor).
      include_zero: RAR/MAR range clamp (``hi >= -1e-8``, ``lo <= 1e-8``); False = VAR/PAR.
      percentiles: the official (0.999, 0.9999, 0.99999).

    Returns:
      ``(delta, zero_point)`` float32 numpy arrays with ``keepdims`` shape (scalars () per
      tensor). ``zero_point`` is the official unsigned z (integer-valued).
    """
    offset_for_bits(bits)
    x = _as_array(x)
    nd = x.ndim
    red = tuple(range(nd)) if reduce_axes is None else tuple(sorted(a % nd for a in reduce_axes))
    keep = tuple(a for a in range(nd) if a not in red)
    out_shape = tuple(1 if a in red else x.shape[a] for a in range(nd))
    r = int(np.prod([x.shape[a] for a in keep], dtype=np.int64))
    if not keep:
        x2, axis = x.reshape(1, -1), 1
    elif keep == tuple(range(nd - len(keep), nd)):  # kept axes trailing: [n, R], no copy
        x2, axis = x.reshape(-1, r), 0
    elif keep == tuple(range(len(keep))):  # kept axes leading: [R, n], no copy
        x2, axis = x.reshape(r, -1), 1
    else:
        xp = jnp if isinstance(x, jax.Array) else np
        x2, axis = xp.transpose(x, keep + red).reshape(r, -1), 1
    delta, zp = _search_2d(x2, axis, bits, include_zero, tuple(percentiles))
    if not keep:
        return delta.reshape(()), zp.reshape(())
    return delta.reshape(out_shape), zp.reshape(out_shape)


def fit_uniform_per_tensor(x, bits: int, *, include_zero: bool = False):
    """One (Δ, z) for the whole tensor (official ``channel_wise=False``): scalars."""
    return search_uniform_params(x, bits, include_zero=include_zero)


def fit_uniform_per_row(w, bits: int, *, include_zero: bool = False):
    """Per output row of a torch-layout ``[O, I]`` weight (reduce over I): ``[O, 1]`` each."""
    if np.ndim(w) != 2:
        raise ValueError(f"per-row quantization needs a 2-D [out, in] weight, got {np.shape(w)}")
    return search_uniform_params(w, bits, reduce_axes=(1,), include_zero=include_zero)


def fit_uniform_per_channel(x, bits: int, *, include_zero: bool = False):
    """Per last-axis channel of ``[..., C]`` activations (reduce over the rest): ``[1,..,1,C]``."""
    nd = np.ndim(x)
    return search_uniform_params(
        x, bits, reduce_axes=tuple(range(nd - 1)), include_zero=include_zero
    )


def group_table(
    group_sizes: Sequence[int] | None = None, group_of_position=None, num_positions=None
) -> np.ndarray:
    """int32 [T] position -> group table, from contiguous group sizes or a ready table.

    Exactly one of ``group_sizes`` (e.g. VAR's (1, 4, 9, ..., 256)) and ``group_of_position``
    (int [T], ids 0..G-1, each used) must be given; ``num_positions`` (T) is checked if given.
    """
    if (group_sizes is None) == (group_of_position is None):
        raise ValueError("give exactly one of group_sizes and group_of_position")
    if group_sizes is not None:
        g = np.asarray(group_sizes)
        if g.ndim != 1 or g.size == 0 or np.any(g <= 0) or g.dtype.kind not in "iu":
            raise ValueError(f"group sizes must be positive ints, got {np.asarray(group_sizes)}")
        table = np.repeat(np.arange(g.size, dtype=np.int32), g.astype(np.int64))
    else:
        table = np.asarray(group_of_position)
        if table.ndim != 1 or table.size == 0 or table.dtype.kind not in "iu":
            raise ValueError(f"group_of_position must be a 1-D int table, got {table.shape}")
        table = table.astype(np.int32)
        if table.min() < 0 or np.any(np.bincount(table) == 0):
            raise ValueError("group_of_position ids must be 0..G-1, each used at least once")
    if num_positions is not None and table.size != num_positions:
        raise ValueError(f"token groups cover {table.size} positions, x has T={num_positions}")
    return table


def fit_uniform_token_groups(
    x,
    bits: int,
    group_sizes: Sequence[int] | None = None,
    *,
    group_of_position=None,
    include_zero: bool = False,
):
    """STWQ: one (Δ, z) per static token group of ``[N, T, C]`` activations.

    Args:
      x: [N, T, C] (numpy or jax).
      group_sizes: contiguous group sizes over T (VAR qkv/fc1: (1, 4, 9, ..., 256); VAR
        proj/fc2: (1, T - 1)); or instead
      group_of_position: int table [T] position -> group id.
      include_zero: RAR/MAR range clamp.

    Returns:
      ``(delta, zero_point)`` float32 [G]; each group reduces over N x its tokens x C. Groups of
      equal size are searched together (one vectorised call per distinct size).
    """
    x = _as_array(x)
    if x.ndim != 3:
        raise ValueError(f"token groups need [N, T, C] activations, got {x.shape}")
    table = group_table(group_sizes, group_of_position, num_positions=x.shape[1])
    num_groups = int(table.max()) + 1
    sizes = np.bincount(table, minlength=num_groups)
    delta = np.zeros((num_groups,), _F32)
    zp = np.zeros((num_groups,), _F32)
    xp = jnp if isinstance(x, jax.Array) else np
    for s in np.unique(sizes):
        ids = np.nonzero(sizes == s)[0]
        idx = np.stack([np.nonzero(table == g)[0] for g in ids])  # [G_s, s]
        rows = xp.transpose(x[:, idx, :], (1, 0, 2, 3)).reshape(len(ids), -1)  # [G_s, N*s*C]
        d, z = _search_2d(rows, 1, bits, include_zero, PERCENTILES)
        delta[ids], zp[ids] = d, z
    return delta, zp


def ema_update(prev, new, momentum: float = 0.1):
    """Official calibration EMA ``Δ ← 0.1·new + 0.9·old`` (old = new on the first batch).

    Applied to Δ, z, SmoothQuant/GPS scales and shifts alike. Even on one batch it is not the
    identity in float32 (``0.1f·7 + 0.9f·7 == 6.9999995f``), which the reference reproduces;
    zero points that went through it are no longer integer-valued.
    """
    new = np.asarray(new, _F32)
    old = new if prev is None else np.asarray(prev, _F32)
    return (_F32(momentum) * new + _F32(1.0 - momentum) * old).astype(_F32)


# ----------------------------------------------------------------------------------------------
# Log-√2 quantizer (PAR post-softmax).


def fake_quant_log2(x, delta, bits: int):
    """Official ``LogSqrt2Quantizer.quantize`` in float32 (numpy or jax)."""
    xp = jnp if isinstance(x, jax.Array) else np
    x = xp.asarray(x, dtype=_F32)
    with np.errstate(divide="ignore", invalid="ignore"):
        x_int = xp.round(-1 * xp.log2(x / delta) * 2)
        mask = x_int >= 2**bits
        xq = xp.clip(x_int, 0, 2**bits - 1)
        odd = (xq % 2) * _F32(math.sqrt(2) - 1) + _F32(1)
        if xp is np:
            pow2 = np.exp2(-1 * np.ceil(xq / 2))  # exact for integer exponents
        else:  # XLA's exp2 is not exact on integers; ldexp is (but flushes denormals to 0)
            k = jnp.where(jnp.isnan(xq), 0, jnp.ceil(xq / 2)).astype(jnp.int32)
            pow2 = jnp.where(jnp.isnan(xq), jnp.nan, jnp.ldexp(_F32(1), -k))
        out = (pow2 * odd * delta).astype(_F32)
    return xp.where(mask, _F32(0), out).astype(_F32)


def fit_log2(x, bits: int, *, percentiles: Sequence[float] = PERCENTILES):
    """Official log-√2 Δ: the quantile (p in ``percentiles``) of x with the smallest MSE."""
    offset_for_bits(bits)
    xh = np.asarray(x, _F32).reshape(1, -1)
    n = xh.shape[1]
    method = _method_for(n)
    plans = [_plan(n, p, True, method) for p in percentiles]
    stats = _order_stats(xh, 1, [k for k0, k1, _ in plans for k in (k0, k1)])
    best, best_delta = np.inf, None
    for k0, k1, t in plans:
        delta = _lerp(stats[k0], stats[k1], t, method)[0]
        sse = 0.0
        for s in range(0, n, _CHUNK):
            xc = xh[0, s : s + _CHUNK]
            e = xc - fake_quant_log2(xc, delta, bits)
            sse += float(np.sum(e * e, dtype=np.float64))
        if sse < best:  # NaN never wins
            best, best_delta = sse, delta
    if best_delta is None:  # the official code falls back to x.max()
        best_delta = _F32(np.max(xh))
    return np.asarray(best_delta, _F32).reshape(())


# ----------------------------------------------------------------------------------------------
# Builders of the deployable leaves.


def quantize_weight(
    kernel,
    bits: int,
    *,
    symmetric: bool = False,
    include_zero: bool = False,
    method: str = "mse",
) -> QArray:
    """Quantizes a Flax Dense kernel ``[I, O]`` per output channel into a ``QArray``.

    Asymmetric (default): the official per-output-row percentile-MSE search of the torch
    ``[O, I]`` weight (here: per column, reducing over I). Symmetric: ``scale = absmax /
    (2**(b-1) - 1)``, codes in ``[-(2**(b-1) - 1), 2**(b-1) - 1]``, stored zero point 0 (an
    all-zero column gets scale 1).

    ``method="minmax"``: asymmetric over each column's [min(w, 0), max(w, 0)], no search: a
    jit-able device computation for speed measurements on random weights (the bench), where the
    search's host work at VAR-d30 sizes would dominate and the grid does not change the speed.

    Returns:
      ``QArray`` with ``qvalue`` int8 [I, O], ``scale``/``zero_point`` float32 [1, O].
    """
    offset_for_bits(bits)
    if np.ndim(kernel) != 2:
        raise ValueError(f"quantize_weight needs a 2-D [in, out] kernel, got {np.shape(kernel)}")
    if method == "minmax":
        return _quantize_weight_minmax(kernel, bits)
    if method != "mse":
        raise ValueError(f"quantize_weight method must be 'mse' or 'minmax', got {method!r}")
    w = _as_array(kernel)
    if symmetric:
        wn = np.asarray(w)
        qmax = 2 ** (bits - 1) - 1
        amax = np.max(np.abs(wn), axis=0, keepdims=True)
        scale = np.where(amax > 0, amax / _F32(qmax), _F32(1)).astype(_F32)
        q = np.clip(np.round(wn / scale), -qmax, qmax).astype(np.int8)
        return QArray(
            qvalue=jnp.asarray(q),
            scale=jnp.asarray(scale),
            zero_point=jnp.zeros_like(jnp.asarray(scale)),
            bits=int(bits),
        )
    delta, zp = search_uniform_params(w, bits, reduce_axes=(0,), include_zero=include_zero)
    return QArray.quantize(np.asarray(w), delta, zp, bits)


def _quantize_weight_minmax(kernel, bits: int) -> QArray:
    w = jnp.asarray(kernel, jnp.float32)
    lo = jnp.minimum(jnp.min(w, axis=0, keepdims=True), 0.0)
    hi = jnp.maximum(jnp.max(w, axis=0, keepdims=True), 0.0)
    delta = (hi - lo) / (2**bits - 1)
    delta = jnp.where(delta > 0, delta, 1.0).astype(jnp.float32)
    return QArray.quantize(w, delta, jnp.round(-lo / delta), bits)


def fit_act_quant(
    x,
    bits: int,
    groups: Sequence[int] | None = None,
    *,
    group_of_position=None,
    include_zero: bool = False,
) -> ActQuant:
    """Calibrates a static ``ActQuant`` for a layer input.

    Args:
      x: calibration activations ``[N, T, C]`` (any shape when per-tensor).
      bits: 2..8.
      groups: None (per tensor) or contiguous token-group sizes over T; or instead
      group_of_position: int table [T] position -> group id.
      include_zero: RAR/MAR range clamp.
    """
    if groups is None and group_of_position is None:
        delta, zp = fit_uniform_per_tensor(x, bits, include_zero=include_zero)
        return ActQuant.from_official(delta, zp, bits)
    delta, zp = fit_uniform_token_groups(
        x, bits, groups, group_of_position=group_of_position, include_zero=include_zero
    )
    table = group_table(groups, group_of_position, num_positions=np.shape(x)[1])
    return ActQuant.from_official(delta, zp, bits, group_of_position=table)


def fit_log_sqrt2_quant(x, bits: int) -> LogSqrt2Quant:
    """Calibrates PAR's post-softmax log-√2 quantizer."""
    return LogSqrt2Quant(delta=jnp.asarray(fit_log2(x, bits)), bits=int(bits))
