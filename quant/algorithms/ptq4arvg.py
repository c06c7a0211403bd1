"""PTQ4ARVG (docs/ptq4arvg.md §2.2): stages A-G as pure functions ``(adapter, params, batch, recipe)
-> params``; the math of each stage lives in ``*_core.py``, this file is the plumbing.

Official sequence (BienLuky/PTQ4ARVG f249fe9, ``VAR/sample_quant.py:106-131``) and where it is here:

  A ``smooth_stage``          SmoothQuant α=0.5 on the GPS layers' inputs (absmax, sinks excluded),
                              folded into AdaLN at once (the official code keeps x/s_SQ at run time
                              until C; in float the two are the same function).
  B ``initial_calibration``   quantized-upstream calibration of every covered layer: GPS layers get a
                              per-input-channel ``ChannelQuant`` (sinks bypassed), proj/fc2 their
                              2-group STWQ quantizer, the rest per tensor; weights per output row.
  C ``zero_center_shift``     b_j = Δ_j((2^(b-1) - 1) - z_j) from B's per-channel (Δ, z)
                              (``shift_core``), folded as x -> x - b (AdaLN shift rows - b, linear
                              bias += b·W); the layer already sees x/s_SQ, so the input becomes
                              x/s_SQ - b, the official composition. The per-channel quantizers reset.
  D ``recalibrate_gps_inputs`` the GPS layers' per-channel quantizers re-fitted on the shifted inputs
                              (quantized upstream; the other quantizers keep their B values, as
                              ``reset_act_quantize_params`` only re-initialises the reset ones).
  E ``gps_stage``             GPS scales (``gps_core``) from the float (quant OFF) post-shift inputs
                              with sinks removed, D's per-channel quantizer and the per-row weight
                              quantizer of the current weight; folded as x -> x / s_GPS. The final
                              transform is x -> ((x/s_SQ) - b)/s_GPS.
  F ``stwq_stage``            the intermediate quantizers are dropped; the deployed ones follow
                              ``adapter.stwq_granularity`` (VAR: qkv/fc1 one group per scale, proj/fc2
                              sink vs rest, ada_lin and head per tensor). A ``final_shift`` rule
                              (RAR's lm_head, which E skips: ``gps=False``) first gets a second
                              shift from its D quantizer (``RAR/quant/gps.py:148-178``).
  G ``final_calibration``     every weight and activation quantizer re-fitted, layer by layer on the
                              output of the already fake-quantized layers before it.

Intermediate state. Between B and F each covered layer carries its calibration-time input quantizer
under the params key ``calib_quant`` next to its *float* kernel, so the folds of C and E stay exact.
``Dense`` ignores that key, so such a tree runs as the float model (quantization off, as stage E
needs). The quantized upstream of B and D is an explicit probe tree (``_probe``): each covered
kernel becomes an ``OracleKernel`` (per-output-row quantized weight run by the fake-quant oracle)
with its ``calib_quant`` as ``input_quant``, i.e. the official fake-quant forward with
``set_quant_state(True, True)``; nothing intercepts the model. The layers being calibrated (B, D,
G) hold a ``quant._fit.FitInput`` placeholder instead: ``Dense`` fits it on its input inside the
jitted block forward and applies it at once (``quant._calibrate.fit_stages``), so one forward per
block and stage gives the layer-by-layer, quantized-upstream calibration.

Deviations from the official code:
  * Calibration statistics are computed on the whole calibration set in one pass (as the official
    RAR and MAR do), not as the VAR/PAR EMA ``0.1·new + 0.9·old`` over batches of 64 (which, with
    128 sequences, weights the first batch 0.9).
  * The attention matmuls (q·kᵀ, P·v) are quantized only where the adapter declares them
    (``matmul_quantizers``, PAR): fitted in B, kept through D, off in E, refitted in G, as the
    official leaf quantizers; elsewhere (VAR) the model has no hook and they stay float.
  * Weight quantizers are re-fitted from the current weight whenever it is used; the official code
    re-fits exactly the ones whose weight changed, so the values are the same.
  * The percentile search's MSE is summed in float32 on device (torch: float32 too; our host
    search: float64), so a near-tie between two candidates can resolve differently than on the
    host (``quant._fit``).

Dims: N calibration sequences, L tokens, C input channels of a layer, O its output channels.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import numpy as np

from quant import _tree
from quant._calibrate import collect, fit_stages, statistics_input
from quant._fit import ChannelQuant, FitInput, matmul_fits, quantize_weight_jit
from quant._oracle import OracleKernel
from quant._progress import Progress
from quant._transforms import fold_into
from quant.algorithms.gps_core import calculate_scales_hessian
from quant.algorithms.rtn import quantize_layers
from quant.algorithms.shift_core import calculate_sym_shift
from quant.algorithms.smoothquant import smooth
from quant.recipes import Recipe

__all__ = [
    "CALIB_KEY",
    "STAGES",
    "ChannelQuant",
    "final_calibration",
    "gps_stage",
    "initial_calibration",
    "ptq4arvg",
    "recalibrate_gps_inputs",
    "smooth_stage",
    "stwq_stage",
    "zero_center_shift",
]

CALIB_KEY = "calib_quant"  # params key of a layer's calibration-time input quantizer (B-F)
Params = dict[str, Any]


# ----------------------------------------------------------------------------------------------
# The intermediate quantizer.


# ChannelQuant (the per-channel quantizer of stages B-E) lives in quant._fit.


# ----------------------------------------------------------------------------------------------
# Tree helpers.


def _layer(params: Params, name: str) -> dict[str, Any]:
    return _tree.tree_get(params, name)


def _with_calib(params: Params, quantizers: dict[str, Any]) -> Params:
    """params with ``<layer>/calib_quant`` set (value) or removed (None) for each given layer."""
    flat = _tree.flatten(params)
    for name, q in quantizers.items():
        key = f"{name}/{CALIB_KEY}"
        if q is None:
            flat.pop(key, None)
        else:
            flat[key] = q
    return _tree.unflatten(flat)


def _calib_quantizers(params: Params) -> dict[str, Any]:
    suffix = "/" + CALIB_KEY
    return {k[: -len(suffix)]: v for k, v in _tree.flatten(params).items() if k.endswith(suffix)}


def _quantized_kernel(kernel, recipe: Recipe):
    return quantize_weight_jit(
        jnp.asarray(kernel, jnp.float32), recipe.w_bits, symmetric=recipe.weight_symmetric
    )


def _probe(adapter, params: Params, recipe: Recipe, fit=None) -> Params:
    """The calibration upstream of B/D: every covered layer runs the fake-quant oracle with its
    per-output-row quantized weight and, where it has one, its ``calib_quant`` as input quantizer.

    ``fit``: {layer: FitInput} placeholders installed as ``input_quant`` (fitted in the forward
    by ``fit_stages``)."""
    flat = _tree.flatten(params)
    for name in adapter.quantized_layers():
        flat[f"{name}/kernel"] = OracleKernel(_quantized_kernel(flat[f"{name}/kernel"], recipe))
        q = flat.pop(f"{name}/{CALIB_KEY}", None)
        if fit and name in fit:
            q = fit[name]
        if q is not None:
            flat[f"{name}/input_quant"] = q
    for name in matmul_fits(adapter, recipe.a_bits):  # attention matmuls: no kernel
        q = flat.pop(f"{name}/{CALIB_KEY}", None)
        if fit and name in fit:
            q = fit[name]
        if q is not None:
            flat[f"{name}/input_quant"] = q
    return _tree.unflatten(flat)


def _initial_fit(adapter, name: str, recipe: Recipe) -> FitInput:
    """Stage B/D input quantizer: per channel (GPS layers), else the layer's STWQ granularity."""
    if name in set(adapter.gps_layers()):
        sink = adapter.sink_tokens if adapter.sink_excluded(name) else 0
        return FitInput("channel", recipe.a_bits, sink_tokens=sink)
    return FitInput.groups(recipe.a_bits, adapter.group_table(adapter.stwq_granularity(name)))


def _fit_calib_quant(adapter, params, batch, recipe, layers, what: str, progress: bool, extra=None):
    """B/D: fits `_initial_fit` quantizers of ``layers`` on the `_probe` upstream, stored as
    their ``calib_quant`` leaves (the other layers keep theirs)."""
    fit = {name: _initial_fit(adapter, name, recipe) for name in layers}
    fit.update(extra or {})
    probe = _probe(adapter, params, recipe, fit)
    found = fit_stages(adapter, probe, batch, desc=f"ptq4arvg {what}", progress=progress)
    return _with_calib(params, found)


def _stats_input(adapter, name: str, x, batch=None):
    """A layer input with the sink tokens removed where the official statistics skip them, and
    only its valid rows (`quant._calibrate.statistics_input`)."""
    return statistics_input(adapter, name, x, batch)


def _gps_scaled(adapter) -> tuple[str, ...]:
    """The GPS layers that get GPS scales in E (a rule with ``gps=False``, RAR's lm_head, gets
    SmoothQuant + shift only)."""
    cov = getattr(adapter, "coverage", None)
    return adapter.gps_layers() if cov is None else cov.gps_scaled()


def _final_shifted(adapter) -> tuple[str, ...]:
    """The layers whose rule asks for a second zero-centering shift in F (``final_shift``)."""
    cov = getattr(adapter, "coverage", None)
    return () if cov is None else cov.final_shifted()


def _shift_from_calib(adapter, params: Params, name: str, recipe: Recipe) -> Params:
    """Folds the zero-centering shift of ``name``'s per-channel ``calib_quant`` (C, and F for
    ``final_shift`` layers): x -> x - b, AdaLN shift rows - b, bias += b·W."""
    q = _layer(params, name).get(CALIB_KEY)
    if not isinstance(q, ChannelQuant):
        raise TypeError(f"{name}: a zero-centering shift needs a per-channel quantizer (B or D)")
    _, shift, _, _ = calculate_sym_shift(q.delta, q.zero_point, recipe.a_bits)
    if not np.all(np.isfinite(shift)):
        raise FloatingPointError(f"{name}: non-finite zero-centering shift")
    return _fold(adapter, params, name, np.ones_like(shift), shift)


def _fold(adapter, params: Params, name: str, s, p=None) -> Params:
    return fold_into(params, name, adapter.fold_target(name), s, p)


# ----------------------------------------------------------------------------------------------
# Stages.


def smooth_stage(adapter, params: Params, batch, recipe: Recipe, *, progress: bool = True):
    """A: SmoothQuant (α = recipe.sq_alpha, official 0.5) on the GPS layers, folded into AdaLN."""
    return smooth(adapter, params, batch, recipe.sq_alpha, progress=progress)


def initial_calibration(adapter, params: Params, batch, recipe: Recipe, *, progress: bool = True):
    """B: fits every covered layer's calibration-time input quantizer on a quantized upstream.

    Layers are visited in forward order; each is fitted on the output of the already fake-quantized
    layers before it (official ``set_weight_quantize_params`` + ``set_act_quantize_params`` with
    quantization on). Returns the float params with a ``calib_quant`` leaf on every covered layer.
    """
    layers = adapter.quantized_layers()
    matmuls = matmul_fits(adapter, recipe.a_bits)  # attention matmuls (PAR), kept through D
    return _fit_calib_quant(
        adapter, params, batch, recipe, layers, "B calibrate", progress, extra=matmuls
    )


def zero_center_shift(adapter, params: Params, batch, recipe: Recipe, *, progress: bool = True):
    """C: per-channel zero-centering shift of each GPS layer's input, folded into AdaLN + bias.

    ``b = shift_core.calculate_sym_shift(Δ, z, a_bits)`` from the B quantizer; the input becomes
    x - b (x already includes 1/s_SQ) and the bias gains b·W. The per-channel quantizers reset.
    """
    del batch  # the shift needs only the B quantizers
    gps = adapter.gps_layers()
    bar = Progress(len(gps), "ptq4arvg C shift", enabled=progress)
    for name in gps:
        params = _shift_from_calib(adapter, params, name, recipe)
        bar.update(postfix=name)
    bar.close()
    return _with_calib(params, dict.fromkeys(gps))


def recalibrate_gps_inputs(
    adapter, params: Params, batch, recipe: Recipe, *, progress: bool = True
):
    """D: re-fits the GPS layers' per-channel quantizers on their shifted inputs.

    The upstream is quantized: all covered kernels per output row, the other layers' B quantizers
    (official ``reset_weight_quantize_params`` + ``reset_act_quantize_params``).
    """
    layers = adapter.gps_layers()
    return _fit_calib_quant(adapter, params, batch, recipe, layers, "D recalibrate", progress)


def gps_stage(adapter, params: Params, batch, recipe: Recipe, *, progress: bool = True):
    """E: GPS scales of every GPS layer, folded into AdaLN (x -> x / s_GPS, W rows *= s_GPS).

    Statistics come from the float model (official: quantization off), on the post-shift inputs
    with the sinks removed; Δx uses D's per-channel quantizer; Q(W) is the per-output-row quantizer
    of the current weight at ``w_bits``. Layers whose rule has ``gps=False`` are skipped and
    keep their D quantizer (for F's ``final_shift``).
    """
    gps = _gps_scaled(adapter)

    def reduce(name, x, layer):
        q = layer.get(CALIB_KEY)
        if not isinstance(q, ChannelQuant):
            raise TypeError(f"{name}: stage E needs the per-channel quantizer of stage D")
        kernel = jnp.asarray(layer["kernel"], jnp.float32)
        kernel_hat = _quantized_kernel(kernel, recipe).dequantize()
        xs = _stats_input(adapter, name, x, batch)  # on the device of the calibration forward
        s = calculate_scales_hessian(
            xs, kernel, q.delta, q.zero_point, kernel_hat, recipe.a_bits, alpha=recipe.sq_alpha
        )
        return np.asarray(s, np.float32)

    scales = collect(
        adapter,
        params,
        batch,
        reduce,
        layers=set(gps).__contains__,
        desc="ptq4arvg E gps",
        progress=progress,
    )
    for name in gps:
        s = scales[name]
        if not (np.all(np.isfinite(s)) and np.all(s > 0)):
            bad = np.nonzero(~(np.isfinite(s) & (s > 0)))[0][:4]
            raise FloatingPointError(f"{name}: GPS scales not finite and positive at {bad}")
        params = _fold(adapter, params, name, s)
    return _with_calib(params, dict.fromkeys(gps))


def stwq_stage(adapter, params: Params, batch, recipe: Recipe, *, progress: bool = True):
    """F: drops every intermediate quantizer; stage G fits the deployed STWQ ones
    (``adapter.stwq_granularity``). The GPS scales were absorbed in E.

    A ``final_shift`` layer (RAR's lm_head) first gets a second zero-centering shift from its
    stage-D per-channel quantizer (``RAR/quant/gps.py:148-178``: ``init_sym_shift`` on the
    recalibrated Δ, z; its ratio Δ/Δ is 1)."""
    del batch, progress
    for name in _final_shifted(adapter):
        params = _shift_from_calib(adapter, params, name, recipe)
    return _with_calib(params, dict.fromkeys(_calib_quantizers(params)))


def final_calibration(adapter, params: Params, batch, recipe: Recipe, *, progress: bool = True):
    """G: quantizes every covered layer (QArray kernel + ActQuant input), layer by layer on the
    output of the already-quantized ones, with each layer's STWQ token-group table."""
    if _calib_quantizers(params):
        raise ValueError("final_calibration: run stwq_stage first (calib_quant leaves remain)")

    def stwq(name):
        return FitInput.groups(recipe.a_bits, adapter.group_table(adapter.stwq_granularity(name)))

    return quantize_layers(
        adapter, params, batch, recipe, stwq, desc="ptq4arvg G calibrate", progress=progress
    )


Stage = Callable[..., Params]
STAGES: tuple[tuple[str, Stage], ...] = (
    ("A", smooth_stage),
    ("B", initial_calibration),
    ("C", zero_center_shift),
    ("D", recalibrate_gps_inputs),
    ("E", gps_stage),
    ("F", stwq_stage),
    ("G", final_calibration),
)


def ptq4arvg(adapter, params: Params, batch, recipe: Recipe, *, progress: bool = True) -> Params:
    """Runs stages A-G; float params in, quantized params (QArray + ActQuant leaves) out.

    Args:
      adapter: the family adapter (e.g. `arvg_jax.families.var.quant_adapter.VARAdapter`).
      params: float params (never mutated).
      batch: calibration inputs as ``adapter.start`` takes them (VAR: labels [N], x [N, L-1, E]).
      recipe: bit widths, SmoothQuant α, weight symmetry.
      progress: one progress bar per stage.
    """
    for _, stage in STAGES:
        params = stage(adapter, params, batch, recipe, progress=progress)
    return params
