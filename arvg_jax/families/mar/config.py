"""MAR architecture settings: the `models.mar.MAR` constructor arguments of LTH14/mar.

Matches LTH14/mar `models/mar.py` (commit fe470ac): `MAR.__init__` and the `mar_base`,
`mar_large`, `mar_huge` builders (with the `main_mar.py` diffusion-head sizes of each release).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any


@dataclasses.dataclass(frozen=True, kw_only=True)
class MARConfig:
    """`MAR(...)` constructor arguments; the defaults are the bare constructor's.

    `norm_eps` stands for `norm_layer`: the official argument is a LayerNorm factory and only its
    eps varies (the bare default `nn.LayerNorm` has eps 1e-5; every release passes
    `partial(nn.LayerNorm, eps=1e-6)`). Dropout, masking-ratio, label-drop, diffusion-batch and
    checkpointing arguments only act in training; they are kept so a config round-trips.
    """

    img_size: int = 256
    vae_stride: int = 16  # KL-16 VAE downsampling
    patch_size: int = 1  # tokens are patch_size x patch_size latent pixels
    encoder_embed_dim: int = 1024
    encoder_depth: int = 16
    encoder_num_heads: int = 16
    decoder_embed_dim: int = 1024
    decoder_depth: int = 16
    decoder_num_heads: int = 16
    mlp_ratio: float = 4.0
    norm_eps: float = 1e-5  # `norm_layer` (transformer blocks, encoder_norm, decoder_norm)
    vae_embed_dim: int = 16
    mask_ratio_min: float = 0.7  # training only
    label_drop_prob: float = 0.1  # training only
    class_num: int = 1000
    attn_dropout: float = 0.1  # training only
    proj_dropout: float = 0.1  # training only
    buffer_size: int = 64  # class-vector slots prepended to the encoder sequence
    diffloss_d: int = 3  # SimpleMLPAdaLN res blocks
    diffloss_w: int = 1024  # SimpleMLPAdaLN width
    num_sampling_steps: str = "100"  # `space_timesteps` section counts of the sampling diffusion
    diffusion_batch_mul: int = 4  # training only
    grad_checkpointing: bool = False  # training only

    def __post_init__(self):
        for name in ("encoder", "decoder"):
            dim = getattr(self, f"{name}_embed_dim")
            heads = getattr(self, f"{name}_num_heads")
            if dim % heads:
                raise ValueError(f"{name}_embed_dim {dim} is not divisible by {heads} heads")
        if self.img_size % (self.vae_stride * self.patch_size):
            raise ValueError(f"img_size {self.img_size} is not a multiple of vae_stride * patch")

    # Release sizes: mar.py builders + main_mar.py `--diffloss_d/--diffloss_w` of the README.
    @classmethod
    def base(cls, **overrides) -> MARConfig:
        """MAR-B (`mar_base`, diffloss 6 x 1024): 207.9M params."""
        return cls(**{**_release(768, 12, 12, diffloss_d=6, diffloss_w=1024), **overrides})

    @classmethod
    def large(cls, **overrides) -> MARConfig:
        """MAR-L (`mar_large`, diffloss 8 x 1280): 478.3M params."""
        return cls(**{**_release(1024, 16, 16, diffloss_d=8, diffloss_w=1280), **overrides})

    @classmethod
    def huge(cls, **overrides) -> MARConfig:
        """MAR-H (`mar_huge`, diffloss 12 x 1536): 942.4M params (head dim 80)."""
        return cls(**{**_release(1280, 20, 16, diffloss_d=12, diffloss_w=1536), **overrides})

    @classmethod
    def tiny(cls, **overrides) -> MARConfig:
        """The reference fixture (`reference/mar/config.json`): width 64, 4 heads, 2 + 2 blocks."""
        kw = _release(64, 2, 4, diffloss_d=2, diffloss_w=96)
        return cls(**{**kw, **overrides})

    @classmethod
    def from_fixture(cls, mar_json: Mapping[str, Any]) -> MARConfig:
        """From the `"mar"` entry of a fixture's `config.json` (the constructor arguments).

        Raises:
            ValueError: on an unknown key or a `norm_layer` that is not a LayerNorm with an eps.
        """
        fields = {f.name for f in dataclasses.fields(cls)}
        kw = {}
        for key, value in mar_json.items():
            if key == "norm_layer":
                kw["norm_eps"] = _norm_layer_eps(value)
            elif key in fields and key != "norm_eps":
                kw[key] = value
            else:
                raise ValueError(f"unknown MAR constructor argument {key!r}")
        kw["num_sampling_steps"] = str(kw.get("num_sampling_steps", "100"))
        return cls(**kw)

    @property
    def num_classes(self) -> int:
        """Class labels the model takes (`class_num`; the CLI's `--classes` range)."""
        return self.class_num

    @property
    def seq_h(self) -> int:
        return self.img_size // self.vae_stride // self.patch_size

    @property
    def seq_len(self) -> int:
        """L, image tokens."""
        return self.seq_h * self.seq_h

    @property
    def token_embed_dim(self) -> int:
        """D, channels of one token (vae_embed_dim * patch_size^2)."""
        return self.vae_embed_dim * self.patch_size**2

    @property
    def encoder_mlp_dim(self) -> int:
        return int(self.encoder_embed_dim * self.mlp_ratio)

    @property
    def decoder_mlp_dim(self) -> int:
        return int(self.decoder_embed_dim * self.mlp_ratio)


def _release(width: int, depth: int, heads: int, **kw) -> dict[str, Any]:
    # Every builder uses the same width/depth/heads for encoder and decoder, mlp_ratio 4 and
    # partial(nn.LayerNorm, eps=1e-6); buffer_size 64 is what main_mar.py passes.
    return dict(
        encoder_embed_dim=width,
        encoder_depth=depth,
        encoder_num_heads=heads,
        decoder_embed_dim=width,
        decoder_depth=depth,
        decoder_num_heads=heads,
        mlp_ratio=4.0,
        norm_eps=1e-6,
        buffer_size=64,
        **kw,
    )


def _norm_layer_eps(value: Any) -> float:
    """The eps of a fixture's `norm_layer` string (`functools.partial(torch.nn.LayerNorm, eps=…)`)."""
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value)
    if "LayerNorm" not in text:
        raise ValueError(f"norm_layer {text!r} is not a LayerNorm")
    m = re.search(r"eps\s*=\s*([0-9.eE+-]+)", text)
    return float(m.group(1)) if m else 1e-5  # bare nn.LayerNorm
