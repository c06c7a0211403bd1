"""Quantization recipes: which method, which bit widths, which calibration (data, not code)."""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Literal

Method = Literal["rtn", "smoothquant", "ptq4arvg"]
METHODS: tuple[str, ...] = ("rtn", "smoothquant", "ptq4arvg")
BITS: tuple[str, ...] = ("w8a8", "w6a6", "w4a8")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Recipe:
    """A complete description of how a model was quantized (stored with the quantized tree)."""

    method: Method  # rtn | smoothquant | ptq4arvg
    w_bits: int  # weight bits, per output channel, asymmetric (official UniformQuantizer)
    a_bits: int  # activation bits, static (per tensor or per token group)
    weight_symmetric: bool = False  # symmetric weights (zero point 0) instead of asymmetric
    sq_alpha: float = 0.5  # SmoothQuant migration strength (official: 0.5)
    calib: int = 128  # calibration sequences (official: 128)
    seed: int = 42  # seed of the calibration generations (official: 42)
    dgc: Literal["official", "shrinkage", "none"] = "shrinkage"  # calibration-set selection
    # Coverage beyond the official one that the model's family offers by name (e.g. MAR's
    # "diffusion_head"); empty = the official coverage. Recorded so a directory says what it holds.
    coverage: tuple[str, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "coverage", tuple(sorted(set(self.coverage))))
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose one of {METHODS}")
        for name in ("w_bits", "a_bits"):
            b = getattr(self, name)
            if not 2 <= b <= 8:
                raise ValueError(f"{name}={b}: bit widths must lie in [2, 8]")

    @property
    def bits(self) -> str:
        return f"w{self.w_bits}a{self.a_bits}"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if not d["coverage"]:  # written only when used: older readers know no such field
            del d["coverage"]
        else:
            d["coverage"] = list(d["coverage"])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Recipe:
        return cls(**d)

    @classmethod
    def parse(cls, method: str, bits: str, **kw) -> Recipe:
        """Recipe.parse("ptq4arvg", "w6a6", calib=8)."""
        m = re.fullmatch(r"w(\d)a(\d)", bits.lower())
        if not m:
            raise ValueError(f"bits {bits!r}: expected wXaY, e.g. {', '.join(BITS)}")
        return cls(method=method, w_bits=int(m.group(1)), a_bits=int(m.group(2)), **kw)
