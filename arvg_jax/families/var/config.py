"""VAR architecture config: the official constructor arguments (FoundationVision/VAR
`models/__init__.py` build_vae_var, `models/var.py` VAR.__init__) and the size presets.

Execution choices (compute dtype, kernels, KV layout) are `arvg_jax.options.ExecOptions`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

PATCH_NUMS_256 = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
PATCH_NUMS_512 = (1, 2, 3, 4, 6, 9, 13, 18, 24, 32)

# models/basic_var.py SelfAttention: max_scale_mul = torch.log(torch.tensor(100)).item(), a float32
# log evaluated once.
_MAX_SCALE_MUL = float(np.log(np.float32(100.0)))


# Official constructor arguments (models/__init__.py build_vae_var and VAR.__init__).
OFFICIAL_KEYS: dict[str, str] = {
    "depth": "depth",
    "embed_dim": "embed_dim",
    "num_heads": "num_heads",
    "mlp_ratio": "mlp_ratio",
    "V": "vocab_size",
    "Cvae": "cvae",
    "num_classes": "num_classes",
    "patch_nums": "patch_nums",
    "shared_aln": "shared_aln",
    "attn_l2_norm": "attn_l2_norm",
    "norm_eps": "norm_eps",
}
# VQVAE-only, device, speed, training and init arguments: no effect on the VAR forward.
# (`cond_drop_rate` only matters in training; our forward never drops labels.)
IGNORED_OFFICIAL_KEYS = frozenset(
    {
        "ch",
        "share_quant_resi",
        "seed",
        "device",
        "flash_if_available",
        "fused_if_available",
        "init_adaln",
        "init_adaln_gamma",
        "init_head",
        "init_std",
        "drop_rate",
        "attn_drop_rate",
        "drop_path_rate",
        "cond_drop_rate",
    }
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class VARConfig:
    """VAR hyper-parameters (hashable, so it can be a static jit argument).

    `embed_dim` and `num_heads` default to the official `build_vae_var` rule (64·depth, depth).
    """

    depth: int = 16  # number of transformer blocks
    embed_dim: int | None = None  # C; None -> 64 * depth
    num_heads: int | None = None  # H; None -> depth
    mlp_ratio: float = 4.0  # FFN hidden = round(C * mlp_ratio)
    vocab_size: int = 4096  # V (VQVAE codebook size)
    cvae: int = 32  # E, VQVAE latent channels
    num_classes: int = 1000  # class num_classes is the null (CFG) class
    patch_nums: tuple[int, ...] = PATCH_NUMS_256  # side of each scale's token map
    shared_aln: bool = False  # shared AdaLN (d36): shared_ada_lin + per-block ada_gss
    attn_l2_norm: bool = True  # l2-normalised q, k with learned per-head temperature
    norm_eps: float = 1e-6

    def __post_init__(self):
        if self.embed_dim is None:
            object.__setattr__(self, "embed_dim", 64 * self.depth)
        if self.num_heads is None:
            object.__setattr__(self, "num_heads", self.depth)
        object.__setattr__(self, "patch_nums", tuple(int(p) for p in self.patch_nums))
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} not divisible by heads {self.num_heads}")

    # Presets (models/__init__.py build_vae_var: heads = depth, width = 64 * depth).
    @classmethod
    def d16(cls, **kw) -> VARConfig:
        return cls(depth=16, **kw)

    @classmethod
    def d20(cls, **kw) -> VARConfig:
        return cls(depth=20, **kw)

    @classmethod
    def d24(cls, **kw) -> VARConfig:
        return cls(depth=24, **kw)

    @classmethod
    def d30(cls, **kw) -> VARConfig:
        return cls(depth=30, **kw)

    @classmethod
    def d36(cls, **kw) -> VARConfig:
        """The 512-px release: shared AdaLN, patch_nums up to 32 (L = 2240)."""
        return cls(depth=36, patch_nums=PATCH_NUMS_512, shared_aln=True, **kw)

    @classmethod
    def tiny(cls, **kw) -> VARConfig:
        """Test size: distinct small dims (C 26, H 2, K 13, V 37, E 7, 11 classes, L 14)."""
        kw = {
            "depth": 2,
            "embed_dim": 26,
            "num_heads": 2,
            "vocab_size": 37,
            "cvae": 7,
            "num_classes": 11,
            "patch_nums": (1, 2, 3),
            **kw,
        }
        return cls(**kw)

    @classmethod
    def from_official(cls, kwargs: dict[str, Any], **overrides) -> VARConfig:
        """Builds a config from official constructor arguments (e.g. reference `config.json`).

        Args:
            kwargs: `build_vae_var` / `VAR.__init__` keyword arguments.
            **overrides: fields set on top (e.g. `dtype`).

        Raises:
            ValueError: on a key that is neither handled nor known to be irrelevant.
        """
        known = OFFICIAL_KEYS
        unknown = sorted(set(kwargs) - set(known) - IGNORED_OFFICIAL_KEYS)
        if unknown:
            raise ValueError(f"unknown VAR constructor arguments: {unknown}")
        fields = {known[k]: v for k, v in kwargs.items() if k in known}
        if "patch_nums" in fields:
            fields["patch_nums"] = tuple(fields["patch_nums"])
        return cls(**{**fields, **overrides})

    # Derived sizes.
    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def mlp_dim(self) -> int:
        return round(self.embed_dim * self.mlp_ratio)

    @property
    def num_scales(self) -> int:
        return len(self.patch_nums)

    @property
    def seq_len(self) -> int:
        return sum(p * p for p in self.patch_nums)

    @property
    def first_l(self) -> int:
        return self.patch_nums[0] ** 2

    @property
    def begin_ends(self) -> tuple[tuple[int, int], ...]:
        """Static token range [begin, end) of each scale."""
        out, cur = [], 0
        for pn in self.patch_nums:
            out.append((cur, cur + pn * pn))
            cur += pn * pn
        return tuple(out)

    @property
    def levels(self) -> np.ndarray:
        """int32 [L]: scale index of every position (the official `lvl_1L` buffer)."""
        return np.concatenate([np.full(p * p, i, np.int32) for i, p in enumerate(self.patch_nums)])
