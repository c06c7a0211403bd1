"""Block-by-block calibration: run a model stage by stage and hand each layer's input to a visitor.

A *stage* is a piece of the model that can run alone on the output ("carry") of the previous one:
VAR's stages are its transformer blocks and the head. Memory holds one stage's activations at a
time, for the whole calibration set: the official percentile search needs full tensors
(`docs/ptq4arvg.md` §1.1), and VAR-d30 has 680 tokens x 1920 channels x 30 blocks.

With `sequential=True` the layers of a stage are visited in forward order and the stage is re-run
after each visit, so a layer is calibrated on the output of the already-quantized layers before it
(the official code calibrates with quantization switched on for every layer at once, so each
quantizer sees a quantized upstream).

`fit_stages` computes the same sequential calibration in one forward per stage: the layers hold
`quant.FitInput` placeholders, `Dense` fits each on its input inside the jitted forward and uses
it at once (`quant._fit`). The algorithms use it; `run_calibration` remains for arbitrary
visitors (and as the test oracle of `fit_stages`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from quant import _tree
from quant._progress import Progress

Params = dict[str, Any]

# Calibration programs run a handful of times each, so their compile time matters more than the
# last percent of GEMM speed: XLA's GEMM autotuning (tens of seconds per new program at VAR-d30
# shapes, BENCHMARKS.md) is switched off for them; cuBLAS's heuristics pick the kernels.
CALIBRATION_COMPILER_OPTIONS = {"xla_gpu_autotune_level": 0}
# visit(layer_name, layer_input, layer_params) -> new layer params, or None to keep them.
Visitor = Callable[[str, jax.Array, Mapping[str, Any]], Mapping[str, Any] | None]


@dataclasses.dataclass(frozen=True)
class Stage:
    """A separately runnable piece of a model.

    Attributes:
      name: e.g. "blocks_3" or "head".
      layers: full '/'-paths of the Dense layers inside it, in forward order.
    """

    name: str
    layers: tuple[str, ...]


class ModelAdapter(Protocol):
    """What calibration needs from a model family (see quant/families/)."""

    family: str

    def stages(self) -> tuple[Stage, ...]: ...

    def start(self, params: Params, batch: Mapping[str, Any]) -> Any:
        """The carry entering the first stage (embeddings)."""

    def run_stage(
        self, params: Params, stage: Stage, carry: Any, collect: str | None = "intermediates"
    ) -> tuple[Any, dict[str, Any]]:
        """Runs one stage; returns (carry out, {layer path: value sown in `collect`}):
        "intermediates" gives layer inputs, "calibration" the quantizers fitted in the forward
        by `quant.FitInput` placeholders (see `fit_stages`)."""

    # Optional: `valid_rows(name, batch) -> bool [N, T] | None`, the rows of layer `name`'s input
    # that are real (a fixed-shape model may run rows the official code drops, e.g. MAR's masked
    # encoder tokens); statistics and fitted quantizers see only those (`statistics_input`,
    # `fit_stages`). Absent or None: every row is real.


class NonFiniteError(ValueError):
    """NaN or Inf in the calibration activations; the message names the layer (or stage).

    Attributes:
      layer: the first layer (forward order) whose input holds NaN / Inf, or None.
      stage: the stage of that layer, or whose output first holds NaN / Inf; None when the
        inputs entering the first stage (the embeddings) already do.
    """

    def __init__(self, message: str, *, layer: str | None = None, stage: str | None = None):
        super().__init__(message)
        self.layer, self.stage = layer, stage


def _all_finite(tree: Any) -> bool:
    """True when every floating leaf of `tree` is finite (one device reduction per leaf)."""
    leaves = [x for x in jax.tree_util.tree_leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
    return all(bool(b) for b in jax.device_get([jnp.isfinite(x).all() for x in leaves]))


def check_finite(stage: Stage | None, carry: Any, values: Mapping[str, Any] | None = None) -> None:
    """Raises NonFiniteError when a layer's input (`values`: {layer: input or fitted quantizer})
    or the stage's output `carry` holds NaN / Inf: naming the first such layer in forward order,
    else the stage (`stage` None: the carry entering the first stage, i.e. the embeddings)."""
    if stage is not None:
        for name in stage.layers:
            if name in (values or {}) and not _all_finite(values[name]):
                raise NonFiniteError(
                    f"calibration: NaN/Inf in the input of layer {name} (stage {stage.name}); "
                    "the float model overflows on the calibration data",
                    layer=name,
                    stage=stage.name,
                )
    if not _all_finite(carry):
        where = f"the output of stage {stage.name}" if stage else "the calibration inputs"
        raise NonFiniteError(
            f"calibration: NaN/Inf in {where}; the float model overflows on the calibration data",
            stage=stage.name if stage else None,
        )


# Sow-name prefix of a fitted attention-matmul quantizer (`arvg_jax.nn.attention.sow_matmul_fit`):
# `<module>/attn_quant_<operand>` belongs to the params node `<module>/attn_quant/<operand>`.
MATMUL_SOW_PREFIX = "attn_quant_"


def _layer_path(module: str, sow_name: str) -> str:
    if sow_name.startswith(MATMUL_SOW_PREFIX):
        return f"{module}/attn_quant/{sow_name[len(MATMUL_SOW_PREFIX) :]}"
    return module


def sown_by_layer(state: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{layer path: value} from a stage's sown collection (`ModelAdapter.run_stage`'s result).

    Args:
      state: the collection as the stage's apply returned it, {".../<module>/<sow name>": (v,)}.
      prefix: prepended to every path (e.g. "blocks_3/" when the stage ran a block alone).

    A value belongs to its module's path (a Dense's `input` / `input_quant`), or to
    `<module>/attn_quant/<operand>` for an attention-matmul quantizer sown as
    `attn_quant_<operand>`.
    """
    out = {}
    for k, v in _tree.flatten(dict(state)).items():
        module, _, leaf = k.rpartition("/")
        out[prefix + _layer_path(module, leaf)] = v[0] if isinstance(v, tuple) else v
    return out


def _set_layer(params: Params, name: str, layer: Mapping[str, Any]) -> Params:
    flat = _tree.flatten(params)
    prefix = name + "/"
    flat = {k: v for k, v in flat.items() if not k.startswith(prefix)}
    flat.update({f"{name}/{k}": v for k, v in _tree.flatten(dict(layer)).items()})
    return _tree.unflatten(flat)


def valid_rows(adapter: ModelAdapter, name: str, batch: Mapping[str, Any] | None):
    """The adapter's bool [N, T] valid-row mask of layer ``name``'s input, or None (all real)."""
    fn = getattr(adapter, "valid_rows", None)
    if fn is None or batch is None:
        return None
    valid = fn(name, batch)
    return None if valid is None else np.asarray(valid, bool)


def statistics_input(adapter: ModelAdapter, name: str, x, batch: Mapping[str, Any] | None = None):
    """The rows of a layer input [N, T, C] that transform statistics see: the sink tokens removed
    where ``adapter.sink_excluded(name)``, and the invalid rows (`valid_rows`) dropped.

    Returns ``x[:, sinks:]`` ([N, T - sinks, C]) without a valid-row mask, else the valid
    non-sink rows [M, C] (a concrete boolean gather, outside ``jit``).
    """
    sinks = adapter.sink_tokens if (adapter.sink_excluded(name) and x.ndim == 3) else 0
    valid = valid_rows(adapter, name, batch)
    if valid is None:
        return x[:, sinks:, :] if sinks else x
    if x.ndim != 3 or valid.shape != tuple(x.shape[:2]):
        raise ValueError(f"{name}: valid rows {valid.shape} do not match its input {x.shape}")
    keep = valid.copy()
    keep[:, :sinks] = False
    return x[keep]


def _restrict_fits(adapter: ModelAdapter, params: Params, stage: Stage, batch) -> Params:
    """Restricts the `FitInput` placeholders of a stage's layers to their valid rows."""
    flat = None
    for name in stage.layers:
        valid = valid_rows(adapter, name, batch)
        if valid is None:
            continue
        flat = _tree.flatten(params) if flat is None else flat
        fit = flat.get(f"{name}/input_quant")
        if hasattr(fit, "restrict"):
            flat[f"{name}/input_quant"] = fit.restrict(valid)
    return params if flat is None else _tree.unflatten(flat)


def run_calibration(
    adapter: ModelAdapter,
    params: Params,
    batch: Mapping[str, Any],
    visit: Visitor,
    *,
    layers: Callable[[str], bool] = lambda name: True,
    sequential: bool = True,
    desc: str = "calibrate",
    progress: bool = True,
) -> Params:
    """Visits the input of every selected layer, stage by stage; returns the updated params.

    Args:
      adapter: the model family's adapter.
      params: the model's params (float or partly quantized); never mutated.
      batch: the calibration inputs, as `adapter.start` takes them.
      visit: called as visit(name, x, layer_params) for each selected layer, in forward order.
      layers: predicate on layer names; others are run but not visited.
      sequential: re-run the stage after each visit (quantized upstream); False visits every layer
        of a stage from one run (cheaper; used for statistics that do not change the params).
      desc: progress-bar label.
      progress: show a progress bar.

    Returns:
      Params with the visitor's replacements.
    """
    stages = adapter.stages()
    bar = Progress(len(stages), desc, enabled=progress)
    carry = adapter.start(params, batch)
    check_finite(None, carry)
    for stage in stages:
        targets = [n for n in stage.layers if layers(n)]
        groups = [[n] for n in targets] if sequential else ([targets] if targets else [])
        for group in groups:
            _, inputs = adapter.run_stage(params, stage, carry)
            check_finite(stage, (), {n: inputs[n] for n in group if n in inputs})
            for name in group:
                if name not in inputs:
                    raise KeyError(
                        f"stage {stage.name}: layer {name!r} produced no input; "
                        f"captured: {sorted(inputs)}"
                    )
                new = visit(name, inputs[name], _tree.tree_get(params, name))
                if new is not None:
                    params = _set_layer(params, name, new)
            del inputs
        carry, _ = adapter.run_stage(params, stage, carry)
        check_finite(stage, carry)
        bar.update(postfix=stage.name)
    bar.close()
    return params


def collect(
    adapter: ModelAdapter,
    params: Params,
    batch: Mapping[str, Any],
    reduce: Callable[[str, jax.Array, Mapping[str, Any]], Any],
    *,
    layers: Callable[[str], bool] = lambda name: True,
    desc: str = "statistics",
    progress: bool = True,
) -> dict[str, Any]:
    """Computes reduce(name, x, layer_params) for every selected layer; params are unchanged."""
    stats: dict[str, Any] = {}

    def visit(name, x, layer):
        stats[name] = reduce(name, x, layer)

    run_calibration(
        adapter, params, batch, visit, layers=layers, sequential=False, desc=desc, progress=progress
    )
    return stats


def fit_stages(
    adapter: ModelAdapter,
    params: Params,
    batch: Mapping[str, Any],
    *,
    desc: str = "calibrate",
    progress: bool = True,
) -> dict[str, Any]:
    """Fits every `quant.FitInput` placeholder of `params` in one forward per stage.

    Each placeholder is fitted on its layer's input (its valid rows, where the adapter has
    `valid_rows`) and applied at once, so the layers after it
    (in the same stage and in later stages) see a quantized upstream: the result equals
    `run_calibration(..., sequential=True)` with a visitor that fits and installs the same
    quantizer, without re-running a stage per layer.

    Args:
      adapter: the model family's adapter.
      params: a probe tree: layers to calibrate carry a `FitInput` under `input_quant`, the others
        whatever they should run with (float, `OracleKernel`, `QArray`, fitted quantizers).
      batch: the calibration inputs, as `adapter.start` takes them.
      desc: progress-bar label. progress: show it.

    Returns:
      {layer path: fitted quantizer} for every placeholder.
    """
    stages = adapter.stages()
    bar = Progress(len(stages), desc, enabled=progress)
    carry = adapter.start(params, batch)
    check_finite(None, carry)
    fitted: dict[str, Any] = {}
    for stage in stages:
        probe = _restrict_fits(adapter, params, stage, batch)
        carry, got = adapter.run_stage(probe, stage, carry, collect="calibration")
        check_finite(stage, carry, got)  # a NaN input leaves a NaN in its fitted quantizer
        fitted.update(got)
        bar.update(postfix=stage.name)
    bar.close()
    return fitted
