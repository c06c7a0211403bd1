"""The tiny PAR recipe: what one training run is (serialised into recipe.json)."""

from __future__ import annotations

import dataclasses
from typing import Any

from arvg_jax.data import shapes
from arvg_jax.families.par.config import PARConfig
from arvg_jax.families.par.family import TINY_DEMO_CFG_SCALE, par_tiny_config, par_tiny_vq_config
from arvg_jax.tokenizers.llamagen_vq16 import VQ16Config
from arvg_jax.train._common import StageHParams
from arvg_jax.train.loop import recipe_to_dict, with_stage_steps
from arvg_jax.train.vq import VQLossConfig

STAGES = ("tokenizer", "gpt", "eval")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TinyPARRecipe:
    """Everything that defines a tiny PAR run: data, sizes, stage hyper-parameters, evaluation."""

    image_size: int = 32
    data_seed: int = 0  # training set: shapes.make_dataset(num_train, seed=data_seed)
    num_train: int = 50_000
    eval_seed: int = 1  # held-out set (the VAR recipe's): make_dataset(num_eval, seed=eval_seed)
    num_eval: int = 6_000
    seed: int = 0  # parameter init and training draws
    model: PARConfig
    tokenizer: VQ16Config
    vq_loss: VQLossConfig
    tok_hp: StageHParams
    gpt_hp: StageHParams
    cond_drop: float = 0.1  # label dropout to the null class (gpt.py class_dropout_prob)
    num_gen: int = 1200  # generated images per evaluation setting
    gen_batch: int = 600
    # (name, cfg_scale) sampling settings scored after training (other settings: the official
    # defaults); the first one makes samples.png.
    gen_settings: tuple[tuple[str, float], ...] = (("cfg3", TINY_DEMO_CFG_SCALE),)
    log_every: int = 200

    def __post_init__(self):
        if self.tokenizer.image_size != self.image_size:
            raise ValueError(
                f"tokenizer image_size {self.tokenizer.image_size} != {self.image_size}"
            )
        if self.tokenizer.grid_size != self.model.grid_size:
            raise ValueError(
                f"tokenizer grid {self.tokenizer.grid_size} != GPT grid {self.model.grid_size}"
            )
        if self.tokenizer.codebook_size != self.model.vocab_size:
            raise ValueError("tokenizer codebook_size != GPT vocab_size")

    @classmethod
    def default(cls, **kw) -> TinyPARRecipe:
        """The shipped model (`par-tiny`): 32 px, 8 x 8 tokens, V 512; GPT dim 128, 8 layers."""
        base = {
            "model": par_tiny_config(),
            "tokenizer": par_tiny_vq_config(),
            # l2-normalised codes: start the codebook near the unit sphere (LlamaGen normalises
            # its uniform init), so restarts and the first lookups see comparable rows.
            "vq_loss": VQLossConfig(codebook_init_std=0.35),
            # Upper bounds: with --tok-max-s / --gpt-max-s the step counts are fitted to the wall
            # limits (`_fit.py`); the VAR recipe's tokenizer ran 53 step/s and its VAR 79 step/s
            # on an H100 at these batch sizes.
            "tok_hp": StageHParams(steps=8000, batch=128, lr=1e-3, warmup=200),
            "gpt_hp": StageHParams(
                steps=20000, batch=256, lr=1e-3, warmup=300, weight_decay=0.05, b2=0.95
            ),
        }
        return cls(**{**base, **kw})

    @classmethod
    def quick(cls, **kw) -> TinyPARRecipe:
        """CPU smoke test: the same code paths at 32 px with a small tokenizer and GPT."""
        base = {
            "num_train": 480,
            "num_eval": 240,
            "model": PARConfig(
                dim=32,
                n_layer=2,
                n_head=2,
                multiple_of=32,
                vocab_size=64,
                num_classes=shapes.NUM_CLASSES,
                block_size=64,
            ),
            "tokenizer": VQ16Config(
                codebook_size=64,
                codebook_embed_dim=8,
                decoder_ch_mult=(1, 1, 1),
                z_channels=32,
                ch=32,
                num_res_blocks=0,
                image_size=32,
                image_size_eval=32,
            ),
            "vq_loss": VQLossConfig(codebook_init_std=0.35, restart_every=10),
            "tok_hp": StageHParams(steps=20, batch=16, lr=1e-3, warmup=2),
            "gpt_hp": StageHParams(steps=20, batch=16, lr=1e-3, warmup=2),
            "num_gen": 48,
            "gen_batch": 24,
            "log_every": 5,
        }
        return cls(**{**base, **kw})

    def with_steps(self, tok: int | None, gpt: int | None) -> TinyPARRecipe:
        """A copy with some stage step counts replaced (None keeps)."""
        return with_stage_steps(self, {"tok_hp": tok, "gpt_hp": gpt})

    def to_dict(self) -> dict[str, Any]:
        """JSON-able fields (the two model configs go to recipe.json's *_config entries)."""
        return recipe_to_dict(self, skip=("model", "tokenizer"))
