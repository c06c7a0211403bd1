"""Public entry points of the quantization package (the `arvg quantize` CLI sits on top).

Typical use::

    from arvg_jax import families
    from quant import api
    from quant.recipes import Recipe

    fam = families.get("var")
    recipe = Recipe.parse("ptq4arvg", "w6a6")            # calib=128, seed=42, dgc="shrinkage"
    adapter = fam.quant_adapter(cfg)
    batch, calib_info = api.prepare_calibration(
        adapter, params, fam.calibration_generator(params, tok_params, cfg, tok_cfg),
        lambda c: fam.calibration_batch(tok_params, tok_cfg, c), recipe)
    qparams, summary = api.quantize(adapter, params, batch, recipe)
    # qparams: the same tree with QArray kernels and ActQuant input quantizers; run it with the
    # same model/sampler as the float params (int8 path). summary: JSON-able (see `summarize`).

Methods: ``rtn`` (per-output-channel weights, per-tensor static activations), ``smoothquant``
(α = 0.5 into AdaLN, then RTN), ``ptq4arvg`` (stages A-G of docs/ptq4arvg.md §2.2 with STWQ).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from quant import _tree
from quant._calibrate import NonFiniteError
from quant._qarray import ActQuant, QArray
from quant.recipes import Recipe

__all__ = ["NonFiniteError", "prepare_calibration", "quantize", "summarize"]


def _method(name: str):
    if name == "rtn":
        from quant.algorithms.rtn import rtn

        return rtn
    if name == "smoothquant":
        from quant.algorithms.smoothquant import smoothquant

        return smoothquant
    if name == "ptq4arvg":
        from quant.algorithms.ptq4arvg import ptq4arvg

        return ptq4arvg
    raise ValueError(f"unknown method {name!r}")


def quantize(
    family_adapter, params: dict[str, Any], batch, recipe: Recipe, progress: bool = True
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Quantizes a float param tree with ``recipe.method``.

    Args:
      family_adapter: the family's adapter (``families.get(name).quant_adapter(cfg)``).
      params: float params (not mutated).
      batch: calibration inputs (``prepare_calibration`` or ``tokens_to_batch``).
      recipe: method, bit widths, SmoothQuant α, weight symmetry.
      progress: progress bars per calibration stage.

    Returns:
      ``(qparams, summary)``; ``summary`` is `summarize`'s dict plus ``recipe``.
    """
    qparams = _method(recipe.method)(family_adapter, params, batch, recipe, progress=progress)
    summary = summarize(family_adapter, params, qparams)
    summary["recipe"] = recipe.to_dict()
    summary["calibration_sequences"] = int(np.shape(batch["labels"])[0])
    return qparams, summary


def prepare_calibration(
    family_adapter,
    params: dict[str, Any],
    generate_candidates: Callable[..., Any],
    candidates_to_batch: Callable[[Any], dict[str, Any]],
    recipe: Recipe,
    *,
    progress: bool = True,
    **generation,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Generates calibration candidates with the float model and selects them (DGC).

    ``recipe.calib`` images are generated (seed ``recipe.seed``; ``generation`` overrides the
    family generator's sampling settings: cfg, top_k, top_p, gen_batch), giving 2 x calib
    cond/uncond candidates; ``recipe.dgc`` picks ``recipe.calib`` of them: ``"shrinkage"``
    (Ledoit-Wolf coverage, default), ``"official"`` (the official ratio rule) or ``"none"`` (the
    cond sequences only).

    Args:
      family_adapter: the family's adapter (DGC features).
      params: float params.
      generate_candidates: ``(num_images, *, seed, progress, **generation) -> Candidates``, the
        family's generator bound to the float model (``Family.calibration_generator``).
      candidates_to_batch: ``Candidates -> batch`` (``Family.calibration_batch``).
      recipe: calibration size, seed and DGC mode.

    Returns:
      ``(batch, info)``: the calibration batch for `quantize` and a JSON-able description
      (mode, chosen rows, labels, cond fraction, DGC details, wall seconds per step).
    """
    from quant.algorithms import dgc

    seconds: dict[str, float] = {}
    t = time.perf_counter()
    cands = generate_candidates(
        recipe.calib,
        seed=recipe.seed,
        progress=progress,
        **generation,
    )
    seconds["generate"] = time.perf_counter() - t
    info: dict[str, Any] = {"dgc": recipe.dgc, "num_candidates": int(cands.labels.shape[0])}
    t = time.perf_counter()
    everything = candidates_to_batch(cands)  # all 2n rows
    jax.block_until_ready(everything)
    seconds["teacher_forcing_inputs"] = time.perf_counter() - t
    if recipe.dgc == "none":
        indices = np.nonzero(cands.is_cond)[0]
    else:
        t = time.perf_counter()
        feats = family_adapter.token0_features(params, everything)  # dgc.candidate_features
        if not np.isfinite(feats).all():
            raise NonFiniteError(
                "calibration: NaN/Inf in the DGC features (last block, token 0) of the generated "
                "candidates; the float model overflows on them"
            )
        seconds["dgc_features"] = time.perf_counter() - t
        t = time.perf_counter()
        sel = dgc.select(feats, cands, recipe.dgc, num=recipe.calib)
        seconds["dgc_select"] = time.perf_counter() - t
        indices = sel.indices
        info["dgc_info"] = sel.info
    info["seconds"] = seconds
    batch = {k: np.asarray(v)[indices] for k, v in everything.items()}
    info.update(
        indices=[int(i) for i in indices],
        labels=[int(v) for v in batch["labels"]],
        cond_fraction=float(np.mean(cands.is_cond[indices])) if len(indices) else 0.0,
    )
    return batch, info


def _nbytes(leaf) -> int:
    """Bytes of a leaf, without copying device arrays to the host."""
    if isinstance(leaf, QArray):
        return sum(_nbytes(a) for a in (leaf.qvalue, leaf.scale, leaf.zero_point))
    if isinstance(leaf, ActQuant):
        return sum(_nbytes(a) for a in (leaf.scale, leaf.zero_point, leaf.group_of_position))
    nbytes = getattr(leaf, "nbytes", None)
    return int(nbytes) if nbytes is not None else int(np.asarray(leaf).nbytes)


def summarize(
    family_adapter, float_params: dict[str, Any], qparams: dict[str, Any]
) -> dict[str, Any]:
    """What was quantized and what it costs (JSON-able).

    Returns:
      ``{"layers": {name: {kind, w_bits, a_bits, groups, shape}}, "by_kind": {kind: count},
      "groups_by_kind": {kind: sorted distinct group counts}, "float_layers": [Dense kernels left
      in float], "bytes": {"float": all params in float, "quantized": the quantized tree as stored
      (int8 containers, float32 scales), "packed_kernels": quantized kernels with codes packed at
      their bit width (what a packed format would take)}}``.
    """
    flat_q = _tree.flatten(qparams)
    layers: dict[str, Any] = {}
    by_kind: dict[str, int] = {}
    groups_by_kind: dict[str, set[int]] = {}
    packed = 0
    for name in family_adapter.quantized_layers():
        kernel = flat_q.get(f"{name}/kernel")
        aq = flat_q.get(f"{name}/input_quant")
        if not isinstance(kernel, QArray):
            continue
        kind = family_adapter.layer_kind(name)
        groups = aq.num_groups if isinstance(aq, ActQuant) else 0
        layers[name] = {
            "kind": kind,
            "w_bits": int(kernel.bits),
            "a_bits": int(aq.bits) if isinstance(aq, ActQuant) else None,
            "groups": int(groups),
            "shape": [int(s) for s in kernel.shape],
        }
        by_kind[kind] = by_kind.get(kind, 0) + 1
        groups_by_kind.setdefault(kind, set()).add(int(groups))
        packed += (int(np.prod(kernel.shape)) * kernel.bits + 7) // 8
        packed += _nbytes(kernel.scale) + _nbytes(kernel.zero_point)
    float_layers = sorted(
        k[: -len("/kernel")]
        for k, v in flat_q.items()
        if k.endswith("/kernel") and not isinstance(v, QArray)
    )
    return {
        "layers": layers,
        "by_kind": by_kind,
        "groups_by_kind": {k: sorted(v) for k, v in groups_by_kind.items()},
        "float_layers": float_layers,
        "bytes": {
            "float": sum(_nbytes(v) for v in _tree.flatten(float_params).values()),
            "quantized": sum(_nbytes(v) for v in flat_q.values()),
            "packed_kernels": packed,
            "float_kernels_quantized": sum(
                _nbytes(_tree.flatten(float_params)[f"{n}/kernel"]) for n in layers
            ),
        },
    }
