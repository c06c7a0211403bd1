"""Token sampling helpers: top-k / top-p filtering, CFG mixing, categorical or greedy draws.

Dims: B batch, l tokens, V vocabulary (the last axis of every logits array), R the leading dims.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Array = jax.Array

FILTER_METHODS = ("auto", "bisect", "pallas", "sort")
DEFAULT_BITS_PER_PASS = 4  # 15 thresholds tested per pass over V: 8 passes for 32 bits
DEFAULT_CHUNK = 512  # `_row_sums` adds at most this many terms in a row before combining partials
_SIGN = np.uint32(0x80000000)


def parse_filter_method(spec: str) -> tuple[str, int, int]:
    """``"auto"``, ``"sort"``, ``"pallas"`` or ``"bisect[:<bits per pass>[:<chunk>]]"`` ->
    (method, bits, chunk).

    bits (1..6, default 4): thresholds decided per pass over V; chunk (default 512; 0 = none): the
    sums over V add chunks of this many terms first (`_row_sums`). A string, not a tuple, so that
    it can live in a hashable, JSON-able config (`ExecOptions.sampling_filter`).
    """
    name, *fields = str(spec).split(":")
    if name not in FILTER_METHODS or len(fields) > (2 if name == "bisect" else 0):
        raise ValueError(
            f"filter method must be 'auto', 'sort', 'pallas' or 'bisect[:bits[:chunk]]', got {spec!r}"
        )
    if not all(f.isdigit() for f in fields):
        raise ValueError(f"filter method {spec!r}: bits and chunk must be integers")
    bits = int(fields[0]) if fields else DEFAULT_BITS_PER_PASS
    chunk = int(fields[1]) if len(fields) > 1 else DEFAULT_CHUNK
    if not 1 <= bits <= 6:  # 2**bits - 1 sums per pass: beyond 63 compile time and work explode
        raise ValueError(f"bisect bits per pass must be in 1..6, got {bits}")
    return name, bits, chunk


def top_k_top_p_filter(
    logits: Array,
    top_k: int = 0,
    top_p: float = 0.0,
    *,
    method: str = "auto",
    interpret: bool = False,
) -> Array:
    """FoundationVision/VAR models/helpers.py `sample_with_top_k_top_p_`, the filtering part.

    * top_k > 0: logits below the k-th largest value become -inf (ties with it are all kept).
      top_k ≥ V keeps everything (torch's topk would raise there).
    * top_p > 0: sort ascending; entries whose cumulative softmax is ≤ 1 - top_p become -inf;
      the largest entry is always kept. Runs after the top-k mask, as the official code does.
    * top_k = 0 / top_p = 0 (or below) disable the respective filter.

    Tied logits straddling the top-p cut are resolved as by a stable ascending sort (lower index
    first, so removed first); torch's unstable sort may order ties differently.

    Three implementations (`method`), same kept sets up to float rounding at the top-p cut:

    * ``"sort"``: the official algorithm literally (`lax.top_k`, then a full stable
      argsort and a cumsum). On a GPU both are full sorts of V per row: 22-25 ms of a VAR-d30
      batch-64 call.
    * ``"bisect"`` (``"bisect:<bits>[:<chunk>]"``, see `parse_filter_method`): no sort. float32
      logits map to uint32 keys with the same order (`_sortable_key`), so the k-th largest key is
      found exactly by a radix search over its 32 bits, each pass one compare-and-count over V
      testing 2**bits - 1 thresholds at once (`_radix_search`): 8 passes at the default 4 bits. The
      top-p cut is the same search over the (key, index) order of the stable sort: an entry is
      removed iff the softmax mass of the entries up to it in that order, itself included, is
      ≤ 1 - top_p, so the first kept entry is found from masked softmax sums (`_top_p_remove`: 8
      passes over the key, 3 over the index for V = 4096). Entries on either side of the cut are
      kept or removed as by the sort, ties included: tied logits straddling the cut are split by
      index exactly as the stable sort orders them (lower index removed first), and the last entry
      of the order is never removed. About 21 passes over the logits instead of two sorts.
      Only float rounding differs: the masked sums and the reference cumsum add the same
      probabilities in different orders (each within ~3.5 ulps of the exact mass), so an entry whose
      cumulative mass is within a few float32 ulps of 1 - top_p may be decided differently. Measured
      on VAR-shaped CFG-mixed logits (tests/sampling_bisect_test.py): 2 entries in 1.4e5 rows of
      [2, 256, 4096], 0 and 2 ulps from the threshold. The top-k part alone is exact (integer
      counts).
      Not faster as compiled by XLA:GPU so far: on an H100 (jax 0.11.2) VAR-d30 bf16 batch 64 took
      843 ms with "bisect" against 726 ms with "sort" (two `arvg bench` runs,
      benchmarks/h100-2026-11-27/): the passes cost ~160 ms, not the ~5 ms that 21 reads of the
      logits would, which suggests the per-threshold terms were written out rather than fused into
      the reductions. scripts/sampler_variants.py times the bits / chunk settings.
    * ``"pallas"``: the "bisect" algorithm as one GPU kernel, a row per program held in registers
      and searched one bit per step (`arvg_jax.kernels.sampling_pallas`, Pallas Triton backend); the
      logits are read once. It lowers for CUDA GPUs only; with ``interpret=True`` (a testing
      switch) it runs in Pallas interpret mode anywhere (slow).
    * ``"auto"`` (default): "pallas" where `sampling_pallas.available()` (NVIDIA GPUs), else
      "sort".

    NaN logits give unspecified results with every method.

    Args:
        logits: [..., V] float.
        top_k: static int.
        top_p: static float.
        method: static, see above (`parse_filter_method`).
        interpret: static; "pallas" runs in Pallas interpret mode (tests off GPUs).

    Returns:
        Logits of the same shape and dtype with removed entries at -inf.
    """
    name, bits, chunk = parse_filter_method(method)
    if jnp.dtype(logits.dtype).itemsize > 4:  # float64: keys need ≤ 32 bits
        name = "sort"
    if name in ("auto", "pallas"):
        from arvg_jax.kernels import sampling_pallas  # imports Pallas: only when asked for

        if name == "pallas" or sampling_pallas.available():
            return sampling_pallas.top_k_top_p_filter(logits, top_k, top_p, interpret=interpret)
        name = "sort"
    if name == "sort":
        return _filter_sort(logits, top_k, top_p)
    return _filter_bisect(logits, top_k, top_p, bits, chunk)


def _filter_sort(logits: Array, top_k: int, top_p: float) -> Array:
    """The official algorithm with sorts (see `top_k_top_p_filter`)."""
    v = logits.shape[-1]
    if top_k > 0 and top_k < v:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]  # the k-th largest value, [..., 1]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p > 0:
        order = jnp.argsort(logits, axis=-1, stable=True)  # ascending
        sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
        cum = jnp.cumsum(jax.nn.softmax(sorted_logits.astype(jnp.float32), axis=-1), axis=-1)
        # torch compares a float32 tensor with a Python float in float32.
        remove = cum <= np.float32(1 - top_p)
        remove = remove.at[..., -1].set(False)  # the largest logit always survives
        # sorted_idx_to_remove.scatter(-1, sorted_idx, sorted_idx_to_remove)
        remove = jnp.put_along_axis(jnp.zeros_like(remove), order, remove, axis=-1, inplace=False)
        logits = jnp.where(remove, -jnp.inf, logits)
    return logits


def _filter_bisect(logits: Array, top_k: int, top_p: float, bits: int, chunk: int) -> Array:
    """The sort-free filter (see `top_k_top_p_filter`): O(passes · V) per row, no sort."""
    v = logits.shape[-1]
    x = logits.astype(jnp.float32)
    key = _sortable_key(x)  # uint32 [..., V]
    remove, kth = None, None
    if 0 < top_k < v:
        kth = _kth_largest_key(key, top_k, bits, chunk)  # [..., 1]
        remove = key < kth  # = logits < the k-th largest value
    if top_p > 0:
        # Entries removed by top-k have zero mass and sort first: top-p removes them as well.
        remove = _top_p_remove(x, key, kth, np.float32(1 - top_p), bits, chunk)
    if remove is None:
        return logits
    return jnp.where(remove, -jnp.inf, logits)


def _sortable_key(x: Array) -> Array:
    """uint32 keys ordered as the float32 values x (−0.0 and +0.0 equal, as jnp.sort has them).

    Negative floats: all bits flipped (a larger magnitude becomes a smaller key); non-negative
    floats: the sign bit set (above every negative).
    """
    bits = lax.bitcast_convert_type(jnp.where(x == 0, jnp.float32(0), x), jnp.uint32)
    return jnp.where(bits >= _SIGN, ~bits, bits | _SIGN)


def _key_to_float(key: Array) -> Array:
    """Inverse of `_sortable_key`."""
    return lax.bitcast_convert_type(jnp.where(key >= _SIGN, key ^ _SIGN, ~key), jnp.float32)


def _row_sums(terms: list[Array], chunk: int) -> list[Array]:
    """Sums of each [..., V] term over V, in one (variadic) reduction so V is read once per pass.

    Two levels when V is a multiple of `chunk` (sums of chunks, then of the chunk sums): XLA:CPU
    runs a variadic reduction as one sequential loop, whose float32 error on a ~2000-term softmax
    mass reached 50 ulps; in chunks of 512 it stays within a few ulps (XLA:GPU reduces a row as a
    tree anyway, and may emit 512-term rows differently: chunk 0 turns the split off).
    """
    v = terms[0].shape[-1]
    if 0 < chunk < v and v % chunk == 0:
        shape = (*terms[0].shape[:-1], v // chunk, chunk)
        terms = _variadic_sum([t.reshape(shape) for t in terms])
    return _variadic_sum(terms)


def _variadic_sum(terms: list[Array]) -> list[Array]:
    """Sums over the last axis of every term, as one reduction."""
    if len(terms) == 1:
        return [jnp.sum(terms[0], axis=-1)]
    init = tuple(jnp.zeros((), t.dtype) for t in terms)
    sums = lax.reduce(
        tuple(terms),
        init,
        lambda a, b: tuple(x + y for x, y in zip(a, b, strict=True)),
        (terms[0].ndim - 1,),
    )
    return list(sums)


def _radix_search(pred, nbits: int, bits_per_pass: int, shape, dtype) -> Array:
    """Largest u in [0, 2**nbits) with pred(u), for pred true up to a point and false after.

    Decides `bits_per_pass` bits per call of pred, most significant first: pred gets the
    2**bits - 1 candidates [..., n] that extend the bits decided so far and returns bool [..., n];
    the number of true candidates is the next digit. pred(0) is taken as true.
    """
    ans = jnp.zeros(shape, dtype)
    shift = nbits
    while shift > 0:
        r = min(bits_per_pass, shift)
        shift -= r
        steps = np.arange(1, 2**r, dtype=np.uint64) << np.uint64(shift)
        digit = jnp.sum(pred(ans[..., None] | steps.astype(np.dtype(dtype))), axis=-1)
        ans = ans | (digit.astype(dtype) << shift)
    return ans


def _kth_largest_key(key: Array, k: int, bits: int, chunk: int) -> Array:
    """The key of the k-th largest entry per row, [..., 1]: the largest t with #{key ≥ t} ≥ k."""

    def enough(cands):
        counts = _row_sums(
            [(key >= cands[..., j : j + 1]).astype(jnp.int32) for j in range(cands.shape[-1])],
            chunk,
        )
        return jnp.stack(counts, axis=-1) >= k

    return _radix_search(enough, 32, bits, key.shape[:-1], jnp.uint32)[..., None]


def _last_in_order(key: Array, idx: Array) -> tuple[Array, Array]:
    """(key, index) of the last entry of the stable ascending order: the largest key, and the
    highest index holding it. [...] each; one pass."""

    def later(a, b):
        (ka, ia), (kb, ib) = a, b
        take_b = (kb > ka) | ((kb == ka) & (ib > ia))
        return jnp.where(take_b, kb, ka), jnp.where(take_b, ib, ia)

    return lax.reduce((key, idx), (np.uint32(0), np.int32(-1)), later, (key.ndim - 1,))


def _top_p_remove(
    x: Array, key: Array, kth: Array | None, thr: np.float32, bits: int, chunk: int
) -> Array:
    """bool [..., V]: the entries the official top-p rule removes (see `top_k_top_p_filter`).

    In the stable ascending order (by key, then index) the removed entries are a prefix: those
    whose cumulative softmax is ≤ thr, never the last one. The first kept entry (h, l) is found
    in two radix searches:
      h = the largest key ≤ the row max with mass(key < h) ≤ thr (a present key: were it not, h + 1
          would qualify as well);
      l = the largest l < 2**ceil(log2 V) with mass(key < h) + mass(key == h, index < l) ≤ thr,
          and l ≤ the last index when h is the row max (so the last entry stays);
    removed = key < h, or key == h and index < l. Entries of key h are equal logits, so the index
    part only matters for ties. A mass over the same set of entries is the same float sum in
    every pass (same reduction shape), which keeps both searches monotone.
    """
    v = x.shape[-1]
    idx = lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1)
    last_key, last_idx = _last_in_order(key, idx)  # [...]
    e = jnp.exp(x - _key_to_float(last_key)[..., None])  # softmax as jax.nn.softmax computes it
    if kth is not None:
        e = jnp.where(key >= kth, e, 0.0)  # the top-k mask (-inf logits: zero mass)
    p = e / jnp.sum(e, axis=-1, keepdims=True)

    def below_cut(cands):  # h candidates [..., n]
        n = cands.shape[-1]
        sums = _row_sums([jnp.where(key < cands[..., j : j + 1], p, 0.0) for j in range(n)], chunk)
        return (jnp.stack(sums, axis=-1) <= thr) & (cands <= last_key[..., None])

    h = _radix_search(below_cut, 32, bits, key.shape[:-1], jnp.uint32)[..., None]
    before_h = key < h

    def below_cut_in_tie(cands):  # l candidates [..., n]
        n = cands.shape[-1]
        terms = [
            jnp.where(before_h | ((key == h) & (idx < cands[..., j : j + 1])), p, 0.0)
            for j in range(n)
        ]
        ok = jnp.stack(_row_sums(terms, chunk), axis=-1) <= thr
        return ok & ((h < last_key[..., None]) | (cands <= last_idx[..., None]))

    index_bits = max(1, (v - 1).bit_length())
    l_cut = _radix_search(below_cut_in_tie, index_bits, bits, key.shape[:-1], jnp.int32)
    return before_h | ((key == h) & (idx < l_cut[..., None]))


def cfg_mix(
    cond: Array, uncond: Array, t: float | Array, *, one_plus_t: float | Array | None = None
) -> Array:
    """Classifier-free guidance of models/var.py: (1 + t)·cond − t·uncond.

    `one_plus_t` may pass 1 + t rounded from higher precision (the official code forms it in
    Python double); by default it is computed in the dtype of `t`.
    """
    if one_plus_t is None:
        one_plus_t = 1 + t
    return one_plus_t * cond - t * uncond


def sample_tokens(
    key: Array,
    logits: Array,
    *,
    top_k: int = 0,
    top_p: float = 0.0,
    greedy: bool = False,
    method: str = "auto",
    interpret: bool = False,
) -> Array:
    """Draws one token per position after top-k / top-p filtering.

    Args:
        key: PRNG key (unused when greedy).
        logits: [..., V] float.
        top_k, top_p, method, interpret: see `top_k_top_p_filter` (static).
        greedy: argmax of the filtered logits (first index on ties) instead of a draw.

    Returns:
        int32 [...] token ids.
    """
    logits = top_k_top_p_filter(logits, top_k, top_p, method=method, interpret=interpret)
    if greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return jax.random.categorical(key, logits.astype(jnp.float32), axis=-1).astype(jnp.int32)


def sample_tokens_per_row(
    keys: Array,
    logits: Array,
    *,
    top_k: int = 0,
    top_p: float = 0.0,
    greedy: bool = False,
    method: str = "auto",
    interpret: bool = False,
) -> Array:
    """`sample_tokens` with one PRNG key per row of the leading axis.

    Args:
        keys: [B] raw PRNG keys (uint32 [B, 2]); row b draws with keys[b] only, so a row's
            tokens do not depend on the other rows of the batch.
        logits: [B, ..., V] float.
        top_k, top_p, greedy, method, interpret: as `sample_tokens`.

    Returns:
        int32 [B, ...] token ids.
    """
    logits = top_k_top_p_filter(logits, top_k, top_p, method=method, interpret=interpret)
    if greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    draw = jax.vmap(lambda k, lg: jax.random.categorical(k, lg.astype(jnp.float32), axis=-1))
    return draw(keys, logits).astype(jnp.int32)


def per_image_keys(keys: Array, batch: int) -> Array:
    """[B] raw keys: `keys` as given, or one key's images 0..B-1 (`fold_in(key, i)`)."""
    keys = jnp.asarray(keys)
    if jnp.issubdtype(keys.dtype, jax.dtypes.prng_key):
        keys = jax.random.key_data(keys)
    if keys.ndim == 1:
        idx = jnp.arange(batch, dtype=jnp.uint32)
        return jax.vmap(lambda i: jax.random.fold_in(keys, i))(idx)
    if keys.shape[0] != batch:
        raise ValueError(f"{keys.shape[0]} PRNG keys for {batch} labels")
    return keys


def top2_margin(logits: Array) -> Array:
    """Best minus second-best logit along the last axis: [...] float32 (near-tie detector)."""
    top2 = jax.lax.top_k(logits.astype(jnp.float32), 2)[0]
    return top2[..., 0] - top2[..., 1]
