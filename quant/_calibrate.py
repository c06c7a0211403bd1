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


def sown_by_layer(
    state: Mapping[str, Any], prefix: str = "", rename: Callable[[str, str], str] | None = None
) -> dict[str, Any]:
    """{layer path: value} from a stage's sown collection (`ModelAdapter.run_stage`'s result).

    Args:
      state: the collection as the stage's apply returned it, {".../<module>/<sow name>": (v,)}.
      prefix: prepended to every path (e.g. "blocks_3/" when the stage ran a block alone).
      rename: (module path, sow name) -> layer path, for values not sown by a Dense as its
        `input` / `input_quant` (default: the module path).
    """
    out = {}
    for k, v in _tree.flatten(dict(state)).items():
        module, _, leaf = k.rpartition("/")
        name = module if rename is None else rename(module, leaf)
        out[prefix + name] = v[0] if isinstance(v, tuple) else v
    return out


def _set_layer(params: Params, name: str, layer: Mapping[str, Any]) -> Params:
    flat = _tree.flatten(params)
    prefix = name + "/"
    flat = {k: v for k, v in flat.items() if not k.startswith(prefix)}
    flat.update({f"{name}/{k}": v for k, v in _tree.flatten(dict(layer)).items()})
    return _tree.unflatten(flat)


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
    for stage in stages:
        targets = [n for n in stage.layers if layers(n)]
        groups = [[n] for n in targets] if sequential else ([targets] if targets else [])
        for group in groups:
            _, inputs = adapter.run_stage(params, stage, carry)
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

    Each placeholder is fitted on its layer's input and applied at once, so the layers after it
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
    fitted: dict[str, Any] = {}
    for stage in stages:
        carry, got = adapter.run_stage(params, stage, carry, collect="calibration")
        fitted.update(got)
        bar.update(postfix=stage.name)
    bar.close()
    return fitted
