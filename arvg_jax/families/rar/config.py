"""RAR hyper-parameters: the official constructor arguments and the per-size sampling defaults.

Matches bytedance/1d-tokenizer (commit 942a96f) `modeling/rar.py` `RAR.__init__`, which reads
`config.model.generator.*` and `config.model.vq_model.codebook_size`, and the README's FID settings.

Dims: C width (hidden_size), D depth, H heads, K head dim (C / H), F FFN width (intermediate_size),
n image tokens (image_seq_len), V codebook size.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

# `config.model.generator` keys that RAR.__init__ turns into architecture.
GENERATOR_KEYS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "image_seq_len",
    "condition_num_classes",
)
# Generator keys with no effect on the inference forward: training (dropout, label dropout,
# gradient checkpointing, the random-order anneal) and the sampling hyper-parameters, which
# `SamplingSettings.from_official` reads instead.
IGNORED_GENERATOR_KEYS = frozenset(
    {
        "dropout",
        "attn_drop",
        "class_label_dropout",
        "use_checkpoint",
        "randomness_anneal_start",
        "randomness_anneal_end",
        "randomize_temperature",
        "guidance_scale",
        "guidance_scale_pow",
    }
)
# `config.model.vq_model` keys: only the codebook size shapes RAR (the rest configures TiTok / the
# tokenizer weight file).
IGNORED_VQ_KEYS = frozenset(
    {"token_size", "num_latent_tokens", "finetune_decoder", "pretrained_tokenizer_weight"}
)

# Extra rows of the position tables beyond the image tokens (RAR.__init__: image_seq_len + 1024
# rows of pos_embed / target_aware_pos_embed, image_seq_len + 100 of timesteps_embeddings).
POS_EXTRA_ROWS = 1024
TIMESTEP_EXTRA_ROWS = 100
NUM_PREFIX = 2  # [cls_token, condition] before the image tokens


@dataclasses.dataclass(frozen=True, kw_only=True)
class RARConfig:
    """RAR architecture (hashable: usable as a static jit argument).

    Field names are the official config keys. Execution choices (compute dtype, ...) are not
    fields; they are arguments of the model and the sampler.
    """

    hidden_size: int = 768  # C
    num_hidden_layers: int = 24  # D
    num_attention_heads: int = 16  # H (16 at every released size)
    intermediate_size: int = 3072  # F; mlp_ratio = F / C
    image_seq_len: int = 256  # n (16 x 16 MaskGIT-VQGAN tokens)
    condition_num_classes: int = 1000
    codebook_size: int = 1024  # V (config.model.vq_model.codebook_size)

    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} not divisible by heads {self.num_attention_heads}"
            )

    # ---- presets (README / configs: 16 heads, mlp ratio 4) ------------------------------------
    @classmethod
    def b(cls, **kw) -> RARConfig:
        """RAR-B: 768 / 24 / 3072 (260,923,648 params)."""
        return cls(**{"hidden_size": 768, "num_hidden_layers": 24, "intermediate_size": 3072, **kw})

    @classmethod
    def l(cls, **kw) -> RARConfig:  # the official size name
        """RAR-L: 1024 / 24 / 4096 (461,668,352 params)."""
        return cls(
            **{"hidden_size": 1024, "num_hidden_layers": 24, "intermediate_size": 4096, **kw}
        )

    @classmethod
    def xl(cls, **kw) -> RARConfig:
        """RAR-XL: 1280 / 32 / 5120 (955,425,024 params)."""
        return cls(
            **{"hidden_size": 1280, "num_hidden_layers": 32, "intermediate_size": 5120, **kw}
        )

    @classmethod
    def xxl(cls, **kw) -> RARConfig:
        """RAR-XXL: 1408 / 40 / 6144 (1,498,520,704 params)."""
        return cls(
            **{"hidden_size": 1408, "num_hidden_layers": 40, "intermediate_size": 6144, **kw}
        )

    @classmethod
    def tiny(cls, **kw) -> RARConfig:
        """Test size: C 26, D 2, H 2 (K 13), F 34, n 9 (3 x 3), 7 classes, V 11."""
        kw = {
            "hidden_size": 26,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 34,
            "image_seq_len": 9,
            "condition_num_classes": 7,
            "codebook_size": 11,
            **kw,
        }
        return cls(**kw)

    @classmethod
    def shapes(cls, **kw) -> RARConfig:
        """`rar-tiny` (trained on the 32-px shapes dataset, `families/rar/train`): C 128, D 6,
        H 4 (K 32), F 384, n 64 (8 x 8 tokens), 12 classes, V 512 (2.03M params, of which 0.29M
        are the fixed n + 1024-row position tables)."""
        kw = {
            "hidden_size": 128,
            "num_hidden_layers": 6,
            "num_attention_heads": 4,
            "intermediate_size": 384,
            "image_seq_len": 64,
            "condition_num_classes": 12,
            "codebook_size": 512,
            **kw,
        }
        return cls(**kw)

    @classmethod
    def from_official(
        cls, generator: Mapping[str, Any], vq_model: Mapping[str, Any] | None = None
    ) -> RARConfig:
        """Builds a config from the official `config.model.generator` / `.vq_model` sections.

        Raises:
            ValueError: on a key that is neither handled nor known to be irrelevant.
        """
        vq_model = dict(vq_model or {})
        unknown = sorted(set(generator) - set(GENERATOR_KEYS) - IGNORED_GENERATOR_KEYS)
        unknown += sorted(
            f"vq_model.{k}" for k in set(vq_model) - {"codebook_size"} - IGNORED_VQ_KEYS
        )
        if unknown:
            raise ValueError(f"unknown RAR config keys: {unknown}")
        fields = {k: int(generator[k]) for k in GENERATOR_KEYS if k in generator}
        if "codebook_size" in vq_model:
            fields["codebook_size"] = int(vq_model["codebook_size"])
        return cls(**fields)

    @classmethod
    def from_json(cls, path_or_dict: str | os.PathLike | Mapping[str, Any]) -> RARConfig:
        """From a fixture `config.json` (sections `generator` and `vq_model`) or that dict."""
        d = _read_json(path_or_dict)
        return cls.from_official(d["generator"], d.get("vq_model"))

    # ---- derived sizes -------------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def mlp_dim(self) -> int:
        """timm Mlp hidden width: int(C * mlp_ratio) with mlp_ratio = F / C, as RAR.__init__."""
        return int(self.hidden_size * (self.intermediate_size / self.hidden_size))

    @property
    def seq_len(self) -> int:
        """Tokens of the full sequence [cls, cond, img_0 .. img_{n-1}]: n + 2."""
        return self.image_seq_len + NUM_PREFIX

    @property
    def num_embeddings(self) -> int:
        """Rows of `embeddings`: V image tokens, the mask token, the classes, the null class."""
        return self.codebook_size + 1 + self.condition_num_classes + 1

    @property
    def pos_rows(self) -> int:
        return self.image_seq_len + POS_EXTRA_ROWS

    @property
    def timestep_rows(self) -> int:
        return self.image_seq_len + TIMESTEP_EXTRA_ROWS

    @property
    def null_condition_id(self) -> int:
        """RAR.none_condition_id = classes + V + 1 (2025 at release)."""
        return self.condition_num_classes + self.codebook_size + 1

    def condition_id(self, label):
        """RAR.preprocess_condition (no dropout): class label -> embedding row (label + V + 1)."""
        return label + self.codebook_size + 1


def shapes_tokenizer_config(**kw):
    """`rar-tiny`'s MaskGIT-VQGAN: 32-px images, two 2x levels -> 8 x 8 tokens, widths 32/64/64,
    one res block per level, Z 16, V 512."""
    from arvg_jax.tokenizers.maskgit_vqgan import MaskGITVQGANConfig

    kw = {
        "channel_mult": (1, 2, 2),
        "num_resolutions": 3,
        "hidden_channels": 32,
        "num_res_blocks": 1,
        "resolution": 32,
        "z_channels": 16,
        "token_size": 16,
        "codebook_size": 512,
        **kw,
    }
    return MaskGITVQGANConfig(**kw)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SamplingSettings:
    """`RAR.generate` hyper-parameters (official names; README FID settings per size).

    guidance_scale == 0 takes the official no-CFG branch (B rows, no uncond half).
    """

    guidance_scale: float = 16.0
    guidance_scale_pow: float = 2.75
    randomize_temperature: float = 1.0  # a constant softmax temperature despite the name

    @classmethod
    def b(cls) -> SamplingSettings:
        return cls(guidance_scale=16.0, guidance_scale_pow=2.75, randomize_temperature=1.0)

    @classmethod
    def l(cls) -> SamplingSettings:
        return cls(guidance_scale=15.5, guidance_scale_pow=2.5, randomize_temperature=1.02)

    @classmethod
    def xl(cls) -> SamplingSettings:
        return cls(guidance_scale=6.9, guidance_scale_pow=1.5, randomize_temperature=1.02)

    @classmethod
    def xxl(cls) -> SamplingSettings:
        return cls(guidance_scale=8.0, guidance_scale_pow=1.2, randomize_temperature=1.02)

    @classmethod
    def shapes(cls) -> SamplingSettings:
        """`rar-tiny`: a constant guidance of 3 (pow 0; cf. the tiny VAR's cfg 3)."""
        return cls(guidance_scale=3.0, guidance_scale_pow=0.0, randomize_temperature=1.0)

    @classmethod
    def from_official(cls, generator: Mapping[str, Any]) -> SamplingSettings:
        """Reads the sampling keys of `config.model.generator` (defaults: RAR-B)."""
        names = ("guidance_scale", "guidance_scale_pow", "randomize_temperature")
        return cls(**{k: float(generator[k]) for k in names if k in generator})

    @classmethod
    def from_json(cls, path_or_dict: str | os.PathLike | Mapping[str, Any]) -> SamplingSettings:
        return cls.from_official(_read_json(path_or_dict)["generator"])


def _read_json(path_or_dict) -> dict:
    if isinstance(path_or_dict, Mapping):
        return dict(path_or_dict)
    with open(path_or_dict) as f:
        return json.load(f)
