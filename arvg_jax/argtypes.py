"""Checked command-line values: every numeric flag says its allowed range when refused.

A `Range` (or `OneOf`, `Checked`) is data: argparse uses it as the flag's `type` (a bad value ends
with `argument --batch: must be an integer >= 1, got '0'`), and a family's `SamplingArg.valid`
holds one, so each family's sampling flags are validated from its own declaration
(`check(value, flag)`). NaN and infinities are never accepted.

    parser.add_argument("--batch", type=POSITIVE_INT, default=32)
    parser.add_argument("--top-p", type=Range(float, 0, 1, lo_open=True))
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Callable
from typing import Any

SEED_MAX = 2**32 - 1  # jax.random.PRNGKey keeps 32 bits: larger seeds would repeat smaller ones


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(x)


@dataclasses.dataclass(frozen=True)
class Range:
    """Numbers of `kind` (int or float) between `lo` and `hi` (None: unbounded), finite."""

    kind: type = float
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def describe(self) -> str:
        what = "an integer" if self.kind is int else "a finite number"
        if self.lo is not None and self.hi is not None:
            left, right = "(" if self.lo_open else "[", ")" if self.hi_open else "]"
            return f"{what} in {left}{_number(self.lo)}, {_number(self.hi)}{right}"
        if self.lo is not None:
            return f"{what} {'>' if self.lo_open else '>='} {_number(self.lo)}"
        if self.hi is not None:
            return f"{what} {'<' if self.hi_open else '<='} {_number(self.hi)}"
        return what

    def accepts(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind is int and not float(value).is_integer():
            return False
        if not math.isfinite(value):
            return False
        if self.lo is not None and (value < self.lo or (self.lo_open and value == self.lo)):
            return False
        return self.hi is None or value < self.hi or (value == self.hi and not self.hi_open)

    def convert(self, text: str) -> Any:
        """Parses `text` as `kind` (ValueError when it is not one)."""
        return int(text, 10) if self.kind is int else float(text)

    def __call__(self, text: str) -> Any:  # argparse `type=`
        return _parse(self, text)


@dataclasses.dataclass(frozen=True)
class OneOf:
    """One of `choices` (strings)."""

    choices: tuple[str, ...]

    def describe(self) -> str:
        return "one of " + ", ".join(self.choices)

    def accepts(self, value: Any) -> bool:
        return value in self.choices

    def convert(self, text: str) -> str:
        return text

    def __call__(self, text: str) -> str:
        return _parse(self, text)


@dataclasses.dataclass(frozen=True)
class Checked:
    """Values of `kind` that `ok(value)` accepts; `text` describes them."""

    kind: Callable[[str], Any]
    ok: Callable[[Any], bool]
    text: str

    def describe(self) -> str:
        return self.text

    def accepts(self, value: Any) -> bool:
        try:
            return bool(self.ok(value))
        except (TypeError, ValueError):
            return False

    def convert(self, text: str) -> Any:
        return self.kind(text)

    def __call__(self, text: str) -> Any:
        return _parse(self, text)


@dataclasses.dataclass(frozen=True)
class AnyOf:
    """A flag shared by families with different ranges: accepted when one of them accepts it
    (each family then checks its own, `check`)."""

    options: tuple[tuple[str, Any], ...]  # (family name, Range | OneOf | Checked)

    def describe(self) -> str:
        texts: dict[str, list[str]] = {}
        for name, v in self.options:
            texts.setdefault(v.describe(), []).append(name)
        if len(texts) == 1:
            return next(iter(texts))
        return " or ".join(f"{t} ({', '.join(n)})" for t, n in texts.items())

    def accepts(self, value: Any) -> bool:
        return any(v.accepts(value) for _, v in self.options)

    def convert(self, text: str) -> Any:
        error = None
        for _, v in self.options:
            try:
                return v.convert(text)
            except ValueError as e:
                error = e
        raise ValueError(error)

    def __call__(self, text: str) -> Any:
        return _parse(self, text)


def _parse(valid, text: str) -> Any:
    try:
        value = valid.convert(text)
    except (TypeError, ValueError):
        value = None
    if value is None or not valid.accepts(value):
        raise argparse.ArgumentTypeError(f"must be {valid.describe()}, got {text!r}")
    return value


def check(valid, value: Any, flag: str, whose: str = "") -> Any:
    """Returns `value` if `valid` accepts it, else raises ValueError naming `flag` and the range."""
    if valid is not None and not valid.accepts(value):
        for_whom = f" for {whose}" if whose else ""
        raise ValueError(f"{flag} must be {valid.describe()}{for_whom}, got {value!r}")
    return value


POSITIVE_INT = Range(int, 1)  # counts and sizes: --batch, --calib, --num-images, ...
NON_NEGATIVE_INT = Range(int, 0)  # --top-k (0 disables), --hlo-keep
SEED = Range(int, 0, SEED_MAX)
POSITIVE = Range(float, 0, lo_open=True)  # temperatures, seconds
NON_NEGATIVE = Range(float, 0)  # guidance scales
PROBABILITY = Range(float, 0, 1)
