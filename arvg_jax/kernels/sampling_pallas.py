"""The top-k / top-p filter as one fused GPU kernel (Pallas, Triton backend).

Same algorithm as `arvg_jax.sampling`'s "bisect" method (read its docstring first): float32
logits map to integer keys with the same order, the k-th largest key is found by a binary search
over its 32 bits (each step one compare-and-count over V), and the top-p cut is found by the same
search over the (key, index) order of a stable ascending sort using masked softmax sums. What XLA
could not do with that algorithm (it wrote the per-threshold terms out: ~160 ms per VAR-d30
batch, against 22-25 ms for the two sorts of the "sort" method) is trivial in a kernel: one
program owns one row, holds it in registers and runs the ~76 search steps as register
reductions, so the logits are read once and the filtered row written once.

Keys here are signed int32 (negative floats have their low 31 bits flipped), the order of
`sampling._sortable_key` shifted by 2**31; the searches build the same unsigned bit patterns and
flip the sign bit before comparing. The float sums add in a different order than XLA's, so, as
between "bisect" and "sort", entries whose cumulative softmax mass is within float32 rounding of
1 - top_p may be decided differently; the top-k part is exact.

Runs with the Triton backend on CUDA GPUs (deprecated by jax 0.11 in favour of Mosaic GPU, but
present in every jax this project supports; `sampling.top_k_top_p_filter` falls back to the
"sort" method where it is absent), and in Pallas interpret mode only where asked
(``interpret=True``: how the CPU tests check it; `ExecOptions.interpret` in the sampler).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl

from arvg_jax.kernels import _triton

Array = jax.Array

_INT_MIN = np.int32(-(2**31))
_LOW31 = np.int32(0x7FFFFFFF)
NUM_WARPS = 4  # 4096 logits per row: 32 per thread

# jax 0.11 warns at every lowering that the Triton backend is deprecated; the warning says
# nothing actionable to a user of this filter (the fallback is automatic), so it is silenced
# for this module's kernel only.


def available() -> bool:
    """Whether the compiled kernel can run here: a CUDA GPU and a jax with the Triton backend."""
    try:
        _triton.triton()
    except ImportError:  # pragma: no cover - every supported jax has it
        return False
    if jax.default_backend() != "gpu":
        return False
    # CUDA only: the kernel is tested on NVIDIA GPUs (ROCm's Triton path is not).
    version = str(getattr(jax.devices()[0].client, "platform_version", "")).lower()
    return "rocm" not in version and "hip" not in version


def _search(pred, nbits: int) -> Array:
    """Largest u in [0, 2**nbits) with pred(u), as an int32 bit pattern, for pred true up to a
    point and false after; pred(0) is taken as true. One pred call per bit, MSB first."""

    def step(i, u):
        cand = u | lax.shift_left(np.int32(1), (nbits - 1 - i).astype(jnp.int32))
        return jnp.where(pred(cand), cand, u)

    return lax.fori_loop(0, nbits, step, np.int32(0))


def _filter_row(x_ref, o_ref, *, top_k: int, thr: np.float32 | None):
    """One row [V]: writes it with the removed entries at -inf."""
    raw = x_ref[...]
    x = raw.astype(jnp.float32)
    v = x.shape[-1]
    bits = lax.bitcast_convert_type(jnp.where(x == 0, jnp.float32(0), x), jnp.int32)
    key = jnp.where(bits < 0, bits ^ _LOW31, bits)  # signed, ordered as the floats

    kth = None
    if top_k:

        def enough(u):  # at least top_k entries with key ≥ the candidate
            return jnp.sum((key >= (u ^ _INT_MIN)).astype(jnp.int32)) >= top_k

        kth = _search(enough, 32) ^ _INT_MIN
        remove = key < kth
    if thr is not None:
        idx = lax.broadcasted_iota(jnp.int32, (v,), 0)
        last_key = jnp.max(key)
        last_idx = jnp.max(jnp.where(key == last_key, idx, -1))
        e = jnp.exp(x - jnp.max(x))
        if kth is not None:
            e = jnp.where(key >= kth, e, 0.0)
        p = e / jnp.sum(e)

        def below_cut(u):  # mass strictly below the candidate key ≤ thr, candidate ≤ row max
            h = u ^ _INT_MIN
            return (jnp.sum(jnp.where(key < h, p, 0.0)) <= thr) & (h <= last_key)

        h = _search(below_cut, 32) ^ _INT_MIN
        before_h = key < h
        tie = key == h

        def below_cut_in_tie(l):
            mass = jnp.sum(jnp.where(before_h | (tie & (idx < l)), p, 0.0))
            return (mass <= thr) & ((h < last_key) | (l <= last_idx))

        l_cut = _search(below_cut_in_tie, max(1, (v - 1).bit_length()))
        remove = before_h | (tie & (idx < l_cut))
    o_ref[...] = jnp.where(remove, jnp.asarray(-jnp.inf, raw.dtype), raw)


@functools.partial(jax.jit, static_argnames=("top_k", "top_p", "interpret"))
def top_k_top_p_filter(
    logits: Array, top_k: int = 0, top_p: float = 0.0, *, interpret: bool = False
) -> Array:
    """`sampling.top_k_top_p_filter` with method "bisect", as one kernel (see the module doc).

    Args:
        logits: [..., V] float32 or bfloat16 (keys are built from the float32 value).
        top_k, top_p: static, as in `sampling.top_k_top_p_filter`.
        interpret: Pallas interpret mode (the CPU tests ask for it); default off: the
            Triton kernel, which lowers for CUDA GPUs only.

    Returns:
        Logits of the same shape and dtype with removed entries at -inf.
    """
    v = logits.shape[-1]
    top_k = top_k if 0 < top_k < v else 0
    thr = np.float32(1 - top_p) if top_p > 0 else None
    if not top_k and thr is None:
        return logits
    lead = logits.shape[:-1]
    rows = logits.reshape(-1, v)
    vp = 1 << max(0, (v - 1).bit_length())  # Triton blocks are powers of two
    if vp != v:  # -inf pads sort first and carry no mass: the real entries' result is unchanged
        rows = jnp.pad(rows, ((0, 0), (0, vp - v)), constant_values=-jnp.inf)
    kwargs = {}
    if not interpret:
        pl_triton = _triton.triton()
        kwargs["compiler_params"] = pl_triton.CompilerParams(num_warps=NUM_WARPS, num_stages=1)
    out = pl.pallas_call(
        functools.partial(_filter_row, top_k=top_k, thr=thr),
        out_shape=jax.ShapeDtypeStruct(rows.shape, rows.dtype),
        grid=(rows.shape[0],),
        in_specs=[pl.BlockSpec((None, vp), lambda i: (i, 0))],
        out_specs=pl.BlockSpec((None, vp), lambda i: (i, 0)),
        interpret=interpret,
        name="top_k_top_p_filter",
        **kwargs,
    )(rows)
    return out[:, :v].reshape(*lead, v)
