"""Quantization coverage as data: which layers are quantized, how, and where transforms fold.

A family describes its PTQ4ARVG coverage as an ordered tuple of `QuantRule`s. Each layer path
("blocks_3/attn/qkv", the Dense's path in the param tree) takes the first rule whose `path` regex
matches it in full; a layer that no rule matches, or a rule that matches no layer, is an error
(a silent no-match is the classic PTQ bug). Algorithms read the resolved `LayerSpec`s, never a
family's code.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Sequence
from typing import Literal

__all__ = ["Coverage", "CoverageQueries", "FoldRule", "FoldTarget", "LayerSpec", "QuantRule"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class FoldRule:
    """Where a layer's input transform x' = x / s - p folds (no runtime cost).

    Attributes:
      norm: the layer producing the modulation, as a `re.Match.expand` template of the rule's
        path match (e.g. r"\\g<block>/ada_lin").
      scale: chunk index of the modulation's scale columns (chunk width = the model width).
      shift: chunk index of its shift columns.
      kind: "adaln": LN(x) * (1 + scale) + shift, scale/shift columns of a Dense (VAR, RAR);
        "norm_bias": an affine norm's weight, gaining a bias for the shift (PAR, MAR).
    """

    norm: str
    scale: int = 0
    shift: int = 1
    kind: Literal["adaln", "norm_bias"] = "adaln"


@dataclasses.dataclass(frozen=True)
class FoldTarget:
    """A resolved `FoldRule`: the norm layer path and its scale / shift output columns.

    `siblings`: the other layers reading the same normed input (rules with `share_input_with`
    naming this layer, e.g. PAR's w3 beside w1): a fold rescales their kernels too, so the model
    stays the same function.
    """

    norm_layer: str
    scale_cols: slice
    shift_cols: slice
    kind: str = "adaln"
    siblings: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True, kw_only=True)
class QuantRule:
    """One coverage rule (first match wins).

    Attributes:
      path: regex, `re.fullmatch`ed against the layer path.
      kind: the layer's name in reports ("qkv", "fc1", "ada_lin", ...).
      groups: token-group granularity of its static input quantizer, a name the family's
        `group_table` knows ("tensor" = one group; VAR "scale", "sink"; ...).
      smooth: the input gets SmoothQuant, the zero-centering shift and GPS, folded into `fold`.
      gps: with `smooth`: False leaves out the GPS scales (SmoothQuant + shift only; RAR's
        lm_head, `RAR/quant/set_quantize_params.py:31`).
      final_shift: with `smooth`: a second zero-centering shift in stage F, from the layer's
        recalibrated (stage D) per-channel quantizer (RAR's lm_head, `RAR/quant/gps.py:148-178`).
      fold: where those transforms fold (required with `smooth`).
      sink_excluded: input statistics of the transforms skip the sink tokens.
      share_input_with: a layer path template whose input quantizer this layer reuses (same input
        tensor, e.g. PAR's w3 and w1).
      keep_float: the layer stays float (e.g. VAR's word_embed).
    """

    path: str
    kind: str
    groups: str = "tensor"
    smooth: bool = False
    gps: bool = True
    final_shift: bool = False
    fold: FoldRule | None = None
    sink_excluded: bool = False
    share_input_with: str | None = None
    keep_float: bool = False

    def __post_init__(self):
        re.compile(self.path)
        if self.smooth and self.fold is None:
            raise ValueError(f"rule {self.path!r}: smooth=True needs a fold target")
        if not self.smooth and (self.final_shift or not self.gps):
            raise ValueError(f"rule {self.path!r}: gps / final_shift apply to smooth=True rules")


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    """A layer and the rule that covers it (with its fold target and input sharing resolved)."""

    name: str
    rule: QuantRule
    fold: FoldTarget | None
    shares_input_of: str | None = None


class Coverage:
    """Rules resolved against a model's layer paths.

    Args:
      rules: the family's rules, in priority order.
      layers: every Dense layer path of the model.
      width: chunk width of fold columns (the model width C).

    Raises:
      ValueError: a layer no rule matches, or a rule no layer matches (naming them).
    """

    def __init__(self, rules: Sequence[QuantRule], layers: Iterable[str], width: int):
        self.rules = tuple(rules)
        self._specs: dict[str, LayerSpec] = {}
        used = [False] * len(self.rules)
        unmatched = []
        for name in layers:
            for i, rule in enumerate(self.rules):
                m = re.fullmatch(rule.path, name)
                if m is None:
                    continue
                used[i] = True
                fold = None
                if rule.fold is not None:
                    f = rule.fold
                    fold = FoldTarget(
                        m.expand(f.norm),
                        slice(f.scale * width, (f.scale + 1) * width),
                        slice(f.shift * width, (f.shift + 1) * width),
                        f.kind,
                    )
                shares = m.expand(rule.share_input_with) if rule.share_input_with else None
                self._specs[name] = LayerSpec(name, rule, fold, shares)
                break
            else:
                unmatched.append(name)
        if unmatched:
            raise ValueError(f"no quantization rule covers layers {unmatched}")
        unused = [r.path for r, u in zip(self.rules, used) if not u]
        if unused:
            raise ValueError(f"quantization rules that match no layer: {unused}")
        self._resolve_sharing()

    def _resolve_sharing(self) -> None:
        """Adds each input-sharing layer to the fold target of the layer whose input it reads."""
        for name, spec in list(self._specs.items()):
            owner = spec.shares_input_of
            if owner is None:
                continue
            target = self._specs.get(owner)
            if target is None:
                raise ValueError(f"{name}: share_input_with names {owner!r}, not a layer")
            if target.fold is None:
                raise ValueError(f"{name}: shares the input of {owner!r}, which has no fold")
            fold = dataclasses.replace(target.fold, siblings=(*target.fold.siblings, name))
            self._specs[owner] = dataclasses.replace(target, fold=fold)

    def __getitem__(self, name: str) -> LayerSpec:
        try:
            return self._specs[name]
        except KeyError:
            raise KeyError(f"{name!r} is not a layer of this model") from None

    def layers(self) -> tuple[str, ...]:
        return tuple(self._specs)

    def quantized(self) -> tuple[str, ...]:
        return tuple(n for n, s in self._specs.items() if not s.rule.keep_float)

    def smoothed(self) -> tuple[str, ...]:
        return tuple(n for n in self.quantized() if self._specs[n].rule.smooth)

    def gps_scaled(self) -> tuple[str, ...]:
        """The smoothed layers that also get GPS scales (stage E)."""
        return tuple(n for n in self.smoothed() if self._specs[n].rule.gps)

    def final_shifted(self) -> tuple[str, ...]:
        """The smoothed layers with a second zero-centering shift in stage F."""
        return tuple(n for n in self.smoothed() if self._specs[n].rule.final_shift)


class CoverageQueries:
    """The coverage part of `quant._calibrate.ModelAdapter`, read from `self.coverage`.

    A family adapter sets `self.coverage` (a `Coverage`) and inherits these queries.
    """

    coverage: Coverage

    def quantized_layers(self) -> tuple[str, ...]:
        return self.coverage.quantized()

    def layer_kind(self, name: str) -> str:
        """The covering rule's kind (e.g. "qkv", "fc1")."""
        return self.coverage[name].rule.kind

    def gps_layers(self) -> tuple[str, ...]:
        """The layers whose input gets SmoothQuant, the shift and GPS (official SmoothModules)."""
        return self.coverage.smoothed()

    def fold_target(self, name: str) -> FoldTarget:
        fold = self.coverage[name].fold
        if fold is None:
            raise ValueError(f"{name}: no norm or AdaLN precedes this layer's input")
        return fold

    def sink_excluded(self, name: str) -> bool:
        """Whether statistics of this layer's input skip the sink tokens."""
        return self.coverage[name].rule.sink_excluded

    def stwq_granularity(self, name: str) -> str:
        """The deployed input quantizer of a layer, as a `group_table` granularity (the rule's
        `groups`)."""
        return self.coverage[name].rule.groups
