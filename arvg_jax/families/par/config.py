"""PAR architecture config: the official `ModelArgs` of YuqingWang1029/PAR `autoregressive/models/gpt.py`.

Only arguments that change the inference architecture are fields; training-only arguments
(dropouts, init ranges, drop path) and unused buffers' sizes are listed in
`IGNORED_OFFICIAL_KEYS` and accepted but dropped by `PARConfig.from_official`. Execution choices
(dtype, sampling settings) are arguments of the model / sampler, never config fields.

Dims: C = dim, H = n_head, G = n_kv_head, K = head dim (C / H), F = SwiGLU hidden, N = block_size
image tokens on a g x g grid, A = ar_token_num tokens per parallel step (s = sqrt(A) regions per
side), E = spe_token_num bridge tokens.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

# ModelArgs fields without effect on the inference forward (gpt.py): dropouts are inactive in
# eval, the init range and drop path only matter in training, caption_dim is t2i only, and
# max_batch_size / max_seq_len are never read by the c2i model.
IGNORED_OFFICIAL_KEYS = frozenset(
    {
        "initializer_range",
        "token_dropout_p",
        "attn_dropout_p",
        "resid_dropout_p",
        "ffn_dropout_p",
        "drop_path_rate",
        "caption_dim",
        "max_batch_size",
        "max_seq_len",
    }
)


def find_multiple(n: int, k: int) -> int:
    """gpt.py `find_multiple`: n rounded up to a multiple of k."""
    return n if n % k == 0 else n + k - (n % k)


@dataclasses.dataclass(frozen=True, kw_only=True)
class PARConfig:
    """PAR / LlamaGen GPT hyper-parameters, named as the official `ModelArgs` (hashable).

    Defaults are `ModelArgs` defaults except the sizes, which default to PAR-XL-4x.
    """

    dim: int = 1280  # C
    n_layer: int = 36
    n_head: int = 20  # H
    n_kv_head: int | None = None  # G; None -> H (no release uses GQA)
    multiple_of: int = 256  # SwiGLU hidden rounded up to a multiple of this
    ffn_dim_multiplier: float | None = None
    rope_base: float = 10000.0
    norm_eps: float = 1e-5  # RMSNorm eps
    num_classes: int = 1000  # class num_classes is the CFG null class
    class_dropout_prob: float = 0.1  # > 0 adds the null-class row to the class table
    model_type: str = "c2i"  # only "c2i" is ported
    vocab_size: int = 16384  # VQ-16 codebook
    cls_token_num: int = 1
    block_size: int = 576  # N image tokens (24 x 24 at 384 px)
    spe_token_num: int = 3  # E learnable bridge tokens
    ar_token_num: int = 4  # A tokens per parallel step

    def __post_init__(self):
        if self.model_type != "c2i":
            raise NotImplementedError(f"model_type {self.model_type!r}: only 'c2i' is ported")
        if self.cls_token_num != 1:
            # c2i generate() always prefills one class token (T = 1) while the RoPE table holds
            # cls_token_num zero rows: other values misalign positions in the official code.
            raise NotImplementedError(f"cls_token_num must be 1 for c2i, got {self.cls_token_num}")
        if self.dim % self.n_head:
            raise ValueError(f"dim {self.dim} not divisible by n_head {self.n_head}")
        if self.n_head % self.kv_heads:
            raise ValueError(f"n_head {self.n_head} not divisible by n_kv_head {self.kv_heads}")
        if self.head_dim % 4:
            # precompute_freqs_cis_2d splits K/2 rotary pairs into row and column halves.
            raise ValueError(f"head dim {self.head_dim} must be a multiple of 4 (2-D RoPE)")
        g, s = self.grid_size, self.sub_num
        if g * g != self.block_size:
            raise ValueError(f"block_size {self.block_size} is not a square")
        if s * s != self.ar_token_num or g % s:
            raise ValueError(
                f"ar_token_num {self.ar_token_num} must be a square whose root divides {g}"
            )
        if self.spe_token_num != self.ar_token_num - 1:
            # generate(): the first parallel step feeds [t_{A-1}, spe_0 .. spe_{E-1}] at A
            # positions, and the group mask uses groups of E + 1 starting at A.
            raise ValueError(
                f"spe_token_num {self.spe_token_num} must be ar_token_num - 1 = "
                f"{self.ar_token_num - 1}"
            )
        if self.block_size % self.ar_token_num or self.block_size < 2 * self.ar_token_num:
            raise ValueError(
                f"block_size {self.block_size} must be a multiple of ar_token_num "
                f"{self.ar_token_num} and at least two groups"
            )

    # ---- presets (gpt.py GPT_models; PAR releases on HF Epiphqny/PAR) --------------------------
    @classmethod
    def xl_4x(cls, **kw) -> PARConfig:
        """PAR-XL-4x: GPT-XL (775M)."""
        return cls(**{"dim": 1280, "n_layer": 36, "n_head": 20, **kw})

    @classmethod
    def xxl_4x(cls, **kw) -> PARConfig:
        """PAR-XXL-4x: GPT-XXL (1.4B)."""
        return cls(**{"dim": 1536, "n_layer": 48, "n_head": 24, **kw})

    @classmethod
    def gpt3b_4x(cls, **kw) -> PARConfig:
        """PAR-3B-4x: GPT-3B (3.1B; head dim 100)."""
        return cls(**{"dim": 3200, "n_layer": 24, "n_head": 32, **kw})

    @classmethod
    def xl_16x(cls, **kw) -> PARConfig:
        """GPT-XL with 16 tokens per step (no release; the official scripts accept it)."""
        return cls.xl_4x(**{"spe_token_num": 15, "ar_token_num": 16, **kw})

    @classmethod
    def xxl_16x(cls, **kw) -> PARConfig:
        """GPT-XXL with 16 tokens per step (no release; the official scripts accept it)."""
        return cls.xxl_4x(**{"spe_token_num": 15, "ar_token_num": 16, **kw})

    @classmethod
    def gpt3b_16x(cls, **kw) -> PARConfig:
        """PAR-3B-16x: GPT-3B, 16 tokens per step (15 bridge tokens)."""
        return cls.gpt3b_4x(**{"spe_token_num": 15, "ar_token_num": 16, **kw})

    @classmethod
    def tiny(cls, **kw) -> PARConfig:
        """The reference fixture's GPT (`reference/par/config.json`): dim 64, 2 layers, 2 heads."""
        return cls(**{"dim": 64, "n_layer": 2, "n_head": 2, **kw})

    @classmethod
    def release(cls, name: str, **kw) -> PARConfig:
        """A release by its checkpoint name, e.g. "PAR-XL-4x" or "PAR-3B-16x"."""
        try:
            return _RELEASES[name](cls, **kw)
        except KeyError:
            raise ValueError(f"unknown PAR release {name!r}; known: {sorted(_RELEASES)}") from None

    @classmethod
    def from_official(cls, kwargs: Mapping[str, Any], **overrides) -> PARConfig:
        """Config from official `ModelArgs` keyword arguments.

        Args:
            kwargs: `ModelArgs(...)` / `GPT_models[...](...)` arguments (unknown keys raise).
            **overrides: fields set on top.

        Raises:
            ValueError: on a key that is neither a field nor in `IGNORED_OFFICIAL_KEYS`.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kwargs) - names - IGNORED_OFFICIAL_KEYS)
        if unknown:
            raise ValueError(f"unknown PAR ModelArgs: {unknown}")
        fields = {k: v for k, v in kwargs.items() if k in names}
        return cls(**{**fields, **overrides})

    @classmethod
    def from_fixture(cls, config_json: Mapping[str, Any], **overrides) -> PARConfig:
        """Config from a reference fixture's `config.json` (its "gpt" and "gpt_defaults")."""
        kwargs = {**config_json.get("gpt_defaults", {}), **config_json["gpt"]}
        return cls.from_official(kwargs, **overrides)

    # ---- derived sizes ---------------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.dim // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_head if self.n_kv_head is None else self.n_kv_head

    @property
    def ffn_dim(self) -> int:
        """gpt.py FeedForward: find_multiple(int(mult * int(2 * 4C / 3)), multiple_of)."""
        hidden = int(2 * (4 * self.dim) / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return find_multiple(hidden, self.multiple_of)

    @property
    def num_class_rows(self) -> int:
        """LabelEmbedder table rows: the null class exists iff class_dropout_prob > 0."""
        return self.num_classes + int(self.class_dropout_prob > 0)

    @property
    def grid_size(self) -> int:
        return math.isqrt(self.block_size)

    @property
    def sub_num(self) -> int:
        """s: regions per side; consecutive groups of A tokens hold one position per region."""
        return math.isqrt(self.ar_token_num)

    @property
    def seq_len(self) -> int:
        """Teacher-forcing table length: cls + N + E (gpt.py freqs_cis rows; 580 for 4x)."""
        return self.cls_token_num + self.block_size + self.spe_token_num

    @property
    def cache_len(self) -> int:
        """KV-cache length of generate(): find_multiple(1 + N, 8) (584 at 384 px)."""
        return find_multiple(1 + self.block_size, 8)

    @property
    def num_passes(self) -> int:
        """Forward passes of generate(): A one-token passes, then (N - A) / A parallel ones."""
        return self.ar_token_num + (self.block_size - self.ar_token_num) // self.ar_token_num


_RELEASES = {
    "PAR-XL-4x": PARConfig.xl_4x.__func__,
    "PAR-XXL-4x": PARConfig.xxl_4x.__func__,
    "PAR-3B-4x": PARConfig.gpt3b_4x.__func__,
    "PAR-3B-16x": PARConfig.gpt3b_16x.__func__,
}
