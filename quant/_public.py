"""The public quantization functions exported by `quant` (thin, documented entry points).

Whole-model transforms take a float param tree, the family's adapter
(``arvg_jax.load(...).quant_adapter()``) and a calibration batch
(``model.calibration_batch(labels, tokens)``) and return a new tree with ``QArray`` kernels and
``ActQuant`` input quantizers, which the same model code runs as int8 matmuls. The math pieces
(`gps`, `stwq`, `dgc`) are the pure functions of ``quant/algorithms/*_core.py`` and
``quant/_quantizers.py`` over arrays; nothing here adds math of its own.
"""

from __future__ import annotations

from typing import Any

from quant.recipes import Recipe

__all__ = ["dgc", "gps", "ptq4arvg", "quantize", "rtn", "smoothquant", "stwq"]


def _recipe(recipe) -> Recipe:
    """A `Recipe`, its dict, or "method:bits" (e.g. "rtn:w8a8")."""
    if isinstance(recipe, Recipe):
        return recipe
    if isinstance(recipe, dict):
        return Recipe.from_dict(recipe)
    if isinstance(recipe, str) and ":" in recipe:
        method, bits = recipe.split(":", 1)
        return Recipe.parse(method, bits)
    raise TypeError(f"recipe must be a Recipe, a dict or 'method:bits', got {recipe!r}")


def quantize(params, recipe, adapter, calibration_batch, *, progress: bool = False):
    """Quantizes a float param tree with ``recipe.method`` (rtn | smoothquant | ptq4arvg).

    Args:
      params: float params (not mutated).
      recipe: a `Recipe`, its dict, or "method:bits" such as "ptq4arvg:w6a6".
      adapter: the family's quantization adapter (``model.quant_adapter()``).
      calibration_batch: calibration inputs (``model.calibration_batch(labels, tokens)``).
      progress: progress bars per calibration stage.

    Returns:
      ``(qparams, summary)``: the quantized tree and a JSON-able summary (layers, bytes).

    Example::

        import arvg_jax, quant
        model = arvg_jax.load("var-test", random_weights=True)
        tokens = model.generate(0, [1, 2], greedy=True)["tokens"]
        batch = model.calibration_batch([1, 2], tokens)
        qparams, summary = quant.quantize(model.params, "rtn:w8a8", model.quant_adapter(), batch)
        qmodel = model.with_params(qparams, recipe=summary["recipe"])
    """
    from quant import api

    return api.quantize(adapter, params, calibration_batch, _recipe(recipe), progress=progress)


def rtn(
    params,
    adapter,
    calibration_batch,
    *,
    bits: str = "w8a8",
    weight_symmetric: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """RTN: per-output-channel weights, per-tensor static activations (`quant.algorithms.rtn`).

    Example::

        qparams = quant.rtn(model.params, model.quant_adapter(), batch, bits="w8a8")
    """
    from quant.algorithms.rtn import rtn as _rtn

    recipe = Recipe.parse("rtn", bits, weight_symmetric=weight_symmetric)
    return _rtn(adapter, params, calibration_batch, recipe, progress=progress)


def smoothquant(
    params,
    adapter,
    calibration_batch,
    *,
    bits: str = "w8a8",
    alpha: float = 0.5,
    weight_symmetric: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """SmoothQuant (α folded into the preceding AdaLN rows), then RTN
    (`quant.algorithms.smoothquant`).

    Example::

        qparams = quant.smoothquant(model.params, model.quant_adapter(), batch, bits="w8a8")
    """
    from quant.algorithms.smoothquant import smoothquant as _sq

    recipe = Recipe.parse("smoothquant", bits, sq_alpha=alpha, weight_symmetric=weight_symmetric)
    return _sq(adapter, params, calibration_batch, recipe, progress=progress)


def ptq4arvg(
    params,
    adapter,
    calibration_batch,
    *,
    bits: str = "w6a6",
    alpha: float = 0.5,
    weight_symmetric: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """PTQ4ARVG: SmoothQuant, zero-centering shift, GPS, STWQ, final calibration
    (`quant.algorithms.ptq4arvg`, stages A-G of docs/ptq4arvg.md).

    Example::

        qparams = quant.ptq4arvg(model.params, model.quant_adapter(), batch, bits="w6a6")
    """
    from quant.algorithms.ptq4arvg import ptq4arvg as _ptq

    recipe = Recipe.parse("ptq4arvg", bits, sq_alpha=alpha, weight_symmetric=weight_symmetric)
    return _ptq(adapter, params, calibration_batch, recipe, progress=progress)


def gps(x, kernel, act_delta, act_zero_point, kernel_hat, bits: int, alpha: float = 0.5):
    """GPS (Gain-Projected Scaling) per-input-channel scales of one linear
    (`quant.algorithms.gps_core.calculate_scales_hessian`, the official ``calculate_scales_hessian``).

    Args:
      x: the linear's input ``[..., C]``; kernel: Flax kernel ``[C, O]``; act_delta,
      act_zero_point: per-channel activation quantizer of x (C values each); kernel_hat: the
      fake-quantized kernel ``[C, O]``; bits: activation bits.

    Returns:
      float32 ``[C]`` scales: divide x by them, multiply the kernel's input rows by them.

    Example::

        import numpy as np, quant
        x = np.random.default_rng(0).normal(size=(64, 8)).astype(np.float32)
        w = np.random.default_rng(1).normal(size=(8, 4)).astype(np.float32)
        delta, zp = quant.fit_uniform_per_channel(x, 8)
        w_q = quant.quantize_weight(w, 8)
        s = quant.gps(x, w, delta, zp, np.asarray(w_q.dequantize()), bits=8)  # [8]
    """
    from quant.algorithms.gps_core import calculate_scales_hessian

    return calculate_scales_hessian(
        x, kernel, act_delta, act_zero_point, kernel_hat, bits=bits, alpha=alpha
    )


def stwq(x, bits: int, group_sizes=None, *, group_of_position=None, include_zero: bool = False):
    """STWQ (static token-wise quantization): one (Δ, z) per static token group of ``[N, T, C]``
    activations (`quant._quantizers.fit_uniform_token_groups`).

    Returns:
      ``(delta, zero_point)``, float32 ``[G]``.

    Example::

        import numpy as np, quant
        x = np.random.default_rng(0).normal(size=(2, 14, 8)).astype(np.float32)
        delta, zp = quant.stwq(x, 8, group_sizes=(1, 4, 9))  # VAR-style: one group per scale
    """
    from quant._quantizers import fit_uniform_token_groups

    return fit_uniform_token_groups(
        x, bits, group_sizes, group_of_position=group_of_position, include_zero=include_zero
    )


def dgc(features, candidates, mode: str = "shrinkage", num: int | None = None):
    """DGC: choose calibration sequences among CFG candidates (`quant.algorithms.dgc.select`):
    "shrinkage" (Ledoit-Wolf Mahalanobis coverage, default) or "official" (the ratio rule).

    Args:
      features: ``[M, d]`` one feature row per candidate (``adapter.token0_features``).
      candidates: `quant.Candidates` (cond rows, then uncond rows).

    Returns:
      A `Selection`: ``.indices`` (rows to keep), ``.cond_fraction``, ``.info``.

    Example::

        import numpy as np, quant
        cands = quant.Candidates.from_generations(
            [1, 2, 3], np.zeros((3, 14), np.int32), null_label=10, gen_batch=3)
        feats = np.random.default_rng(0).normal(size=(6, 5))
        sel = quant.dgc(feats, cands, num=3)  # sel.indices: 3 of the 6 rows
    """
    from quant.algorithms.dgc import select

    return select(features, candidates, mode, num)
