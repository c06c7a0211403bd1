"""The tiny MAR recipe: sizes and stage settings (serialised into recipe.json)."""

from __future__ import annotations

import dataclasses
from typing import Any

from arvg_jax.data import shapes
from arvg_jax.families.mar.config import MARConfig, _release
from arvg_jax.families.mar.family import DEMO_SAMPLING
from arvg_jax.families.mar.train._vae import VAELossConfig
from arvg_jax.tokenizers.kl16_vae import KL16Config
from arvg_jax.train._common import StageHParams
from arvg_jax.train.loop import recipe_to_dict, with_stage_steps


@dataclasses.dataclass(frozen=True, kw_only=True)
class MARTinyRecipe:
    """Everything that defines a tiny MAR run."""

    image_size: int = 32
    data_seed: int = 0  # training set: shapes.make_dataset(num_train, seed=data_seed)
    num_train: int = 50_000
    eval_seed: int = 1  # held-out set (its second half is the FID reference)
    num_eval: int = 6_000
    seed: int = 0
    vae: KL16Config
    mar: MARConfig
    vae_loss: VAELossConfig = dataclasses.field(default_factory=VAELossConfig)
    vae_hp: StageHParams
    mar_hp: StageHParams
    ema_decay: float = 0.999  # the shipped weights are the EMA (official: 0.9999, 400 epochs)
    num_gen: int = 1200
    gen_batch: int = 400
    # (name, sampling settings); the first makes samples.png.
    gen_settings: tuple[tuple[str, dict], ...] = (("cfg3", DEMO_SAMPLING),)
    log_every: int = 200

    @classmethod
    def default(cls, **kw) -> MARTinyRecipe:
        """The shipped model: 32 px, KL VAE stride 4 (8x8 x 8 latents, ch 32, mult 1,2,2);
        MAR 3 + 3 blocks of width 128 (4 heads), buffer 16, diffusion head 3 x 192."""
        base = {
            "vae": KL16Config(
                embed_dim=8, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, image_size=32
            ),
            "mar": _mar(32, 4, 8, width=128, depth=3, heads=4, buffer=16, head_w=192, head_d=3),
            # Steps sized for ~5 min on one H100 (VAE 2,200 steps in 33 s, MAR 85 step/s once
            # compiled); the GPU command's --*-max-s limits are the safety net. 7,000 MAR steps
            # gave a head too imprecise at high noise (43 % class accuracy at 250 head steps),
            # 14,000 gave 90.5 % (README, "Tiny MAR").
            "vae_hp": StageHParams(steps=2200, batch=128, lr=1e-3, warmup=100),
            # mar.py/main_mar.py: AdamW b2 0.95, weight decay 0.02.
            "mar_hp": StageHParams(
                steps=14000, batch=256, lr=1e-3, warmup=300, weight_decay=0.02, b2=0.95
            ),
        }
        return cls(**{**base, **kw})

    @classmethod
    def quick(cls, **kw) -> MARTinyRecipe:
        """CPU smoke test: 32 px (the shared classifier's), a few hundred images, small models."""
        quick_sampling = {**DEMO_SAMPLING, "num_iter": 4, "num_sampling_steps": "5"}
        base = {
            "num_train": 480,
            "num_eval": 240,
            "vae": KL16Config(
                embed_dim=4, ch=32, ch_mult=(1, 1, 1), num_res_blocks=1, image_size=32
            ),
            "mar": _mar(32, 4, 4, width=32, depth=1, heads=2, buffer=4, head_w=32, head_d=1),
            "vae_hp": StageHParams(steps=20, batch=16, lr=1e-3, warmup=2),
            "mar_hp": StageHParams(steps=20, batch=16, lr=1e-3, warmup=2, b2=0.95),
            "ema_decay": 0.9,
            "num_gen": 48,
            "gen_batch": 24,
            "gen_settings": (("cfg3", quick_sampling),),
            "log_every": 5,
        }
        return cls(**{**base, **kw})

    def with_steps(self, vae: int | None, mar: int | None) -> MARTinyRecipe:
        """A copy with some stage step counts replaced (None keeps)."""
        return with_stage_steps(self, {"vae_hp": vae, "mar_hp": mar})

    def to_dict(self) -> dict[str, Any]:
        return recipe_to_dict(self, skip=("vae", "mar"))  # recipe.json's model / tokenizer_config


def _mar(img: int, stride: int, embed: int, *, width, depth, heads, buffer, head_w, head_d):
    # A release layout (same width/depth/heads for encoder and decoder, LayerNorm eps 1e-6) at
    # tiny size; the port has no dropout, so the recorded dropout is 0.
    return MARConfig(
        **{
            **_release(width, depth, heads, diffloss_d=head_d, diffloss_w=head_w),
            "img_size": img,
            "vae_stride": stride,
            "vae_embed_dim": embed,
            "class_num": shapes.NUM_CLASSES,
            "buffer_size": buffer,
            "attn_dropout": 0.0,
            "proj_dropout": 0.0,
            "num_sampling_steps": DEMO_SAMPLING["num_sampling_steps"],
        }
    )
